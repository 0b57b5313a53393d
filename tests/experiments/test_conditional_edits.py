"""The within-gender edits study: the matched average's weights over the directions file's within-gender
differences, the page, and the CLI on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.directions import DirectionConfig, compute_directions
from experiments import cli as experiments_cli
from experiments.conditional_edits import METHODS, matched, render, write_report
from tests.conftest import nontrivial_model, tiny_config
from tests.editor_support import random_directions
from tests.experiments.support import refuses_a_model_without_directions


def test_matched_weights_each_genders_own_difference_by_its_inverse_variance():
    """Coordinate 1 is the attribute, worth 1 among men and 3 among women; 10 of 40 men and 45 of 60 women have it,
    and a beard (coordinate 2) only men have, so the women borrow the men's difference and the average is the men's."""
    male = np.arange(100) < 40
    has = np.r_[np.arange(40) < 10, np.arange(60) < 45]
    beard = male & (np.arange(100) % 2 == 0)
    x = np.stack([np.where(male, 1.0, -1.0), np.where(male, 1.0, 3.0) * has, beard, np.zeros(100)], 1)
    labels = np.where(np.stack([male, has, beard], 1), 1, -1)
    d = compute_directions(x.astype(np.float32), labels, ["Male", "Blond_Hair", "No_Beard"],
                           DirectionConfig(gender_min_count=5), progress=False)
    w_men, w_women = 10 * 30 / 40, 45 * 15 / 60
    want = (w_men * 1.0 + w_women * 3.0) / (w_men + w_women)
    assert torch.allclose(matched(d, "Blond_Hair"), torch.tensor([0.0, want, 0.0, 0.0]), atol=1e-5)
    assert d.info["No_Beard"]["within_gender"]["borrowed"] == ["neg"]
    assert torch.allclose(matched(d, "No_Beard"), d.within_gender["pos"][2])  # the men's alone
    with pytest.raises(ValueError, match="Male has no within-gender difference of its own"):
        matched(d, "Male")


def _results() -> dict:
    rows = []
    for method, leak in zip(METHODS, (0.10, 0.08, 0.04)):
        for s, f in ((0.6, 0.4), (1.0, 0.8), (2.0, 0.9)):
            rows.append({"slider": "Age", "method": method, "strength": s, "flip": f, "moved": 1.0,
                         "leakage": {"Male": leak * s, "Smiling": 0.01}, "drift": {"Male": leak * s / 2},
                         "pixel": 5.0, "undecoded": 0.0, "held": ["Male"]})
    fits = {"Age": {"counts": {"men": [60, 30], "women": [80, 9]}, "borrowed": ["women"], "held": ["Male"],
                    "hold": "mean_diff"}}
    return {"model": "m", "faces": 4, "fit_faces": 179, "min_count": 10, "reader_accuracy": 0.97, "fits": fits,
            "rows": rows, "minutes": 1.0}


def test_page_compares_the_methods_at_equal_flip_and_keeps_the_account(tmp_path):
    out = tmp_path / "cond.md"
    text = render(_results(), out)
    # at the shipped +1's flip (80%) each method's own leakage at x1; at 60%, halfway between x0.6 and x1
    assert "| Age | 80% | Male | 0.100 | 0.080 | 0.040 | 0.080 | 0.064 | 0.032 | 90% | 90% | 90% |" in text
    assert "| Age | 60 / 30 | 80 / 9 | women | Male (mean_diff) |" in text
    assert "| Age | 2 | by gender | 90% | 100% | 0.080 | - | 0.010 | +0.040 | 5.0 | 0% |" in text
    out.write_text("old\n## Account\n\nours\n")
    write_report(_results(), out)
    assert out.read_text().endswith("## Account\n\nours\n") and (tmp_path / "cond.png").stat().st_size > 0
    assert json.loads((tmp_path / "cond.json").read_text())["fits"]["Age"]["borrowed"] == ["women"]


def test_cli_names_bad_strengths_and_a_model_without_directions(tmp_path, capsys):
    out = tmp_path / "c.md"
    assert experiments_cli.main(["conditional-edits", "--strengths", "0.5,2", "--out", str(out)]) == 2
    assert "--strengths must include 1" in capsys.readouterr().err
    assert experiments_cli.main(["conditional-edits", "--sliders", " , ", "--out", str(out)]) == 2
    assert "need at least one slider" in capsys.readouterr().err
    model = refuses_a_model_without_directions("conditional-edits", tmp_path, capsys)
    random_directions(["Male", "Young", "Smiling"], nontrivial_model(tiny_config()).latent_dim).save(
        model / "directions.safetensors")
    (model / "split.json").write_text(json.dumps({"train": [], "val": []}))
    assert experiments_cli.main(["conditional-edits", "--model", str(model), "--sliders", "Smiling", "--out",
                                 str(out)]) == 2
    assert "directions have no within-gender differences: refit them" in capsys.readouterr().err
