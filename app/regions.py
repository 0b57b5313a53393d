"""Where on the aligned face a local attribute lives, as a soft mask in the model's frame.

A latent edit changes the whole decoded face: a smile edit also moves the eyes, the hair and the face's apparent
age and gender a little. Faces reach the model aligned to one landmark template (app/align.py), so the eyes, the
mouth and the forehead sit at the same place in every crop, and an edit of an attribute that lives in one part of
the face can be kept there: the edited decode inside the region, the reconstruction outside, blended over a soft
edge. Calibration decides per slider whether that leaks less at the same flip rate (app/edit_evaluation.py).
"""
from __future__ import annotations

import functools
from typing import Iterable

import torch

from .align import TEMPLATE

EDGE = 0.12  # width of a region's soft edge, as a fraction of the crop side: the mask is exactly 0 beyond its half

_EYES_Y = float(TEMPLATE[:2, 1].mean())
_EYE_GAP = float(TEMPLATE[1, 0] - TEMPLATE[0, 0])
_MOUTH_Y = float(TEMPLATE[3:, 1].mean())
_FACE_X = (float(TEMPLATE[0, 0]) - 1.05 * _EYE_GAP, float(TEMPLATE[1, 0]) + 1.05 * _EYE_GAP)
_BELOW = 1 + EDGE  # past the crop's bottom edge, so the region's soft edge lies outside the crop

# (left, right, top, bottom) as fractions of the crop side, measured off the template's landmarks
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "eyes": (*_FACE_X, _EYES_Y - 0.62 * _EYE_GAP, _EYES_Y + 0.62 * _EYE_GAP),
    "mouth": (float(TEMPLATE[3, 0]) - 0.73 * _EYE_GAP, float(TEMPLATE[4, 0]) + 0.73 * _EYE_GAP,
              _MOUTH_Y - 0.78 * _EYE_GAP, _MOUTH_Y + 0.6 * _EYE_GAP),
    "lower face": (*_FACE_X, _MOUTH_Y - 0.78 * _EYE_GAP, _BELOW),
    "forehead": (*_FACE_X, -EDGE, _EYES_Y - 0.13 * _EYE_GAP),
}


def _ramp(position: torch.Tensor, edge: float) -> torch.Tensor:
    """0 before edge - EDGE/2, 1 after edge + EDGE/2, a smoothstep between."""
    t = ((position - edge) / EDGE + 0.5).clamp(0, 1)
    return t * t * (3 - 2 * t)


@functools.lru_cache(maxsize=32)
def region_mask(name: str, size: int) -> torch.Tensor:
    """The (size, size) float32 mask of a named region: 1 inside, 0 outside, smooth in between. Cached: callers
    must not write into it."""
    if name not in REGIONS:
        raise ValueError(f"unknown face region {name!r}; valid: {sorted(REGIONS)}")
    if size < 1:
        raise ValueError(f"a mask needs a positive size, got {size}")
    left, right, top, bottom = REGIONS[name]
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    across = _ramp(centres, left) * _ramp(-centres, -right)
    down = _ramp(centres, top) * _ramp(-centres, -bottom)
    return (down[:, None] * across[None, :]).float()


def union_mask(regions: Iterable[str | None], size: int) -> torch.Tensor | None:
    """Where a set of edits may change the face: the pointwise largest of their regions' masks, or None (the whole
    face) when any of them has no region or there are none."""
    regions = list(regions)
    if not regions or any(r is None for r in regions):
        return None
    return torch.stack([region_mask(r, size) for r in regions]).amax(0)


def composite(base: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The edit kept to `mask`: base + mask x (edited - base), over images (..., C, S, S); edited itself without a
    mask."""
    if mask is None:
        return edited
    return base + mask.to(edited.dtype) * (edited - base)
