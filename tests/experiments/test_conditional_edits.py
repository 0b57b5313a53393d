"""The within-gender edits: a group's class-mean difference carries no gap between the groups where the pooled one
does, the matched average's weights, the gender reader and the per-face mix, a gender with too few faces, the page,
and the CLI on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments import cli as experiments_cli
from experiments.conditional_edits import (METHODS, GenderReader, by_gender, gender_vectors, group_differences,
                                           matched, render, write_report)
from tests.conftest import nontrivial_model, tiny_config


def _confounded() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinate 0 is gender (+1 men, -1 women), coordinate 1 the attribute (+1 with it, 0 without); 10 of 40 men
    and 45 of 60 women have it, so the pooled difference picks up gender, the within-gender ones do not."""
    male = np.array([True] * 40 + [False] * 60)
    has = np.array([True] * 10 + [False] * 30 + [True] * 45 + [False] * 15)
    z = np.stack([np.where(male, 1.0, -1.0), has.astype(float), np.zeros(100)], 1).astype(np.float32)
    return z, male, has


def test_a_groups_difference_holds_no_gender_gap_where_the_pooled_one_does():
    z, male, has = _confounded()
    diffs = group_differences(z, has, {"men": male, "women": ~male}, min_count=5)
    for name, (n_pos, n_neg) in {"men": (10, 30), "women": (45, 15)}.items():
        assert torch.allclose(diffs[name].vector, torch.tensor([0.0, 1.0, 0.0]))
        assert (diffs[name].n_pos, diffs[name].n_neg) == (n_pos, n_neg)
    pooled = z[has].mean(0) - z[~has].mean(0)  # with it: 10 men of 55; without: 30 men of 45
    assert pooled[0] == pytest.approx(2 * 10 / 55 - 1 - (2 * 30 / 45 - 1))
    # the matched average: weights 10*30/40 = 7.5 and 45*15/60 = 11.25, of two equal vectors here
    assert torch.allclose(matched(diffs), torch.tensor([0.0, 1.0, 0.0]))


def test_matched_weights_each_groups_difference_by_its_inverse_variance():
    z = np.array([[1, 0], [0, 0], [0, 0], [0, 4], [0, 0], [0, 0]], dtype=np.float32)
    has = np.array([True, False, False, True, True, False])
    groups = {"a": np.array([True] * 3 + [False] * 3), "b": np.array([False] * 3 + [True] * 3)}
    diffs = group_differences(z, has, groups, min_count=1)
    assert torch.allclose(diffs["a"].vector, torch.tensor([1.0, 0.0]))
    assert torch.allclose(diffs["b"].vector, torch.tensor([0.0, 2.0]))  # (4 + 0) / 2 - 0
    w_a, w_b = 1 * 2 / 3, 2 * 1 / 3
    assert torch.allclose(matched(diffs), torch.tensor([w_a, 2 * w_b]) / (w_a + w_b))


def test_a_gender_with_too_few_faces_borrows_the_other_ones_difference():
    z, male, has = _confounded()
    diffs = group_differences(z, has, {"men": male, "women": ~male}, min_count=12)  # only 10 men have it
    assert diffs["men"].vector is None and diffs["women"].vector is not None
    men, women, borrowed = gender_vectors(diffs)
    assert borrowed == ["men"] and torch.equal(men, women)
    assert torch.equal(matched(diffs), diffs["women"].vector)
    none = group_differences(z, has, {"men": male, "women": ~male}, min_count=50)
    with pytest.raises(ValueError, match="men 10/30, women 45/15"):
        gender_vectors(none)


def test_the_reader_reads_gender_off_the_normal_and_the_mix_follows_it():
    z, male, _ = _confounded()
    z = z + np.random.default_rng(0).normal(0, 0.3, z.shape).astype(np.float32)
    reader, accuracy = GenderReader.fit(z, male, torch.tensor([3.0, 0.0, 0.0]))
    assert accuracy == 1.0 and torch.allclose(reader.unit, torch.tensor([1.0, 0.0, 0.0]))
    p = reader(torch.tensor([[2.0, 0, 0], [-2.0, 0, 0], [0.0, 5, 5]]))
    assert p[0] > 0.95 and p[1] < 0.05 and p[2] == pytest.approx(1 / (1 + np.exp(-reader.intercept)), abs=1e-6)
    men, women = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    mixed = by_gender(torch.tensor([1.0, 0.0, 0.25]), men, women)
    assert torch.allclose(mixed, torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.25, 1.5]]))


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
    model = tmp_path / "model"
    nontrivial_model(tiny_config()).save_pretrained(model)
    assert experiments_cli.main(["conditional-edits", "--model", str(model), "--out", str(out)]) == 2
    assert f"{model} has no directions" in capsys.readouterr().err and not out.exists()
