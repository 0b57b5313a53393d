"""Face regions: where their masks lie on the aligned face, and local edits through the service, the evaluator and
the calibration file."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.align import TEMPLATE
from app.calibration import Calibration, SliderCalibration
from app.edit_evaluation import decode_with_backoff
from app.regions import EDGE, REGIONS, composite, region_mask, union_mask
from app.service import SLIDERS, calibrated_sliders


def _at(mask: torch.Tensor, point) -> float:
    """The mask at a template landmark (x, y as fractions of the side)."""
    size = mask.shape[-1]
    return float(mask[int(point[1] * size), int(point[0] * size)])


EYES, MOUTH = TEMPLATE[:2], TEMPLATE[3:]


@pytest.mark.parametrize("name, inside, outside", [
    ("eyes", EYES, MOUTH),
    ("mouth", MOUTH, EYES),
    ("lower face", [*MOUTH, (0.5, 0.99)], EYES),
    ("forehead", [(0.5, 0.01), (0.3, 0.2)], MOUTH),
])
def test_each_region_covers_its_landmarks_and_none_of_the_others(name, inside, outside):
    mask = region_mask(name, 64)
    assert all(_at(mask, p) == 1.0 for p in inside)
    assert all(_at(mask, p) == 0.0 for p in outside)


@pytest.mark.parametrize("name", sorted(REGIONS))
def test_masks_are_soft_bounded_and_frame_the_same_at_any_size(name):
    mask = region_mask(name, 64)
    assert mask.shape == (64, 64) and mask.dtype == torch.float32
    assert float(mask.min()) == 0.0 and float(mask.max()) == 1.0
    # the soft edge spans EDGE of the side: no step between neighbours larger than a smoothstep's steepest over it
    steepest = 1.5 / (EDGE * 64)
    assert float(mask.diff(dim=0).abs().max()) <= steepest + 1e-6
    assert float(mask.diff(dim=1).abs().max()) <= steepest + 1e-6
    halved = F.avg_pool2d(region_mask(name, 128)[None, None], 2)[0, 0]
    assert torch.allclose(halved, mask, atol=0.02)


def test_bad_region_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown face region 'ears'.*eyes"):
        region_mask("ears", 64)
    with pytest.raises(ValueError, match="positive size"):
        region_mask("eyes", 0)


def test_union_is_the_largest_mask_and_any_whole_face_edit_makes_it_the_whole_face():
    eyes, mouth = region_mask("eyes", 32), region_mask("mouth", 32)
    assert torch.equal(union_mask(["eyes", "mouth"], 32), torch.maximum(eyes, mouth))
    assert union_mask(["eyes", None], 32) is None and union_mask([], 32) is None


def test_composite_keeps_the_base_outside_and_the_edit_inside():
    base, edited = torch.zeros(2, 3, 64, 64), torch.ones(2, 3, 64, 64)
    mask = region_mask("mouth", 64)
    out = composite(base, edited, mask)
    assert torch.equal(out[:, :, mask == 0], base[:, :, mask == 0])
    assert torch.equal(out[:, :, mask == 1], edited[:, :, mask == 1])
    assert composite(base, edited, None) is edited


# -- local edits through the service ----------------------------------------------------------------------
@pytest.fixture
def local_smile(service):
    """The tiny service with Smiling calibrated to stay in its region, and Male not."""
    service.set_calibration(Calibration({"Smiling": SliderCalibration("classifier", 1.0, local=True),
                                         "Male": SliderCalibration("classifier", 1.0)}))
    yield service
    service.set_calibration(None)


@pytest.fixture(scope="module")
def face(service, celeba_dir):
    from PIL import Image

    from flow_model.imaging import celeba_crop, to_tensor
    path = sorted((celeba_dir / "img_align_celeba").glob("*.jpg"))[0]
    return service.encode(to_tensor(celeba_crop(Image.open(path).convert("RGB"), service.image_size)))


def test_a_local_slider_changes_only_its_region(local_smile, face):
    service = local_smile
    mask = region_mask("lower face", service.image_size)
    assert service.slider("Smiling").local and service.slider("Smiling").region == "lower face"
    local = service.edit(face, {"Smiling": 1.5})
    whole = service.edit(face, {"Smiling": 1.5}, local=False)
    assert local.strength == whole.strength == 1.0
    assert torch.equal(local.change[:, mask == 0], torch.zeros_like(local.change[:, mask == 0]))
    assert torch.equal(local.image[:, mask == 0], face.image[:, mask == 0])
    assert torch.allclose(local.change[:, mask == 1], whole.change[:, mask == 1])
    assert float(whole.change[:, mask == 0].abs().max()) > 0  # the whole-face edit does change the rest
    # the image shown is the composite, rounded as the model rounds its output
    decoded = face.decoded + mask * (whole.change / 256.0)
    assert torch.equal(local.image, service.model.quantize(decoded))


def test_an_edit_with_any_whole_face_slider_changes_the_whole_face(local_smile, face):
    service = local_smile
    assert service.edit_mask(["Smiling"]) is not None
    for keys in (["Smiling", "Male"], ["Smiling", "Bald"]):  # Male calibrated whole-face; Bald uncalibrated
        assert service.edit_mask(keys) is None
    assert service.edit_mask(["Smiling"], local=False) is None
    both = service.edit(face, {"Smiling": 1.0, "Male": 0.5})
    assert torch.equal(both.image, service.edit(face, {"Smiling": 1.0, "Male": 0.5}, local=False).image)
    # a slider at 0 does not count: only Smiling moves, so its region holds
    smile = service.edit(face, {"Smiling": 1.0}).image
    assert torch.equal(service.edit(face, {"Smiling": 1.0, "Male": 0.0}).image, smile)


def test_the_evaluators_decode_keeps_a_local_edit_where_the_service_does(local_smile, face):
    service = local_smile
    vector = service.edit_vectors(["Smiling"])[0]
    far = face.latent + 10 * vector  # diverges on the tiny model: shown at half strength, still kept to the region
    mask = service.edit_mask(["Smiling"])
    images, strength = decode_with_backoff(service, face.latent.expand(2, -1),
                                           torch.stack([face.latent + vector, far]), mask=mask)
    assert torch.equal(images[0], service.edit(face, {"Smiling": 1.0}).image)
    backed_off = service.edit(face, {"Smiling": 10.0})
    assert 0 < strength[1] < 1 and float(strength[1]) == backed_off.strength
    assert torch.equal(images[1], backed_off.image)
    assert torch.equal(images[1][:, mask == 0], face.image[:, mask == 0])


def test_local_is_calibrated_only_for_sliders_with_a_region_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="local must be true or false"):
        SliderCalibration("classifier", 1.0, local="yes")
    cal = Calibration({"Eyeglasses": SliderCalibration("classifier", 2.0, local=True),
                       "Age": SliderCalibration("classifier", 2.0, local=True)})
    cal.save(tmp_path / "calibration.json")
    back = Calibration.load(tmp_path / "calibration.json")
    assert back.get("Eyeglasses").local and back.get("Age").local
    specs = calibrated_sliders(back)
    assert specs["Eyeglasses"].local and specs["Eyeglasses"].region == "eyes"
    assert not specs["Age"].local and specs["Age"].region is None  # Age has no region to stay in
    assert {s.region for s in SLIDERS} - {None} <= set(REGIONS)
