"""Training: it learns, it survives NaNs and SIGKILL, it resumes exactly, and DDP ranks stay in lockstep."""
from __future__ import annotations

import dataclasses

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import ROOT, tiny_config, train_config
from safetensors import safe_open
from safetensors.torch import load_file

from flow_model import Glow
from flow_model.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from flow_model.fileio import save_safetensors
from flow_model.training.checkpoint import export, load_model
from flow_model.training.trainer import Trainer, TrainConfig, TrainingError


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_lowers_validation_bpd(faces_dir, tmp_path):
    config = train_config(faces_dir, tmp_path / "run", max_steps=50, batch_size=16, ckpt_every=25, lr=3e-3,
                          cache=str(tmp_path / "cache.safetensors"), val_fraction=0.15, val_max=None)
    trainer = Trainer(config, tiny_config(image_size=16, hidden=16))
    assert trainer.n_train + len(trainer.val_images) == 240
    before = trainer.validate()["val_bpd"]
    result = trainer.run()
    assert result["val_bpd"] < before - 0.3, (before, result)  # measured: 4.80 -> 3.32
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "train_bpd" in r] == list(range(1, 51))
    assert rows[-1]["final"] and rows[-1]["reason"] == "max_steps"
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["meta"]["step"] == 50
    assert (tmp_path / "run" / "samples.png").is_file() and (tmp_path / "run" / "bpd.png").is_file()
    assert temp_files(tmp_path) == [], "checkpoint writes must rename their temp file into place"


def test_a_training_time_budget_always_takes_a_step_and_stops_once_spent(faces_dir, tmp_path):
    """A budget of step time cannot leave a run that trains nothing (the ablation's chunks once spun like that)."""
    trainer = Trainer(train_config(faces_dir, tmp_path / "run", limit=64, max_steps=None), tiny_config())
    trainer.elapsed = 100.0  # as if resumed with a microsecond of the budget left
    trainer.cfg = dataclasses.replace(trainer.cfg, max_train_minutes=(100.0 + 1e-6) / 60)
    trainer.run()
    assert trainer.step == 1 and trainer.elapsed > 100.0 + 1e-6
    assert metrics(tmp_path / "run")[-1]["reason"] == "max_train_minutes"
    trainer.run()  # spent: validates again, trains nothing
    assert trainer.step == 1


def poison_forward(model: Glow, bad_calls: set[int]) -> dict:
    """Make the model's forward return NaN bits/dim (still attached to the graph) on the given call numbers."""
    original, state = model.forward, {"calls": 0}

    def forward(x, generator=None):
        bpd = original(x, generator=generator)
        state["calls"] += 1
        return bpd * float("nan") if state["calls"] in bad_calls else bpd

    model.forward = forward
    return state


