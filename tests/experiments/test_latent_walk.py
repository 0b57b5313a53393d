"""The latent-walk pilot: its probe learns what a linear read-out cannot, its hold and walk keep the held logits,
its equal-flip arithmetic on known curves, its page, and its CLI on bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import cli as experiments_cli
from experiments.latent_walk import (METHODS, LatentProbe, ProbeConfig, fit_probe, hold, leak_at_flip, render, walk,
                                     write_report)
from tests.experiments.support import refuses_a_model_without_directions


def _probe(seed: int = 0, dim: int = 6) -> LatentProbe:
    torch.manual_seed(seed)
    return LatentProbe(dim, ["a", "b", "c"], ProbeConfig(hidden=16)).eval().requires_grad_(False)


def test_probe_reads_an_attribute_no_linear_read_out_can():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 4, generator=g)
    y = torch.stack([(z[:, 0] * z[:, 1] > 0), z[:, 2] > 0], 1).float()  # an XOR of two coordinates, and a half-space
    probe, fit = fit_probe(z, y, ["xor", "half"], ProbeConfig(hidden=32, input_dropout=0.0, dropout=0.0,
                                                                weight_decay=0.0, lr=3e-3, max_epochs=40))
    assert fit["auc"]["xor"]["probe"] > 0.9 and fit["auc"]["xor"]["linear"] < 0.6
    assert fit["auc"]["half"]["probe"] > 0.95 and fit["auc"]["half"]["linear"] > 0.95
    assert fit["fit_faces"] + fit["val_faces"] == 3000 and not probe.training
    torch.manual_seed(123)  # the global generator's state must not matter
    again, _ = fit_probe(z, y, ["xor", "half"], ProbeConfig(hidden=32, input_dropout=0.0, dropout=0.0,
                                                            weight_decay=0.0, lr=3e-3, max_epochs=40))
    assert all(torch.equal(a, b) for a, b in zip(probe.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="one label row each"):
        fit_probe(z[:10], y[:10], ["xor", "half"], ProbeConfig())


def test_hold_brings_the_held_logits_back_by_a_small_change():
    probe = _probe()
    c0 = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    goal = probe.jacobian(c0, [0, 2])[0]
    moved = c0 + 0.3 * torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    held = hold(probe, moved, goal, [0, 2], iters=8, ridge=0.0)
    assert torch.allclose(probe.jacobian(held, [0, 2])[0], goal, atol=1e-4)
    assert not torch.allclose(probe.jacobian(moved, [0, 2])[0], goal, atol=1e-2)
    assert (held - moved).norm(dim=1).max() < (moved - c0).norm(dim=1).max()
    assert torch.equal(hold(probe, moved, goal, []), moved)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_walk_moves_the_target_its_way_and_keeps_the_held_logits(sign):
    probe = _probe(3)
    c0 = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    before = probe.jacobian(c0, [1, 0])[0]
    c = walk(probe, c0, target=1, sign=sign, held=[0], length=1.0, steps=10)
    after = probe.jacobian(c, [1, 0])[0]
    assert (sign * (after[:, 0] - before[:, 0]) > 0).all()
    assert torch.allclose(after[:, 1], before[:, 1], atol=1e-3)
    unheld = walk(probe, c0, target=1, sign=sign, held=[], length=1.0, steps=10)
    reach = (unheld - c0).norm(dim=1)  # a path of length 1 along a gradient that turns a little
    assert (reach <= 1 + 1e-5).all() and (reach > 0.8).all()


def _rows(points: list[tuple[float, float, float]]) -> list[dict]:
    return [{"strength": s, "flip": f, "leakage": {"Male": leak}} for s, f, leak in points]


def test_leak_at_flip_interpolates_along_the_curve_and_ignores_strengths_past_its_peak():
    rows = _rows([(1.0, 0.5, 0.2), (0.5, 0.2, 0.1), (2.0, 0.8, 0.4)])  # given out of order
    assert leak_at_flip(rows, 0.65, "Male") == pytest.approx(0.3)
    assert leak_at_flip(rows, 0.2, "Male") == pytest.approx(0.1)
    assert math.isnan(leak_at_flip(rows, 0.9, "Male")) and math.isnan(leak_at_flip(rows, 0.1, "Male"))
    past = _rows([(1.0, 0.3, 0.1), (2.0, 0.7, 0.3), (3.0, 0.5, 0.9)])  # the strongest edit broke faces
    assert leak_at_flip(past, 0.6, "Male") == pytest.approx(0.25)
    assert leak_at_flip(past, 0.7, "Male") == pytest.approx(0.3)


def _results() -> dict:
    rows = []
    for method, leak in zip(METHODS, (0.10, 0.08, 0.04)):
        for s, f in ((0.5, 0.4), (1.0, 0.8), (2.0, 0.9)):
            rows.append({"slider": "Age", "method": method, "strength": s, "flip": f, "moved": 1.0,
                         "leakage": {"Male": leak * s, "Smiling": 0.01}, "pixel": 5.0, "undecoded": 0.0,
                         "held": ["Male"], "latent_change": 1.0})
    auc = {"Male": {"probe": 0.98, "linear": 0.97}}
    return {"model": "m", "faces": 4, "steps": 8, "minutes": 1.0, "rows": rows,
            "probe": {"auc": auc, "fit_faces": 7, "val_faces": 1, "level": "12 values of the coarsest level"}}


def test_page_compares_the_methods_at_the_shipped_flip_and_keeps_the_account(tmp_path):
    out = tmp_path / "walk.md"
    text = render(_results(), out)
    assert "| Age | 80% | Male | 0.100 | 0.080 | 0.040 | 0.075 | 0.060 | 0.030 |" in text.splitlines()
    assert "| Male | 0.980 | 0.970 |" in text and "| Age | Male | 2 | probe walk | 90% | 100% | 0.080 |" in text
    out.write_text("old\n## Account\n\nours\n")
    write_report(_results(), out)
    assert out.read_text().endswith("## Account\n\nours\n") and (tmp_path / "walk.png").stat().st_size > 0
    assert json.loads((tmp_path / "walk.json").read_text())["rows"][0]["slider"] == "Age"


def test_cli_names_bad_strengths_and_a_model_without_directions(tmp_path, capsys):
    out = tmp_path / "w.md"
    assert experiments_cli.main(["latent-walk", "--strengths", "0.5,2", "--out", str(out)]) == 2
    assert "--strengths must include 1" in capsys.readouterr().err
    assert experiments_cli.main(["latent-walk", "--strengths", "1,x", "--out", str(out)]) == 2
    assert "--strengths must be comma-separated numbers" in capsys.readouterr().err
    refuses_a_model_without_directions("latent-walk", tmp_path, capsys)
