"""--precision: bf16 coupling nets with fp32 flow, log-determinants, priors and loss; auto; old checkpoints resume."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from tests.conftest import nontrivial_model, random_images, tiny_config, train_config

import flow_model.glow as glow_module
from flow_model.cli import main
from flow_model.device import cpu_flags, cpu_has_native_bf16, resolve_precision
from flow_model.layers.coupling import NetPrecision
from flow_model.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from flow_model.training.trainer import Trainer, TrainConfig

CPU = torch.device("cpu")
NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def bpd_of(model, images, seed: int = 3) -> torch.Tensor:
    return model.bits_per_dim(images, generator=torch.Generator().manual_seed(seed))


def test_auto_takes_bf16_only_where_the_cpu_flags_have_it():
    assert resolve_precision("auto", CPU, cpuinfo=NO_BF16) == "fp32"
    assert resolve_precision("auto", CPU, cpuinfo=AMX) == "bf16"
    assert resolve_precision("auto", CPU, cpuinfo="flags : avx512_bf16\n") == "bf16"
    assert resolve_precision("auto", CPU, cpuinfo="") == "fp32"  # no cpuinfo at all (not Linux)
    assert not cpu_has_native_bf16(NO_BF16) and cpu_has_native_bf16(AMX)
    assert "avx512_bf16" not in cpu_flags("model name : avx512_bf16 lookalike\n")  # only the flags line counts
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(explicit, CPU, cpuinfo=NO_BF16) == explicit


def test_invalid_precision_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or auto, got 'half'"):
        TrainConfig(data="d", out="o", precision="half")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--precision", "fp16"])
    assert exit_.value.code == 2
    assert "--precision: invalid choice: 'fp16'" in capsys.readouterr().err


def test_bf16_bits_per_dim_match_fp32_and_the_state_dict_is_unchanged():
    model = nontrivial_model(tiny_config())
    images = random_images(8, model.config, seed=5)
    keys = list(model.state_dict())
    model.train()
    with torch.no_grad():
        fp32 = bpd_of(model, images)
        model.set_coupling_precision(torch.bfloat16)
        assert model.coupling_precision == torch.bfloat16
        bf16 = bpd_of(model, images)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(bf16, fp32), "the coupling nets did not run in bf16"
    assert (bf16 - fp32).abs().max() < 0.05, (bf16 - fp32).abs().max()
    assert list(model.state_dict()) == keys  # a runtime setting: nothing to save, nothing to load

    # eval-mode forwards and decoding ignore it: encode/decode and their bits/dim are exactly fp32's
    model.eval()
    with torch.no_grad():
        latents, bpd_bf16_set = model.encode_with_bpd(images)
        model.set_coupling_precision(None)
        _, bpd_plain = model.encode_with_bpd(images)
        assert torch.equal(bpd_bf16_set, bpd_plain)
        model.set_coupling_precision(torch.bfloat16)
        assert torch.equal(model.decode(latents), glow_module.reduce_bits(images, model.config.n_bits))


@pytest.mark.parametrize("coupling", ["affine", "additive", "mixlogistic"])
def test_under_bf16_only_the_coupling_nets_leave_float32(monkeypatch, coupling):
    model = nontrivial_model(tiny_config(coupling=coupling, mixture_components=2))
    model.train()
    model.set_coupling_precision(torch.bfloat16)
    seen: dict[str, set] = {"net": set(), "logdet": set(), "layer_out": set(), "prior": set()}
    hooks = []
    for module in model.modules():
        if isinstance(module, NetPrecision):
            hooks.append(module.net.register_forward_hook(lambda m, i, out: seen["net"].add(out.dtype)))
        if hasattr(module, "inverse") and not isinstance(module, torch.nn.ModuleList):
            def record(m, i, out):
                if isinstance(out, tuple) and len(out) == 2 and out[1].dim() == 1:
                    seen["layer_out"].add(out[0].dtype)
                    seen["logdet"].add(out[1].dtype)
            hooks.append(module.register_forward_hook(record))
    prior = glow_module.gaussian_log_prob

    def checked_prior(eps, log_std):
        value = prior(eps, log_std)
        seen["prior"].update({eps.dtype, log_std.dtype, value.dtype})
        return value

    monkeypatch.setattr(glow_module, "gaussian_log_prob", checked_prior)
    bpd = bpd_of(model, random_images(4, model.config))
    bpd.mean().backward()
    for h in hooks:
        h.remove()
    assert seen["net"] == {torch.bfloat16}
    assert seen["logdet"] == seen["layer_out"] == seen["prior"] == {torch.float32}
    assert bpd.dtype == torch.float32
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in model.parameters())


def test_a_bf16_training_step_has_a_finite_loss(faces_dir, tmp_path):
    trainer = Trainer(train_config(faces_dir, tmp_path / "run", limit=48, precision="bf16"), tiny_config())
    assert trainer.precision == "bf16" and trainer.model.coupling_precision == torch.bfloat16
    _, batch, _ = next(iter(trainer.loader))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    row = trainer.train_step(batch)
    assert math.isfinite(row["train_bpd"]) and math.isfinite(row["grad_norm"]) and not row["skipped"]
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_auto_logs_what_it_picked(faces_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="flow_model.training.trainer"):
        trainer = Trainer(train_config(faces_dir, tmp_path / "run", limit=48, precision="auto"), tiny_config())
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert trainer.precision == expected
    assert f"precision {expected} (--precision auto; the CPU has" in caplog.text


def test_a_checkpoint_from_before_precision_resumes(faces_dir, tmp_path, caplog):
    out = tmp_path / "run"
    Trainer(train_config(faces_dir, out, limit=48, max_steps=1), tiny_config()).save()
    path = out / CHECKPOINT_NAME
    state = load_checkpoint(path)
    meta = state["meta"]
    del meta["train_config"]["precision"]
    meta["train_config"]["amp"] = "bf16"  # what the removed --amp option stored
    save_checkpoint(path, model=state["model"], optimizer=state["optimizer"], rng=state["rng"], meta=meta,
                    ema=state["ema"])

    with caplog.at_level(logging.WARNING):
        config = TrainConfig.from_stored(load_checkpoint(path)["meta"]["train_config"])
    assert config.precision == "fp32" and "--amp bf16, which no longer exists" in caplog.text
    assert TrainConfig.from_stored({**meta["train_config"], "precision": "bf16"}).precision == "bf16"

    assert main(["train", "--out", str(out), "--resume", "--max-steps", "1", "--no-progress"]) == 0
    resumed = load_checkpoint(path)["meta"]
    assert resumed["step"] == 1 and resumed["train_config"]["precision"] == "fp32"
    assert "amp" not in resumed["train_config"]
