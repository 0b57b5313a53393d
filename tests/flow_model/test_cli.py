"""`python -m flow_model`: every command end to end on a tiny run, and bad input -> one clear line and exit code 2."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.cli_support import run_main
from tests.conftest import ROOT
from PIL import Image
from safetensors.torch import load_file, save_file

from flow_model import reduce_bits
from flow_model.glow import to_bins
from flow_model.training.checkpoint import CHECKPOINT_NAME
from flow_model.cli import main
from flow_model.data import load_images, open_dataset, random_subset
from flow_model.evaluate import bits_per_image, evaluate_bpd, mean_and_se
from flow_model.imaging import celeba_crop, load_image, to_tensor
from flow_model.training.checkpoint import load_model, model_from_run


def run_cli(capsys, *args) -> tuple[int, str, str]:
    return run_main(main, capsys, *args)


@pytest.fixture(scope="module")
def pretrained(tiny_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrained") / "model"
    assert main(["export", "--run", str(tiny_run), "--out", str(out)]) == 0
    return out


def face_files(faces_dir: Path, n: int) -> list[Path]:
    return sorted((faces_dir / "img_align_celeba").iterdir())[:n]


def test_export(tiny_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "export", "--run", tiny_run, "--out", tmp_path / "half", "--fp16", "--no-ema")
    assert code == 0 and "exported" in out
    assert sorted(p.name for p in (tmp_path / "half").iterdir()) == ["config.json", "model.safetensors", "split.json"]
    # the run's validation faces travel with it: `train --init-from` the export validates on the same ones
    assert (tmp_path / "half" / "split.json").read_text() == (tiny_run / "split.json").read_text()
    weights = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert weights["top_prior.mean"].dtype == torch.float16


def test_eval_reports_the_models_bits_per_dim(pretrained, faces_dir, capsys):
    code, out, _ = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--limit", 24, "--workers", 0,
                           "--batch-size", 8)
    assert code == 0
    match = re.search(r"([\d.]+) ± ([\d.]+) bits/dim .*24 images, 5-bit, 8x8", out)
    assert match, out
    images, _ = load_images(open_dataset(faces_dir, limit=24), 8, workers=0, progress=False)
    expected, se = evaluate_bpd(load_model(pretrained), images, batch_size=8)
    assert float(match.group(1)) == pytest.approx(expected, abs=1e-4)
    assert float(match.group(2)) == pytest.approx(se, abs=1e-4)


def test_eval_splits_the_bound_into_its_two_terms(pretrained, faces_dir, capsys):
    code, out, _ = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--limit", 24, "--workers", 0,
                           "--batch-size", 8, "--terms")
    total = float(re.search(r"([\d.]+) ± [\d.]+ bits/dim", out).group(1))
    match = re.search(r"flow E_q\[-log p\(x \+ u\)\] ([\d.]+) ± [\d.]+, dequantiser E_q\[log q\(u \| x\)\] "
                      r"(-?[\d.]+) ± [\d.]+ bits/dim", out)
    assert code == 0 and match, out
    assert float(match.group(1)) + float(match.group(2)) == pytest.approx(total, abs=2e-4)
    code, _, err = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--terms",
                           "--importance-samples", 2)
    assert code != 0 and "--terms splits a one-sample bound" in err


def test_eval_against_another_model_gives_the_paired_difference(pretrained, tiny_run, faces_dir, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["export", "--run", str(tiny_run), "--out", str(raw), "--no-ema"]) == 0
    code, out, _ = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--limit", 24, "--workers", 0,
                           "--batch-size", 8, "--against", raw)
    match = re.search(r"--against .*: ([\d.]+) ± [\d.]+ bits/dim; paired difference \(--model minus it\) "
                      r"([+-][\d.]+) ± ([\d.]+) bits/dim", out)
    assert code == 0 and match, out
    images, _ = load_images(open_dataset(faces_dir, limit=24), 8, workers=0, progress=False)
    ema, other = (bits_per_image(load_model(m), images, batch_size=8) for m in (pretrained, raw))
    difference, se = mean_and_se(ema - other)
    assert float(match.group(1)) == pytest.approx(other.mean().item(), abs=1e-4)
    assert float(match.group(2)) == pytest.approx(difference, abs=1e-4) and abs(difference) > 1e-3
    assert float(match.group(3)) == pytest.approx(se, abs=1e-4)
    assert se < mean_and_se(ema)[1] / 4  # the same images and noise: the faces' own spread cancels
    code, out, _ = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--limit", 8, "--workers", 0,
                           "--against", pretrained)
    assert code == 0 and "paired difference (--model minus it) +0.0000 ± 0.0000" in out


def test_eval_against_a_model_of_other_images_is_refused(pretrained, faces_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(pretrained, other)
    config = json.loads((other / "config.json").read_text())
    config["n_bits"] = 8
    (other / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--against", other)
    assert code != 0 and "8-bit images" in err and "nothing to pair" in err


def test_eval_on_a_runs_split(tiny_run, faces_dir, capsys):
    code, out, _ = run_cli(capsys, "eval", "--model", tiny_run, "--data", faces_dir, "--split", tiny_run / "split.json",
                           "--subset", "val", "--workers", 0)
    n_val = len(json.loads((tiny_run / "split.json").read_text())["val"])
    assert code == 0 and f"{n_val} images" in out


def test_eval_on_a_random_sample_scores_exactly_those_images(pretrained, faces_dir, capsys):
    code, out, _ = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--image-dirs",
                           "img_align_celeba", "--sample", 12, "--seed", 3, "--workers", 0, "--batch-size", 8)
    assert code == 0 and "12 images" in out
    data = open_dataset(faces_dir)
    drawn = random_subset(data, 12, 3)
    assert len(set(drawn.names())) == 12 and drawn.names() != data.names()[:12]
    assert drawn.names() == random_subset(data, 12, 3).names() != random_subset(data, 12, 4).names()
    images, _ = load_images(drawn, 8, workers=0, progress=False)
    expected, _ = evaluate_bpd(load_model(pretrained), images, batch_size=8, seed=3)
    assert float(re.search(r"([\d.]+) ± ", out).group(1)) == pytest.approx(expected, abs=1e-4)


def test_eval_of_a_splits_subset_in_chosen_folders_leaves_the_others_out_quietly(pretrained, faces_dir, tmp_path,
                                                                                 capsys, caplog):
    names = open_dataset(faces_dir).names()[:10]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": [], "train": names + ["img_align_celeba_extra/000001.jpg"]}))
    code, out, _ = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--split", split, "--subset",
                           "train", "--image-dirs", "img_align_celeba", "--workers", 0)
    assert code == 0 and "10 images" in out and "gone" not in caplog.text


def test_eval_refuses_a_sample_larger_than_the_images_and_an_unknown_folder(pretrained, faces_dir, capsys):
    code, _, err = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--limit", 8, "--sample", 9)
    assert code == 2 and "sample of 9 images asks for more than the 8" in err
    code, _, err = run_cli(capsys, "eval", "--model", pretrained, "--data", faces_dir, "--image-dirs", "nope")
    assert code == 2 and "nope not found" in err


def test_sample_at_temperature_zero(tiny_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "sample", "--model", tiny_run, "--out", tmp_path / "s.png", "--n", 4,
                           "--temperature", 0)
    assert code == 0 and "wrote 4 samples" in out
    grid = np.asarray(Image.open(tmp_path / "s.png"))
    assert grid.shape == (2 + 10, 2 + 4 * 10, 3)  # one row of four 8x8 tiles with a 2-pixel gutter
    tiles = [grid[2:10, 2 + 10 * i : 10 + 10 * i] for i in range(4)]
    assert all(np.array_equal(tiles[0], t) for t in tiles[1:]), "T=0 must give the same image every time"


@pytest.mark.parametrize("standardized", [False, True])
def test_encode_then_decode_gives_back_the_reduced_crops(pretrained, faces_dir, tmp_path, capsys, standardized):
    files = face_files(faces_dir, 3)
    flag = ["--standardized"] if standardized else []
    code, out, _ = run_cli(capsys, "encode", "--model", pretrained, "--images", *files, "--out",
                           tmp_path / "z.safetensors", *flag)
    assert code == 0 and "encoded 3 images" in out and "192 values each" in out
    code, out, _ = run_cli(capsys, "decode", "--model", pretrained, "--latents", tmp_path / "z.safetensors",
                           "--out-dir", tmp_path / "decoded")
    assert code == 0 and "decoded 3 images" in out
    for f in files:
        decoded = to_tensor(Image.open(tmp_path / "decoded" / f"{f.stem}.png"))
        assert torch.equal(decoded, reduce_bits(to_tensor(celeba_crop(load_image(f), 8)), 5)), f.name


def broken_copy(src: Path, dest: Path, name: str, content: bytes) -> Path:
    shutil.copytree(src, dest)
    (dest / name).write_bytes(content)
    return dest


BAD_CONFIGS = {
    "not_json": (b"{not json", "is not valid JSON"),
    "wrong_type": (json.dumps({"n_bits": "5"}).encode(), "n_bits must be an integer"),
    "unknown_field": (json.dumps({"levls": 2}).encode(), r"unknown field\(s\) \['levls'\]"),
}


@pytest.mark.parametrize("kind", BAD_CONFIGS)
def test_invalid_config_json(pretrained, tmp_path, capsys, kind):
    content, message = BAD_CONFIGS[kind]
    model = broken_copy(pretrained, tmp_path / "m", "config.json", content)
    code, out, err = run_cli(capsys, "sample", "--model", model, "--out", tmp_path / "s.png")
    assert code == 2 and re.search(message, err) and err.startswith("error:"), err


def test_corrupt_weights(pretrained, tmp_path, capsys):
    model = broken_copy(pretrained, tmp_path / "m", "model.safetensors", b"\x00" * 64)
    code, _, err = run_cli(capsys, "sample", "--model", model, "--out", tmp_path / "s.png")
    assert code == 2 and "cannot read weights" in err


def test_corrupt_checkpoint(tiny_run, faces_dir, tmp_path, capsys):
    run = broken_copy(tiny_run, tmp_path / "run", CHECKPOINT_NAME, b"garbage")
    for args in (["eval", "--model", run, "--data", faces_dir], ["export", "--run", run, "--out", tmp_path / "x"],
                 ["train", "--out", run, "--resume"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "is damaged or not a flow_model checkpoint" in err, (args, err)


def test_missing_paths(pretrained, tmp_path, capsys):
    cases = [
        (["eval", "--model", pretrained, "--data", tmp_path / "nodata"], "data directory not found"),
        (["sample", "--model", tmp_path / "nomodel", "--out", tmp_path / "s.png"], "not a pretrained model directory"),
        (["export", "--run", tmp_path / "norun", "--out", tmp_path / "x"], "no checkpoint at"),
        (["train", "--out", tmp_path / "norun", "--resume"], "no checkpoint at"),
        (["train", "--data", tmp_path / "nodata", "--out", tmp_path / "new"], "data directory not found"),
        (["encode", "--model", pretrained, "--images", tmp_path / "none.jpg", "--out", tmp_path / "z"],
         "no such image file"),
        (["decode", "--model", pretrained, "--latents", tmp_path / "none.safetensors", "--out-dir", tmp_path / "d"],
         "none.safetensors"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err, (args, code, err)


def test_bad_latents_and_images(pretrained, tmp_path, capsys):
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")
    save_file({"latents": torch.zeros(2, 5)}, str(tmp_path / "short.safetensors"))
    (tmp_path / "text.jpg").write_text("not an image")
    cases = [
        (["decode", "--model", pretrained, "--latents", tmp_path / "garbage.safetensors", "--out-dir", tmp_path / "d"],
         "garbage.safetensors"),
        (["decode", "--model", pretrained, "--latents", tmp_path / "short.safetensors", "--out-dir", tmp_path / "d"],
         "must have 192 values per image, got 5"),
        (["encode", "--model", pretrained, "--images", tmp_path / "text.jpg", "--out", tmp_path / "z"],
         "not an image"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err, (args, code, err)


def test_wrong_kinds_of_file(pretrained, tiny_run, faces_dir, tmp_path, capsys):
    (tmp_path / "a_dir.png").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["eval", "--model", pretrained, "--data", faces_dir, "--split", pretrained / "config.json"],
         "has no 'val' list"),
        (["sample", "--model", pretrained, "--out", tmp_path / "a_dir.png"], "a_dir.png"),
        (["export", "--run", tiny_run, "--out", tmp_path / "a_file"], "a_file"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err and err.startswith("error:"), (args, code, err)


def test_train_argument_errors(tiny_run, faces_dir, tmp_path, capsys):
    cases = [
        (["train", "--out", tmp_path / "new"], "--data is required"),
        (["train", "--data", faces_dir, "--out", tiny_run], "already holds a run"),
        (["train", "--data", faces_dir, "--out", tmp_path / "new", "--image-size", 12], "image_size must be"),
        (["train", "--data", faces_dir, "--out", tmp_path / "new", "--lr", -1], "lr must be > 0"),
        (["train", "--data", faces_dir, "--out", tmp_path / "new", "--levels", 0], "must be >= 1"),
        (["sample", "--model", tiny_run, "--out", tmp_path / "s.png", "--n", "many"], "invalid positive_int value"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err, (args, code, err)
    assert not (tmp_path / "new").exists()


def test_the_module_entry_point_exits_2_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "flow_model", "sample", "--model", str(tmp_path / "none"), "--out",
                           str(tmp_path / "s.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("error:"), done.stderr


def test_train_init_from_a_release(pretrained, tiny_run, faces_dir, tmp_path, capsys):
    """--init-from: the release's config, weights and ActNorm state, and its validation images kept as validation
    (an exported run carries its split.json)."""
    release = tmp_path / "release"
    shutil.copytree(pretrained, release)
    common = ["train", "--data", faces_dir, "--init-from", release, "--batch-size", 8, "--workers", 0,
              "--val-max", 8, "--no-progress", "--device", "cpu"]
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "same", "--max-steps", 0, "--image-size", 8)
    assert code == 0, err
    started = model_from_run(tmp_path / "same", use_ema=False)
    source = load_model(release)
    assert started.config == source.config
    for k, v in source.state_dict().items():
        assert torch.equal(started.state_dict()[k], v), k  # ActNorm's initialised flag included: no re-init
    released_val = json.loads((tiny_run / "split.json").read_text())["val"]
    split = json.loads((tmp_path / "same" / "split.json").read_text())
    assert split["val"] == sorted(released_val) and not set(split["train"]) & set(released_val)
    assert len(split["train"]) + len(split["val"]) == len(open_dataset(faces_dir))

    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "trained", "--max-steps", 2)
    assert code == 0, err
    trained = model_from_run(tmp_path / "trained", use_ema=False).state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in source.state_dict().items())

    # dropout is seen by training alone: the release's weights carry over as they are, with the new rate
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "dropout", "--max-steps", 0, "--dropout", 0.2)
    assert code == 0, err
    started = model_from_run(tmp_path / "dropout", use_ema=False)
    assert started.config == dataclasses.replace(source.config, dropout=0.2)
    assert all(torch.equal(started.state_dict()[k], v) for k, v in source.state_dict().items())

    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "bad", "--hidden", 64)
    assert code == 2 and "--init-from" in err and "hidden=8" in err and "--hidden" in err
    (release / "split.json").write_text("[1, 2]")
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "bad2")
    assert code == 2 and "cannot read a validation list" in err


def test_train_init_from_a_release_adds_a_learned_dequantiser(pretrained, faces_dir, tmp_path, capsys):
    """--init-from RELEASE --dequant variational: every weight of the uniform-noise release carries over, the fresh
    dequantiser starts as uniform noise and learns at --dequant-lr; no other architecture change is let through."""
    common = ["train", "--data", faces_dir, "--init-from", pretrained, "--batch-size", 8, "--workers", 0,
              "--val-max", 8, "--no-progress", "--device", "cpu", "--dequant", "variational"]
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "start", "--max-steps", 0)
    assert code == 0, err
    started = model_from_run(tmp_path / "start", use_ema=False)
    source = load_model(pretrained)
    assert started.config == dataclasses.replace(source.config, dequant="variational")
    for k, v in source.state_dict().items():
        assert torch.equal(started.state_dict()[k], v), k
    images, _ = load_images(open_dataset(faces_dir, limit=16), started.config.image_size, None, 0)
    bins = to_bins(images, started.config.n_bits)
    with torch.no_grad():
        _, log_q = started.dequantizer(bins, torch.Generator().manual_seed(0))
    assert abs(log_q.mean().item()) / started.config.dims < 1e-2  # uniform noise: log q = 0
    # its flow is the release's: scored with uniform noise it gives the release's figure to the last digit
    evals = [run_cli(capsys, "eval", "--model", model, "--data", faces_dir, "--limit", 16, "--workers", 0, *extra)
             for model, extra in ((pretrained, []), (tmp_path / "start", ["--uniform-noise"]))]
    assert all(code == 0 for code, _, _ in evals) and "dequant=uniform" in evals[1][1]
    assert evals[0][1].split("bits/dim")[0] == evals[1][1].split("bits/dim")[0]

    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "trained", "--max-steps", 2, "--lr", 1e-6,
                           "--dequant-lr", 1e-2, "--warmup-steps", 0)
    assert code == 0, err
    trained = model_from_run(tmp_path / "trained", use_ema=False).state_dict()
    moved = {k: (trained[k] - started.state_dict()[k]).abs().max().item() for k in trained
             if trained[k].is_floating_point()}
    assert max(v for k, v in moved.items() if k.startswith("dequantizer.")) > 1e-3
    assert max(v for k, v in moved.items() if not k.startswith("dequantizer.")) < 1e-4

    code, _, err = run_cli(capsys, "train", "--data", faces_dir, "--init-from", pretrained, "--out",
                           tmp_path / "bad", "--dequant-depth", 6)
    assert code == 2 and "dequant_depth=4" in err and "--dequant variational on a uniform-noise model" in err
