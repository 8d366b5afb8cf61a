"""Single images are first-class inputs (issue 15): files, PIL images, [H, W, 3] arrays and tensors give a one-frame
result of the image's size for every family; EXIF orientation; pixel modes; clear errors; still-image overlays and
``lvseg predict photo.png`` writing ``overlay.png``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import lvseg
from lvseg.cli import main
from lvseg.errors import ImageDecodeError, InvalidInputError, VideoDecodeError, VideoNotFoundError
from lvseg.video import is_image_input, open_video, overlay_frame, write_video

from toymodels import color_video, make_color_model

H, W = 47, 63  # odd on purpose: still-image overlays keep the exact size (video codecs would pad)


def exact_model():
    """The colour model at the scene's own resolution (no resampling), so its masks are exactly the colour's pixels."""
    return make_color_model(short_side=H, max_size=W)


@pytest.fixture(scope="module")
def scene():
    """One frame uint8 [H, W, 3] (blue, a red square) and its exact mask of "red"."""
    frames, masks = color_video(num_frames=3, height=H, width=W, square=15)
    return frames[2], masks[2]


@pytest.fixture
def photo(tmp_path, scene):
    path = tmp_path / "photo.png"
    Image.fromarray(scene[0]).save(path)
    return path


def _masks(result) -> np.ndarray:
    return result.masks.numpy()


# ------------------------------------------------------------------------------------------------ input kinds
def test_every_image_kind_is_a_one_frame_result_equal_to_the_one_frame_video(tmp_path, scene, photo):
    frame, mask = scene
    model = exact_model()
    video = model.predict(frame[None], "the red square", progress=False)  # the same frame as a one-frame video
    assert video.masks.shape == (1, H, W) and not video.is_image
    no_suffix = tmp_path / "download"
    shutil.copy(photo, no_suffix)  # recognised by its PNG signature, not its name
    rgba = np.concatenate([frame, np.full((H, W, 1), 7, np.uint8)], axis=2)
    inputs = {
        "str path": str(photo),
        "Path": photo,
        "no suffix": no_suffix,
        "PIL": Image.open(photo),
        "numpy HxWx3": frame,
        "tensor HxWx3": torch.from_numpy(frame),
        "numpy HxWx4": rgba,
    }
    for kind, image in inputs.items():
        assert is_image_input(image), kind
        result = model.predict(image, "the red square", progress=False)
        assert isinstance(result, lvseg.VideoSegmentation) and result.is_image, kind
        assert result.masks.dtype == torch.bool and result.masks.shape == (1, H, W), kind
        assert np.array_equal(_masks(result), mask[None]), kind
        assert torch.equal(result.masks, video.masks) and torch.equal(result.scores, video.scores), kind
        expected_name = {"str path": "photo", "Path": "photo", "no suffix": "download"}.get(kind, "00000")
        assert result.frame_names == [expected_name], kind
    several = model.predict(photo, ["red", "blue"], progress=False)
    assert [r.masks.shape for r in several] == [(1, H, W)] * 2
    assert np.array_equal(_masks(several[1]), ~mask[None])


def test_the_dimension_rule_between_images_and_videos(scene):
    frame, _ = scene
    gray = np.where(scene[1], 255, 0).astype(np.uint8)  # [H, W]: a grayscale image (white square)
    source = open_video(gray)
    assert source.kind == "image" and source.num_frames == 1
    assert np.array_equal(next(iter(source)), np.repeat(gray[:, :, None], 3, axis=2))
    assert open_video(gray[:, :, None]).kind == "image"  # [H, W, 1]
    assert open_video(frame[None]).kind == "array"  # [1, H, W, 3] stays a one-frame video
    assert open_video(list(frame[None])).kind == "array"  # a list of one frame too
    assert not is_image_input(frame[None]) and not is_image_input([Image.fromarray(frame)])
    with pytest.raises(InvalidInputError, match=r"channels-first.*permute\(1, 2, 0\)"):
        open_video(torch.from_numpy(frame).permute(2, 0, 1).contiguous())  # [3, H, W]
    with pytest.raises(InvalidInputError, match=r"one image \[H, W, 3\].*\[T, H, W\]"):
        open_video(np.zeros((12, H, W), np.uint8))  # a grayscale video without a channel axis
    with pytest.raises(InvalidInputError, match="uint8"):
        open_video(frame.astype(np.float32) / 255)
    with pytest.raises(InvalidInputError, match="uint8"):
        open_video(torch.from_numpy(frame).float())


def test_every_family_segments_an_image_as_its_one_frame_video(tmp_path, monkeypatch):
    """The bundled ReferFormer and a tiny MTTR: an image file equals the decoded frame as a [1, H, W, 3] video."""
    from test_mttr import tiny_model
    from test_predict_outputs import red_circle_video

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")
    frame = red_circle_video(1, height=75, width=101)[0]
    path = tmp_path / "circle.jpg"
    Image.fromarray(frame).save(path, quality=90)
    decoded = np.asarray(Image.open(path).convert("RGB"))  # the JPEG's pixels, as lvseg must read them
    for model in (lvseg.load("referformer-tiny.shapes", device="cpu"), tiny_model()):
        image = model.predict(path, "the red circle", progress=False, return_probabilities=True)
        video = model.predict(decoded[None], "the red circle", progress=False, return_probabilities=True)
        assert image.is_image and image.masks.shape == (1, 75, 101)
        assert torch.equal(image.masks, video.masks) and torch.equal(image.probabilities, video.probabilities)
        assert torch.equal(image.scores, video.scores)
    referformer = lvseg.load("referformer-tiny.shapes", device="cpu")
    found = referformer.predict(frame, "the red circle", progress=False).to_numpy()[0]
    yy, xx = np.mgrid[:75, :101]
    truth = (yy - 37) ** 2 + (xx - 15) ** 2 <= 12**2
    assert (found & truth).sum() / (found | truth).sum() > 0.5  # the bundled model finds the circle in a photo


# ------------------------------------------------------------------------------------------- EXIF orientation
def _displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for an EXIF Orientation tag (TIFF 6.0 / EXIF 2.3 definitions), written with numpy."""
    return {
        1: lambda a: a,
        2: np.fliplr,  # mirrored horizontally
        3: lambda a: np.rot90(a, 2),
        4: np.flipud,  # mirrored vertically
        5: lambda a: a.swapaxes(0, 1),  # mirrored about the top-left / bottom-right diagonal
        6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise to display
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # mirrored about the other diagonal
        8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise to display
    }[orientation](stored)


