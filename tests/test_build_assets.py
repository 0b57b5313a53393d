"""scripts/build_assets.py: where the training curve marks the shipped weights."""
from __future__ import annotations

import importlib.util
import json

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("build_assets", ROOT / "scripts" / "build_assets.py")
build_assets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_assets)


def test_the_curve_marks_shipped_weights_its_own_points_do_not_show(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train_bpd": 1.25} for s in (10, 20, 30)] + [{"step": 30, "val_bpd": 1.24, "val_bpd_se": 0.006}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the EMA the trainer validated at the last step is already on the curve
    assert build_assets.shipped_mark(metrics, None, 30, "ema", (1.24, 0.006)) is None
    # raw weights beside it, or an EMA from a step the run never validated (a run stopped between its points)
    assert build_assets.shipped_mark(metrics, None, 30, "raw", (1.23, 0.006)) == (
        30, 1.23, 0.006, "validation, shipped raw weights")
    assert build_assets.shipped_mark(metrics, None, 25, "ema", (1.24, 0.006)) == (
        25, 1.24, 0.006, "validation, shipped EMA weights")
    # a release from a run that went on: the star at the step the weights were taken
    assert build_assets.shipped_mark(metrics, 20, 30, "ema", (1.24, 0.006))[:3] == (20, 1.24, 0.006)
