"""The web demo's functions without a browser (lvseg/app.py): model discovery, input checks and limits, the
outputs of a run (overlay, zip of palette PNGs, COCO RLE, plots, IoU of two models) against ``model.predict``,
cancellation, and the ``lvseg app`` command line. None of these needs Gradio, except the last test (``app``
marker: it builds the page). The page in a real browser: tests/test_app_browser.py."""

from __future__ import annotations

import io
import json
import shutil
import threading
import zipfile

import numpy as np
import pytest

import lvseg
from lvseg.app import (
    COLORS,
    Cancelled,
    Limits,
    ModelCache,
    ModelChoice,
    find_models,
    line_plot,
    make_examples,
    mask_iou,
    open_upload,
    parse_expressions,
    run_models,
)
from lvseg.errors import InvalidInputError, InvalidTextError, VideoDecodeError
from lvseg.registry import DEFAULT_MODEL

TEXTS = ["the blue star", "the green star"]  # two objects of Shapes video seed 0 (lvseg demo's)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return make_examples(tmp_path_factory.mktemp("examples"), seeds=(0,))[0]


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def _write(path, frames, fps=6.0):
    from lvseg.video import write_video

    return write_video(list(frames), path, fps=fps)


def test_examples_are_shapes_videos_with_two_expressions_about_two_objects(example):
    from lvseg.data.shapes import expression_semantics, make_video

    video, rgb, _ = make_video(0, "demo", 0, 16, 96, 96)
    assert example.path.is_file() and example.texts == tuple(TEXTS)
    source = open_upload(example.path)
    assert (source.num_frames, source.height, source.width) == (16, 96, 96)
    objects = [expression_semantics(t, video.objects) for t in example.texts]
    assert all(o is not None and len(o) == 1 for o in objects) and objects[0] != objects[1]


def test_find_models_offers_what_is_on_this_machine_and_says_why_not_for_the_rest(tmp_path):
    choices = find_models()
    assert choices[0].name == DEFAULT_MODEL and choices[0].available and (choices[0].folder / "config.json").is_file()
    by_name = {c.name: c for c in choices}
    assert set(by_name) == set(lvseg.list_models())
    unpublished = [c for c in choices if not lvseg.registry.get_entry(c.name).published]
    assert unpublished and all(
        not c.available and ("lvseg convert" in c.reason or "lvseg train --preset" in c.reason) for c in unpublished
    )
    # folders and hf-hub ids given with --model
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = tmp_path / "tiny"
    shutil.copytree(choices[0].folder, folder)
    picked = find_models([str(folder), str(empty), "hf-hub:nobody/nothing", "no-such-model", str(tmp_path / "gone")])
    assert [c.available for c in picked] == [True, False, False, False, False]
    assert picked[0].folder == folder
    reasons = {c.name: c.reason for c in picked}
    assert "no config.json" in reasons[str(empty)]
    assert "lvseg download hf-hub:nobody/nothing" in reasons["hf-hub:nobody/nothing"]
    assert "unknown model 'no-such-model'" in reasons["no-such-model"]
    assert "does not exist" in reasons[str(tmp_path / "gone")]


def test_a_model_in_the_hugging_face_cache_is_offered_and_loads_without_the_network(monkeypatch, tmp_path, cache):
    """Downloaded once from a Hub served by the test process (tests/hubserver.py) into a fresh cache, then the
    server is stopped: the app finds the weights in the cache (at the commit and at main) and loads them."""
    from huggingface_hub import constants
    from hubserver import LocalHub

    bundled = find_models([DEFAULT_MODEL])[0].folder
    files = {p.name: p.read_bytes() for p in bundled.iterdir() if p.is_file()}
    hub_cache = tmp_path / "hub-cache"
    with LocalHub() as server:
        revision = server.add_commit("org/tiny", files)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read when huggingface_hub was imported
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        lvseg.hub.download("hf-hub:org/tiny", cache_dir=hub_cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    picked = find_models([f"hf-hub:org/tiny@{revision}", "hf-hub:org/tiny", "hf-hub:org/other"])
    assert [c.available for c in picked] == [True, True, False], picked
    assert picked[0].folder == picked[1].folder == hub_cache / "models--org--tiny" / "snapshots" / revision
    model = cache.get(picked[0], device="cpu")
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in cache.get(find_models([DEFAULT_MODEL])[0], device="cpu").parameters()
    )


