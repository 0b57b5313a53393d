"""Started by test_train.py under torchrun: a few DDP steps on CPU (gloo), then each rank writes the weights it holds.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py DATA OUT
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import tiny_config, train_config  # noqa: E402

from flow_model.train import Trainer  # noqa: E402


def main(data: str, out: str) -> None:
    out_dir = Path(out)
    trainer = Trainer(train_config(Path(data), out_dir, max_steps=4, limit=80,
                                   cache=str(out_dir.parent / "ddp_cache.safetensors")), tiny_config())
    trainer.run()
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(out_dir.parent / f"rank{os.environ['RANK']}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