def test_a_nan_batch_is_skipped(faces_dir, tmp_path):
    trainer = Trainer(train_config(faces_dir, tmp_path / "run", limit=64), tiny_config())
    _, batch, _ = next(iter(trainer.loader))
    poison_forward(trainer.model, {1})
    before = snapshot(trainer.model)
    row = trainer.train_step(batch)
    assert row["skipped"] and math.isnan(row["train_bpd"]) and trainer.bad_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    row = trainer.train_step(batch)
    assert not row["skipped"] and math.isfinite(row["train_bpd"]) and trainer.bad_steps == 0
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in after.items()), "the good step should update the weights"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_consecutive_nan_steps_stop_training_with_finite_checkpoint(faces_dir, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(train_config(faces_dir, out, limit=64, max_steps=20, max_bad_steps=3), tiny_config())
    poison_forward(trainer.model, set(range(3, 100)))  # two good steps (and a checkpoint), then NaN forever
    with pytest.raises(TrainingError, match="3 consecutive steps"):
        trainer.run()
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["meta"]["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [r["skipped"] for r in metrics(out) if "train_bpd" in r] == [False, False, True, True, True]
    assert temp_files(tmp_path) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "weights.safetensors"
    save_safetensors({"a": torch.ones(2)}, target)
    with pytest.raises(AttributeError):
        save_safetensors({"a": torch.zeros(2), "b": "not a tensor"}, target)
    assert torch.equal(load_file(str(target))["a"], torch.ones(2))
    assert temp_files(tmp_path) == []


def test_checkpoints_refuse_non_finite_weights(faces_dir, tmp_path):
    trainer = Trainer(train_config(faces_dir, tmp_path / "run", limit=64), tiny_config())
    with torch.no_grad():
        trainer.model.top_prior.mean[0, 0, 0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="refusing to write non-finite weights"):
        trainer.save()
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists() and temp_files(tmp_path) == []


@pytest.mark.parametrize("dequant_lr", [None, 1e-2])
def test_resume_restores_weights_ema_and_optimizer_exactly(faces_dir, tmp_path, dequant_lr):
    """3 steps, stop, resume to 7 == 7 steps straight: model and EMA weights bit for bit, across an epoch end; with
    a variational dequantiser at its own learning rate, the optimiser's two groups too."""
    model = tiny_config() if dequant_lr is None else tiny_config(dequant="variational", dequant_depth=1,
                                                                  dequant_hidden=4)

    def config(out: Path, steps: int) -> TrainConfig:
        return train_config(faces_dir, out, limit=40, max_steps=steps, ema=0.9, ckpt_every=100,
                            cache=str(tmp_path / "cache.safetensors"), dequant_lr=dequant_lr)

    Trainer(config(tmp_path / "resumed", 3), model).run()
    resumed = Trainer(config(tmp_path / "resumed", 7), resume=True)
    assert resumed.step == 3 and resumed.epoch == 0
    resumed.run()
    straight = Trainer(config(tmp_path / "straight", 7), model)
    straight.run()
    rates = [[g["lr"] for g in t.optimizer.param_groups] for t in (resumed, straight)]
    assert rates[0] == rates[1] and len(rates[0]) == (1 if dequant_lr is None else 2)
    if dequant_lr is not None:
        assert rates[0][1] / rates[0][0] == pytest.approx(dequant_lr / 2e-3)
    assert resumed.epoch == straight.epoch == 1  # 36 training images: an epoch is 4 steps
    for name, a, b in [("model", resumed.model, straight.model), ("ema", resumed.ema.module, straight.ema.module)]:
        for k, v in b.state_dict().items():
            assert torch.equal(a.state_dict()[k], v), f"{name} {k}"
    assert resumed.optimizer.state_dict()["state"][0]["step"] == straight.optimizer.state_dict()["state"][0]["step"]


def test_dequant_weight_decay_shrinks_only_the_dequantisers_conv_weights_by_rate_times_decay(faces_dir, tmp_path):
    """One step with --dequant-weight-decay 50 against one without, from the same weights and batch: the
    dequantiser's conv weights differ by exactly -lr x 50 x their value before the step (decoupled: the gradient
    and Adamax's update are the same), every other weight not at all."""
    model = tiny_config(dequant="variational", dequant_depth=1, dequant_hidden=4)

    def trainer(decay: float) -> Trainer:
        return Trainer(train_config(faces_dir, tmp_path / f"decay{decay:g}", limit=40, max_steps=1, warmup_steps=1,
                                    cache=str(tmp_path / "cache.safetensors"), dequant_weight_decay=decay), model)

    plain, decayed = trainer(0.0), trainer(50.0)
    before = {k: v.clone() for k, v in decayed.model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in plain.model.state_dict().items())
    plain.run()
    decayed.run()
    shrunk = [k for k in before if k.startswith("dequantizer.") and k.endswith("weight") and before[k].dim() > 1]
    assert len(shrunk) == 6  # three in the image features, three in the one coupling's net
    after, plain_after = decayed.model.state_dict(), plain.model.state_dict()
    for k, v in before.items():
        expected = plain_after[k] - 2e-3 * 50.0 * v if k in shrunk else plain_after[k]
        assert torch.allclose(after[k], expected, atol=1e-6), k
    with pytest.raises(ValueError, match="dequant_weight_decay"):
        train_config(faces_dir, tmp_path / "bad", dequant_weight_decay=-1.0)


def test_cooldown_lowers_the_rate_linearly_to_zero_resumes_mid_decay_and_stops(faces_dir, tmp_path):
    """Constant for 4 steps; `--cooldown 4` on resume decays over steps 5-8 (surviving a stop at 6) and ends at 8."""
    from flow_model.cli import main

    out = tmp_path / "run"
    common = ["train", "--out", str(out), "--resume", "--no-progress"]
    Trainer(train_config(faces_dir, out, limit=40, warmup_steps=1, lr=1e-3), tiny_config()).run()
    assert main([*common, "--cooldown", "4", "--max-steps", "6"]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["meta"]["train_config"]["cooldown_start"] == 4
    assert main([*common, "--max-steps", "100"]) == 0  # the stored cooldown carries on from where it was
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["lr"] for r in rows] == pytest.approx([1e-3] * 4 + [7.5e-4, 5e-4, 2.5e-4, 0.0])
    final = metrics(out)[-1]
    assert final["final"] and final["reason"] == "cooldown" and final["step"] == 8
    assert load_checkpoint(out / CHECKPOINT_NAME)["meta"]["step"] == 8


def test_a_cooldown_given_again_on_resume_keeps_its_start_and_changes_its_length(faces_dir, tmp_path):
    """`--cooldown 4` from step 4, stopped at 6, resumed with `--cooldown 6`: the decay still starts at 4 and now
    reaches 0 at step 10, so a cooldown can be shortened or lengthened to fit the time left."""
    from flow_model.cli import main

    out = tmp_path / "run"
    common = ["train", "--out", str(out), "--resume", "--no-progress"]
    Trainer(train_config(faces_dir, out, limit=40, warmup_steps=1, lr=1e-3), tiny_config()).run()
    assert main([*common, "--cooldown", "4", "--max-steps", "6"]) == 0
    assert main([*common, "--cooldown", "6", "--max-steps", "100"]) == 0
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["lr"] for r in rows[4:]] == pytest.approx([7.5e-4, 5e-4] + [1e-3 * (1 - k / 6) for k in (3, 4, 5, 6)])
    assert metrics(out)[-1]["reason"] == "cooldown"


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flow_model", "train", "--data", str(data), "--out", str(out), "--image-size", "8",
            "--levels", "2", "--depth", "2", "--hidden", "8", "--batch-size", "8", "--lr", "2e-3", "--warmup-steps",
            "5", "--ckpt-every", "2", "--log-every", "1", "--sample-every", "100000", "--val-fraction", "0.1",
            "--workers", "0", "--limit", "120", "--init-batch", "32", "--no-progress", *extra]


