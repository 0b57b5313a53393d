"""A run's learning curve: what plot_run draws from metrics.jsonl."""
from __future__ import annotations

import json

from flow_model.training import curves


def test_plot_run_marks_the_shipped_weights_inside_the_view(tmp_path, monkeypatch):
    """A release whose raw weights validate far below the run's EMA points still shows them, inside the y-range."""
    rows = [{"step": s, "train_bpd": 1.4 - s / 1000} for s in range(10, 310, 10)]
    rows += [{"step": 150, "val_bpd": 1.45, "val_bpd_se": 0.005}, {"step": 300, "val_bpd": 1.44, "val_bpd_se": 0.005}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    drawn = []
    monkeypatch.setattr(curves, "plot_curves", lambda c, path, **kw: drawn.append((c, kw)))

    curves.plot_run(metrics, tmp_path / "a.png")
    curves.plot_run(metrics, tmp_path / "b.png", shipped=(300, 0.9, 0.006, "shipped raw weights"))
    (plain, _), (marked, options) = drawn
    assert [c.label for c in marked] == [c.label for c in plain] + ["shipped raw weights"]
    star = marked[-1]
    assert (star.x, star.y, star.yerr) == ([300], [0.9], [0.006])
    assert options["ylim"][0] < 0.9 < options["ylim"][1]


def test_plot_run_stops_at_the_step_the_released_weights_were_taken(tmp_path, monkeypatch):
    rows = [{"step": s, "train_bpd": 1.3} for s in range(10, 110, 10)]
    rows += [{"step": 50, "val_bpd": 1.26, "val_bpd_se": 0.006}, {"step": 90, "val_bpd": 1.25, "val_bpd_se": 0.006}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = []
    monkeypatch.setattr(curves, "plot_curves", lambda c, path, **kw: drawn.append(c))
    curves.plot_run(metrics, tmp_path / "a.png", until=70)
    train, validation = drawn[0]
    assert list(train.x) == [10, 20, 30, 40, 50, 60, 70] and list(validation.x) == [50]


def test_plot_run_writes_the_figure(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "train_bpd": 2.0}) + "\n")
    curves.plot_run(metrics, tmp_path / "curve.png", shipped=(1, 1.9, 0.01, "shipped"))
    assert (tmp_path / "curve.png").stat().st_size > 1000