def test_model_cache_loads_each_model_once_and_refuses_unavailable_ones(cache):
    choice = find_models([DEFAULT_MODEL])[0]
    first = cache.get(choice, device="cpu")
    assert cache.get(choice, device="cpu") is first and len(cache) >= 1
    with pytest.raises(InvalidInputError, match="not available here: not on the Hub"):
        cache.get(ModelChoice("x", False, "not on the Hub"))


def test_expressions_one_per_line_and_their_limit():
    assert parse_expressions("  the red  circle \n\n the big square\n") == ["the red circle", "the big square"]
    for empty in (None, "", " \n \n"):
        with pytest.raises(InvalidTextError, match="no expression given"):
            parse_expressions(empty)
    with pytest.raises(InvalidTextError, match="at most 2 per run"):
        parse_expressions("a\nb\nc", Limits(max_expressions=2))


def test_limits_are_checked_on_creation():
    with pytest.raises(InvalidInputError, match="max_frames must be a whole number >= 1"):
        Limits(max_frames=0)
    with pytest.raises(InvalidInputError, match="max_expressions can be at most"):
        Limits(max_expressions=len(COLORS) + 1)
    with pytest.raises(InvalidInputError, match="max_models can be 1 or 2"):
        Limits(max_models=3)


def test_bad_uploads_get_a_message_naming_the_problem_and_the_fix(tmp_path, example):
    with pytest.raises(InvalidInputError, match="no video given"):
        open_upload(None)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InvalidInputError, match=r"notes.txt is not a video or image this demo reads: upload mp4, webm.*, png"):
        open_upload(text)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoDecodeError, match="is not a video that FFmpeg can read"):
        open_upload(broken)
    wide = _write(tmp_path / "wide.mp4", [np.zeros((64, 128, 3), np.uint8)] * 3)
    with pytest.raises(InvalidInputError, match=r"the video is 128x64; this demo accepts frames up to 100 pixels"):
        open_upload(wide, Limits(max_side=100))
    with pytest.raises(InvalidInputError, match=r"the video has 16 frames; this demo accepts at most 10"):
        open_upload(example.path, Limits(max_frames=10))


def test_the_frame_limit_also_holds_while_decoding_and_stop_ends_decoding(example):
    """A container may not state its frame count: the source itself refuses frames past the limit."""
    source = open_upload(example.path)
    source.max_frames = 5  # as if the container had not said that it has 16
    frames = []
    with pytest.raises(InvalidInputError, match="more than 5 frames"):
        for frame in source:
            frames.append(frame)
    assert len(frames) == 5
    cancel = threading.Event()
    source = open_upload(example.path, cancel=cancel)
    seen = 0
    with pytest.raises(Cancelled):
        for _ in source:
            seen += 1
            if seen == 3:
                cancel.set()
    assert seen == 3


def test_mask_iou_per_frame():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True  # 4 of 8 pixels
    a[1, :2], b[1, 2:] = True, True  # disjoint
    # frame 2: both empty, they agree
    np.testing.assert_array_equal(mask_iou(a, b), [0.5, 0.0, 1.0])
    with pytest.raises(InvalidInputError, match="different shapes"):
        mask_iou(a, b[:2])


def test_line_plot_draws_each_series_in_its_colour():
    image = line_plot(
        [("one", np.linspace(0, 1, 8), COLORS[0], None), ("two", np.full(8, 0.25), COLORS[1], (6, 4))], title="t"
    )
    assert image.shape == (260, 640, 3) and image.dtype == np.uint8
    for color in COLORS[:2]:
        assert (image == color).all(-1).sum() > 50
    single = line_plot([("single", np.array([0.5]), COLORS[2], None)], title="one frame")  # a one-frame video
    assert single.shape == (260, 640, 3) and (single == COLORS[2]).all(-1).sum() > 50


