"""The face editor's latent logic, with no UI: align + encode a photo, attribute edits, interpolation, sampling and
custom directions (the Glow paper's Figure 6 system). Stateless across users: per-session data (a Face, custom
directions) is passed in and returned, so one service serves every session of the app.

All edits act on flat standardised latents (`model.flatten_latents(model.encode(x, standardized=True))`), the
space the attribute directions are fitted in.
"""
from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from PIL import Image

from flow_model.fileio import write_text
from flow_model.glow import Glow
from flow_model.imaging import MAX_PIXELS, ImageError, load_image, to_pil, to_tensor
from flow_model.training.checkpoint import load_model

from .align import FaceAligner, warp
from .calibration import CALIBRATION_FILE, Calibration
from .classifier import CONFIG_NAME as CLASSIFIER_CONFIG, Instrument, describe_change, load_classifier
from .directions import NULLSPACE, WITHIN_GENDER, Directions, load_directions, own_hold
from .photo import FacePhoto, compose, crop_side, edited_photo, to_image
from .regions import composite, union_mask

log = logging.getLogger(__name__)

DIRECTIONS_FILE = "directions.safetensors"
BPD_RANGE_FILE = "bpd_range.json"
CLASSIFIER_DIR = "attribute_classifier"  # looked for in the model directory, then beside it (assets/)
AUTO_METHOD = "auto"  # each slider's calibrated method (calibration.json), else the classifier normal
METHOD_LABELS = {AUTO_METHOD: "calibrated per slider", "classifier": "classifier normal",
                 "mean_diff": "mean difference (Glow paper)",
                 WITHIN_GENDER: "mean difference within the face's gender"}
MIN_IMAGE_SIDE = 40  # below this no face can be found; an image of exactly the model's size is a ready crop
MIN_CUSTOM_EXAMPLES = 3
MAX_FRAMES = 64
MAX_SAMPLES = 64
MAX_DECODED = 2.0  # flow inputs live in [-0.5, 0.5); a decode beyond this has left the region the flow inverts stably
BACKOFF_FRACTIONS = 16  # a diverging edit is retried at 1/16, 2/16, ... of its strength, in one batch
DECODE_BATCH = 8  # samples and interpolation frames per model pass; a request's deadline is checked between passes
UNMEASURED_TEMPERATURE = 0.7  # the Glow paper's choice, for a model whose calibration recommends none

Check = Callable[[], None]
"""A caller's deadline check (e.g. app.limits.Deadline.check), called at safe points; it raises when time is up."""
Progress = Callable[[int, int, str], None]
"""progress(done, total, what): how far a long request is, for a progress bar (app/ui.py wires it to gr.Progress)."""


def checkpoint(check: Check | None) -> None:
    """A safe point in a long request: the caller's check may end it here (the service has no clock of its own)."""
    if check is not None:
        check()


@dataclass(frozen=True)
class SliderSpec:
    """A named slider over one CelebA attribute; sign -1 turns e.g. Young into Age. Value 1 moves a face by the
    gap between the attribute's class means along its direction (how the directions are calibrated) times scale."""

    label: str
    attribute: str
    sign: float = 1.0
    scale: float = 1.0
    method: str = "classifier"  # the direction used under AUTO_METHOD
    keep: tuple[str, ...] = ()  # attributes held fixed by default (orthogonalised against), on top of the user's
    default: bool = True  # False: not among the default sliders (reachable under "more attributes")
    method_scales: tuple[tuple[str, float], ...] = ()  # calibrated scale per method, when it differs from scale
    # under AUTO_METHOD, how the kept attributes are held: a method's directions or NULLSPACE (None: method)
    hold_method: str | None = None
    minus_scale: float | None = None  # under AUTO_METHOD, the negative side's scale (None: scale)
    region: str | None = None  # the part of the face the attribute lives in (app/regions.py), if one
    local: bool = False  # calibrated: edits stay inside `region` unless the caller asks for the whole face
    # calibrated, under AUTO_METHOD: (attribute, k) adds k class-mean gaps of the attribute's classifier normal per
    # gap of the slider's own, against the drift its held edit still shows in that attribute
    steer: tuple[tuple[str, float], ...] = ()

    def scale_for(self, method: str) -> float:
        return self.scale if method == self.method else dict(self.method_scales).get(method, self.scale)


# Scales from scripts/slider_sheet.py on the shipped model: at a class-mean gap, age, brown hair and narrow eyes
# (noisy labels, weak directions) barely show and black hair, bangs, beard and male are subtle; the rest are clear.
SLIDERS = (
    SliderSpec("Smiling", "Smiling", region="lower face"),
    SliderSpec("Age", "Young", -1.0, 2.0),
    SliderSpec("Blond hair", "Blond_Hair"),
    SliderSpec("Black hair", "Black_Hair", scale=1.5),
    SliderSpec("Brown hair", "Brown_Hair", scale=2.0),
    SliderSpec("Gray hair", "Gray_Hair"),
    SliderSpec("Bald", "Bald"),
    SliderSpec("Bangs", "Bangs", scale=1.5, region="forehead"),
    SliderSpec("Beard", "No_Beard", -1.0, 1.5, region="lower face"),
    SliderSpec("Eyeglasses", "Eyeglasses", region="eyes"),
    SliderSpec("Male", "Male", scale=1.5),
    SliderSpec("Pale skin", "Pale_Skin"),
    SliderSpec("Narrow eyes", "Narrow_Eyes", scale=2.0, region="eyes"),
    SliderSpec("Heavy makeup", "Heavy_Makeup"),
    SliderSpec("Mouth slightly open", "Mouth_Slightly_Open", region="mouth"),
)
SLIDER_BY_LABEL = {s.label: s for s in SLIDERS}


