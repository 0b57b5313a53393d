"""The editor's Gradio UI: thin handlers over EditorService. Each browser session's face, custom sliders and frames
live in gr.State, so concurrent users never see each other's faces."""
from __future__ import annotations

import base64
import binascii
import io
import threading
from typing import Sequence

import gradio as gr
import torch
from gradio import processing_utils
from gradio.utils import get_upload_folder
from PIL import Image

from flow_model.imaging import ImageError, to_pil

from .custom_check import check_custom_slider
from .limits import LIMITS, Deadline, LimitError, Limits
from .service import AUTO_METHOD, Check, Edited, EditorService, Face, animated_gif

EXTRA_SLOTS = 6  # sliders that "Add attribute" and custom directions can fill
SLIDER_LIMIT = 2.0
SLIDER_STEP = 0.05
MAX_UI_FRAMES = 32
# Images shown in the page are JPEG: Gradio encodes a 256x256 JPEG many times faster than a PNG, which matters on
# every slider move (bench/editor.py includes it in the slider update). Downloads are PNG.
DISPLAY_FORMAT = "jpeg"

INTRO = """# Glow face editor
Upload a photo (or paste one, or use the webcam): the face is found, aligned like the training faces and encoded
**exactly** by the flow, then the sliders move its latent code along attribute directions (Glow paper, Figure 6).
A slider at ±1 moves a face by the typical difference between faces with and without the attribute."""


def raw_image(payload: dict | None) -> str | bytes | None:
    """The uploaded file of an image input whose event runs with preprocess=False. Gradio's own preprocessing opens
    it with PIL first, which fails with an unhelpful error on non-images and decompression bombs before the service
    can name the problem; with preprocess=False Gradio still moves the upload into its cache and checks the path."""
    if not payload:
        return None
    if payload.get("path"):
        return payload["path"]
    url = payload.get("url") or ""
    if url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[-1])
        except (binascii.Error, ValueError):
            return b""
    return None


def save_output(data: bytes, name: str) -> str:
    """A file for a download or file output, in Gradio's upload cache (cleaned up with it)."""
    return processing_utils.save_bytes_to_cache(data, name, get_upload_folder())


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


CANCELLED = "Cancelled: no slider was added."


class Cancelled(Exception):
    """The user pressed Cancel while a custom slider was being fitted."""


def user_error(err: Exception) -> gr.Error:
    """A message for the UI: what was wrong with the input, not a stack trace."""
    return gr.Error(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err), duration=None)


