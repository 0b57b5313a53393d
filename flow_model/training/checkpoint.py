"""Training checkpoints as one safetensors file: tensors for weights, optimiser and RNG state, JSON for the rest;
and models read back from them (a run directory, export to a pretrained directory, load_model for either kind).

No pickle anywhere: a checkpoint from an untrusted source can at worst fail to load. This module never imports the
trainer (nor torch.distributed), so the editor can open run directories through it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..config import GlowConfig
from ..fileio import save_safetensors, write_text
from ..glow import Glow

CHECKPOINT_NAME = "checkpoint.safetensors"


def _optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, *, model: dict[str, torch.Tensor], optimizer: dict,
                    rng: dict[str, torch.Tensor], meta: dict, ema: dict[str, torch.Tensor] | None = None) -> None:
    bad = [k for k, v in {**model, **(ema or {})}.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"refusing to write non-finite weights to {path}: {bad[:5]}")
    tensors = {f"model/{k}": v for k, v in model.items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.items()})
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors.update({f"rng/{k}": v for k, v in rng.items()})
    save_safetensors(tensors, path, metadata={"meta": json.dumps({**meta, "optimizer": optim_meta})})


def load_checkpoint(path: str | Path) -> dict:
    """-> {'model', 'ema' (or None), 'optimizer', 'rng', 'meta'}; raises ValueError on a damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path} is damaged or not a flow_model checkpoint: {err}") from None

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    ema = group("ema/")
    return {
        "model": group("model/"),
        "ema": ema or None,
        "optimizer": _optimizer_state({k: v for k, v in tensors.items() if k.startswith("optim/")}, meta.pop("optimizer")),
        "rng": group("rng/"),
        "meta": meta,
    }


def model_from_checkpoint(state: dict, use_ema: bool = True, source: str = "checkpoint") -> Glow:
    """The model of a loaded checkpoint: its EMA weights when it kept an EMA and `use_ema`, else the raw ones."""
    model = Glow(GlowConfig.from_dict(state["meta"]["model_config"]))
    model.load_weights(state["ema"] if use_ema and state["ema"] is not None else state["model"], source=source)
    return model.eval()


def model_from_run(run_dir: str | Path, use_ema: bool = True) -> Glow:
    return model_from_checkpoint(load_checkpoint(Path(run_dir) / CHECKPOINT_NAME), use_ema, source=str(run_dir))


def export(run_dir: str | Path, out: str | Path, use_ema: bool = True, half: bool = False) -> Glow:
    """Run directory -> pretrained directory (config.json + model.safetensors, and the run's split.json, so that
    `train --init-from` the export validates on the same faces as the run did)."""
    model = model_from_run(run_dir, use_ema)
    model.save_pretrained(out, dtype=torch.float16 if half else None)
    split = Path(run_dir) / "split.json"
    if split.is_file():
        write_text(Path(out) / "split.json", split.read_text())
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> Glow:
    """A pretrained directory, or a run directory (its checkpoint's EMA weights when present)."""
    path = Path(path)
    if (path / CHECKPOINT_NAME).is_file() and not (path / "model.safetensors").is_file():
        return model_from_run(path, use_ema).to(device)
    return Glow.from_pretrained(path, device)
