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
MARGIN = 0.02  # fraction of the crop side, inside its border, where the mask is already zero
UPSAMPLERS = ("guided", "bicubic")
MASK_SIDE = 256  # the feathered mask is smooth: this resolution of it is plenty for any crop


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


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 1, H, W), Rec. 601 weights."""
    return 0.299 * rgb[..., :1, :, :] + 0.587 * rgb[..., 1:2, :, :] + 0.114 * rgb[..., 2:, :, :]


def change_coefficients(change: torch.Tensor, guide: torch.Tensor, method: str = "guided", radius: int = 1,
                        eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per model pixel, the change as a linear function of the guide's luminance: change ~ a * luma + b.

    "guided" fits a and b by a guided filter at model resolution (the fast guided upsampling of He & Sun, 2015),
    with the (3, H, W) guide in [0, 1] reduced to the change's size; "bicubic" is a = 0, b = change, the plain
    upsampling it is compared with in docs/photo_edits.md.
    """
    if method not in UPSAMPLERS:
        raise ValueError(f"unknown upsampling {method!r}; valid: {', '.join(UPSAMPLERS)}")
    if method == "bicubic":
        return torch.zeros_like(change), change
    low = F.interpolate(luminance(guide)[None], size=change.shape[-2:], mode="area")
    p = change[:, None]  # (3, 1, h, w): one filter per colour channel, the luminance as guide for each
    mean_i, mean_p = _box_mean(low, radius), _box_mean(p, radius)
    cov = _box_mean(low * p, radius) - mean_i * mean_p
    var = _box_mean(low * low, radius) - mean_i**2
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return _box_mean(a, radius)[:, 0], _box_mean(b, radius)[:, 0]


def upsample_change(change: torch.Tensor, guide: torch.Tensor, method: str = "guided",
                    eps: float = 1e-3) -> torch.Tensor:
    """(3, h, w) change at model resolution -> (3, H, W) at the guide's resolution.

    Guided: the coefficients a, b are upsampled smoothly and applied to the full-resolution luminance, so where the
    photo has an edge inside one model pixel (a lip line, a hair boundary) the change follows the edge instead of
    spreading across it as a soft halo. `guide` is the (3, H, W) crop in [0, 1].
    """
    size = guide.shape[-2:]
    if method == "bicubic":
        return F.interpolate(change[None], size=size, mode="bicubic", align_corners=False)[0]
    a, b = change_coefficients(change, guide, method, eps=eps)
    up = F.interpolate(torch.cat([a, b])[None], size=size, mode="bilinear", align_corners=False)[0]
    return up[:3] * luminance(guide) + up[3:]


def feather_mask(side: int, feather: float = FEATHER, margin: float = MARGIN) -> torch.Tensor:
    """(side, side) weights: 1 inside, a raised-cosine fade to exactly 0 a small margin inside the crop border.

    The margin keeps the paste-back's coarse warp (which blurs the mask by a fraction of a model pixel) from
    reaching past the crop, so no pixel outside it ever changes."""
    ramp, inset = max(1.0, feather * side), margin * side
    pos = torch.arange(side, dtype=torch.float32) + 0.5
    edge = (torch.minimum(pos, side - pos) - inset) / ramp
    w = 0.5 - 0.5 * torch.cos(torch.pi * edge.clamp(0, 1))
    return w[:, None] * w[None, :]


def edited_photo(face: FacePhoto, change: torch.Tensor | None, method: str = "guided") -> Image.Image:
    """The whole photo at its own resolution with the model's change pasted back under the feathered mask."""
    if method not in UPSAMPLERS:
        raise ValueError(f"unknown upsampling {method!r}; valid: {', '.join(UPSAMPLERS)}")
    if face.photo is None:
        return to_image(compose(face.crop, change, method))
    if change is None:
        return face.photo.copy()
    a, b = change_coefficients(change, face.crop / 255.0, method)
    return paste_back(face.photo, face.matrix, a, b, feather_mask(MASK_SIDE), face.side)


def paste_back(photo: Image.Image, matrix: np.ndarray, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
               side: int) -> Image.Image:
    """photo + (a * luminance + b) under the mask, where a, b (3, h, w) and the mask (m, m) cover the side x side
    crop that `matrix` maps photo pixels to.

    The change is applied with the photo's own luminance as the guide, at the photo's full resolution (which may
    exceed the crop's). a, b and the mask are smooth, so they are warped into the photo on a grid a few times
    coarser than its pixels and then enlarged bilinearly: the warp costs little even for a 12-megapixel photo.
    Only the region the crop covers is touched; every pixel where the warped mask is 0 keeps its original byte.
    """
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    left, top = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    right, bottom = np.minimum(np.ceil(corners.max(0)).astype(int), photo.size)
    out = photo.copy()
    if right <= left or bottom <= top:
        return out
    rw, rh = int(right - left), int(bottom - top)
    photo_per_map_pixel = side / a.shape[-1] / float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    step = max(1, int(photo_per_map_pixel // 4))  # >= 4 samples per model pixel on the coarse grid
    lw, lh = -(-rw // step), -(-rh // step)
    ew, eh = lw * step, lh * step  # the region rounded up to whole coarse cells
    centre = np.array([left + ew / 2, top + eh / 2])
    theta = np.empty((2, 3))  # normalised region coordinates -> normalised crop coordinates
    theta[:, 0] = matrix[:, 0] * ew / side
    theta[:, 1] = matrix[:, 1] * eh / side
    theta[:, 2] = 2 / side * (matrix[:, :2] @ centre + matrix[:, 2]) - 1
    grid = F.affine_grid(torch.from_numpy(theta)[None].float(), [1, 1, lh, lw], align_corners=False)
    ab = F.grid_sample(torch.cat([a, b])[None].float(), grid, mode="bilinear", padding_mode="zeros",
                       align_corners=False)
    weight = F.grid_sample(mask[None, None].float(), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False).clamp_(0, 1)
    fine = F.interpolate(ab * weight, size=(eh, ew), mode="bilinear", align_corners=False)[0, :, :rh, :rw]
    pixels_ = np.array(photo.crop((int(left), int(top), int(right), int(bottom))))
    region = torch.from_numpy(pixels_).permute(2, 0, 1).float()
    luma = luminance(region).div_(255.0)
    delta = fine[:3].mul_(luma).add_(fine[3:])  # the mask is folded into a and b on the coarse grid
    edited = region.add_(delta).round_().clamp_(0, 255)
    out.paste(Image.fromarray(edited.to(torch.uint8).permute(1, 2, 0).numpy()), (int(left), int(top)))
    return out
