"""Loading: the CelebA layout with its quirks, every image mode, bad files skipped and counted, split and crop."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flow_model.data import (
    EpochSampler,
    decode_all,
    load_images,
    open_dataset,
    read_celeba_attributes,
    split_keeping_validation,
    split_names,
)
from flow_model.imaging import ImageError, celeba_crop, load_image, to_tensor

NAMES = ["Smiling", "Male", "Young"]
SIZE = 8

# file name -> the RGB colour it must decode to (None: a bad file that must be skipped and counted)
EXPECTED = {
    "000001.jpg": (200, 40, 40),  # 178x218 RGB
    "000002.jpg": (40, 200, 40),  # 89x109 RGB
    "000003.jpg": (100, 100, 100),  # grayscale
    "000004.png": (255, 255, 255),  # RGBA, fully transparent: composited on white
    "000005.jpg": (255, 0, 0),  # CMYK (C=0, M=255, Y=255, K=0)
    "000006.png": (128, 128, 128),  # 16-bit grayscale at half scale: rescaled, not clipped to white
    "000007.png": (10, 20, 250),  # palette
    "000008.jpg": None,  # truncated JPEG
    "000009.jpg": None,  # text with a .jpg name
    "000010.jpg": None,  # empty file
}


def solid(mode: str, size: tuple[int, int], colour) -> Image.Image:
    return Image.new(mode, size, colour)


def jpeg_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_fake_celeba(root: Path) -> Path:
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    solid("RGB", (178, 218), EXPECTED["000001.jpg"]).save(images / "000001.jpg", quality=95)
    solid("RGB", (89, 109), EXPECTED["000002.jpg"]).save(images / "000002.jpg", quality=95)
    solid("L", (89, 109), 100).save(images / "000003.jpg", quality=95)
    solid("RGBA", (89, 109), (0, 0, 0, 0)).save(images / "000004.png")
    solid("CMYK", (89, 109), (0, 255, 255, 0)).save(images / "000005.jpg", quality=95)
    Image.fromarray(np.full((109, 89), 32768, dtype=np.uint16)).save(images / "000006.png")
    palette = solid("P", (89, 109), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 20, 250] + [0, 0, 0] * 252)
    palette.save(images / "000007.png")
    good = jpeg_bytes(solid("RGB", (89, 109), (1, 2, 3)))
    (images / "000008.jpg").write_bytes(good[: len(good) // 2])
    (images / "000009.jpg").write_text("this is not an image\n")
    (images / "000010.jpg").write_bytes(b"")
    solid("RGB", (89, 109), (0, 0, 0)).save(images / "999999.jpg")  # an image without an attribute row
    rows = [f"{name} {' '.join(['1', '-1', '1'] if i % 2 else ['-1', '1', '-1'])}" for i, name in enumerate(EXPECTED)]
    rows += ["000011.jpg  1  1  1", "000012.jpg -1 -1 -1"]  # rows whose images are not there (as in the real file)
    text = "\r\n".join([str(len(rows)), " ".join(NAMES) + " ", *rows, ""])
    (root / "list_attr_celeba.txt").write_bytes(text.encode())
    return root


@pytest.fixture
def fake_celeba(tmp_path: Path) -> Path:
    return write_fake_celeba(tmp_path / "celeba")


def test_attribute_file_with_crlf_and_count_line(fake_celeba):
    names, rows = read_celeba_attributes(fake_celeba / "list_attr_celeba.txt")
    assert names == NAMES
    assert len(rows) == 12 and "\r" not in "".join(rows)
    assert rows["000002.jpg"].tolist() == [1, -1, 1] and rows["000011.jpg"].dtype == np.int8


def test_attribute_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "attrs.txt"
    bad.write_text("three\r\nA B\r\n")
    with pytest.raises(ValueError, match="first line should be the image count"):
        read_celeba_attributes(bad)
    bad.write_text("2\r\nA B\r\n1.jpg 1 -1\r\n2.jpg 1\r\n")
    with pytest.raises(ValueError, match=r"attrs.txt:4: expected 3 fields, got 2"):
        read_celeba_attributes(bad)


def test_count_mismatch_is_only_a_warning(tmp_path, caplog):
    attrs = tmp_path / "attrs.txt"
    attrs.write_text("5\nA B\n1.jpg 1 -1\n")
    with caplog.at_level(logging.WARNING):
        _, rows = read_celeba_attributes(attrs)
    assert len(rows) == 1 and "announces 5 rows but holds 1" in caplog.text


def test_open_dataset_joins_images_and_rows(fake_celeba, caplog):
    with caplog.at_level(logging.WARNING):
        data = open_dataset(fake_celeba)
    assert data.names() == [f"img_align_celeba/{n}" for n in EXPECTED]  # not 999999.jpg, not the missing rows
    assert "1 images in" in caplog.text and "no attribute row" in caplog.text
    assert data.attributes == NAMES and data.labels.shape == (len(EXPECTED), 3)
    assert data.labels[1].tolist() == [1, -1, 1] and data.labels[2].tolist() == [-1, 1, -1]
    assert len(open_dataset(fake_celeba, limit=4)) == 4


def test_open_dataset_plain_folder_and_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    solid("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a" / "b" / "x.PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    data = open_dataset(tmp_path / "a")
    assert data.names() == ["b/x.PNG"] and data.labels is None
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        open_dataset(tmp_path / "empty")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_and_counted(fake_celeba, workers):
    data = open_dataset(fake_celeba)
    images, kept, skipped = decode_all(data.files, SIZE, workers=workers, progress=False)
    good = [i for i, colour in enumerate(EXPECTED.values()) if colour is not None]
    assert skipped == len(EXPECTED) - len(good) == 3
    assert kept.tolist() == good
    assert images.dtype == torch.uint8 and images.shape == (len(good), 3, SIZE, SIZE)


def test_every_image_mode_decodes_to_its_colour(fake_celeba):
    data = open_dataset(fake_celeba)
    images, used = load_images(data, SIZE, progress=False, workers=0)
    colours = {name: colour for name, colour in EXPECTED.items() if colour is not None}
    assert [Path(n).name for n in used.names()] == list(colours)
    for image, (name, colour) in zip(images, colours.items()):
        mean = image.float().mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float32), atol=4), (name, mean.tolist())
        assert image.float().std(dim=(1, 2)).max() < 2, name
    assert used.labels.shape == (len(colours), 3)


def test_load_images_cache(fake_celeba, tmp_path, caplog):
    data = open_dataset(fake_celeba)
    cache = tmp_path / "cache.safetensors"
    images, used = load_images(data, SIZE, cache, workers=0, progress=False)
    assert cache.is_file() and Path(str(cache) + ".json").is_file()
    for f in data.files:  # from now on only the cache can provide the pixels
        f.unlink()
    again, used_again = load_images(data, SIZE, cache, workers=0, progress=False)
    assert torch.equal(images, again) and used_again.names() == used.names()
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="none of the 10 images"):
        load_images(data, SIZE * 2, cache, workers=0, progress=False)  # other size: rebuilt, from files now gone
    assert "built for other files or size" in caplog.text
    cache.write_bytes(b"garbage")
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="none of the 10 images"):
        load_images(data, SIZE, cache, workers=0, progress=False)
    assert "unreadable" in caplog.text


def test_split_is_deterministic_and_disjoint(fake_celeba):
    data = open_dataset(fake_celeba)
    split = split_names(data, 0.3, seed=1)
    assert split == split_names(data, 0.3, seed=1)
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == sorted(data.names())
    assert len(split["val"]) == 3
    others = [split_names(data, 0.3, seed=s)["val"] for s in range(2, 6)]
    assert any(v != split["val"] for v in others)
    with pytest.raises(ValueError, match="val_fraction"):
        split_names(data, 1.0, seed=1)


def test_split_does_not_depend_on_listing_order(fake_celeba):
    data = open_dataset(fake_celeba)
    shuffled = data.subset(reversed(range(len(data))))
    assert split_names(shuffled, 0.3, seed=4) == split_names(data, 0.3, seed=4)


def test_celeba_crop_frames_both_resolutions_alike(celeba_dir):
    full = next(f for f in sorted((celeba_dir / "img_align_celeba").glob("*.jpg")) if Image.open(f).size == (178, 218))
    big = load_image(full)
    small = big.resize((89, 109), Image.Resampling.LANCZOS)
    a = to_tensor(celeba_crop(big, 32)).float()
    b = to_tensor(celeba_crop(small, 32)).float()
    same = (a - b).abs().mean()
    off = (a - to_tensor(celeba_crop(small.crop((3, 3, 89, 109)).resize((89, 109)), 32)).float()).abs().mean()
    assert same < 2, same  # resampling noise only (measured 0.23 levels)
    assert off > 10 * same, (same, off)  # a framing shift of a few pixels is visible to this measure


@pytest.mark.parametrize("size", [(300, 150), (200, 160), (100, 100)])
def test_celeba_crop_of_a_wide_photo_stays_on_the_image(size):
    """A landscape photo is wider than its CelebA face square is tall: the square must shrink to fit, not fail."""
    img = Image.new("RGB", size, (0, 0, 0))
    img.paste((255, 255, 255), (size[0] // 2 - 5, 0, size[0] // 2 + 5, size[1]))  # a white stripe down the middle
    crop = to_tensor(celeba_crop(img, 8)).float()
    assert crop.shape == (3, 8, 8)
    assert crop[:, :, 3:5].mean() > crop[:, :, 0].mean() + 30  # still centred on the middle


def test_several_image_folders_share_one_label_file(fake_celeba, caplog):
    extra = fake_celeba / "img_align_celeba_extra"
    extra.mkdir()
    solid("RGB", (89, 109), (9, 9, 9)).save(extra / "000011.jpg")  # labelled below
    solid("RGB", (89, 109), (9, 9, 9)).save(extra / "777777.jpg")  # no row: left out
    (fake_celeba / "img_align_celeba_old.txt").write_text("a file, not a folder")
    attrs = fake_celeba / "list_attr_celeba.txt"
    attrs.write_bytes(attrs.read_bytes() + b"000011.jpg  1  1  1\r\n")
    with caplog.at_level(logging.WARNING):
        both = open_dataset(fake_celeba)
    assert both.names() == [f"img_align_celeba/{n}" for n in EXPECTED] + ["img_align_celeba_extra/000011.jpg"]
    assert both.labels[-1].tolist() == [1, 1, 1] and "img_align_celeba_extra" in caplog.text
    assert open_dataset(fake_celeba, image_dirs=["img_align_celeba"]).names() == [
        f"img_align_celeba/{n}" for n in EXPECTED]
    assert len(open_dataset(fake_celeba, image_dirs=["img_align_celeba_extra"])) == 1
    with pytest.raises(ValueError, match="img_align_celeba_typo not found.*img_align_celeba, img_align_celeba_extra"):
        open_dataset(fake_celeba, image_dirs=["img_align_celeba_typo"])


def test_a_kept_validation_list_stays_validation(fake_celeba, caplog):
    data = open_dataset(fake_celeba)
    val = ["img_align_celeba/000002.jpg", "img_align_celeba/000007.png", "img_align_celeba/gone.jpg"]
    with caplog.at_level(logging.WARNING):
        split = split_keeping_validation(data, val)
    assert split["val"] == val[:2] and "1 of 3 validation images are not in the data" in caplog.text
    assert sorted(split["train"] + split["val"]) == sorted(data.names())
    with pytest.raises(ValueError, match="none of the given validation images"):
        split_keeping_validation(data, ["elsewhere/1.jpg"])


def test_real_celeba_layout(celeba_dir):
    data = open_dataset(celeba_dir)
    assert len(data) == 14_523 + 11_268 and len(data.attributes) == 40
    assert len(open_dataset(celeba_dir, image_dirs=["img_align_celeba"])) == 14_523
    assert set(np.unique(data.labels).tolist()) == {-1, 1}
    assert data.names()[0] == "img_align_celeba/000001.jpg"


def bomb_png(width: int, height: int) -> bytes:
    """Just the header of a huge 1-bit PNG: Pillow refuses it in open(), before any pixel is read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data,message", [
    (bomb_png(20_000, 10_000), "too large"),
    (bomb_png(7_000, 7_000), "49 megapixels"),
    (b"not an image at all", "not an image"),
    (b"x" * 101, "limit is 0 MB"),
])
def test_load_image_rejects_with_a_reason(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data, max_bytes=100 if len(data) == 101 else 2**20)


