"""Model configuration: one dataclass, serialised to JSON next to the weights."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

COUPLINGS = ("affine", "additive", "mixlogistic")
PERMUTATIONS = ("lu", "conv", "shuffle", "reverse")
COND_NETS = ("conv", "attention")
DEQUANTS = ("uniform", "variational")
CHOICES = {"coupling": COUPLINGS, "permutation": PERMUTATIONS, "cond_net": COND_NETS, "dequant": DEQUANTS}


@dataclass
class GlowConfig:
    """Architecture of a multi-scale Glow; Flow++ pieces are selected by `coupling`, `cond_net`, `dequant`."""

    image_size: int = 64
    n_bits: int = 5
    in_channels: int = 3
    levels: int = 3
    depth: int = 16
    hidden: int = 128
    coupling: str = "affine"
    permutation: str = "lu"
    cond_net: str = "conv"
    dequant: str = "uniform"
    mixture_components: int = 8
    attention_heads: int = 4
    cond_blocks: int = 2
    dropout: float = 0.0  # in the coupling nets, training only: a release can be trained on with another
    dequant_depth: int = 4
    dequant_hidden: int = 32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"invalid GlowConfig: {message}")

        for name in INT_FIELDS:  # types first, so a "5" from hand-written JSON gets this message, not a TypeError
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
        need(isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool),
             f"dropout must be a number, got {self.dropout!r}")
        need(isinstance(self.levels, int) and self.levels >= 1, f"levels must be an integer >= 1, got {self.levels!r}")
        need(isinstance(self.depth, int) and self.depth >= 1, f"depth must be an integer >= 1, got {self.depth!r}")
        need(isinstance(self.hidden, int) and self.hidden >= 1, f"hidden must be an integer >= 1, got {self.hidden!r}")
        need(1 <= self.n_bits <= 8, f"n_bits must be in 1..8, got {self.n_bits!r}")
        need(self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels!r}")
        step = 2**self.levels
        need(
            isinstance(self.image_size, int) and self.image_size >= step and self.image_size % step == 0,
            f"image_size must be a positive multiple of 2**levels={step}, got {self.image_size!r}",
        )
        need(self.coupling in COUPLINGS, f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        need(self.permutation in PERMUTATIONS, f"permutation must be one of {PERMUTATIONS}, got {self.permutation!r}")
        need(self.cond_net in COND_NETS, f"cond_net must be one of {COND_NETS}, got {self.cond_net!r}")
        need(self.dequant in DEQUANTS, f"dequant must be one of {DEQUANTS}, got {self.dequant!r}")
        need(self.mixture_components >= 1, "mixture_components must be >= 1")
        need(self.attention_heads >= 1 and self.hidden % self.attention_heads == 0,
             f"hidden ({self.hidden}) must be divisible by attention_heads ({self.attention_heads})")
        need(self.cond_blocks >= 1, "cond_blocks must be >= 1")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        need(self.dequant_depth >= 1 and self.dequant_hidden >= 1, "dequant_depth and dequant_hidden must be >= 1")

    def adds_dequantizer(self, other: GlowConfig) -> bool:
        """Whether `other` is this flow with a learned dequantiser in place of uniform noise, so that every weight
        of this model carries over and only the dequantiser starts fresh (`train --init-from --dequant variational`)."""
        same_flow = all(getattr(self, f) == getattr(other, f) for f in FIELD_TYPES if f not in DEQUANT_FIELDS)
        return same_flow and self.dequant == "uniform" and other.dequant == "variational"

    def same_weights(self, other: GlowConfig) -> bool:
        """Whether `other` differs from this config only in what training alone sees, so every weight carries over
        as it is (`train --init-from RELEASE --dropout P`)."""
        return all(getattr(self, f) == getattr(other, f) for f in FIELD_TYPES if f not in TRAINING_ONLY_FIELDS)

    @property
    def n_bins(self) -> int:
        return 2**self.n_bits

    @property
    def dims(self) -> int:
        return self.in_channels * self.image_size**2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GlowConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"invalid GlowConfig: unknown field(s) {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GlowConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"model config not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"model config {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"model config {path} must hold a JSON object")
        return cls.from_dict(data)


FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(GlowConfig)}  # "int", "float" or "str"
INT_FIELDS = tuple(name for name, kind in FIELD_TYPES.items() if kind == "int")
MODEL_FIELDS = tuple(name for name in FIELD_TYPES if name != "in_channels")  # what the command lines set
DEQUANT_FIELDS = ("dequant", "dequant_depth", "dequant_hidden")
TRAINING_ONLY_FIELDS = ("dropout",)