def calibrated_sliders(calibration: Calibration | None) -> dict[str, SliderSpec]:
    """SLIDERS with the measured scale, method, kept attributes, counter-steer, default-set membership and whether
    edits stay in the slider's region, from calibration.json (app/calibration.py, written by `python -m app
    evaluate-edits --calibrate`) where it has them."""
    out = {}
    for spec in SLIDERS:
        c = calibration.get(spec.label) if calibration is not None else None
        out[spec.label] = spec if c is None else replace(
            spec, scale=c.scale, method=c.method, keep=tuple(c.keep), default=c.default,
            method_scales=tuple(sorted(c.scales.items())), hold_method=c.hold, minus_scale=c.minus_scale,
            local=c.local and spec.region is not None, steer=tuple(sorted(c.steer.items())))
    return out


@dataclass
class Face:
    """One encoded face, kept in per-session state so each upload is aligned and encoded once."""

    latent: torch.Tensor  # (D,) float32 flat standardised latent, on the CPU
    image: torch.Tensor  # (3, S, S) uint8: decode(latent), the model's n-bit version of the input
    bpd: float
    photo: FacePhoto  # the photo behind it and the aligned crop at the photo's own resolution
    decoded: torch.Tensor  # (3, S, S) float: the decoder's continuous output for latent, before rounding to n bits
    notes: list[str] = field(default_factory=list)
    # the attribute classifier's reading of `image` and which classifier (by id) read it: every slider move's
    # note compares against it, so it is read once (EditorService.reading)
    reading: tuple[int, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def crop(self) -> Image.Image:
        """What was encoded, at display size."""
        return to_image(self.photo.view)


@dataclass(frozen=True)
class Edited:
    """An edited face and the fraction of the requested edit it shows: below 1 when the full edit diverged.

    `change` is the model's change to the face, decode(edited) - decode(face) in pixel units before rounding, which
    the photo-resolution views add to the user's own pixels; None when nothing changed.
    """

    image: torch.Tensor  # (3, S, S) uint8: the model's own output
    strength: float = 1.0
    change: torch.Tensor | None = None  # (3, S, S) float32

    @property
    def note(self) -> str:
        if self.strength >= 1.0:
            return ""
        return (f"Shown at {self.strength:.0%} of the requested strength: further along, this model cannot decode the "
                "edit (its inverse diverges far from the faces it was trained on). Lower a slider for a full edit.")


@dataclass
class CustomDirection:
    """A direction fitted from the user's photos, with what went into it: the latents are kept so the slider can be
    cross-validated (app/custom_check.py) without encoding the photos again."""

    vector: torch.Tensor  # (D,), calibrated like the built-in directions
    n_with: int
    n_without: int
    skipped: list[str]
    latents_with: torch.Tensor  # (n_with, D)
    latents_without: torch.Tensor  # (n_without, D)


@dataclass
class BpdRange:
    """Per-image bits/dim of validation faces, measured the way the editor measures an upload."""

    p01: float
    p50: float
    p99: float
    n: int
    n_bits: int
    image_size: int

    def is_far_above(self, bpd: float) -> bool:
        """Beyond the 99th percentile by more than the median-to-99th spread again."""
        return bpd > self.p99 + (self.p99 - self.p50)

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "BpdRange":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is not a bits/dim range file: {err}") from None


def interpolation_weights(n: int) -> torch.Tensor:
    if not 2 <= n <= MAX_FRAMES:
        raise ValueError(f"the number of frames must be in 2..{MAX_FRAMES}, got {n}")
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64)