def test_a_huge_image_is_skipped_by_the_loader(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png(20_000, 10_000))
    solid("RGB", (20, 20), (5, 5, 5)).save(tmp_path / "ok.png")
    images, kept, skipped = decode_all(sorted(tmp_path.iterdir()), SIZE, workers=0, progress=False)
    assert skipped == 1 and kept.tolist() == [1] and images.shape[0] == 1


def test_load_image_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "none.jpg")


def test_epoch_sampler_shards_and_resumes():
    ranks = [list(EpochSampler(24, 4, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    seen = [i for batches in ranks for batch in batches for i in batch]
    assert sorted(seen) == list(range(24))  # ranks see disjoint shards that cover the epoch
    padded = [i for r in range(2) for batch in EpochSampler(23, 4, seed=3, rank=r, world=2) for i in batch]
    assert sorted(set(padded)) == list(range(23)) and len(padded) == 24  # padded like DistributedSampler
    sampler = EpochSampler(23, 4, seed=3)
    first = list(sampler)
    assert first == list(EpochSampler(23, 4, seed=3))
    sampler.set_position(epoch=1)
    second = list(sampler)
    assert second != first
    sampler.set_position(epoch=1, start_batch=2)
    assert list(sampler) == second[2:] and len(sampler) == len(second) - 2
