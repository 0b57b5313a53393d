"""Maximum-likelihood training of a Glow: checkpoints that resume exactly, a NaN guard, EMA, DDP."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import GlowConfig
from ..data import (EpochSampler, FaceFiles, IndexedImages, _collate, load_images, open_dataset, random_flip, select,
                   split_keeping_validation, split_names)
from ..device import PRECISIONS, cpu_has_native_bf16, resolve_device, resolve_precision
from ..evaluate import evaluate_bpd
from ..fileio import write_text
from ..glow import Glow
from ..visualize import temperature_grid
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .curves import plot_run

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss stayed non-finite); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Options of one training run; stored in the checkpoint so `--resume` continues with the same ones."""

    data: str
    out: str
    batch_size: int = 16
    optimizer: str = "adamax"
    lr: float = 1e-3
    dequant_lr: float | None = None  # the variational dequantiser's own rate (default: lr)
    dequant_weight_decay: float = 0.0  # decoupled (AdamW) weight decay of the dequantiser's conv weights, 0 = off
    warmup_steps: int = 200
    cooldown_steps: int = 0
    cooldown_start: int | None = None
    grad_clip: float = 50.0
    ema: float = 0.0
    max_steps: int | None = None
    epochs: int | None = None
    max_minutes: float | None = None
    max_train_minutes: float | None = None  # time inside training steps, summed over resumes; validation excluded
    ckpt_every: int = 200
    sample_every: int = 500
    log_every: int = 10
    val_fraction: float = 0.05
    val_max: int | None = 1000
    seed: int = 0
    workers: int = 2
    cache: str | None = None
    limit: int | None = None
    device: str = "auto"
    precision: str = "auto"
    max_bad_steps: int = 10
    init_batch: int = 256
    init_from: str | None = None
    val_split: str | None = None
    image_dirs: list[str] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.optimizer in ("adam", "adamax"), f"optimizer must be adam or adamax, got {self.optimizer!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.dequant_lr is None or self.dequant_lr > 0, f"dequant_lr must be > 0, got {self.dequant_lr}"),
            (self.dequant_weight_decay >= 0, f"dequant_weight_decay must be >= 0, got {self.dequant_weight_decay}"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.cooldown_steps >= 0, f"cooldown_steps must be >= 0, got {self.cooldown_steps}"),
            (self.cooldown_start is None or self.cooldown_start >= 0, "cooldown_start must be >= 0"),
            (self.grad_clip > 0, "grad_clip must be > 0"),
            (0.0 <= self.ema < 1.0, f"ema decay must be in [0, 1), got {self.ema}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"unknown device {self.device!r}"),
            (self.precision in PRECISIONS, f"precision must be fp32, bf16 or auto, got {self.precision!r}"),
            (self.ckpt_every >= 1 and self.sample_every >= 1 and self.log_every >= 1, "intervals must be >= 1"),
            (self.max_bad_steps >= 1, "max_bad_steps must be >= 1"),
            (self.max_steps is None or self.max_steps >= 0, "max_steps must be >= 0"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
            (self.max_train_minutes is None or self.max_train_minutes > 0, "max_train_minutes must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_stored(cls, stored: dict) -> "TrainConfig":
        """The config a checkpoint stored (plus any overrides merged in), from any version of this class.

        Checkpoints from before `precision` have none and resume in fp32, the numerics they trained with on CPU;
        their `amp` option (CUDA-only autocast of the whole forward) is gone, replaced by `precision`.
        """
        values = dict(stored)
        amp = values.pop("amp", None)
        if "precision" not in values:
            values["precision"] = "fp32"
            if amp not in (None, "none"):
                log.warning("this checkpoint was trained with --amp %s, which no longer exists; resuming with "
                            "--precision fp32 (pass --precision bf16 to run the coupling nets in bf16)", amp)
        return cls(**values)


def _distributed() -> tuple[int, int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _rows_up_to(text: str, step: int) -> list[str]:
    """Metrics lines logged at or before `step`; a line cut short by a kill is dropped too."""
    kept = []
    for line in text.splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    return kept


class Trainer:
    """Owns the model, optimiser, data order and RNGs of one run; everything needed to resume goes in its checkpoint."""

    def __init__(self, train: TrainConfig, model_config: GlowConfig | None = None, resume: bool = False) -> None:
        self.rank, self.world, local_rank = _distributed()
        self.out = Path(train.out)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        state = None
        if resume:
            state = load_checkpoint(self.checkpoint_path)
            model_config = GlowConfig.from_dict(state["meta"]["model_config"])
        if model_config is None:
            raise ValueError("a model config is needed for a new run")
        self.cfg, self.model_config = train, model_config
        self.device = resolve_device(train.device, local_rank)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(train.precision, self.device)
        self.is_main = self.rank == 0
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a kill during a checkpoint write
                stale.unlink()

        self._load_data(state)
        torch.manual_seed(train.seed)
        self.model = Glow(model_config, seed=train.seed).to(self.device)
        self.optimizer = (torch.optim.Adamax if train.optimizer == "adamax" else torch.optim.Adam)(
            self._param_groups(), lr=train.lr, foreach=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self._lr_factor(s))
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(train.ema), use_buffers=True)
            if train.ema > 0 else None
        )
        self.flip_gen = torch.Generator().manual_seed(train.seed * 7919 + self.rank)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(train.seed * 104_729 + self.rank)
        self.step = self.epoch = self.batch_in_epoch = self.bad_steps = 0
        self._signalled = False
        self.elapsed = 0.0
        if state is not None:
            self._restore(state)
        else:
            self._initialize()
        if train.cooldown_steps and train.cooldown_start is None:
            self.cfg = dataclasses.replace(train, cooldown_start=self.step)
        # After ActNorm's data-dependent init (which sees fp32 statistics), and on the trained model only: the EMA
        # copy, made above, is only ever evaluated.
        self.model.set_coupling_precision(torch.bfloat16 if self.precision == "bf16" else None)
        if self.is_main:
            log.info("precision %s (--precision %s%s)", self.precision, train.precision,
                     f"; {self._precision_reason()}" if train.precision == "auto" else "")
            if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
                log.warning("--precision bf16 on a CPU without native bf16: autocast emulates it, usually slower "
                            "than fp32")
            if self.cfg.cooldown_steps:
                end = self.cfg.cooldown_start + self.cfg.cooldown_steps
                log.info("cooldown: the learning rate falls linearly to 0 from step %d to step %d, where the run stops",
                         self.cfg.cooldown_start, end)
        self.net = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else self.model
        )

    # -- setup -------------------------------------------------------------------------------------------
    def _param_groups(self) -> list[dict]:
        """The flow's weights, and the dequantiser's at --dequant-lr if given: a dequantiser added to a trained
        flow starts from scratch while the flow only fine-tunes, so it needs a larger rate than the flow's."""
        dequantizer = list(self.model.dequantizer.parameters())
        if self.cfg.dequant_lr is None or not dequantizer:
            return [{"params": list(self.model.parameters())}]
        own = {id(p) for p in dequantizer}
        return [{"params": [p for p in self.model.parameters() if id(p) not in own]},
                {"params": dequantizer, "lr": self.cfg.dequant_lr}]

    def _decay_dequantizer(self) -> None:
        """--dequant-weight-decay: shrink the dequantiser's conv weights by lr x decay before the optimiser's step, as
        AdamW does (decoupled from the gradient, so Adamax's update is unchanged). Its networks see the image they
        dequantise and carry no other regulariser; the flow's weights are left alone. Biases, ActNorms, log-scales
        and the 1x1 convs' LU factors are not decayed."""
        if not self.cfg.dequant_weight_decay:
            return
        lr = self.optimizer.param_groups[-1]["lr"]  # the dequantiser's group: the last, or the only one
        with torch.no_grad():
            for name, p in self.model.dequantizer.named_parameters():
                if name.endswith("weight") and p.dim() > 1:
                    p.mul_(1.0 - lr * self.cfg.dequant_weight_decay)

    def _lr_factor(self, step: int) -> float:
        """Warm-up, constant, and on request a linear cooldown to 0 that ends the run.

        The constant stretch has no planned end, so a run can go on for as long as work does; a cooldown (on a copy of
        the run, to release from) anneals it when a release is due, the way warmup-stable-decay schedules do.
        """
        factor = min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))
        if self.cfg.cooldown_steps and self.cfg.cooldown_start is not None and step > self.cfg.cooldown_start:
            factor *= max(0.0, 1.0 - (step - self.cfg.cooldown_start) / self.cfg.cooldown_steps)
        return factor

    def _precision_reason(self) -> str:
        if self.device.type == "cuda":
            return f"CUDA bf16 {'supported' if self.precision == 'bf16' else 'not supported'}"
        return ("the CPU has native bf16" if self.precision == "bf16"
                else "the CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)")

    def _load_data(self, state: dict | None) -> None:
        cfg = self.cfg
        data = open_dataset(cfg.data, limit=cfg.limit, image_dirs=cfg.image_dirs)
        self.split = state["meta"]["split"] if state is not None else self._new_split(data)
        if self.is_main and state is None:
            write_text(self.out / "split.json", json.dumps(self.split))
        train_set = select(data, self.split["train"])
        val_set = select(data, self.split["val"][: cfg.val_max] if cfg.val_max else self.split["val"])
        size = self.model_config.image_size
        if cfg.cache:
            if self.is_main:
                load_images(train_set, size, cfg.cache, cfg.workers, progress=cfg.progress)
            if self.world > 1:
                dist.barrier()
            images, train_set = load_images(train_set, size, cfg.cache, cfg.workers, progress=False)
            dataset, workers = IndexedImages(images), 0
        else:
            dataset, workers = FaceFiles(train_set.files, size), cfg.workers
        self.val_images, _ = load_images(val_set, size, None, cfg.workers, progress=False)
        self.sampler = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, self.rank, self.world)
        if self.sampler.batches_per_epoch() == 0:
            raise ValueError(f"{len(dataset)} training images are fewer than one batch of {cfg.batch_size} per rank")
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=workers, collate_fn=_collate,
                                 generator=torch.Generator(), persistent_workers=False)
        self.train_dataset = dataset
        self.n_train = len(dataset)

    def _new_split(self, data) -> dict[str, list[str]]:
        """A given validation list (--val-split, or the split.json of --init-from's release), else a fresh split."""
        cfg = self.cfg
        source = cfg.val_split
        if source is None and cfg.init_from and (Path(cfg.init_from) / "split.json").is_file():
            source = str(Path(cfg.init_from) / "split.json")
        if source is None:
            return split_names(data, cfg.val_fraction, cfg.seed)
        try:
            stored = json.loads(Path(source).read_text())
            val = stored["val"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot read a validation list from {source}: {err!r}") from None
        if self.is_main:
            log.info("validation: the %d images listed in %s; every other image trains", len(val), source)
        return split_keeping_validation(data, val)

    def _initialize(self) -> None:
        if self.cfg.init_from:
            source = Glow.from_pretrained(self.cfg.init_from)
            if source.config.same_weights(self.model_config):
                self.model.load_weights(source.state_dict(), source=self.cfg.init_from)
            elif source.config.adds_dequantizer(self.model_config):
                self.model.load_weights({**self.model.state_dict(), **source.state_dict()}, source=self.cfg.init_from)
                self._initialize_actnorms()  # only the new dequantiser's are still uninitialised
            else:
                raise ValueError(f"--init-from {self.cfg.init_from} has a different architecture than this run")
        else:
            self._initialize_actnorms()
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())

    def _initialize_actnorms(self) -> None:
        """Data-dependent init of every ActNorm not yet initialised, from a seeded batch of training images."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        take = torch.randperm(self.n_train, generator=g)[: self.cfg.init_batch].tolist()
        _, batch, _ = _collate([self.train_dataset[i] for i in take])
        self.model.train()
        self.model.initialize(batch.to(self.device))

    def _restore(self, state: dict) -> None:
        meta = state["meta"]
        self.model.load_weights(state["model"], source=str(self.checkpoint_path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(meta["scheduler"])
        if self.ema is not None:
            if state["ema"] is None:
                self.ema.module.load_state_dict(self.model.state_dict())
            else:
                self.ema.module.load_weights(state["ema"], source="EMA weights")
                self.ema.n_averaged.fill_(meta.get("ema_n_averaged", 1))
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        self.bad_steps, self.elapsed = meta.get("bad_steps", 0), meta.get("elapsed", 0.0)
        metrics = self.out / "metrics.jsonl"
        if self.is_main and metrics.exists():  # drop rows a killed run logged after its last checkpoint
            write_text(metrics, "".join(line + "\n" for line in _rows_up_to(metrics.read_text(), self.step)))
        rng = state["rng"]
        if self.rank == 0:
            torch.set_rng_state(rng["torch"])
            self.flip_gen.set_state(rng["flip"])
            self.noise_gen.set_state(rng["noise"].to(self.noise_gen.get_state().device))
        else:  # only rank 0's streams are saved; other ranks restart theirs from the step
            self.flip_gen.manual_seed(self.cfg.seed * 7919 + self.rank + 1_000_003 * self.step)
            self.noise_gen.manual_seed(self.cfg.seed * 104_729 + self.rank + 1_000_003 * self.step)

    # -- one step ------------------------------------------------------------------------------------
    def train_step(self, batch: torch.Tensor) -> dict:
        """One optimiser step; a non-finite loss or gradient skips the update instead of poisoning the weights."""
        self.model.train()
        x = random_flip(batch, self.flip_gen).to(self.device, non_blocking=True)
        bpd = self.net(x, generator=self.noise_gen)  # with --precision bf16 the coupling nets autocast (Glow)
        loss = bpd.mean()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        ok = torch.stack([loss.detach(), grad_norm.detach()]).isfinite().all().float()
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        finite = bool(ok.item())
        if finite:
            self._decay_dequantizer()
            self.optimizer.step()
            self.bad_steps = 0
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        else:
            self.bad_steps += 1
            log.warning("step %d: non-finite loss (%s) or gradient norm (%s); update skipped (%d in a row)",
                        self.step + 1, loss.item(), grad_norm.item(), self.bad_steps)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        row = {"step": self.step, "train_bpd": loss.item(), "grad_norm": grad_norm.item(),
               "lr": self.scheduler.get_last_lr()[0], "skipped": not finite}
        if self.bad_steps >= self.cfg.max_bad_steps:
            self._log({**row, "epoch": self.epoch})
            raise TrainingError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient; stopping at step {self.step}. "
                f"The last good checkpoint is {self.checkpoint_path}. Try a lower --lr or --grad-clip."
            )
        return row

    # -- outputs -------------------------------------------------------------------------------------
    @property
    def eval_model(self) -> Glow:
        return self.ema.module if self.ema is not None else self.model

    def describe(self) -> str:
        c = self.model_config
        return f"{c.n_bits}-bit {c.image_size}x{c.image_size}"

    def validate(self) -> dict:
        mean, se = evaluate_bpd(self.eval_model, self.val_images, batch_size=64, seed=self.cfg.seed)
        return {"step": self.step, "epoch": self.epoch, "val_bpd": mean, "val_bpd_se": se,
                "n_bits": self.model_config.n_bits, "image_size": self.model_config.image_size}

    def save(self) -> None:
        if not self.is_main:
            return
        meta = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "bad_steps": self.bad_steps, "elapsed": self.elapsed, "precision": self.precision,
            "model_config": self.model_config.to_dict(), "train_config": dataclasses.asdict(self.cfg),
            "scheduler": self.scheduler.state_dict(), "split": self.split,
            "ema_n_averaged": int(self.ema.n_averaged.item()) if self.ema is not None else 0,
        }
        rng = {"torch": torch.get_rng_state(), "flip": self.flip_gen.get_state(), "noise": self.noise_gen.get_state()}
        save_checkpoint(self.checkpoint_path, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                        rng=rng, meta=meta, ema=self.ema.module.state_dict() if self.ema is not None else None)

    def _log(self, row: dict) -> None:
        if self.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def _figures(self) -> None:
        if not self.is_main:
            return
        title = f"{self.describe()}, step {self.step}"
        temperature_grid(self.eval_model, self.out / "samples.png", title=title)
        (self.out / "samples").mkdir(exist_ok=True)
        temperature_grid(self.eval_model, self.out / "samples" / f"step_{self.step:07d}.png", title=title)
        if (self.out / "metrics.jsonl").exists():
            plot_run(self.out / "metrics.jsonl", self.out / "bpd.png", title=f"Glow, {self.describe()}")

    # -- the loop ------------------------------------------------------------------------------------
    def _done(self, started: float) -> str | None:
        cfg = self.cfg
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.epochs is not None and self.epoch >= cfg.epochs:
            return "epochs"
        if cfg.cooldown_steps and self.step >= cfg.cooldown_start + cfg.cooldown_steps:
            return "cooldown"
        stop = 0
        if self._signalled:
            stop = 2
        elif cfg.max_minutes is not None and (time.time() - started) / 60 >= cfg.max_minutes:
            stop = 1
        elif cfg.max_train_minutes is not None and self.elapsed >= cfg.max_train_minutes * 60:
            stop = 3
        if self.world > 1:
            # rank 0 decides for every rank: ranks stopping at different steps deadlock in the next collective
            flag = torch.tensor(float(stop), device=self.device)
            dist.broadcast(flag, src=0)
            stop = int(flag.item())
        return {0: None, 1: "max_minutes", 2: "signal", 3: "max_train_minutes"}[stop]

    def _request_stop(self, signum: int, _frame) -> None:
        log.warning("received signal %d: finishing this step, then writing a checkpoint", signum)
        self._signalled = True

    def run(self) -> dict:
        """Train until a limit is reached; always leaves a final checkpoint. Returns the last validation row."""
        cfg = self.cfg
        started, last_val = time.time(), {}
        handlers = {}
        if threading.current_thread() is threading.main_thread():  # SIGTERM/SIGINT end cleanly with a checkpoint
            handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        reason = self._done(started)
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.is_main),
                   desc=f"train ({self.describe()})", unit="step")
        try:
            while reason is None:
                self.sampler.set_position(self.epoch, self.batch_in_epoch)
                tick = window = time.time()
                seen = 0
                for _, batch, _ in self.loader:
                    if batch is None:
                        self.batch_in_epoch += 1
                        continue
                    row = self.train_step(batch)
                    self.batch_in_epoch += 1
                    seen += batch.shape[0] * self.world
                    now = time.time()
                    self.elapsed += now - tick
                    tick = now
                    if self.step % cfg.log_every == 0 or row["skipped"]:
                        row.update(epoch=self.epoch, img_per_s=seen / max(now - window, 1e-9), minutes=self.elapsed / 60)
                        self._log(row)
                        window, seen = now, 0
                    bar.update(1)
                    bar.set_postfix(bpd=f"{row['train_bpd']:.3f}", epoch=self.epoch)
                    if self.step % cfg.ckpt_every == 0:
                        self.save()
                    if self.step % cfg.sample_every == 0:
                        self._figures()
                    reason = self._done(started)
                    if reason is not None:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if self.is_main:
                        last_val = self.validate()
                        self._log(last_val)
                        log.info("epoch %d: validation %.4f ± %.4f bits/dim (%s)", self.epoch, last_val["val_bpd"],
                                 last_val["val_bpd_se"], self.describe())
                    reason = self._done(started)
        finally:
            bar.close()
            self.save()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        if reason == "signal":  # whoever sent it may not wait for a validation pass
            return last_val
        if self.is_main:
            last_val = self.validate()
            self._log({**last_val, "final": True, "reason": reason})
            self._figures()
        if self.world > 1:
            dist.barrier()
        return last_val
