"""Smoke test of the ablation runner: tiny models, a second or so of training per configuration."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from experiments import ablation, cli

TINY = ["--image-size", "8", "--levels", "2", "--depth", "1", "--hidden", "8", "--attention-heads", "2",
        "--mixture-components", "2", "--cond-blocks", "1", "--dequant-depth", "1", "--dequant-hidden", "8",
        "--batch-size", "4", "--val-fraction", "0.25", "--workers", "0", "--init-batch", "8", "--dropout", "0.1"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(24):
        base = rng.integers(0, 256, 3)
        img = np.clip(base + rng.normal(0, 30, (24, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def test_ablation_trains_every_configuration_and_writes_table_plot_report(image_dir, tmp_path, capsys) -> None:
    out, report = tmp_path / "ablation", tmp_path / "docs" / "ablation.md"
    argv = ["ablation", "--data", str(image_dir), "--out", str(out), "--minutes-per-config", "0.01",
            "--curve-points", "2", "--importance-samples", "2", "--report", str(report), *TINY]
    assert cli.main(argv) == 0
    payload = json.loads((out / "results.json").read_text())
    results = payload["results"]
    assert [r["name"] for r in results] == list(ablation.VARIANTS)
    for r in results:
        pieces = {k: r["model_config"][k] for k in ablation.PIECES}
        assert pieces == ablation.VARIANTS[r["name"]].pieces
        assert math.isfinite(r["val_bpd"]) and r["val_bpd_se"] > 0 and math.isfinite(r["val_bpd_iw"])
        assert r["parameters"] > 0 and r["images_per_s"] > 0 and r["steps"] >= 1 and r["val_images"] == 6
        # one validation per curve point, each after its share of the training-step budget
        assert [c["seconds"] >= 0.01 * 60 * (i + 1) / 2 for i, c in enumerate(r["curve"])] == [True, True]
        assert r["round_trip_exact"]
    sizes = {r["name"]: r["parameters"] for r in results}
    assert sizes["glow"] < sizes["no_attention"] < sizes["flowpp"]
    assert (out / ablation.PLOT_NAME).stat().st_size > 0 and (report.parent / ablation.PLOT_NAME).stat().st_size > 0
    text = report.read_text()
    for number in ("3.165", "3.292", "3.200", "3.193"):
        assert number in text
    assert "python -m experiments ablation --data" in text and ablation.ACCOUNT_HEADING in text
    assert "Flow++ (all pieces)" in capsys.readouterr().out

    # a regenerated report keeps the hand-written account
    report.write_text(report.read_text().split(ablation.ACCOUNT_HEADING)[0] + ablation.ACCOUNT_HEADING + "\n\nours\n")
    config = ablation.AblationConfig(**payload["config"])
    ablation.write_outputs(config, results, payload["command"])
    assert report.read_text().endswith(f"{ablation.ACCOUNT_HEADING}\n\nours\n")

    # an existing run is never overwritten
    assert cli.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--variants", "flowpp", "nope"], "unknown variant"),
    (["--minutes-per-config", "0"], "minutes_per_config"),
    (["--image-size", "10"], "image_size"),
])
def test_ablation_rejects_bad_options_before_training(image_dir, tmp_path, capsys, extra, message) -> None:
    argv = ["ablation", "--data", str(image_dir), "--out", str(tmp_path / "a"), "--minutes-per-config", "1",
            "--report", str(tmp_path / "ablation.md"),
            *TINY, *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
