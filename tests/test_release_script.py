"""scripts/release.py: what --install copies where, with staging paths rewritten; bad folders are named."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("release", ROOT / "scripts" / "release.py")
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)


def staged(stage: Path) -> Path:
    """A finished staging folder whose files mention their staging paths."""
    model = stage / "celeba64"
    (model / "figures").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "figures" / "directions_auc.png").write_bytes(b"png")
    (model / "MODEL_CARD.md").write_text("staged card")
    (model / "calibration.json").write_text(json.dumps({"faces_from": f"split {model}/split.json"}))
    (stage / "edits.md").write_text(f"--model {model} --out {stage}/edits.md\n## Account\nours\n")
    (stage / "edits.json").write_text(json.dumps({"model": str(model)}))
    (stage / "edits_flip.png").write_bytes(b"png")
    (stage / "leakage_floor.md").write_text(f"--model {model} --out {stage}/leakage_floor.md")
    (stage / "leakage_floor.json").write_text("{}")
    return model


def test_install_copies_the_release_rewrites_its_paths_and_keeps_the_card_and_curve(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    (root / "assets" / "celeba64").mkdir(parents=True)
    (root / "assets" / "celeba64" / "MODEL_CARD.md").write_text("hand-written card")
    (root / "assets" / "celeba64" / "training_curve.png").write_bytes(b"old curve")
    monkeypatch.setattr(release, "ROOT", root)
    stage = tmp_path / "stage"
    staged(stage)
    release.main(["--stage", str(stage), "--install", "--keep-curve-as", "training_curve_release6.png"])
    shipped = root / "assets" / "celeba64"
    assert (shipped / "model.safetensors").read_bytes() == b"weights"
    assert (shipped / "figures" / "directions_auc.png").is_file()
    assert (shipped / "MODEL_CARD.md").read_text() == "hand-written card"
    assert (shipped / "training_curve_release6.png").read_bytes() == b"old curve"
    assert json.loads((shipped / "calibration.json").read_text()) == {"faces_from": "split assets/celeba64/split.json"}
    assert (root / "docs" / "edits.md").read_text() == \
        "--model assets/celeba64 --out docs/edits.md\n## Account\nours\n"
    assert (root / "experiments" / "leakage_floor.md").read_text() == \
        "--model assets/celeba64 --out experiments/leakage_floor.md"
    assert (root / "docs" / "edits_flip.png").is_file() and (root / "experiments" / "leakage_floor.json").is_file()


def test_an_unfinished_stage_or_a_folder_without_a_run_is_named(tmp_path):
    stage = tmp_path / "stage"
    staged(stage)
    (stage / "edits.json").unlink()
    with pytest.raises(SystemExit, match=f"missing {stage / 'edits.json'}"):
        release.main(["--stage", str(stage), "--install"])
    with pytest.raises(SystemExit, match="holds no checkpoint.safetensors"):
        release.main(["--run", str(tmp_path), "--stage", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()


def test_run_recalibrate_and_install_are_exclusive(tmp_path, capsys):
    for argv in (["--stage", str(tmp_path)], ["--stage", str(tmp_path), "--install", "--run", str(tmp_path)],
                 ["--stage", str(tmp_path), "--install", "--recalibrate"]):
        with pytest.raises(SystemExit):
            release.main(argv)
        assert "give one of --run" in capsys.readouterr().err


def test_recalibrate_measures_a_copy_of_the_shipped_model_with_the_model_only_steps(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    shipped = root / "assets" / "celeba64"
    shipped.mkdir(parents=True)
    (shipped / "model.safetensors").write_bytes(b"weights")
    (root / "docs").mkdir()
    (root / "docs" / "edits.md").write_text("## Account\nours\n")
    monkeypatch.setattr(release, "ROOT", root)
    ran = []

    def fake_run(argv, cwd, stdout, stderr):
        ran.append(argv)
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(release.subprocess, "run", fake_run)
    stage = tmp_path / "stage"
    release.main(["--recalibrate", "--stage", str(stage)])
    assert (stage / "celeba64" / "model.safetensors").read_bytes() == b"weights"
    assert (stage / "edits.md").read_text() == "## Account\nours\n"  # the account survives, as for a release
    names = [line.split(":")[0][3:] for line in (stage / "release.log").read_text().splitlines()
             if line.endswith("s") and " exit 0 " in line]
    assert names == ["calibration and slider figures", "leakage floor", "slider sheet"]
    assert all(str(stage / "celeba64") in argv for argv in ran) and len(ran) == 3
    assert (shipped / "model.safetensors").read_bytes() == b"weights" and not (shipped / "calibration.json").exists()
    with pytest.raises(SystemExit, match="exists; pick an empty --stage"):
        release.main(["--recalibrate", "--stage", str(stage)])


def test_a_curve_from_another_run_goes_to_the_build_step_and_only_with_a_run(tmp_path, monkeypatch, capsys):
    """A zero-step run from a continuation point has no curve of its own: build_assets.py draws it from the source
    run's metrics, up to the continuation point's step."""
    build = release.steps(tmp_path / "run", tmp_path / "data", tmp_path / "stage", 2,
                          ["--curve-from=/m.jsonl", "--curve-until=714"])[0][1]
    assert build[1] == "scripts/build_assets.py" and build[-2:] == ["--curve-from=/m.jsonl", "--curve-until=714"]
    ran = []
    monkeypatch.setattr(release, "measure", lambda *args, **kwargs: ran.append(args))
    release.main(["--run", str(tmp_path / "run"), "--stage", str(tmp_path / "stage"), "--curve-from",
                  str(tmp_path / "m.jsonl"), "--curve-until", "714"])
    assert ran[0][-1] == [f"--curve-from={tmp_path / 'm.jsonl'}", "--curve-until=714"]
    with pytest.raises(SystemExit):
        release.main(["--stage", str(tmp_path), "--install", "--curve-from", str(tmp_path / "m.jsonl")])
    assert "go with --run" in capsys.readouterr().err


def test_every_measuring_step_names_an_existing_entry_point(tmp_path):
    for name, argv in release.steps(tmp_path / "run", tmp_path / "data", tmp_path / "stage", 2):
        target = argv[1:3] if argv[1] == "-m" else argv[1:2]
        if target[0] == "-m":
            assert importlib.util.find_spec(target[1]) is not None, name
        else:
            assert (ROOT / target[0]).is_file(), name


def test_resume_goes_on_from_the_step_that_failed_and_skips_the_finished_ones(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    shipped = root / "assets" / "celeba64"
    shipped.mkdir(parents=True)
    (shipped / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(release, "ROOT", root)
    ran, failing = [], {"leakage floor"}
    names = {argv[2] if argv[1] == "-m" else argv[1]: name
             for name, argv in release.steps(None, tmp_path / "data", tmp_path / "stage", 2)}

    def fake_run(argv, cwd, stdout, stderr):
        name = names[argv[2] if argv[1] == "-m" else argv[1]]
        ran.append(name)
        return SimpleNamespace(returncode=1 if name in failing else 0)

    monkeypatch.setattr(release.subprocess, "run", fake_run)
    stage = tmp_path / "stage"
    with pytest.raises(SystemExit, match="step 'leakage floor' failed .*--resume goes on from it"):
        release.main(["--recalibrate", "--stage", str(stage)])
    assert ran == ["calibration and slider figures", "leakage floor"]
    (stage / "celeba64" / "model.safetensors").write_bytes(b"measured")  # what the finished steps left stays
    failing.clear()
    release.main(["--recalibrate", "--stage", str(stage), "--resume"])
    assert ran[2:] == ["leakage floor", "slider sheet"]
    assert (stage / "celeba64" / "model.safetensors").read_bytes() == b"measured"
    assert release.finished(stage) == {"calibration and slider figures", "leakage floor", "slider sheet"}
    with pytest.raises(SystemExit, match="no pass to resume"):
        release.main(["--recalibrate", "--stage", str(tmp_path / "empty"), "--resume"])
    with pytest.raises(SystemExit):
        release.main(["--stage", str(stage), "--install", "--resume"])


def test_both_slider_pages_are_measured_on_the_same_report_faces(tmp_path):
    steps = dict(release.steps(None, tmp_path / "data", tmp_path / "stage", 2))
    faces = [argv[argv.index("--faces") + 1] for argv in (steps["calibration and slider figures"],
                                                           steps["leakage floor"])]
    assert faces == [release.REPORT_FACES] * 2 and int(release.REPORT_FACES) > 64