def lerp(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """(n, D) points from a to b; the first and last rows are a and b exactly."""
    t = interpolation_weights(n).to(a.dtype)[:, None]
    out = (1 - t) * a + t * b
    out[0], out[-1] = a, b
    return out


def slerp(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """Great-circle path between the directions of a and b with the norm interpolated linearly: it keeps the
    in-between latents at a typical Gaussian radius, where linear paths pass closer to the (atypical) mean."""
    t = interpolation_weights(n)[:, None]
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return lerp(a, b, n)
    cos = torch.clamp((a64 @ b64) / (na * nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega < 1e-6:
        return lerp(a, b, n)
    ua, ub = a64 / na, b64 / nb
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    out = (direction * ((1 - t) * na + t * nb)).to(a.dtype)
    out[0], out[-1] = a, b
    return out


def orthogonalize(vectors: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Each row minus its projection on span(kept), rescaled to its old norm (InterFaceGAN's conditional edit):
    moving along the result leaves every kept attribute's linear score unchanged. A row inside the span -> 0."""
    if kept.numel() == 0:
        return vectors
    # an SVD, not a QR: kept rows may repeat (an attribute held by the user and by the calibration alike), and a QR
    # without pivoting leaves an arbitrary column where a dependent one stood
    u, s, _ = torch.linalg.svd(kept.double().T, full_matrices=False)
    basis = u[:, s > 1e-9 * s.max().clamp_min(1e-30)]
    v = vectors.double()
    perp = v - (v @ basis) @ basis.T
    perp = perp - (perp @ basis) @ basis.T  # a second pass removes the float rounding of the first
    old, new = v.norm(dim=1, keepdim=True), perp.norm(dim=1, keepdim=True)
    gain = torch.where(new > 1e-6 * old, old / new.clamp_min(1e-30), torch.zeros_like(new))
    return (perp * gain).to(vectors.dtype)


def span_basis(vectors: torch.Tensor) -> torch.Tensor:
    """Orthonormal (D, k) basis of the rows' span (k = their rank), for fitting a custom slider inside it."""
    u, s, _ = torch.linalg.svd(vectors.double().T, full_matrices=False)
    return u[:, s > 1e-5 * s.max().clamp_min(1e-30)].float()  # float32 rows: smaller values are rounding


def fit_mean_difference(positives: torch.Tensor, negatives: torch.Tensor,
                        basis: torch.Tensor | None = None) -> torch.Tensor:
    """The gap between the two groups' mean latents, projected on span(basis) (orthonormal columns; the whole latent
    when None). Its length is the gap between the groups' mean projections on it: the built-in directions'
    calibration, so +1 means "as much as the examples differ".

    A dozen faces cannot pin a line down in 12,288 dimensions: in the whole latent the fit learns the photos, while
    inside the span of the built-in directions, learned from 25k faces, the same photos give a line that holds on
    faces they do not include (experiments/custom_sliders.md). The plain mean gap does as well there as a logistic
    regression, or better."""
    gap = positives.double().mean(0) - negatives.double().mean(0)
    if basis is not None:
        gap = basis.double() @ (basis.double().T @ gap)
    if not gap.norm() > 0:
        raise ValueError("the two sets of faces cannot be told apart (the same photos in both?)")
    return gap.float()


def upscale(x: torch.Tensor, size: int) -> Image.Image:
    """uint8 (3, S, S) -> size x size PIL image for display and download."""
    img = to_pil(x)
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.LANCZOS)


def animated_gif(frames: Sequence[Image.Image], frame_ms: int = 120) -> bytes:
    """A looping GIF that plays the frames forward and back, so it has no jump at the loop point. Each frame is
    quantised once with a fast octree palette: Pillow's default median cut takes ~50x longer."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    paletted = [f.convert("RGB").quantize(method=Image.Quantize.FASTOCTREE) for f in frames]
    sequence = paletted + paletted[-2:0:-1]
    buffer = io.BytesIO()
    sequence[0].save(buffer, format="GIF", save_all=True, append_images=sequence[1:], duration=frame_ms, loop=0)
    return buffer.getvalue()


class EditorService:
    """Everything the editor does to latents; thread-safe for concurrent sessions (the model is only read)."""

    def __init__(self, model: Glow, directions: Directions | None = None, aligner: FaceAligner | None = None,
                 bpd_range: BpdRange | None = None, display_size: int = 256) -> None:
        if directions is not None and directions.latent_dim != model.latent_dim:
            raise ValueError(f"the directions are for a latent of {directions.latent_dim} values, but the model's "
                             f"latent has {model.latent_dim}: they belong to a different model")
        c = model.config
        if bpd_range is not None and (bpd_range.n_bits, bpd_range.image_size) != (c.n_bits, c.image_size):
            raise ValueError(f"the bits/dim range was measured at {bpd_range.n_bits} bits, {bpd_range.image_size}px "
                             f"but the model works at {c.n_bits} bits, {c.image_size}px")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.directions = directions
        self.aligner = aligner
        self.bpd_range = bpd_range
        self.display_size = display_size
        self.image_size = model.config.image_size
        # where custom sliders are fitted: a dozen photos cannot pin a line down in the whole latent
        self.custom_basis = None if directions is None else span_basis(directions.vectors["classifier"])

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", align: bool = True,
             display_size: int = 256) -> "EditorService":
        """A pretrained (or run) directory, with its directions.safetensors and bpd_range.json when present."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model directory not found: {model_dir}")
        model = load_model(model_dir, device=device)
        directions = load_directions(model_dir / DIRECTIONS_FILE) if (model_dir / DIRECTIONS_FILE).is_file() else None
        if directions is None:
            log.warning("%s has no %s: attribute sliders are off", model_dir, DIRECTIONS_FILE)
        bpd_range = BpdRange.load(model_dir / BPD_RANGE_FILE) if (model_dir / BPD_RANGE_FILE).is_file() else None
        service = cls(model, directions, FaceAligner() if align else None, bpd_range, display_size)
        if (model_dir / CALIBRATION_FILE).is_file():
            service.set_calibration(Calibration.load(model_dir / CALIBRATION_FILE))
        for folder in (model_dir / CLASSIFIER_DIR, model_dir.parent / CLASSIFIER_DIR):
            if (folder / CLASSIFIER_CONFIG).is_file():  # one net's folder, or an ensemble's naming its members
                service.classifier = load_classifier(folder, device)
                break
        return service

    # -- faces -------------------------------------------------------------------------------------
    def prepare(self, source: str | Path | bytes | Image.Image,
                keep_photo: bool = True) -> tuple[torch.Tensor, FacePhoto | None, list[str]]:
        """An image -> the model-size uint8 crop to encode, the photo with its face crop at the photo's own
        resolution (None unless keep_photo), and notes for the user.

        A photo is aligned onto the training framing; an image of exactly the model's size (a sample, an example,
        a downloaded edit) already is such a crop and is used as it is.
        """
        img = load_image(source)
        reduced = img.info.get("reduced", 1)  # a JPEG above the pixel limit, decoded at 1/2, 1/4 or 1/8 scale
        scaled = [f"the photo is above {MAX_PIXELS / 1e6:.0f} megapixels, so it was decoded at 1/{reduced} scale "
                  f"({img.width}x{img.height})"] if reduced > 1 else []
        size = self.image_size
        if img.size == (size, size):
            return to_tensor(img), FacePhoto.from_crop(img, self.display_size) if keep_photo else None, []
        if min(img.size) < MIN_IMAGE_SIDE:
            raise ImageError(f"the image is only {img.width}x{img.height} pixels; a face photo needs at least "
                             f"{MIN_IMAGE_SIDE} pixels a side (or exactly {size}x{size}, a ready-made model crop)")
        if self.aligner is None:
            raise ImageError(f"face alignment is off in this editor: upload a {size}x{size} face crop")
        location = self.aligner.locate(img)
        side = crop_side(location.unit_matrix) if keep_photo else self.display_size
        crop = warp(img, location.matrix(side), side)
        x = to_tensor(crop.resize((size, size), Image.Resampling.LANCZOS))
        photo = FacePhoto.from_crop(crop, self.display_size, img, location.matrix(side)) if keep_photo else None
        return x, photo, [*scaled, location.note] if location.note else scaled

    @torch.inference_mode()
    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat standardised latents (N, D) and bits/dim (N,) of uint8 images, from one pass (Glow.encode_with_bpd).

        The bits/dim is taken at the point encode() maps (the dequantiser's central noise), rather than with random
        dequantisation noise, so the same photo always gets the same number.
        """
        size = self.image_size
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
                or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected uint8 images (N, 3, {size}, {size}), got "
                             f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
        eps, bpd = self.model.encode_with_bpd(images, standardized=True)
        return self.model.flatten_latents(eps).float().cpu(), bpd.double().cpu()

    def encode(self, x: torch.Tensor, photo: FacePhoto | None = None, notes: Sequence[str] = ()) -> Face:
        """Latent, reconstruction and bits/dim of one model-size uint8 image (3, S, S); without a photo, the image
        itself is the face's crop."""
        latents, bpd = self._forward(x.unsqueeze(0) if isinstance(x, torch.Tensor) and x.dim() == 3 else x)
        decoded, _ = self.decode_checked(latents[:1])
        photo = photo if photo is not None else FacePhoto.from_crop(to_pil(x), self.display_size)
        return Face(latents[0], self.model.quantize(decoded[0]), float(bpd[0]), photo, decoded[0],
                    [*notes, *self.bpd_notes(float(bpd[0]))])

    def measure_bpd_range(self, images: torch.Tensor, batch_size: int = 64) -> BpdRange:
        """The spread of bits/dim over (validation) faces, measured exactly as uploads are."""
        if len(images) < 2:
            raise ValueError(f"need at least 2 images to measure a range, got {len(images)}")
        bpd = torch.cat([self._forward(images[i:i + batch_size])[1] for i in range(0, len(images), batch_size)])
        p01, p50, p99 = (float(v) for v in torch.quantile(bpd, torch.tensor([0.01, 0.5, 0.99], dtype=bpd.dtype)))
        c = self.model.config
        return BpdRange(p01, p50, p99, len(bpd), c.n_bits, c.image_size)

    def face_from_image(self, source: str | Path | bytes | Image.Image, check: Check | None = None) -> Face:
        """Load (robustly), align and encode one image; check runs between the alignment and the model."""
        prepared = self.prepare(source)
        checkpoint(check)
        return self.encode(*prepared)

    def latent_of(self, source: str | Path | bytes | Image.Image, check: Check | None = None) -> torch.Tensor:
        """Only the (D,) latent of an image: what interpolation and custom directions need (no reconstruction);
        check runs between the alignment and the model."""
        x = self.prepare(source, keep_photo=False)[0]
        checkpoint(check)
        return self._forward(x.unsqueeze(0))[0][0]

    def bpd_notes(self, bpd: float) -> list[str]:
        r = self.bpd_range
        if r is None or not r.is_far_above(bpd):
            return []
        return [f"{bpd:.2f} bits/dim is far above the validation faces' {r.p01:.2f}-{r.p99:.2f}: the model finds this "
                "image unusual (not a face photo like CelebA's, or an odd crop), so edits may look off"]

    # -- decoding ----------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Flat standardised latents (D,) or (N, D) -> uint8 images (3, S, S) or (N, 3, S, S), on the CPU."""
        images = self.model.quantize(self.decode_checked(latents.unsqueeze(0) if latents.dim() == 1 else latents)[0])
        return images[0] if latents.dim() == 1 else images

    @torch.inference_mode()
    def decode_checked(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) latents -> the decoder's continuous output (N, 3, S, S) in [-0.5, 0.5) and, per image, whether
        the inverse stayed finite and in range. Affine couplings invert by dividing by their scales, so latents far
        from the data can blow up to inf/NaN, which would otherwise show as black or saturated blotches."""
        x = self.model.flow_inverse(self.model.unflatten_latents(latents.to(self.device)), standardized=True)
        ok = (x.abs().flatten(1).amax(1) <= MAX_DECODED).cpu()  # NaN compares False
        return x.float().cpu(), ok

    def display(self, x: torch.Tensor) -> Image.Image:
        """A model-size uint8 image enlarged to display size (Lanczos): for samples and the model's own output."""
        return upscale(x, self.display_size)

    # -- the user's own pixels -----------------------------------------------------------------------
    def view(self, face: Face, edited: Edited | None = None, upsampling: str = "guided") -> Image.Image:
        """The face at display size: the user's crop with the model's change added (the reconstruction when
        nothing is edited is the crop itself)."""
        return to_image(compose(face.photo.view, edited.change if edited else None, upsampling))

    def edited_crop(self, face: Face, edited: Edited | None = None, upsampling: str = "guided") -> Image.Image:
        """The aligned face crop at the photo's own resolution, edited."""
        return to_image(compose(face.photo.crop, edited.change if edited else None, upsampling))

    def edited_photo(self, face: Face, edited: Edited | None = None, upsampling: str = "guided") -> Image.Image:
        """The whole photo at its own resolution with the edit pasted back; pixels outside the face mask keep
        their original bytes. A face without a photo behind it (a model-size crop) gives its edited crop."""
        return edited_photo(face.photo, edited.change if edited else None, upsampling)

    # -- attribute edits ---------------------------------------------------------------------------
    @property
    def attributes(self) -> list[str]:
        return list(self.directions.names) if self.directions is not None else []

    calibration: Calibration | None = None
    _specs: Mapping[str, SliderSpec] = SLIDER_BY_LABEL

    def set_calibration(self, calibration: Calibration | None) -> None:
        """Apply measured slider defaults (scale, method, kept attributes, default set); None restores SLIDERS."""
        self.calibration = calibration
        self._specs = calibrated_sliders(calibration)

    @property
    def recommended_temperature(self) -> float:
        """The sampling temperature `evaluate-edits --calibrate` measured as the best for this model (calibration.json),
        else UNMEASURED_TEMPERATURE."""
        measured = self.calibration.temperature if self.calibration is not None else None
        return measured if measured is not None else UNMEASURED_TEMPERATURE

    def slider(self, label: str) -> SliderSpec | None:
        """A built-in slider's spec with this service's calibration applied."""
        return self._specs.get(label)

    @property
    def sliders(self) -> list[SliderSpec]:
        """The default sliders this model's directions support (calibrated; those that cannot make a clear edit
        are left out, see more_sliders)."""
        return [s for s in self._specs.values() if s.attribute in self.attributes and s.default]

    @property
    def more_sliders(self) -> list[SliderSpec]:
        """Built-in sliders outside the default set: measured too weak on this model (calibration.json says why)."""
        return [s for s in self._specs.values() if s.attribute in self.attributes and not s.default]

    def vector(self, key: str, method: str = AUTO_METHOD, custom: Mapping[str, torch.Tensor] | None = None,
               latent: torch.Tensor | None = None) -> torch.Tensor:
        """The (D,) edit vector of a slider label, a CelebA attribute name or a custom direction. AUTO_METHOD is a
        slider's calibrated method (the classifier normal for attribute names). A WITHIN_GENDER direction depends on
        the face: (D,) for one latent, (N, D) for a batch of them."""
        custom = custom or {}
        if key in custom:
            return custom[key].float()
        if method not in METHOD_LABELS:
            raise ValueError(f"unknown direction method {method!r}; valid: {list(METHOD_LABELS)}")
        if self.directions is None:
            raise KeyError(f"unknown edit {key!r}: this model has no attribute directions ({DIRECTIONS_FILE}), so "
                           "only custom sliders can be used")
        spec = self.slider(key)
        if spec is not None and spec.attribute in self.attributes:
            method = spec.method if method == AUTO_METHOD else method
            return spec.sign * spec.scale_for(method) * self.directions.vector(spec.attribute, method, latent)
        if key in self.attributes:
            return self.directions.vector(key, "classifier" if method == AUTO_METHOD else method, latent)
        raise KeyError(f"unknown edit {key!r}: use a slider label ({', '.join(s.label for s in self.sliders)}), "
                       f"a CelebA attribute name or a custom slider's name")

    def method_labels(self) -> dict[str, str]:
        """The direction methods this model's directions offer, with their UI names."""
        offered = (AUTO_METHOD, *(self.directions.methods if self.directions is not None else ()))
        return {k: v for k, v in METHOD_LABELS.items() if k in offered}

    def level_mask(self, levels: Sequence[int] | None) -> torch.Tensor | None:
        """Boolean (D,) mask of the latent levels an edit may touch; None means every level."""
        if levels is None:
            return None
        slices = self.model.level_slices()
        bad = [lv for lv in levels if not 0 <= int(lv) < len(slices)]
        if bad or not levels:
            raise ValueError(f"levels must be a non-empty subset of 0..{len(slices) - 1} (0 is the finest), got "
                             f"{list(levels)}")
        mask = torch.zeros(self.model.latent_dim, dtype=torch.bool)
        for lv in levels:
            mask[slices[int(lv)]] = True
        return mask

    def level_choices(self) -> dict[str, tuple[int, ...] | None]:
        """UI names for the level sets an edit may touch: all, or only the coarsest k levels (keeps identity)."""
        shapes = self.model.latent_shapes
        top = len(shapes) - 1
        choices: dict[str, tuple[int, ...] | None] = {"all levels": None}
        for k in range(1, len(shapes)):
            levels = tuple(range(top - k + 1, top + 1))
            sizes = ", ".join(f"{shapes[lv][1]}x{shapes[lv][2]}" for lv in reversed(levels))
            name = "coarse only" if k == 1 else f"coarsest {k} levels"
            choices[f"{name} ({sizes})"] = levels
        return choices

    def edit_vectors(self, keys: Sequence[str], method: str = AUTO_METHOD, keep: Sequence[str] = (),
                     levels: Sequence[int] | None = None, custom: Mapping[str, torch.Tensor] | None = None,
                     latent: torch.Tensor | None = None) -> torch.Tensor:
        """(K, D) vectors the slider values multiply: restricted to the chosen levels and, for each, made
        orthogonal to the (equally restricted) directions of the kept attributes other than itself: those given
        and, for a built-in slider, those its calibration holds fixed by default; under AUTO_METHOD plus its
        calibrated counter-steer (SliderSpec.steer). The kept directions come from the
        slider's method, or under AUTO_METHOD from the way its calibration holds them (a method or NULLSPACE).
        `latent`: the face edited, which a WITHIN_GENDER direction depends on; a batch (N, D) of them gives
        (K, N, D)."""
        mask = self.level_mask(levels)
        rows = []
        for key in keys:
            spec = self.slider(key)
            key_method = spec.method if spec is not None and method == AUTO_METHOD else method
            hold_method = (spec.hold_method or spec.method) if spec is not None and method == AUTO_METHOD else method
            v = self.vector(key, key_method, custom, latent)
            held = list(dict.fromkeys([*keep, *(spec.keep if spec is not None else ())]))
            kept = [self.held(k, hold_method, custom) for k in held if k != key and self._attribute_of(k) !=
                    self._attribute_of(key)]
            steer = ([k * spec.scale * self.directions.vector(a, "classifier") for a, k in spec.steer]
                     if spec is not None and method == AUTO_METHOD else [])
            if mask is not None:
                v = v * mask
                kept = [k * mask for k in kept]
                steer = [s * mask for s in steer]
            if kept:
                v = orthogonalize(v.reshape(-1, v.shape[-1]), torch.cat(kept)).reshape(v.shape)
            rows.append(v + sum(steer, torch.zeros_like(v)))
        if rows:
            return torch.stack(rows)
        return torch.zeros(0, *([] if latent is None else latent.shape[:-1]), self.model.latent_dim)

    def held(self, key: str, method: str, custom: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The (k, D) directions that holding `key` fixed keeps an edit orthogonal to: its vector by `method`, or
        under NULLSPACE a CelebA attribute's nullspace basis (Directions.held). Under WITHIN_GENDER, whose
        directions differ from face to face, its mean difference: one subspace held for every face."""
        attribute = self._attribute_of(key)
        if method == NULLSPACE and key not in (custom or {}) and attribute in self.attributes:
            return self.directions.held(attribute, NULLSPACE)
        return self.vector(key, "classifier" if method == NULLSPACE else own_hold(method), custom)[None]

    def _attribute_of(self, key: str) -> str:
        spec = self.slider(key)
        return spec.attribute if spec is not None else key

    def edit_latent(self, latent: torch.Tensor, edits: Mapping[str, float], method: str = AUTO_METHOD,
                    keep: Sequence[str] = (), levels: Sequence[int] | None = None,
                    custom: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """latent + sum of value x vector over the non-zero edits; exactly the latent when every value is 0."""
        active = {k: float(v) for k, v in edits.items() if v}
        bad = [k for k, v in active.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"edit values must be finite numbers; got {[(k, active[k]) for k in bad]}")
        if not active:
            return latent
        vectors = self.edit_vectors(list(active), method, keep, levels, custom, latent)
        values = torch.tensor([self.multiplier(k, v, method) for k, v in active.items()], dtype=vectors.dtype)
        return latent + torch.einsum("k,k...->...", values, vectors)

    def multiplier(self, key: str, value: float, method: str = AUTO_METHOD) -> float:
        """What a slider's vector (edit_vectors) is multiplied by at `value`: the value itself, except on the
        negative side of a slider whose calibration gives that side a smaller scale, under AUTO_METHOD (taking an
        attribute away can break faces at a strength that adding it does not)."""
        spec = self.slider(key)
        if value >= 0 or spec is None or spec.minus_scale is None or method != AUTO_METHOD:
            return value
        return value * spec.minus_scale / spec.scale

    def edit_mask(self, keys: Sequence[str], local: bool = True) -> torch.Tensor | None:
        """Where an edit of these sliders may change the face: the union of their regions when every one of them is
        calibrated to stay in its region (app/regions.py), else None, the whole face (so also for custom sliders,
        attributes without a slider, and local=False)."""
        specs = [self.slider(k) for k in keys]
        if not local or not specs or any(s is None or not s.local for s in specs):
            return None
        return union_mask([s.region for s in specs], self.image_size)

    def edit(self, face: Face, edits: Mapping[str, float], method: str = AUTO_METHOD, keep: Sequence[str] = (),
             levels: Sequence[int] | None = None, custom: Mapping[str, torch.Tensor] | None = None,
             check: Check | None = None, local: bool = True) -> Edited:
        """The edited face; with every value at 0, the face's reconstruction itself. An edit the model cannot
        decode is shown at the largest fraction of its strength that decodes, and says so. With `local`, an edit
        of sliders calibrated to stay in their part of the face changes only that part (edit_mask). check runs
        before each model pass."""
        latent = self.edit_latent(face.latent, edits, method, keep, levels, custom)
        if latent is face.latent:
            return Edited(face.image)
        mask = self.edit_mask([k for k, v in edits.items() if v], local)
        checkpoint(check)
        decoded, ok = self.decode_checked(latent[None])
        if ok[0]:
            return self._edited(face, decoded[0], 1.0, mask)
        fractions = torch.arange(1, BACKOFF_FRACTIONS) / BACKOFF_FRACTIONS
        checkpoint(check)
        decoded, ok = self.decode_checked(face.latent + fractions[:, None] * (latent - face.latent))
        usable = int(ok.long().cumprod(0).sum())  # the strengths up to the first failure
        if usable == 0:
            return Edited(face.image, 0.0)
        return self._edited(face, decoded[usable - 1], float(fractions[usable - 1]), mask)

    def _edited(self, face: Face, decoded: torch.Tensor, strength: float, mask: torch.Tensor | None) -> Edited:
        """Flow inputs span one unit per 256 pixel levels, so the change in pixels is 256 x the change in x."""
        decoded = composite(face.decoded, decoded, mask)
        return Edited(self.model.quantize(decoded), strength, (decoded - face.decoded) * 256.0)

    # -- what an edit did, as the attribute classifier reads it -------------------------------------
    classifier: Instrument | None = None

    def reading(self, face: Face, edited: Edited, edits: Mapping[str, float]) -> str:
        """"Smiling 12% -> 81%; largest other change: Male 40% -> 47%": the attribute classifier's P(attribute)
        on the face's reconstruction and on the edit, for each edited built-in attribute, and the largest change
        among the others. Empty without a classifier or when nothing built-in is edited."""
        if self.classifier is None or self.classifier.config.image_size != self.image_size:
            return ""
        targets = {}
        for key, value in edits.items():
            spec = self.slider(key)
            attribute = spec.attribute if spec is not None else key
            if value and attribute in self.classifier.attributes:
                targets[attribute] = math.copysign(1.0, value * (spec.sign if spec is not None else 1.0))
        if not targets:
            return ""
        if face.reading is None or face.reading[0] != id(self.classifier):
            face.reading = (id(self.classifier), self.classifier.predict(face.image[None])[0][0])
        return describe_change(self.classifier, face.image, edited.image, targets, before_probs=face.reading[1])["text"]

    # -- custom directions -------------------------------------------------------------------------
    def fit_direction(self, positives: torch.Tensor, negatives: torch.Tensor,
                      min_examples: int = MIN_CUSTOM_EXAMPLES) -> torch.Tensor:
        """A slider direction from a few faces with and without a property (fit_mean_difference), fitted inside
        the span of the 40 built-in classifier directions, or on the coarsest latent level for a model without
        them: both hold on unseen faces better than a fit in the whole latent (held-out AUC 0.74-0.78 and
        0.62-0.66 against 0.59-0.63 for 5-12 photos a side, experiments/custom_sliders.md). Returned as a
        full-latent vector calibrated like the built-in ones. Cross-validation refits it on fewer faces
        (min_examples) than a slider may be built from."""
        if min(len(positives), len(negatives)) < min_examples:
            raise ValueError(f"a custom slider needs at least {min_examples} faces with and "
                             f"{min_examples} without the property (5 or more each work better); got "
                             f"{len(positives)} and {len(negatives)}")
        if self.custom_basis is not None:
            return fit_mean_difference(positives, negatives, self.custom_basis)
        coarse = self.model.level_slices()[-1]
        vector = torch.zeros(self.model.latent_dim)
        vector[coarse] = fit_mean_difference(positives[:, coarse], negatives[:, coarse])
        return vector

    def fit_custom_direction(self, with_sources: Sequence, without_sources: Sequence,
                             progress: Progress | None = None, check: Check | None = None) -> CustomDirection:
        """Align and encode two small sets of photos and fit their direction; photos that cannot be used (no
        face, not an image, ...) are skipped and named, and enough must remain.

        Encoding 2 x 12 photos takes seconds, so progress(done, total, what) is called after each photo and check
        (a deadline, a cancel button) before each one and before the model pass of each: whatever it raises ends
        the fit there, with its own message."""
        groups, skipped = [], []
        total, done = len(with_sources) + len(without_sources), 0
        for side, sources in (("with", with_sources), ("without", without_sources)):
            latents = []
            for source in sources:
                checkpoint(check)
                try:
                    latents.append(self.latent_of(source, check))
                except ImageError as err:
                    name = Path(source).name if isinstance(source, (str, Path)) else "an uploaded image"
                    skipped.append(f"{name}: {err}")
                done += 1
                if progress is not None:
                    progress(done, total, f"encoding photo {done} of {total} ({side} the property)")
            groups.append(torch.stack(latents) if latents else torch.zeros(0, self.model.latent_dim))
        try:
            vector = self.fit_direction(*groups)
        except ValueError as err:
            raise ValueError(f"{err}" + (f" after skipping {len(skipped)}: {'; '.join(skipped)}" if skipped else "")) \
                from None
        return CustomDirection(vector, len(groups[0]), len(groups[1]), skipped, groups[0], groups[1])

    # -- interpolation and sampling ----------------------------------------------------------------
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, n: int = 8, spherical: bool = False) -> torch.Tensor:
        """n uint8 frames (n, 3, S, S) from latent a to latent b, both ends included: the model's own output."""
        path = slerp(a, b, n) if spherical else lerp(a, b, n)
        return self.decode(path)

    def interpolate_faces(self, a: Face, b: Face, n: int = 8, spherical: bool = False,
                          check: Check | None = None) -> list[Image.Image]:
        """n display-size frames from face A to face B that keep both photos' detail: frame t is the upsampled
        decode of the mixed latent plus (1 - t) x A's detail plus t x B's, where a face's detail is its crop minus
        its upsampled reconstruction. Frame 0 is A's crop and frame n-1 B's, and every frame is sharp. Decoded
        DECODE_BATCH frames per pass, with check before each."""
        path = slerp(a.latent, b.latent, n) if spherical else lerp(a.latent, b.latent, n)
        passes = []
        for start in range(0, n, DECODE_BATCH):
            checkpoint(check)
            passes.append(self.decode_checked(path[start:start + DECODE_BATCH])[0])
        decoded = torch.cat(passes)
        size = self.display_size

        def enlarge(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate((x + 0.5) * 256.0, size=(size, size), mode="bicubic",
                                                   align_corners=False)

        detail_a = a.photo.view - enlarge(a.decoded[None])[0]
        detail_b = b.photo.view - enlarge(b.decoded[None])[0]
        t = interpolation_weights(n).float()[:, None, None, None]
        frames = enlarge(decoded) + (1 - t) * detail_a + t * detail_b
        return [to_image(f) for f in frames]

    @torch.inference_mode()
    def sample(self, n: int, temperature: float | None = None, seed: int = 0,
               check: Check | None = None) -> torch.Tensor:
        """n uint8 faces with standardised latents ~ N(0, T^2), reproducible from the seed (Glow.sample_latents, the
        latents Glow.sample draws), decoded DECODE_BATCH per pass with check before each. None: the model's
        recommended temperature."""
        if temperature is None:
            temperature = self.recommended_temperature
        if not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"the sample count must be in 1..{MAX_SAMPLES}, got {n}")
        if not 0.0 <= temperature <= 1.0:
            raise ValueError(f"the temperature must be in [0, 1], got {temperature}")
        generator = torch.Generator().manual_seed(int(seed))
        eps = self.model.sample_latents(n, temperature, generator)
        images = []
        for start in range(0, n, DECODE_BATCH):
            checkpoint(check)
            batch = [e[start:start + DECODE_BATCH] for e in eps]
            images.append(self.model.decode(batch, standardized=True).cpu())
        return torch.cat(images)
