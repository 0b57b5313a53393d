"""Edits at the photo's own resolution: the model sees a 64x64 face, the user gets their own photo back.

The aligned face is cut out at the photo's own resolution (capped) beside the model's input. An edit is the model's
*change*, decode(z_edited) - decode(z), taken before rounding to n bits, upsampled onto that crop; everything the
edit leaves alone keeps the photo's pixels. The change is then warped back through the inverse of the alignment
and added to the photo under a feathered mask, so pixels outside the mask keep their original bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


MAX_CROP_SIDE = 1024  # beyond this the model's 64x64 change carries nothing more, and memory would grow
MIN_CROP_SIDE = 256  # faces smaller than this in the photo are upscaled: the display is never below it
FEATHER = 0.1  # fraction of the crop side over which the paste-back mask fades to zero at the crop border
UPSAMPLERS = ("guided", "bicubic")


@dataclass
class FacePhoto:
    """A face's photo and where the face sits in it: what an edit is pasted back into.

    `crop` is the aligned face at the photo's own resolution (float pixels, so it composes with a change without
    rounding twice); `view` the same crop at display size, kept so a slider move never touches the large one.
    """

    photo: Image.Image | None  # the whole upright photo; None for a ready-made model crop (nothing behind it)
    matrix: np.ndarray | None  # (2, 3): photo pixels -> crop pixels
    crop: torch.Tensor  # (3, S, S) float32 in [0, 255]
    view: torch.Tensor  # (3, V, V) float32 in [0, 255]

    @classmethod
    def from_crop(cls, crop: Image.Image, display_size: int, photo: Image.Image | None = None,
                  matrix: np.ndarray | None = None) -> "FacePhoto":
        view = crop if crop.size == (display_size, display_size) else crop.resize(
            (display_size, display_size), Image.Resampling.LANCZOS)
        return cls(photo, matrix, pixels(crop), pixels(view))

    @property
    def side(self) -> int:
        return self.crop.shape[-1]


def pixels(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 255]."""
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1).contiguous()


def to_image(x: torch.Tensor) -> Image.Image:
    """(3, H, W) float pixels -> RGB PIL image, rounded and clipped to bytes."""
    return Image.fromarray(x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


def compose(base: torch.Tensor, change: torch.Tensor | None, method: str = "guided") -> torch.Tensor:
    """base (3, S, S) float pixels + the model's (3, s, s) change upsampled onto it, guided by base itself."""
    if change is None:
        return base
    return base + upsample_change(change, base / 255.0, method)


def crop_side(unit_matrix: np.ndarray) -> int:
    """The face crop's side in photo pixels (its own resolution), clamped to [MIN_CROP_SIDE, MAX_CROP_SIDE]."""
    scale = float(np.sqrt(abs(np.linalg.det(unit_matrix[:, :2]))))  # unit crop per photo pixel
    return int(np.clip(round(1.0 / scale), MIN_CROP_SIDE, MAX_CROP_SIDE))


def _box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, [radius] * 4, mode="replicate"), 2 * radius + 1, stride=1)


def upsample_change(change: torch.Tensor, guide: torch.Tensor, method: str = "guided", radius: int = 1,
                    eps: float = 1e-3) -> torch.Tensor:
    """(3, h, w) change at model resolution -> (3, H, W) at the guide's resolution.

    "guided" is the fast guided upsampling of He & Sun (2015): per model pixel, the change is fitted as a linear
    function of the guide's luminance there (a guided filter at low resolution), and those coefficients, upsampled
    smoothly, are applied to the full-resolution luminance. So where the photo has an edge inside one model pixel
    (a lip line, a hair boundary), the change follows the edge instead of spreading across it as a soft halo.
    `guide` is the (3, H, W) crop in [0, 1]. docs/photo_edits.md compares the two on real photos.
    """
    if method not in UPSAMPLERS:
        raise ValueError(f"unknown upsampling {method!r}; valid: {', '.join(UPSAMPLERS)}")
    size = guide.shape[-2:]
    if method == "bicubic":
        return F.interpolate(change[None], size=size, mode="bicubic", align_corners=False)[0]
    luma = (0.299 * guide[0] + 0.587 * guide[1] + 0.114 * guide[2])[None, None]
    low = F.interpolate(luma, size=change.shape[-2:], mode="area")
    p = change[:, None]  # (3, 1, h, w): one filter per colour channel, the luminance as guide for each
    mean_i, mean_p = _box_mean(low, radius), _box_mean(p, radius)
    cov = _box_mean(low * p, radius) - mean_i * mean_p
    var = _box_mean(low * low, radius) - mean_i**2
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    a, b = _box_mean(a, radius), _box_mean(b, radius)
    a_up = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    b_up = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return (a_up * luma + b_up)[:, 0]


def feather_mask(side: int, feather: float = FEATHER) -> torch.Tensor:
    """(side, side) weights: 1 inside, a raised-cosine fade to exactly 0 at the crop border."""
    ramp = max(1.0, feather * side)
    pos = torch.arange(side, dtype=torch.float32) + 0.5
    edge = torch.minimum(pos, side - pos) / ramp
    w = 0.5 - 0.5 * torch.cos(torch.pi * edge.clamp(0, 1))
    return w[:, None] * w[None, :]


def edited_photo(face: FacePhoto, change: torch.Tensor | None, method: str = "guided") -> Image.Image:
    """The whole photo at its own resolution with the model's change pasted back under the feathered mask."""
    if face.photo is None:
        return to_image(compose(face.crop, change, method))
    if change is None:
        return face.photo.copy()
    change_hr = upsample_change(change, face.crop / 255.0, method)
    return Image.fromarray(paste_back(np.asarray(face.photo), face.matrix, change_hr, feather_mask(face.side)))


def paste_back(photo: np.ndarray, matrix: np.ndarray, change: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """photo (H, W, 3) uint8 + the (3, S, S) crop-space change, warped into the photo, under the crop-space mask.

    `matrix` maps photo pixels to crop pixels. Only the photo's region the crop covers is touched; every pixel
    where the warped mask is 0 keeps its original byte.
    """
    side = change.shape[-1]
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    h, w = photo.shape[:2]
    left, top = np.floor(corners.min(0)).astype(int)
    right, bottom = np.ceil(corners.max(0)).astype(int)
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    out = photo.copy()
    if right <= left or bottom <= top:
        return out
    rw, rh = right - left, bottom - top
    centre = np.array([left + rw / 2, top + rh / 2])
    theta = np.empty((2, 3))  # normalised region coordinates -> normalised crop coordinates
    theta[:, 0] = matrix[:, 0] * rw / side
    theta[:, 1] = matrix[:, 1] * rh / side
    theta[:, 2] = 2 / side * (matrix[:, :2] @ centre + matrix[:, 2]) - 1
    grid = F.affine_grid(torch.from_numpy(theta)[None].float(), [1, 4, rh, rw], align_corners=False)
    layers = torch.cat([change, mask[None]])[None].float()
    sampled = F.grid_sample(layers, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    weight = sampled[3].clamp(0, 1)
    region = torch.from_numpy(photo[top:bottom, left:right].copy()).permute(2, 0, 1).float()
    edited = (region + weight * sampled[:3]).round_().clamp_(0, 255)
    touched = weight > 0
    region = torch.where(touched, edited, region)
    out[top:bottom, left:right] = region.permute(1, 2, 0).to(torch.uint8).numpy()
    return out
