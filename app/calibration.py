"""Per-slider calibration measured by `python -m app evaluate-edits --calibrate`: the scale that makes +1 a clear
edit, the direction method, the attributes held fixed by default, any counter-steer against a measured drift,
whether its edits stay in the part of the face the attribute lives in, and whether the slider is in the default set;
and the sampling temperature the same run recommends from its sample-quality figures.

Stored as calibration.json beside the model's directions.safetensors; `EditorService.load` applies it when present.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from flow_model.fileio import write_text

from .directions import NULLSPACE, WITHIN_GENDER

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
TARGET_FLIP = 0.6  # +1 should flip at least this share of the faces that start on the other side
MIN_FLIP = 0.3  # a slider that cannot reach this at any decodable strength leaves the default set
MAX_LEAKAGE = 0.05  # mean |dP| of another attribute above which that attribute is held fixed by default
MIN_MOVED = 0.95  # +1 should move P(attribute) the intended way on at least this share of faces
# Calibration judges a leakage by the upper end of its one-sided 95% interval (mean + this many standard errors),
# and a moved share by the lower end of its own: on the hundred or so calibration faces a mean |dP| of 0.04 cannot
# be told from 0.05, nor 96% moved from 93%, and the faces the edits are reported on are others.
LEAK_BOUND_Z = 1.645
# And a flip rate by the lower end of its one-sided 95% Wilson interval over the faces that started on the other
# side: a slider whose mean just reaches the target on the calibration faces falls short of it on about half of all
# other face sets, the report's among them.
FLIP_BOUND_Z = 1.645
# Calibration ranks a way of editing by its leakage in the worse of the two groups of faces on either side of the
# leaked attribute (men and women, for Male), counting a group only with at least this many faces: fewer give too
# wide a bound to weigh against the other targets.
MIN_GROUP = 20
# A strength still decodes only if at least this share of the faces that pass the face checks unedited (geometry
# and colour blow-out) still pass them edited (each side of a slider is searched on its own). Real faces that carry
# a slider's attribute (glasses, bangs, a beard) pass about as often as faces without it (docs/edits.md), so a
# larger loss is the edit's distortion, not the attribute's look.
MIN_INTACT = 0.8
# A slider's edit, held orthogonal to Male's directions, can still move the instrument's reading of Male one way on
# average (a linear hold keeps a linear read-out fixed; the latent carries gender non-linearly too). Calibration
# then adds k class-mean gaps of that attribute's classifier normal per gap of the slider's own, k measured so the
# mean signed change cancels: a first measure at +-STEER_STEP, a line through it, at most STEER_MAX either way.
STEER_STEP = 0.5
STEER_MAX = 1.5
METHODS = ("classifier", "mean_diff", WITHIN_GENDER)
# how the kept attributes are held: by one direction of a method (the same for every face), or their nullspace
HOLDS = ("classifier", "mean_diff", NULLSPACE)


@dataclass
class SliderCalibration:
    """One slider: value 1 = `scale` x the class-mean gap along the `method` direction, orthogonal to `keep`."""

    method: str = "classifier"
    scale: float = 1.0
    keep: list[str] = field(default_factory=list)
    default: bool = True  # False: out of the default set (reachable under "more")
    scales: dict[str, float] = field(default_factory=dict)  # the calibrated scale of each method, for overrides
    flip_at_1: float | None = None  # measured on the calibration faces
    leakage: dict[str, float] = field(default_factory=dict)  # mean |dP| at +1 of the held attributes, as measured
    reason: str = ""
    intact: float | None = None  # share of faces kept intact at +1 and at -1, the lower; None: unchecked
    hold: str | None = None  # how the held attributes are held (a method or NULLSPACE); None: by the slider's method
    # the scale of the negative side, where taking the attribute away breaks faces sooner than adding it; None: scale
    minus_scale: float | None = None
    local: bool = False  # edits stay inside the slider's face region (app/regions.py): it leaked less there
    # attribute -> k: k class-mean gaps of its classifier normal added per gap of the slider (the calibrated
    # method's direction only), cancelling the slider's measured mean drift in that attribute
    steer: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.local, bool):
            raise ValueError(f"a slider's local must be true or false, got {self.local!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {list(METHODS)}")
        if self.hold is not None and self.hold not in HOLDS:
            raise ValueError(f"unknown way {self.hold!r} to hold attributes by; valid: {list(HOLDS)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"a slider's scale must be a positive number, got {self.scale}")
        if self.minus_scale is not None and not (math.isfinite(self.minus_scale) and 0 < self.minus_scale
                                                 <= self.scale):
            raise ValueError(f"a slider's minus_scale must be in (0, scale = {self.scale}], got {self.minus_scale}")
        bad = {m: s for m, s in self.scales.items() if m not in METHODS or not (math.isfinite(s) and s > 0)}
        if bad:
            raise ValueError(f"bad per-method scales {bad}")
        if not isinstance(self.steer, dict) or any(
                isinstance(k, bool) or not isinstance(k, (int, float)) or not abs(k) <= STEER_MAX
                for k in self.steer.values()):
            raise ValueError(f"a slider's steer maps attributes to numbers in [-{STEER_MAX:g}, {STEER_MAX:g}], "
                             f"got {self.steer!r}")
        self.keep = [str(k) for k in self.keep]
        self.steer = {str(a): float(k) for a, k in self.steer.items()}

    def scale_for(self, method: str) -> float:
        return self.scale if method == self.method else self.scales.get(method, self.scale)


# calibration.info entries that say what a calibration was measured with, not by which rules
DESCRIPTIVE_INFO = ("faces_from", "classifier", "classifier_fingerprint", "temperature", "recalibrated", "methods")


@dataclass
class Calibration:
    sliders: dict[str, SliderCalibration]
    info: dict = field(default_factory=dict)  # how it was measured: faces, classifier, grid, the temperature's figures
    temperature: float | None = None  # recommended sampling temperature, measured; None: not measured

    def __post_init__(self) -> None:
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1):
            raise ValueError(f"the recommended temperature must be in (0, 1], got {self.temperature!r}")

    def get(self, label: str) -> SliderCalibration | None:
        return self.sliders.get(label)

    def updated(self, fresh: "Calibration", labels: Sequence[str]) -> "Calibration":
        """This calibration with the sliders `labels` taken from `fresh`, a calibration of them alone by the same
        rules (every rule both state must agree; what they were measured with, faces and classifier, is told
        apart by `info`). The rest, the recommended temperature among them, stays as it was; info records which
        sliders were calibrated afresh and with which direction methods."""
        missing = [k for k in labels if k not in fresh.sliders]
        if missing:
            raise ValueError(f"the fresh calibration has no slider(s) {missing}")
        differ = {k: (self.info[k], fresh.info[k]) for k in self.info.keys() & fresh.info.keys()
                  if k not in DESCRIPTIVE_INFO and self.info[k] != fresh.info[k]}
        if differ:
            raise ValueError("the sliders calibrated afresh would follow other rules than the rest (earlier, now): "
                             + ", ".join(f"{k} {a!r}, {b!r}" for k, (a, b) in sorted(differ.items())))
        sliders = {**self.sliders, **{k: fresh.sliders[k] for k in labels}}
        info = {**self.info, **{k: v for k, v in fresh.info.items() if k != "methods"},
                "recalibrated": {"sliders": list(labels), "methods": fresh.info.get("methods")}}
        return Calibration(sliders, info, self.temperature)

    def save(self, path: str | Path) -> None:
        doc = {"format_version": FORMAT_VERSION, "info": self.info,
               "sliders": {k: asdict(v) for k, v in self.sliders.items()}}
        if self.temperature is not None:
            doc["temperature"] = self.temperature
        write_text(path, json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        try:
            doc = json.loads(Path(path).read_text())
            if doc.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
            sliders = {str(k): SliderCalibration(**v) for k, v in doc["sliders"].items()}
            return cls(sliders, doc.get("info", {}), doc.get("temperature"))
        except (OSError, TypeError, KeyError, AttributeError, ValueError) as err:
            raise ValueError(f"{path} is not a slider calibration file: {err}") from None
