"""Reading user and dataset images robustly, and the CelebA face crop."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_FILE_BYTES = 20 * 1024 * 1024
# Declared pixels above which an image is refused before decoding (a PNG of a few KB can declare 40 megapixels and
# take 120 MB+ to decode). A JPEG above it is decoded at 1/2, 1/4 or 1/8 scale instead (libjpeg's DCT scaling, Pillow's
# draft mode), which costs memory and time for the reduced size only.
MAX_PIXELS = 16_000_000
CELEBA_CROP = 148 / 178  # side of the centred face square, as a fraction of the aligned image's width


class ImageError(ValueError):
    """An input that is not a usable image; the message says why, for the user."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha is composited on white, 16-bit and float data are rescaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _jpeg_draft(img: Image.Image, max_pixels: int) -> int:
    """Ask libjpeg to decode a JPEG above max_pixels at the smallest power-of-two reduction (1/2 .. 1/8) that fits;
    returns the reduction applied (1 = none)."""
    w, h = img.size
    scale = 1
    while w * h > max_pixels * scale * scale and scale < 8:
        scale *= 2
    if scale > 1:
        img.draft(img.mode if img.mode in ("RGB", "L") else None, (-(-w // scale), -(-h // scale)))
        scale = max(1, round(w / img.size[0]))
    return scale


def load_image(source: str | Path | bytes | Image.Image, max_bytes: int = MAX_FILE_BYTES,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a file, bytes or PIL image as upright 8-bit RGB, or raise ImageError naming the problem.

    The pixel limit is checked on the declared size, before anything is decoded; a JPEG above it is decoded at a
    reduced scale (the returned image's info["reduced"] is the factor, 2, 4 or 8) rather than refused.
    """
    reduced = 1
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"no such image file: {path}")
            if path.stat().st_size > max_bytes:
                raise ImageError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
            data = path.read_bytes()
        else:
            data = bytes(source)
            if len(data) > max_bytes:
                raise ImageError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
        if not data:
            raise ImageError("the file is empty (0 bytes): choose a photo file (JPEG, PNG, WebP, ...)")
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError("the file is not an image (or not a format Pillow can read): choose a photo file "
                             "(JPEG, PNG, WebP, BMP, GIF or TIFF)") from None
        except Image.DecompressionBombError as err:  # Pillow's own size guard fires in open(), before ours
            raise ImageError(f"the image is too large: {err}") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"the image is truncated or corrupt ({err})") from None
        if img.format == "JPEG":
            try:
                reduced = _jpeg_draft(img, max_pixels)
            except (OSError, ValueError) as err:
                raise ImageError(f"the image is truncated or corrupt ({err})") from None
    w, h = img.size
    if w * h > max_pixels:
        declared = w * h * reduced * reduced
        raise ImageError(f"the image is {w * reduced}x{h * reduced} ({declared / 1e6:.0f} megapixels); the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels: scale it down or crop it around the face")
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        out = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"the image is truncated or corrupt ({err})") from None
    if reduced > 1:
        out.info["reduced"] = reduced
    return out


def celeba_crop(img: Image.Image, image_size: int) -> Image.Image:
    """The CelebA-standard centred face square, sized relative to the image so any resolution frames alike."""
    w, h = img.size
    side = max(1, min(round(CELEBA_CROP * w), h))  # a landscape photo gets its full height, not a box off the image
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    """uint8 tensor (3, H, W) -> PIL image."""
    return Image.fromarray(x.detach().cpu().permute(1, 2, 0).numpy())


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