def _with_orientation(frame: np.ndarray, path: Path, orientation: int, **save) -> Path:
    image = Image.fromarray(frame)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, scene, orientation):
    frame, mask = scene
    frame = frame.copy()
    frame[:5, :9] = (255, 0, 0)  # a red corner mark: every orientation gives a different mask
    mask = mask.copy()
    mask[:5, :9] = True
    model = exact_model()
    path = _with_orientation(frame, tmp_path / "phone.png", orientation)  # lossless: exact pixels
    source = open_video(path)
    assert np.array_equal(next(iter(source)), _displayed(frame, orientation))
    assert source.kind == "image"
    result = model.predict(path, "red", progress=False)
    assert np.array_equal(_masks(result)[0], _displayed(mask, orientation))
    assert torch.equal(model.predict(Image.open(path), "red", progress=False).masks, result.masks)  # PIL too
    # a JPEG (what phones write): the decoded pixels, displayed
    jpeg = _with_orientation(frame, tmp_path / "phone.jpg", orientation, quality=95)
    stored = np.asarray(Image.open(jpeg).convert("RGB"))
    assert np.array_equal(next(iter(open_video(jpeg))), _displayed(stored, orientation))


# ------------------------------------------------------------------------------------------------ pixel modes
def _square(value, background, dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((H, W), bool)
    mask[10:30, 20:40] = True
    return np.where(mask, value, background).astype(dtype), mask


def test_pixel_modes_follow_the_documented_rule(tmp_path, scene):
    frame, mask = scene
    model = exact_model()
    red_index = 0
    palette = Image.fromarray(np.where(mask, 0, 1).astype(np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    transparent = palette.copy()
    transparent.info["transparency"] = red_index  # transparency is dropped: the palette colours are kept
    alpha = np.where(mask[:, :, None], 0, 255).astype(np.uint8)  # the square fully transparent: colours kept
    gray, gray_mask = _square(255, 0)
    cases = {
        "RGB.png": (Image.fromarray(frame), frame, mask, "red"),
        "P.png": (palette, frame, mask, "red"),
        "P-transparency.png": (transparent, frame, mask, "red"),
        "RGBA.png": (Image.fromarray(np.concatenate([frame, alpha], axis=2)), frame, mask, "red"),
        "CMYK.tif": (Image.fromarray(frame).convert("CMYK"), frame, mask, "red"),
        "L.png": (Image.fromarray(gray), np.repeat(gray[:, :, None], 3, 2), gray_mask, "white"),
        "1.png": (Image.fromarray(gray).convert("1"), np.repeat(gray[:, :, None], 3, 2), gray_mask, "white"),
        "LA.png": (Image.fromarray(np.stack([gray, 255 - gray], 2), mode="LA"), np.repeat(gray[:, :, None], 3, 2),
                   gray_mask, "white"),
    }
    for name, (image, pixels, expected, text) in cases.items():
        path = tmp_path / name
        image.save(path)
        assert Image.open(path).mode == name.split(".")[0].split("-")[0], name  # the file really has that mode
        source = open_video(path)
        assert np.array_equal(next(iter(source)), pixels), name
        assert source.kind == "image", name
        assert np.array_equal(_masks(model.predict(path, text, progress=False))[0], expected), name


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    values = np.zeros((H, W), np.uint16)
    values[10:30, 20:40] = 65535
    values[0, :6] = [0, 128, 129, 25828, 65406, 65535]  # round(v / 257): 0, 0, 1, 100, 254, 255
    expected = np.zeros((H, W), np.uint8)
    expected[10:30, 20:40] = 255
    expected[0, :6] = [0, 0, 1, 100, 254, 255]
    expected_rgb = np.repeat(expected[:, :, None], 3, 2)
    model = exact_model()
    for name in ("gray16.png", "gray16.tif"):
        Image.fromarray(values).save(tmp_path / name)
        mode = Image.open(tmp_path / name).mode  # a 16-bit file: Pillow >= 10 opens it as I;16, older Pillow as I
        assert mode.startswith("I;16") or mode == "I", (name, mode)
        assert np.array_equal(next(iter(open_video(tmp_path / name))), expected_rgb), name
        result = model.predict(tmp_path / name, "white", progress=False)
        assert np.array_equal(_masks(result)[0, 10:30, 20:40], np.ones((20, 20), bool)), name
    mode_i = Image.fromarray(values.astype(np.int32))  # mode I (32-bit integer): clipped to 16 bits, same scale
    assert mode_i.mode == "I"
    assert np.array_equal(next(iter(open_video(mode_i))), expected_rgb)
    # frames of a folder follow the same rule (Pillow's own convert("RGB") clips 16-bit values to 255)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(2):
        Image.fromarray(values).save(folder / f"{t}.png")
    assert all(np.array_equal(f, expected_rgb) for f in open_video(folder))
    with pytest.raises(ImageDecodeError, match="mode F"):
        open_video(Image.fromarray(values.astype(np.float32)))


# ------------------------------------------------------------------------------------------------------ errors
def test_bad_image_files_are_clear_errors(tmp_path, scene, photo, monkeypatch):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated_png = tmp_path / "cut.png"
    truncated_png.write_bytes(photo.read_bytes()[:60])
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(big).save(tmp_path / "full.jpg", quality=95)
    truncated_jpeg = tmp_path / "cut.jpg"
    truncated_jpeg.write_bytes((tmp_path / "full.jpg").read_bytes()[:2000])
    for path in (text, empty, truncated_png, truncated_jpeg):
        with pytest.raises(ImageDecodeError, match=rf"{path.name} is not an image that Pillow can read.*re-save it"):
            open_video(path)
    assert issubclass(ImageDecodeError, VideoDecodeError)
    with pytest.raises(VideoNotFoundError, match="image '.*missing.png' does not exist"):
        open_video(tmp_path / "missing.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # H*W > 2x the limit: Pillow's decompression-bomb error
    with pytest.raises(ImageDecodeError, match="MAX_IMAGE_PIXELS"):
        open_video(photo)


def test_cli_names_a_bad_image_in_one_line(tmp_path, capsys):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 a JPEG header and nothing else")
    model_dir = exact_model().save_pretrained(tmp_path / "model")
    assert main(["predict", str(bad), "red", "-m", str(model_dir), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lvseg: error:") and str(bad) in err and "not an image" in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()  # one line, and nothing left behind


# ----------------------------------------------------------------------------------------------------- outputs
def test_image_results_save_still_overlays_pngs_and_rle(tmp_path, scene, photo):
    frame, mask = scene
    result = exact_model().predict(photo, "the red square", progress=False)
    path = result.save_overlay(tmp_path / "overlay.png")
    written = np.asarray(Image.open(path))
    assert written.shape == (H, W, 3)  # the exact size: no even-size padding for a still image
    assert np.array_equal(written, overlay_frame(frame, [mask], captions=["the red square"]))
    jpeg = result.save_overlay(tmp_path / "overlay.jpg", caption=False)
    assert Image.open(jpeg).format == "JPEG" and Image.open(jpeg).size == (W, H)
    # a one-frame video is allowed too (what a pipeline mixing images and videos may want); yuv420p pads to even
    with av.open(str(result.save_overlay(tmp_path / "overlay.mp4"))) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 1 and decoded[0].shape == (H + 1, W + 1, 3)
    pngs = result.save_pngs(tmp_path / "masks")
    assert [p.name for p in pngs.iterdir()] == ["photo.png"]
    assert np.array_equal(np.asarray(Image.open(pngs / "photo.png")), mask.astype(np.uint8))
    (rle,) = result.to_rle()
    assert rle["size"] == [H, W]
    from pycocotools import mask as mask_utils

    assert np.array_equal(mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool), mask)


def test_a_still_overlay_of_several_frames_is_refused_before_writing(tmp_path):
    frames, _ = color_video(num_frames=4)
    result = make_color_model().predict(frames, "red", progress=False)
    with pytest.raises(InvalidInputError, match="has 4 frames.*save_pngs"):
        result.save_overlay(tmp_path / "overlay.png")
    assert list(tmp_path.iterdir()) == []


def test_cli_predict_on_an_image_writes_a_png_overlay(tmp_path, scene, photo, capsys):
    frame, mask = scene
    model_dir = exact_model().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    code = main(["predict", str(photo), "the red square", "-m", str(model_dir), "-o", str(out), "--format", "overlay",
                 "png", "rle", "-q", "--device", "cpu"])
    assert code == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["frames"] == 1 and item["overlay"] == str(out / "overlay.png")
    assert sorted(p.name for p in out.iterdir()) == ["expression_0", "expression_0.rle.json", "lvseg-predict.json",
                                                     "overlay.png"]
    assert np.array_equal(np.asarray(Image.open(out / "overlay.png")),
                          overlay_frame(frame, [mask], captions=["the red square"]))
    assert np.array_equal(np.asarray(Image.open(out / "expression_0" / "photo.png")), mask.astype(np.uint8))
    assert json.loads((out / "expression_0.rle.json").read_text())["frames"] == ["photo"]
    # an explicit video type for an image: a one-frame mp4
    assert main(["predict", str(photo), "red", "-m", str(model_dir), "-o", str(tmp_path / "mp4"), "--format",
                 "overlay", "--overlay-ext", ".mp4", "-q", "--device", "cpu"]) == 0
    assert (tmp_path / "mp4" / "overlay.mp4").stat().st_size > 0


def test_cli_refuses_a_still_overlay_for_a_video_before_running_the_model(tmp_path, capsys):
    frames, _ = color_video(num_frames=6)
    video = write_video(iter(frames), tmp_path / "clip.mp4", fps=6)
    model_dir = exact_model().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["predict", str(video), "red", "-m", str(model_dir), "-o", str(out), "--overlay-ext", ".png"]) == 1
    err = capsys.readouterr().err
    assert "--overlay-ext .png writes one still image" in err and "6 frames" in err and "segmenting" not in err
    assert not out.exists()
