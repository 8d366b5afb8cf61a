"""Predictor and video IO on real encoded videos, frame folders and arrays, with exactly known masks."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

import lvseg
from lvseg.errors import InvalidInputError, InvalidTextError, VideoDecodeError, VideoNotFoundError
from lvseg.predictor import UPSAMPLING
from lvseg.video import open_video, write_video

from toymodels import color_video, make_color_model


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def write_mp4(path, frames, fps=10):
    write_video(iter(frames), path, fps=fps)
    return path


@pytest.fixture(scope="module")
def video():
    return color_video(num_frames=12)


def test_arrays_tensors_and_pil_lists_give_exact_masks(video):
    frames, masks = video
    model = make_color_model()
    for source in (frames, torch.from_numpy(frames), list(frames), [Image.fromarray(f) for f in frames]):
        result = model.predict(source, "the red square", progress=False)
        assert isinstance(result, lvseg.VideoSegmentation)
        assert result.masks.dtype == torch.bool and result.masks.shape == (12, 48, 64)
        assert torch.equal(result.masks, torch.from_numpy(masks))
        assert result.scores.shape == (12,) and bool((result.scores > 0).all())


def test_frame_folder_natural_sort_and_names(tmp_path, video):
    frames, masks = video
    for t, frame in enumerate(frames):  # names whose lexical order differs from natural order
        Image.fromarray(frame).save(tmp_path / f"frame_{t}.png")
    result = lvseg.Predictor(make_color_model(), progress=False)(tmp_path, "red")
    assert result.frame_names[:3] == ["frame_0", "frame_1", "frame_2"]
    assert torch.equal(result.masks, torch.from_numpy(masks))


def test_encoded_mp4_and_metadata(tmp_path, video):
    frames, masks = video
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=12)
    source = open_video(path)
    assert (source.height, source.width) == (48, 64)
    assert source.fps == pytest.approx(12.0)
    result = make_color_model().predict(str(path), "the red square", progress=False)
    assert result.masks.shape == (12, 48, 64)
    assert result.fps == pytest.approx(12.0)
    # lossy H.264: edges may move by a pixel, the object must not
    assert min(iou(m, g) for m, g in zip(result.to_numpy(), masks)) > 0.85


def test_original_resolution_is_restored():
    frames, masks = color_video(num_frames=6, height=96, width=128, square=32)
    model = make_color_model()  # the model sees 48x64
    result = model.predict(frames, "red", progress=False)
    assert result.masks.shape == (6, 96, 128)
    assert min(iou(m, g) for m, g in zip(result.to_numpy(), masks)) > 0.85


@pytest.mark.parametrize("window,overlap", [(1, 0), (4, 0), (5, 2), (6, 5), (12, 3), (30, 0)])
def test_windowing_equals_one_pass(video, window, overlap):
    frames, _ = video
    model = make_color_model()
    whole = model.predict(frames, ["red", "blue"], window=0, progress=False)
    model.calls.clear()
    windowed = model.predict(frames, ["red", "blue"], window=window, overlap=overlap, progress=False)
    assert max(model.calls) <= window  # never more than one window of frames in the model
    for a, b in zip(whole, windowed):
        assert torch.equal(a.masks, b.masks)
        assert torch.allclose(a.scores, b.scores, atol=1e-6)


def test_long_file_is_decoded_lazily_in_windows(tmp_path):
    frames, masks = color_video(num_frames=60)
    path = write_mp4(tmp_path / "long.mp4", frames)
    model = make_color_model(window=8, overlap=2)
    result = model.predict(path, "red", progress=False)
    assert len(result) == 60
    assert max(model.calls) == 8 and len(model.calls) == 10  # ceil((60 - 2) / 6) windows
    assert np.mean([iou(m, g) for m, g in zip(result.to_numpy(), masks)]) > 0.9


def test_window_state_is_passed_between_windows(video):
    frames, _ = video
    model = make_color_model(window=5)
    states = []

    def segment_window(x, text, state):
        states.append(state)
        logits, scores = model.segment(x, text)
        return logits, scores, (state or 0) + 1

    model.segment_window = segment_window
    model.predict(frames, "red", progress=False)
    assert states == [None, 1, 2]


def test_several_expressions_one_decode(video):
    frames, masks = video
    red, blue, green = make_color_model().predict(frames, ["red", "blue", "green"], progress=False)
    assert torch.equal(red.masks, torch.from_numpy(masks))
    assert torch.equal(blue.masks, ~torch.from_numpy(masks))
    assert not green.masks.any() and red.text == "red"


def test_outputs_pngs_rle_and_overlays(tmp_path, video):
    from pycocotools import mask as mask_utils

    frames, masks = video
    red, blue = make_color_model().predict(frames, ["red", "blue"], progress=False)
    out = red.save_pngs(tmp_path / "pngs")
    png = Image.open(out / "00003.png")
    assert png.mode == "P" and np.array_equal(np.array(png) == 1, masks[3])
    assert png.getpalette()[3:6] == [128, 0, 0]  # DAVIS palette: label 1 is dark red
    rles = red.to_rle()
    assert len(rles) == 12 and isinstance(rles[0]["counts"], str)
    json.dumps(rles)
    decoded = mask_utils.decode([{**r, "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), masks)
    mp4 = red.save_overlay(tmp_path / "overlay.mp4")
    with av.open(str(mp4)) as container:
        decoded_frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded_frames) == 12 and decoded_frames[0].shape == (48, 64, 3)
    gif = lvseg.predictor.save_overlay([red, blue], tmp_path / "both.gif")
    assert Image.open(gif).n_frames == 12


def test_odd_sized_video_overlay(tmp_path):
    frames, _ = color_video(num_frames=3, height=33, width=47, square=8)
    result = make_color_model().predict(frames, "red", progress=False)
    path = result.save_overlay(tmp_path / "odd.mp4")
    with av.open(str(path)) as container:
        assert container.streams.video[0].height == 34  # padded to even for yuv420p


# ------------------------------------------------------------------------------------------------- bad inputs
def test_missing_file():
    with pytest.raises(VideoNotFoundError, match="does not exist"):
        make_color_model().predict("/no/such/clip.mp4", "red")


def test_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video")
    with pytest.raises(VideoDecodeError, match="not a video"):
        make_color_model().predict(path, "red")


def test_truncated_mp4(tmp_path, video):
    frames, _ = video
    path = write_mp4(tmp_path / "clip.mp4", frames)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match="truncated"):
        make_color_model().predict(truncated, "red")


def test_zero_frames(tmp_path):
    with pytest.raises(VideoDecodeError, match="zero frames"):
        make_color_model().predict([], "red")
    with pytest.raises(VideoDecodeError, match="zero frames"):
        make_color_model().predict(np.zeros((0, 8, 8, 3), np.uint8), "red")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoDecodeError, match="contains no frames"):
        make_color_model().predict(empty, "red")


@pytest.mark.parametrize("text,match", [("", "empty"), ("   \t", "whitespace"), (42, "must be a string"),
                                        (["red", None], "expression 1 must be a string"), ([], "no expression")])
def test_bad_expressions(video, text, match):
    frames, _ = video
    with pytest.raises(InvalidTextError, match=match):
        make_color_model().predict(frames, text)


def test_mixed_size_frame_folder(tmp_path, video):
    frames, _ = video
    for t in range(3):
        Image.fromarray(frames[t]).save(tmp_path / f"{t:05d}.jpg")
    Image.fromarray(frames[3][:40]).save(tmp_path / "00003.jpg")
    with pytest.raises(VideoDecodeError, match="mixed sizes.*00003.jpg"):
        make_color_model().predict(tmp_path, "red")


def test_bad_arrays():
    with pytest.raises(InvalidInputError, match=r"\[T, H, W, 3\]"):
        make_color_model().predict(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "red")
    with pytest.raises(InvalidInputError, match="uint8"):
        make_color_model().predict(torch.zeros(4, 8, 8, 3), "red")
    with pytest.raises(VideoDecodeError, match="frame 1 is"):
        make_color_model().predict([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], "red")
    with pytest.raises(InvalidInputError, match="window"):
        lvseg.Predictor(make_color_model(), window=4, overlap=4)


def test_rotation_from_the_mp4_display_matrix(tmp_path):
    """A phone-style video: frames stored landscape, the track header says 'rotate 90 degrees clockwise'."""
    import struct

    frames = np.zeros((3, 32, 64, 3), dtype=np.uint8)
    frames[:, :, :8] = 255  # a white stripe on the stored frame's left edge
    path = write_mp4(tmp_path / "stored.mp4", frames)
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd") - 4
    offset = box + (60 if data[box + 8] == 1 else 48)  # the 3x3 matrix inside the tkhd box (version 1 or 0)
    data[offset: offset + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(bytes(data))
    source = open_video(rotated)
    assert (source.height, source.width) == (64, 32)
    first = next(iter(source))
    assert first.shape == (64, 32, 3)
    assert first[:6].mean() > 240 and first[10:].mean() < 15  # the stripe is now on top
    result = make_color_model().predict(rotated, "white", progress=False)
    assert result.masks.shape == (3, 64, 32) and result.masks[:, :6].all() and not result.masks[:, 12:].any()


@pytest.mark.parametrize("mode", sorted(UPSAMPLING))
def test_probabilities_thresholded_at_half_equal_the_masks(mode):
    frames, truth = color_video(num_frames=9, height=96, width=128, square=32)
    model = make_color_model(size_divisor=40)  # the model sees 48x64 padded to 80x80
    results = model.predict(frames, ["red", "blue"], window=4, overlap=2, upsampling=mode,
                            return_probabilities=True, progress=False)
    for result in results:
        probs = result.probabilities
        assert probs.dtype == torch.float32 and probs.shape == result.masks.shape == (9, 96, 128)
        assert 0 <= probs.min() and probs.max() <= 1
        assert torch.equal(probs > 0.5, result.masks)
    assert min(iou(m, g) for m, g in zip(results[0].to_numpy(), truth)) > 0.85
    assert model.predict(frames, "red", upsampling=mode, progress=False).probabilities is None


def test_upsampling_rules_match_the_official_post_processing():
    import torch.nn.functional as F

    from lvseg.models.mttr.model import postprocess_masks
    from lvseg.predictor import upsample_mask_logits

    logits = torch.randn(3, 12, 17, generator=torch.Generator().manual_seed(0)) * 4  # stride 4 of 48x68
    # MTTR / DETR: bilinear to the padded input, threshold, crop the padding, nearest to the frame
    masks, probs = upsample_mask_logits(logits, (48, 68), (45, 66), (90, 131), "threshold-nearest")
    assert torch.equal(masks, postprocess_masks(logits, (48, 68), (45, 66), (90, 131)))
    assert torch.equal(probs > 0.5, masks)
    # ReferFormer inference_ytvos/davis: one bilinear resize straight to the frame size
    masks, probs = upsample_mask_logits(logits, (48, 68), (48, 68), (90, 131), "direct")
    ref = F.interpolate(logits[None], size=(90, 131), mode="bilinear", align_corners=False)[0]
    assert torch.equal(masks, ref > 0) and torch.equal(probs, ref.sigmoid())
    two_step, _ = upsample_mask_logits(logits, (48, 68), (48, 68), (90, 131), "bilinear")
    assert not torch.equal(two_step, masks)  # the default two-step resize is not the same
    # Locater: sigmoid first, then bilinear with align_corners=True
    masks, probs = upsample_mask_logits(logits, (48, 68), (48, 68), (90, 131), "probability-aligned")
    ref = F.interpolate(logits.sigmoid()[None], size=(90, 131), mode="bilinear", align_corners=True)[0]
    assert torch.equal(probs, ref) and torch.equal(masks, ref > 0.5)
    with pytest.raises(InvalidInputError, match="upsampling"):
        upsample_mask_logits(logits, (48, 68), (48, 68), (90, 131), "bicubic")


def test_predictor_follows_the_models_post_processing_and_protocols(video):
    frames, _ = video
    model = make_color_model()
    assert lvseg.Predictor(model).upsampling == "bilinear"
    model.output_upsampling = lambda protocol=None: "threshold-nearest"
    assert lvseg.Predictor(model).upsampling == "threshold-nearest"
    assert lvseg.Predictor(model, upsampling="direct").upsampling == "direct"
    with pytest.raises(InvalidInputError, match="no named inference protocols"):
        lvseg.Predictor(model, protocol="davis")
    with pytest.raises(InvalidInputError, match="unknown upsampling"):
        lvseg.Predictor(model, upsampling="nearest")