def _zip_masks(path, model, count):
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        out = []
        for i in range(count):
            names = sorted(n for n in archive.namelist() if n.startswith(f"{model}/expression_{i}/"))
            out.append(np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n)))) for n in names]))
    return out


def test_a_run_returns_what_model_predict_returns_in_every_output(tmp_path, example, cache):
    import av
    from pycocotools import mask as mask_utils

    choice = find_models([DEFAULT_MODEL])[0]
    stages = []
    result = run_models(
        example.path,
        TEXTS,
        [choice],
        cache=cache,
        output_dir=tmp_path / "run",
        report=lambda fraction, text: stages.append((fraction, text)),
    )
    expected = cache.get(choice).predict(str(example.path), TEXTS, progress=False)
    assert result.models == [DEFAULT_MODEL] and result.texts == TEXTS and result.num_frames == 16
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(result.masks[0][i], want.to_numpy())
        np.testing.assert_array_equal(result.scores[0][i], want.scores.numpy())
    assert result.masks[0].any(axis=(1, 2, 3)).all(), "the bundled model finds both objects"
    # the zip: one palette PNG per frame and expression, 0 background, 1 object
    pngs = _zip_masks(result.masks_zip, DEFAULT_MODEL, 2)
    for i in range(2):
        assert pngs[i].shape == (16, 96, 96)
        np.testing.assert_array_equal(pngs[i] == 1, result.masks[0][i])
        assert set(np.unique(pngs[i])) <= {0, 1}
    # the RLE JSON
    rle = json.loads(result.rle_json.read_text())
    assert rle["frames"] == [f"{t:05d}" for t in range(16)]
    for i, item in enumerate(rle["models"][DEFAULT_MODEL]):
        assert item["text"] == TEXTS[i]
        decoded = np.stack([mask_utils.decode({**r, "counts": r["counts"].encode()}) for r in item["rle"]])
        np.testing.assert_array_equal(decoded.astype(bool), result.masks[0][i])
        np.testing.assert_allclose(item["scores"], result.scores[0][i], atol=1e-6)
    # the overlay: every frame, the video's size, the expressions' colours where the masks are
    with av.open(str(result.overlays[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 16 and frames[0].shape == (96, 96, 3)
    assert result.score_plot.shape[2] == 3 and result.iou is None and result.iou_plot is None
    assert "| the blue star |" in result.summary()
    assert [t for _, t in stages][:3] == ["opening the video", f"loading {DEFAULT_MODEL}", f"segmenting with {DEFAULT_MODEL}"]
    assert stages[-1] == (1.0, "done")


def test_an_image_is_a_one_frame_video_with_a_still_overlay(tmp_path, example, cache):
    from PIL import Image

    from lvseg.data.shapes import make_video

    _, rgb, _ = make_video(0, "demo", 0, 16, 96, 96)
    image = tmp_path / "frame.png"
    Image.fromarray(rgb[4]).save(image)
    choice = find_models([DEFAULT_MODEL])[0]
    result = run_models(image, TEXTS, [choice], cache=cache, output_dir=tmp_path / "run")
    expected = cache.get(choice).predict(str(image), TEXTS, progress=False)
    assert result.num_frames == 1 and result.overlays[0].suffix == ".png"
    for i in range(2):
        np.testing.assert_array_equal(result.masks[0][i], expected[i].to_numpy())
    overlay = np.asarray(Image.open(result.overlays[0]))
    assert overlay.shape == (96, 96, 3) and not np.array_equal(overlay, rgb[4])  # the masks are drawn on it
    with pytest.raises(InvalidInputError, match=r"the image is 96x96; this demo accepts frames up to 64 pixels"):
        open_upload(image, Limits(max_side=64))


def test_two_models_side_by_side_with_their_mask_agreement(tmp_path, example, cache):
    """The bundled model against a perturbed copy of it (a real model folder whose weights got noise): two
    overlays, one zip folder per model, each model's masks as its own ``predict`` gives them, and their IoU per
    frame."""
    import torch
    from safetensors.torch import load_file, save_file

    from lvseg.app import _safe_name

    bundled = find_models([DEFAULT_MODEL])[0]
    copy = tmp_path / "tiny-noisy"
    shutil.copytree(bundled.folder, copy)
    weights = load_file(copy / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for key, value in weights.items():
        if value.is_floating_point() and value.numel() > 1:
            weights[key] = value + 0.3 * value.std() * torch.randn(value.shape, generator=generator)
    save_file(weights, copy / "model.safetensors")
    other = find_models([str(copy)])[0]
    result = run_models(example.path, TEXTS, [bundled, other], cache=cache, output_dir=tmp_path / "run")
    assert result.models == [DEFAULT_MODEL, str(copy)] and len(result.overlays) == 2
    assert all(p.is_file() for p in result.overlays) and result.overlays[0] != result.overlays[1]
    expected = cache.get(other).predict(str(example.path), TEXTS, progress=False)  # (the bundled one: test above)
    for i in range(2):
        np.testing.assert_array_equal(result.masks[1][i], expected[i].to_numpy())
    assert result.iou.shape == (2, 16)
    for i in range(2):
        np.testing.assert_array_equal(result.iou[i], mask_iou(result.masks[0][i], result.masks[1][i]))
    assert (result.iou < 1).any(), "the noise changed the masks, so the two models disagree somewhere"
    names = zipfile.ZipFile(result.masks_zip).namelist()
    assert {n.split("/")[0] for n in names} == {DEFAULT_MODEL, _safe_name(str(copy))}
    for k, model in enumerate((DEFAULT_MODEL, _safe_name(str(copy)))):
        pngs = _zip_masks(result.masks_zip, model, 2)
        for i in range(2):
            np.testing.assert_array_equal(pngs[i] == 1, result.masks[k][i])
    assert result.iou_plot is not None and "mean IoU of the two" in result.summary()


def test_bad_requests_fail_before_any_model_runs(tmp_path, example, cache):
    choice = find_models([DEFAULT_MODEL])[0]
    with pytest.raises(InvalidInputError, match="no model chosen"):
        run_models(example.path, TEXTS, [], cache=cache, output_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="pick at most 1"):
        run_models(example.path, TEXTS, [choice, choice], cache=cache, output_dir=tmp_path, limits=Limits(max_models=1))
    with pytest.raises(InvalidInputError, match="overlap must be smaller than window"):
        run_models(example.path, TEXTS, [choice], cache=cache, output_dir=tmp_path, window=4, overlap=4)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run_models(example.path, TEXTS, [choice], cache=cache, output_dir=tmp_path / "c", cancel=cancel)


def test_lvseg_app_command_line_checks_its_options(capsys):
    from lvseg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--help"])
    assert exit_info.value.code == 0 and "--max-frames" in capsys.readouterr().out
    assert main(["app", "--port", "70000"]) == 1
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    assert main(["app", "--max-frames", "0"]) == 1
    assert "max_frames must be a whole number >= 1" in capsys.readouterr().err


@pytest.mark.app
def test_the_page_builds_offline_with_the_models_and_examples(tmp_path):
    pytest.importorskip("gradio", reason='the page needs Gradio: pip install "lvseg[app]"')
    from lvseg.app import build_app

    demo = build_app([DEFAULT_MODEL, "referformer-r50"], workdir=tmp_path)
    config = demo.get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    assert [list(c) for c in by_id["lvseg-models"]["props"]["choices"]] == [[DEFAULT_MODEL, DEFAULT_MODEL]]
    assert "referformer-r50" in by_id["lvseg-unavailable"]["props"]["value"]
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == [f"shapes_seed{s}.mp4" for s in range(3)]