class EditorUI:
    """Builds the Blocks app; handler methods translate between components and EditorService calls."""

    def __init__(self, service: EditorService, examples: Sequence[str] = (), limits: Limits = LIMITS) -> None:
        self.service = service
        self.examples = list(examples)
        self.limits = limits
        self.labels = [s.label for s in service.sliders]
        # under "More attributes": the calibrated sliders outside the default set by their labels (with their
        # measured scale, method and holds), then the attributes no slider covers
        covered = {s.attribute for s in service.sliders + service.more_sliders}
        self.other_attributes = ([s.label for s in service.more_sliders]
                                 + [a for a in service.attributes if a not in covered])
        self.level_choices = service.level_choices()
        self._stops: dict[str, threading.Event] = {}  # session -> stop flag of its running custom-slider fit

    # -- helpers ---------------------------------------------------------------------------------
    def _deadline(self, what: str, hint: str | None = None) -> Deadline:
        """This request's deadline (limits.request_seconds from now); the service checks it at safe points."""
        return Deadline(self.limits.request_seconds, what, *([hint] if hint else []))

    def _on_time(self, deadline: Deadline) -> None:
        """A safe point in a handler itself (between pieces of whole-photo work)."""
        try:
            deadline.check()
        except LimitError as err:
            raise user_error(err) from None

    def _face(self, source: str | bytes | Image.Image, check: Check | None = None) -> Face:
        try:
            return self.service.face_from_image(source, check)
        except (ImageError, ValueError) as err:
            raise user_error(err) from None

    def _levels(self, choice: str | None) -> tuple[int, ...] | None:
        if choice in (None, ""):
            return None
        if choice not in self.level_choices:
            raise gr.Error(f"unknown level choice {choice!r}; valid: {list(self.level_choices)}")
        return self.level_choices[choice]

    def _edits(self, slots: list[str], values: Sequence[float]) -> dict[str, float]:
        edits = dict(zip(self.labels, values[: len(self.labels)]))
        edits.update(zip(slots, values[len(self.labels):]))
        return {k: float(v or 0.0) for k, v in edits.items()}

    def _render(self, face: Face, edits: dict[str, float], method: str, keep: Sequence[str], level_choice: str | None,
                custom: dict[str, torch.Tensor], check: Check | None = None, local: bool = True) -> Edited:
        try:
            return self.service.edit(face, edits, method or AUTO_METHOD, list(keep or []), self._levels(level_choice),
                                     custom, check, local is not False)
        except (KeyError, ValueError) as err:
            raise user_error(err) from None

    def describe(self, face: Face) -> str:
        config = self.service.model.config
        text = f"**{face.bpd:.2f} bits/dim** ({config.n_bits}-bit {config.image_size}x{config.image_size})"
        r = self.service.bpd_range
        if r is not None:
            text += f"; validation faces: {r.p01:.2f}-{r.p99:.2f} (median {r.p50:.2f})"
        return "\n\n".join([text, *(f"⚠ {note}" for note in face.notes)])

    # -- edit tab ----------------------------------------------------------------------------------
    def _shown(self, face: Face, edited: Edited | None, model_output: bool) -> Image.Image:
        """The user's face with the edit (their own pixels plus the model's change), or the model's own output."""
        if model_output:
            return self.service.display(edited.image if edited is not None else face.image)
        return self.service.view(face, edited)

    def encode(self, photo: dict | None, model_output: bool = False):
        """Align + encode an upload once; the latent stays in the session's state for every slider move."""
        source = raw_image(photo)
        if source is None:
            return None, None, ""
        face = self._face(source, self._deadline("encoding the photo").check)
        return face, self._shown(face, None, model_output), self.describe(face)

    def render(self, face: Face | None, custom: dict, slots: list[str], method: str, disentangle: bool, local: bool,
               keep: list[str], levels: str, model_output: bool, *values: float) -> tuple[Image.Image | None, str]:
        if face is None:
            return None, ""
        edits = self._edits(slots, values)
        edited = self._render(face, edits, method, keep if disentangle else [], levels, custom,
                              self._deadline("the edit").check, local)
        reading = self.service.reading(face, edited, edits)  # "Smiling 12% -> 81%; largest other change: ..."
        note = "\n\n".join(part for part in (f"Attribute classifier: {reading}" if reading else "", edited.note)
                            if part)
        return self._shown(face, edited, model_output), note

    def api_edit(self, face: Face | None, custom: dict, edits: dict | None, method: str, keep: list[str] | None,
                 levels: str) -> tuple[Image.Image, str]:
        """API: edit the session's encoded face by {slider label or attribute: value}; keep = attributes to hold.
        Edits apply the calibrated defaults, a local slider's region among them, as the CLI's do. Returns the whole
        photo, edited, at its own resolution, and what was applied: the strength shown and, when below 100%, why
        (the inputs are validated by app.server.guard_inputs)."""
        if face is None:
            raise gr.Error("no face yet: call /encode with a photo first (in the same client session)")
        if not isinstance(edits, dict) or not all(isinstance(v, (int, float)) for v in edits.values()):
            raise gr.Error('edits must be a JSON object of numbers, e.g. {"Smiling": 1.0, "Age": -0.5}')
        deadline = self._deadline("the edit")
        edited = self._render(face, edits, method, keep or [], levels, custom, deadline.check)
        self._on_time(deadline)
        applied = ", ".join(f"{k} {float(v) * edited.strength:+.3g}" for k, v in edits.items() if v) or "nothing"
        message = f"Applied {edited.strength:.1%} of the requested strength ({applied})."
        return self.service.edited_photo(face, edited), " ".join(p for p in (message, edited.note) if p)

    def reset(self, face: Face | None, model_output: bool):
        image = self._shown(face, None, model_output) if face is not None else None
        return [0.0] * (len(self.labels) + EXTRA_SLOTS) + [image, ""]

    def whole_photo(self, face: Face | None, custom: dict, slots: list[str], method: str, disentangle: bool,
                    local: bool, keep: list[str], levels: str, model_output: bool, *values: float):
        """The whole edited photo at its own resolution (shown, and offered as PNG downloads with the edited face
        crop and the model's own output): computed on request, not on every slider move."""
        if face is None:
            raise gr.Error("upload a photo first")
        deadline = self._deadline("the whole photo")
        edited = self._render(face, self._edits(slots, values), method, keep if disentangle else [], levels, custom,
                              deadline.check, local)
        self._on_time(deadline)
        photo = self.service.edited_photo(face, edited)
        self._on_time(deadline)
        crop = self.service.edited_crop(face, edited)
        self._on_time(deadline)
        model_size = self.service.image_size
        files = [save_output(png_bytes(photo), f"edited_photo_{photo.width}x{photo.height}.png"),
                 save_output(png_bytes(crop), f"edited_face_{crop.width}px.png"),
                 save_output(png_bytes(to_pil(edited.image)), f"model_output_{model_size}px.png")]
        return photo, files

    def _slot_updates(self, slots: list[str], fresh: str | None = None) -> list[dict]:
        updates = []
        for i in range(EXTRA_SLOTS):
            if i < len(slots):
                update = {"visible": True, "label": slots[i]}
                if slots[i] == fresh:
                    update["value"] = 0.0
                updates.append(gr.update(**update))
            else:
                updates.append(gr.update(visible=False, value=0.0))
        return updates

    def add_attribute(self, attribute: str | None, slots: list[str]):
        if not attribute:
            raise gr.Error("choose an attribute to add")
        if attribute not in self.other_attributes:
            raise gr.Error(f"{attribute!r} is not one of the other attributes: {self.other_attributes}")
        if attribute in slots:
            gr.Info(f"{attribute} already has a slider")
            return [slots, *self._slot_updates(slots)]
        if len(slots) >= EXTRA_SLOTS:
            raise gr.Error(f"all {EXTRA_SLOTS} extra sliders are in use")
        slots = [*slots, attribute]
        return [slots, *self._slot_updates(slots, fresh=attribute)]

    def custom_slider(self, name: str, with_files: list[str] | None, without_files: list[str] | None,
                      custom: dict | None, slots: list[str] | None, keep: list[str] | None,
                      request: gr.Request | None = None, progress: gr.Progress = gr.Progress()):
        """Encode two small sets of photos, fit a direction with scikit-learn, cross-validate it on the same photos
        (app/custom_check.py) and offer it as a new slider with the verdict. Progress is shown per photo and per
        fold; Cancel (this session's stop flag) or the request's deadline ends the work between them."""
        custom, slots = dict(custom or {}), list(slots or [])
        name = (name or "").strip()
        if not name:
            raise gr.Error("give the new slider a name, e.g. 'Freckles'")
        if name in self.labels or name in self.service.attributes:
            raise gr.Error(f"{name!r} is already a built-in slider or attribute; choose another name")
        if name not in slots and len(slots) >= EXTRA_SLOTS:
            raise gr.Error(f"all {EXTRA_SLOTS} extra sliders are in use")
        deadline = self._deadline("the custom slider", "try again with fewer photos")
        session = request.session_hash if request is not None else None
        stop = threading.Event()
        if session:
            self._stops[session] = stop

        def check() -> None:
            if stop.is_set():
                raise Cancelled(CANCELLED)
            deadline.check()

        def step(unit: str):
            return lambda done, total, what: progress((done, total), desc=what, unit=unit)

        try:
            fitted = self.service.fit_custom_direction(with_files or [], without_files or [], step("photos"), check)
            try:
                verdict = check_custom_slider(self.service, fitted.latents_with, fitted.latents_without,
                                              step("folds"), check).verdict
            except ValueError as err:  # too few photos, a fold that cannot be fitted, the deadline
                verdict = f"Not cross-validated: {err}"
        except Cancelled as err:
            return [custom, slots, str(err), gr.update(), *[gr.update()] * EXTRA_SLOTS]
        except ValueError as err:
            raise user_error(err) from None
        finally:
            if session and self._stops.get(session) is stop:
                del self._stops[session]
        custom[name] = fitted.vector
        if name not in slots:
            slots.append(name)
        message = (f"Slider **{name}** fitted on {fitted.n_with} faces with and {fitted.n_without} without; it is "
                   f"in the extra sliders.\n\n**Cross-validated on your photos:** {verdict}")
        if fitted.skipped:
            message += "\n\nSkipped: " + "; ".join(fitted.skipped)
        keep_update = gr.update(choices=self._keep_choices(custom), value=list(keep or []))
        return [custom, slots, message, keep_update, *self._slot_updates(slots, fresh=name)]

    def cancel_custom(self, request: gr.Request | None = None) -> str:
        """The Cancel button: this session's running fit stops at its next safe point (between photos or folds).
        Gradio's cancels= alone would not stop it: a handler in a worker thread is never interrupted."""
        stop = self._stops.get(request.session_hash) if request is not None else None
        if stop is None:
            return "Nothing to cancel."
        stop.set()
        return CANCELLED

    def _keep_choices(self, custom: dict) -> list[str]:
        return [*self.labels, *self.other_attributes, *custom]

    # -- interpolate and sample tabs -------------------------------------------------------------
    def interpolate(self, a: dict | None, b: dict | None, frames: float, spherical: bool):
        a, b = raw_image(a), raw_image(b)
        if a is None or b is None:
            raise gr.Error("choose two faces (A and B) first")
        n = int(frames)
        if not 2 <= n <= MAX_UI_FRAMES:
            raise gr.Error(f"the number of frames must be in 2..{MAX_UI_FRAMES}, got {n}")
        deadline = self._deadline("the interpolation", "try again with fewer frames")
        faces = []
        for name, source in (("A", a), ("B", b)):
            try:
                faces.append(self.service.face_from_image(source, deadline.check))
            except LimitError as err:
                raise user_error(err) from None
            except (ImageError, ValueError) as err:
                raise gr.Error(f"face {name}: {err}", duration=None) from None
        try:
            images = self.service.interpolate_faces(*faces, n, spherical, deadline.check)
        except LimitError as err:
            raise user_error(err) from None
        gif = save_output(animated_gif(images), "interpolation.gif")
        return images, gr.update(maximum=n - 1, value=0, visible=True), images[0], gif, images

    def scrub(self, frames: list[Image.Image] | None, index: float) -> Image.Image | None:
        if not frames:
            return None
        return frames[min(max(int(index), 0), len(frames) - 1)]

    def sample(self, temperature: float, seed: float, count: float):
        try:
            images = self.service.sample(int(count), float(temperature), int(seed),
                                         self._deadline("sampling", "ask for fewer samples").check)
        except ValueError as err:
            raise user_error(err) from None
        return [self.service.display(x) for x in images], list(images), None

    def select(self, evt: gr.SelectData) -> int:
        return evt.index

    def pick(self, samples: list[torch.Tensor] | None, index: int | None) -> Image.Image:
        if not samples or index is None:
            raise gr.Error("click a sample first")
        return to_pil(samples[index])

    # -- layout ------------------------------------------------------------------------------------
    def _slider(self, label: str, visible: bool = True) -> gr.Slider:
        return gr.Slider(-SLIDER_LIMIT, SLIDER_LIMIT, value=0.0, step=SLIDER_STEP, label=label, visible=visible,
                         min_width=160, elem_id="slider-" + "-".join(label.lower().split()))

    def build(self) -> gr.Blocks:
        service = self.service
        size = service.image_size
        with gr.Blocks(title="Glow face editor", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
            face = gr.State(None)
            custom = gr.State({})
            slots = gr.State([])
            frames_state = gr.State([])
            samples_state = gr.State([])
            selected = gr.State(None)
            gr.Markdown(INTRO)
            with gr.Tabs() as tabs:
                with gr.Tab("Edit", id="edit"):
                    with gr.Row():
                        with gr.Column(scale=1, min_width=240):
                            photo = gr.Image(label="Your photo", sources=["upload", "clipboard", "webcam"],
                                             type="filepath", elem_id="photo")
                            if self.examples:
                                gr.Examples(self.examples, inputs=photo, label="Examples (samples of this model)")
                            info = gr.Markdown(label="info", elem_id="info")
                        shown = dict(interactive=False, format=DISPLAY_FORMAT)
                        view = service.display_size
                        aligned = gr.Image(label="Your face, aligned", elem_id="aligned", height=view, **shown)
                        with gr.Column(scale=1, min_width=view):
                            edited = gr.Image(label="Edited", elem_id="edited", height=view, **shown)
                            edit_note = gr.Markdown(elem_id="edit-note")
                            model_output = gr.Checkbox(label=f"Show the model's own {size}x{size} output "
                                                       f"(enlarged) instead of your photo's pixels", value=False)
                    if not self.labels:
                        gr.Markdown("This model has no attribute directions (directions.safetensors): only custom "
                                    "sliders are available.")
                    with gr.Row():
                        with gr.Column(scale=3):
                            base = []
                            for start in range(0, len(self.labels), 5):
                                with gr.Row():
                                    base += [self._slider(label) for label in self.labels[start:start + 5]]
                            with gr.Row():
                                extra = [self._slider(f"extra {i + 1}", visible=False) for i in range(EXTRA_SLOTS)]
                        with gr.Column(scale=1, min_width=260):
                            method = gr.Radio([(label, key) for key, label in self.service.method_labels().items()],
                                              value=AUTO_METHOD, label="Directions")
                            disentangle = gr.Checkbox(label="Disentangle: hold these attributes fixed", value=False)
                            local = gr.Checkbox(label="Keep each edit to its part of the face (the sliders whose "
                                                "calibration found that it leaks less)", value=True)
                            keep = gr.Dropdown(self._keep_choices({}), value=[], multiselect=True,
                                               label="Attributes to keep fixed")
                            levels = gr.Radio(list(self.level_choices), value="all levels",
                                              label="Latent levels an edit touches (coarse only keeps identity)")
                            with gr.Row():
                                reset = gr.Button("Reset")
                                save = gr.Button("Whole photo")
                    with gr.Accordion("Whole photo, edited, at its own resolution", open=False) as whole:
                        with gr.Row():
                            whole_image = gr.Image(label="Edited photo", elem_id="whole-photo", interactive=False,
                                                   format="png", height=480)
                            files = gr.File(label="PNG downloads: whole photo, face crop, model output",
                                            file_count="multiple", interactive=False, height=140)
                    with gr.Accordion("More attributes", open=False):
                        with gr.Row():
                            other = gr.Dropdown(self.other_attributes, label="Attribute", value=None)
                            add = gr.Button("Add slider")
                    with gr.Accordion("Custom slider from your own photos", open=False):
                        gr.Markdown("Upload photos of faces **with** and **without** some property (5 or more of "
                                    "each work best); the gap between their mean latents, within the span of the "
                                    "built-in attribute directions, gives a new slider (so it edits what a mix of the 40 CelebA "
                                    "attributes can show; a dozen photos cannot pin down more). "
                                    "It is then cross-validated on your photos (refitted without some of them and "
                                    "tried on those), and the message says whether it is real.")
                        with gr.Row():
                            custom_name = gr.Textbox(label="Slider name", placeholder="e.g. Freckles")
                            with_files = gr.File(label="Faces with it", file_count="multiple", type="filepath")
                            without_files = gr.File(label="Faces without it", file_count="multiple", type="filepath")
                        with gr.Row():
                            fit = gr.Button("Fit slider")
                            cancel_fit = gr.Button("Cancel", variant="stop")
                        fit_message = gr.Markdown(label="message")
                    api_edits = gr.JSON(visible=False)
                    api_button = gr.Button(visible=False)
                with gr.Tab("Interpolate", id="interpolate"):
                    with gr.Row():
                        face_a = gr.Image(label="Face A", sources=["upload", "clipboard", "webcam"], type="filepath")
                        face_b = gr.Image(label="Face B", sources=["upload", "clipboard", "webcam"], type="filepath")
                    if self.examples:
                        with gr.Row():
                            gr.Examples(self.examples, inputs=face_a, label="Examples for A")
                            gr.Examples(self.examples, inputs=face_b, label="Examples for B")
                    with gr.Row():
                        n_frames = gr.Slider(2, MAX_UI_FRAMES, value=8, step=1, label="Frames")
                        spherical = gr.Checkbox(label="Spherical (slerp) instead of linear", value=False)
                        go = gr.Button("Interpolate", variant="primary")
                    strip = gr.Gallery(label="Frames", columns=8, height="auto", format=DISPLAY_FORMAT)
                    with gr.Row():
                        scrubber = gr.Slider(0, 7, value=0, step=1, label="Scrub", visible=False)
                        frame = gr.Image(label="Frame", **shown)
                        gif = gr.File(label="Animated GIF")
                with gr.Tab("Sample", id="sample"):
                    with gr.Row():
                        temperature = gr.Slider(0.0, 1.0, value=service.recommended_temperature, step=0.05,
                                                label="Temperature")
                        seed = gr.Number(value=0, precision=0, label="Seed")
                        count = gr.Slider(1, 32, value=8, step=1, label="Samples")
                        draw = gr.Button("Sample", variant="primary")
                    gallery = gr.Gallery(label=f"Samples: the model's {size}x{size} output, enlarged to "
                                         f"{service.display_size}px (Lanczos); click one to pick it", columns=8, height="auto",
                                         format=DISPLAY_FORMAT)
                    with gr.Row():
                        to_edit = gr.Button("Edit this face")
                        to_a = gr.Button("Use as face A")
                        to_b = gr.Button("Use as face B")

            controls = [face, custom, slots, method, disentangle, local, keep, levels, model_output, *base, *extra]
            render = dict(fn=self.render, inputs=controls, outputs=[edited, edit_note], show_progress="hidden",
                          api_visibility="private", concurrency_id="render")
            photo.change(self.encode, photo, [face, aligned, info], api_name="encode",
                         preprocess=False).success(**render)
            gr.on([s.input for s in (*base, *extra)]
                  + [c.change for c in (method, disentangle, local, keep, levels, model_output)],
                  trigger_mode="always_last", **render)
            api_button.click(self.api_edit, [face, custom, api_edits, method, keep, levels], [whole_image, edit_note],
                             api_name="edit", concurrency_id="render")
            reset.click(self.reset, [face, model_output], [*base, *extra, edited, edit_note],
                        api_visibility="private")
            save.click(lambda: gr.Accordion(open=True), None, whole, api_visibility="private").then(
                self.whole_photo, controls, [whole_image, files], api_visibility="private")
            add.click(self.add_attribute, [other, slots], [slots, *extra], api_visibility="private")
            fitting = fit.click(self.custom_slider, [custom_name, with_files, without_files, custom, slots, keep],
                                [custom, slots, fit_message, keep, *extra], api_name="custom_slider")
            cancel_fit.click(self.cancel_custom, None, fit_message, cancels=[fitting], api_visibility="private")
            go.click(self.interpolate, [face_a, face_b, n_frames, spherical],
                     [strip, scrubber, frame, gif, frames_state], api_name="interpolate", preprocess=False)
            scrubber.input(self.scrub, [frames_state, scrubber], frame, trigger_mode="always_last",
                           show_progress="hidden", api_visibility="private")
            draw.click(self.sample, [temperature, seed, count], [gallery, samples_state, selected],
                       api_name="sample")
            gallery.select(self.select, None, selected, api_visibility="private")
            to_edit.click(self.pick, [samples_state, selected], photo, api_visibility="private").success(
                lambda: gr.Tabs(selected="edit"), None, tabs, api_visibility="private")
            to_a.click(self.pick, [samples_state, selected], face_a, api_visibility="private").success(
                lambda: gr.Tabs(selected="interpolate"), None, tabs, api_visibility="private")
            to_b.click(self.pick, [samples_state, selected], face_b, api_visibility="private").success(
                lambda: gr.Tabs(selected="interpolate"), None, tabs, api_visibility="private")
        return demo