EPOCH_STEPS = 13  # 120 images, 12 of them held out, in batches of 8


def train_rows(out: Path) -> list[dict]:
    return [r for r in metrics(out) if "train_bpd" in r]


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_sigkill_and_resume_matches_an_uninterrupted_run(faces_dir, tmp_path):
    """SIGKILL a training process once it has logged the step after its latest checkpoint s, then resume from s.

    The killed process ran uninterrupted from step 0 to s+1, so its own log row for s+1 is the reference: the
    resumed run must log the same loss for that step (same batch, noise, flips, optimiser and schedule state).
    The process is paused with SIGSTOP while the checkpoint and log are read, so the checkpoint it dies with is
    known exactly.
    """
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    checkpoint = out / CHECKPOINT_NAME
    with open(log, "wb") as stderr:  # a file, not a pipe: a full pipe would stall the run
        run = subprocess.Popen(train_command(faces_dir, out, "--max-steps", "100000"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.time() + 180
        while True:
            assert run.poll() is None, log.read_text()[-2000:]
            assert time.time() < deadline, "the run never logged a step past a checkpoint"
            if checkpoint.exists() and load_checkpoint(checkpoint)["meta"]["step"] > EPOCH_STEPS:
                run.send_signal(signal.SIGSTOP)
                while not stopped(run.pid):
                    assert run.poll() is None, log.read_text()[-2000:]
                    time.sleep(0.001)
                step = load_checkpoint(checkpoint)["meta"]["step"]
                if train_rows(out)[-1]["step"] > step:
                    break
                run.send_signal(signal.SIGCONT)
            time.sleep(0.1)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL
    assert step > EPOCH_STEPS and step % 2 == 0  # so the resume starts inside the second epoch
    before = train_rows(out)
    reference = [r for r in before if r["step"] == step + 1]
    assert len(reference) == 1

    stale = out / f".{CHECKPOINT_NAME}.killed.tmp"  # what a kill during a checkpoint write leaves behind
    stale.write_bytes(b"partial")
    resumed = subprocess.run(train_command(faces_dir, out, "--resume", "--max-steps", str(step + 1)), cwd=ROOT,
                             capture_output=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert not stale.exists()
    rows = train_rows(out)
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}), "rows logged after the checkpoint by the killed run are dropped"
    assert rows[: len(rows) - 1] == [r for r in before if r["step"] <= step]
    after = rows[-1:]
    assert [r["step"] for r in after] == [step + 1]
    assert after[0]["train_bpd"] == pytest.approx(reference[0]["train_bpd"], abs=1e-6), (step, after, reference)
    assert after[0]["train_bpd"] != next(r["train_bpd"] for r in before if r["step"] == step)
    assert load_checkpoint(out / CHECKPOINT_NAME)["meta"]["step"] == step + 1


def test_sigterm_ends_the_run_with_a_checkpoint_of_the_last_step(faces_dir, tmp_path):
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        run = subprocess.Popen(train_command(faces_dir, out, "--max-steps", "100000", "--ckpt-every", "1000"),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() or len(train_rows(out)) < 3:
            assert run.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0, log.read_text()[-2000:]
    finally:
        run.kill()
    step = load_checkpoint(out / CHECKPOINT_NAME)["meta"]["step"]
    assert step == train_rows(out)[-1]["step"] >= 3, "the checkpoint holds the last finished step, not step 0"
    assert "received signal" in log.read_text()


def test_ddp_ranks_hold_identical_weights(faces_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "tests.ddp_worker", str(faces_dir), str(out)]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=180,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("the DDP run hung: its ranks stopped at different steps")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    files = [tmp_path / f"rank{r}.safetensors" for r in range(2)]
    steps = [int(safe_open(str(f), framework="pt").metadata()["step"]) for f in files]
    ranks = [load_file(str(f)) for f in files]
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    rows = [r for r in metrics(out) if "train_bpd" in r]
    assert steps[0] == steps[1] == checkpoint["meta"]["step"] >= 1
    assert [r["step"] for r in rows] == list(range(1, steps[0] + 1)), "rank 0 alone logs, once per step"
    assert not any(r["skipped"] for r in rows) and metrics(out)[-1]["reason"] == "max_minutes"
    init = Glow(tiny_config(), seed=0).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in ranks[0].items())
    for k, v in ranks[0].items():
        assert torch.equal(v, ranks[1][k]), f"ranks disagree on {k}"
        assert torch.equal(v, checkpoint["model"][k]), f"the checkpoint differs from the ranks on {k}"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [CHECKPOINT_NAME]
    assert temp_files(tmp_path) == []


def test_export_and_load_model_use_the_ema_weights(tiny_run, tmp_path):
    state = load_checkpoint(tiny_run / CHECKPOINT_NAME)
    assert state["ema"] is not None
    assert any(not torch.equal(state["ema"][k], v) for k, v in state["model"].items() if v.is_floating_point())
    from_run = load_model(tiny_run)
    assert all(torch.equal(from_run.state_dict()[k], v) for k, v in state["ema"].items())
    raw = load_model(tiny_run, use_ema=False)
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in state["model"].items())
    export(tiny_run, tmp_path / "pretrained")
    exported = load_model(tmp_path / "pretrained")
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in state["ema"].items())
    assert not exported.training


def test_train_config_validation(tmp_path):
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(data="d", out="o", lr=0)
    with pytest.raises(ValueError, match="ema decay"):
        TrainConfig(data="d", out="o", ema=1.0)
    with pytest.raises(ValueError, match="cooldown_steps must be >= 0"):
        TrainConfig(data="d", out="o", cooldown_steps=-1)


def test_too_few_images_for_a_batch(faces_dir, tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        Trainer(train_config(faces_dir, tmp_path / "run", limit=20, batch_size=64), tiny_config())


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    from flow_model.fileio import write_text

    write_text(tmp_path / "notes.txt", "x")
    mode = (tmp_path / "notes.txt").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
