"""`python -m experiments pilot-report` on two tiny real runs: the table ranks them, the figures exist, bad input is named."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from experiments import cli as experiments_cli
from experiments import pilots
from flow_model import cli

TRAIN = ["--image-size", "8", "--levels", "2", "--depth", "1", "--batch-size", "4", "--val-fraction", "0.25",
         "--workers", "0", "--init-batch", "8", "--max-steps", "12", "--log-every", "2", "--sample-every", "1000",
         "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs on the same images (kept apart from the run folders, whose figures are images too)."""
    root = tmp_path_factory.mktemp("pilots")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        img = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 30, (12, 10, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(images / f"{i:03d}.png")
    dirs = []
    for name, hidden in (("narrow", "4"), ("wide", "16")):
        assert cli.main(["train", "--data", str(images), "--out", str(root / name), "--hidden", hidden, *TRAIN]) == 0
        dirs.append(root / name)
    return images, dirs


def test_report_ranks_pilots_and_keeps_the_account(runs, tmp_path, capsys) -> None:
    _, runs = runs
    out = tmp_path / "docs" / "pilots.md"
    assert experiments_cli.main(["pilot-report", *map(str, runs), "--out", str(out), "--per-row", "2"]) == 0
    text = out.read_text()
    found = {r["name"]: r for r in map(pilots.read_run, runs)}
    assert all(r["steps"] == 12 and r["img_per_s"] > 0 and np.isfinite(r["val_bpd"]) for r in found.values())
    assert found["narrow"]["glow"].num_parameters() < found["wide"]["glow"].num_parameters()
    table = [line for line in text.splitlines() if line.startswith(("| narrow", "| wide"))]
    best = min(found.values(), key=lambda r: r["val_bpd"])
    assert len(table) == 2 and table[0].startswith(f"| {best['name']} ")
    assert f"{best['val_bpd']:.4f}" in table[0] and "| 2 × 1, " in table[0]
    assert all(f"| {r['precision']} |" in text and r["precision"] in ("fp32", "bf16") for r in found.values())
    for figure in ("pilots_bpd.png", "pilots_samples.png"):
        assert figure in text and (out.parent / figure).stat().st_size > 0
    assert "python -m experiments pilot-report" in text and best["name"] in capsys.readouterr().out

    out.write_text(text.split("## Account")[0] + "## Account\n\nours\n")
    assert experiments_cli.main(["pilot-report", *map(str, runs), "--out", str(out), "--per-row", "2"]) == 0
    assert out.read_text().endswith("## Account\n\nours\n")


def test_paired_differences_agree_with_the_trainers_validation(runs, tmp_path) -> None:
    """The same faces, the same noise, the same weights as the trainer's last validation: the paired mean is the
    difference of the two validation figures, and its s.e. is far below either run's own."""
    root, runs = runs
    out = tmp_path / "paired.md"
    assert experiments_cli.main(["pilot-report", *map(str, runs), "--out", str(out), "--data", str(root)]) == 0
    found = {r["name"]: r for r in map(pilots.read_run, runs)}
    best, other = sorted(found.values(), key=lambda r: r["val_bpd"])
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.read_text().splitlines()
            if line.startswith(("| narrow", "| wide"))}
    assert rows[best["name"]][5] == "+0.0000 ± 0.0000"
    mean, se = (float(v) for v in rows[other["name"]][5].split(" ± "))
    assert mean == pytest.approx(other["val_bpd"] - best["val_bpd"], abs=1e-4) and mean > 0
    assert se < other["val_bpd_se"]
    assert f"--data {root}" in out.read_text()


def test_report_names_a_directory_without_a_run(runs, tmp_path, capsys) -> None:
    _, runs = runs
    assert experiments_cli.main(["pilot-report", str(runs[0]), str(tmp_path), "--out", str(tmp_path / "p.md")]) == 2
    assert str(tmp_path) in capsys.readouterr().err and not (tmp_path / "p.md").exists()
