"""The train-gap experiment: its comparison on a case with known answers, and the page from a tiny run's split."""
from __future__ import annotations

import json

import pytest
import torch

from experiments import cli as experiments_cli
from experiments.train_gap import Scores, compare


def test_a_gap_between_unlike_faces_vanishes_within_stored_widths():
    """Wide files score 2, narrow ones 1, on either side: the validation faces (a third wide) read 0.133 higher than
    training faces that are a fifth wide, and 0 higher within each width."""
    val = Scores(torch.tensor([2.0, 2.0, 1.0, 1.0, 1.0, 1.0]), [178, 178, 89, 89, 89, 89])
    train = Scores(torch.tensor([2.0, 2.0] + [1.0] * 8), [178, 178] + [89] * 8)
    out = compare(val, train)
    assert out["gap"] == pytest.approx(4 / 3 - 1.2)
    assert out["within_width_gap"] == pytest.approx(0.0) and out["within_width_gap_se"] == pytest.approx(0.0)
    # a real gap inside one width, weighted by the validation faces' share of it (a third)
    shifted = Scores(train.bits - torch.tensor([0.3, 0.3] + [0.0] * 8), train.widths)
    assert compare(val, shifted)["within_width_gap"] == pytest.approx(0.3 / 3)


def test_the_page_scores_the_validation_faces_and_each_training_sample(tiny_run, faces_dir, tmp_path, capsys):
    out = tmp_path / "train_gap.md"
    assert experiments_cli.main(["train-gap", "--model", str(tiny_run), "--data", str(faces_dir), "--faces", "10",
                                 "--first", "20", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    split = json.loads((tiny_run / "split.json").read_text())
    sets = results["sets"]
    assert sets["validation"]["n"] == len(split["val"])
    first = sorted(split["val"] + split["train"])[:20]
    assert sets["training, the first 20 files of img_align_celeba"]["n"] == len([n for n in first if n not in
                                                                                  split["val"]])
    drawn = sets["training, a random 10 of img_align_celeba"]
    assert drawn["n"] == 10 and sum(g["n"] for g in drawn["by_width"].values()) == 10
    assert drawn["gap"] == pytest.approx(sets["validation"]["bpd"] - drawn["bpd"])
    text = out.read_text()
    assert "| validation |" in text and "## Account" in text
    assert experiments_cli.main(["train-gap", "--model", str(tmp_path), "--out", str(out)]) == 2
    assert "no split file" in capsys.readouterr().err
