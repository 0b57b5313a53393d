"""Started by test_train.py under torchrun: DDP steps on CPU (gloo) until a 6-second limit, then each rank writes
the weights it holds and the step it stopped at.

Rank 1's clock runs ten times fast. It stands in for the skew between ranks' clocks (rank 0 alone writes
checkpoints and sample grids, so it reaches each time check later): stopping by the clock must still stop every
rank at the same step, or the ranks deadlock in their next collective.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.ddp_worker DATA OUT   (from the root)
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from safetensors.torch import save_file

import flow_model.training.trainer
from flow_model.training.trainer import Trainer
from tests.conftest import tiny_config, train_config


class FastClock:
    def __init__(self, factor: float) -> None:
        self.start, self.factor = time.time(), factor

    def time(self) -> float:
        return self.start + self.factor * (time.time() - self.start)


def main(data: str, out: str) -> None:
    out_dir, rank = Path(out), os.environ["RANK"]
    if rank == "1":
        flow_model.training.trainer.time = FastClock(10.0)
    config = train_config(Path(data), out_dir, max_steps=200, max_minutes=0.1, limit=80,
                          cache=str(out_dir.parent / "ddp_cache.safetensors"))
    trainer = Trainer(config, tiny_config())
    trainer.run()
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(out_dir.parent / f"rank{rank}.safetensors"), metadata={"step": str(trainer.step)})


if __name__ == "__main__":
    main(*sys.argv[1:3])
