"""The instruments study: per-member and ensemble verdicts on a case with known answers, its page and its CLI."""
from __future__ import annotations

import json

import pytest
import torch

from app.classifier import AttributeClassifier, ClassifierConfig
from experiments import cli as experiments_cli
from experiments.instruments import ENSEMBLE, load_groups, render, scores, write_report
from tests.experiments.support import refuses_a_model_without_directions

NAMES = ["Eyeglasses", "Male", "Young", "Smiling"]


def _probs(glasses: list[float], male: list[float]) -> torch.Tensor:
    n = len(glasses)
    return torch.tensor([[g, m, 0.5, 0.5] for g, m in zip(glasses, male)], dtype=torch.float64).reshape(n, 4)


def test_each_member_and_the_ensemble_are_judged_on_their_own_readings():
    before = _probs([0.1, 0.2, 0.3, 0.9], [0.2, 0.2, 0.8, 0.8])
    # member A flips 3 of the 3 faces without glasses but reads them 0.08 more male; member B flips only 1
    a_after = _probs([0.9, 0.8, 0.7, 0.95], [0.28, 0.28, 0.88, 0.88])
    b_after = _probs([0.9, 0.4, 0.45, 0.95], [0.2, 0.2, 0.8, 0.8])
    out = scores([before, before], [a_after, b_after], NAMES, "Eyeglasses", +1)
    a, b = out["members"]
    assert a["flip"] == 1.0 and a["leakage"]["Male"] == pytest.approx(0.08)
    assert a["misses"] == ["Male leak 0.080 > 0.05"]
    assert b["flip"] == pytest.approx(1 / 3) and b["misses"] == ["flip 33% < 60%"]
    ens = out[ENSEMBLE]  # mean readings: glasses 0.9/0.6/0.575/0.95 after, Male +0.04 on every face
    assert ens["flip"] == 1.0 and ens["leakage"]["Male"] == pytest.approx(0.04) and ens["misses"] == []
    assert set(ens["leakage"]) == {"Male", "Young", "Smiling"}


def _results() -> dict:
    def member(flip, male):
        return {"flip": flip, "moved": 1.0, "leakage": {"Male": male},
                "misses": [] if flip >= 0.6 and male <= 0.05 else ["something"]}
    group = {"members": [member(0.7, 0.04), member(0.5, 0.06)], ENSEMBLE: member(0.65, 0.045),
             "confound": {"Male": [0.1, 0.2, 0.15]}}
    return {"model": "m", "minutes": 2.0, "faces": 8, "val_faces": 10, "groups": {"plain": ["a", "b"]},
            "sliders": [{"slider": "Eyeglasses", "attribute": "Eyeglasses", "lines": ["Male"],
                         "groups": {"plain": group}}],
            "accuracy": {"plain": {"Male": [0.98, 0.96, 0.975], "mean": [0.9, 0.88, 0.91]}}}


def test_page_counts_verdicts_gives_spreads_and_keeps_the_account(tmp_path):
    out = tmp_path / "instruments.md"
    text = render(_results(), out, "python -m experiments instruments")
    assert "| Eyeglasses | 1/2; ensemble: meets all |" in text
    assert "plain: 0-1 by a member, 1 by the ensemble" in text
    assert "| plain | 0.970 (0.960 to 0.980); ensemble 0.975 | 0.890 (0.880 to 0.900); ensemble 0.910 |" in text
    assert ("| Eyeglasses | plain | 60% (50% to 70%) | 65% | 100% (100% to 100%) | 100% | Male | "
            "0.050 (0.040 to 0.060) | 0.045 | +0.150 (+0.100 to +0.200) | +0.150 |") in text
    out.write_text("old\n## Account\n\nours\n")
    write_report(_results(), out, "cmd")
    assert out.read_text().endswith("## Account\n\nours\n")
    assert json.loads(out.with_suffix(".json").read_text())["groups"] == {"plain": ["a", "b"]}


def test_classifiers_reading_different_attributes_are_refused(tmp_path):
    for name, attributes in (("a", ["Male", "Young"]), ("b", ["Male", "Smiling"])):
        AttributeClassifier(ClassifierConfig(attributes, image_size=16, widths=[4, 8])).save_pretrained(tmp_path / name)
    with pytest.raises(ValueError, match="different attributes"):
        load_groups({"one": [tmp_path / "a", tmp_path / "b"]})
    with pytest.raises(ValueError, match=r"\['.*b'\] read different attributes"):  # across groups too
        load_groups({"one": [tmp_path / "a"], "two": [tmp_path / "b"]})


def test_cli_names_bad_groups_and_a_model_without_directions(tmp_path, capsys):
    model = refuses_a_model_without_directions("instruments", tmp_path, capsys, "--group", f"x={tmp_path}")
    out = tmp_path / "i.md"

    def run(*args: str) -> int:
        return experiments_cli.main(["instruments", "--model", str(model), *args, "--out", str(out)])
    for bad in ("plain", "=a", "x="):
        with pytest.raises(SystemExit):  # argparse's usage error
            run("--group", bad)
        assert "NAME=DIR" in capsys.readouterr().err and not out.exists()
    assert run("--group", "x=a", "--group", "x=b") == 2
    assert "group names must differ" in capsys.readouterr().err and not out.exists()
