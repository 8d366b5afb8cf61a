"""Evaluation mode for ReferFormer on A2D-Sentences (lvseg/metrics/pipeline.py): the official ``main.py --eval``.

The golden outputs (tests/fixtures/eval_pipeline_a2d/golden/referformer_a2d) were written by the official
evaluation (wjn922/ReferFormer 06fc218: ``datasets/a2d.py``, ``collate_fn``, ``A2DSentencesPostProcess``,
``engine.evaluate_a2d``; CPU/runtime shims only, listed in golden.json) on the miniature A2D-Sentences dataset
tests/fixtures/eval_pipeline_a2d/a2d_mini (4:3 resized up, 16:9 at the long-side cap, 3:1 capped to 213x639, a
3-frame portrait video shorter than the 5-frame clip, clips clamped at both ends) with the deterministic checkpoint
of tests/fixtures/eval_pipeline/e2e_models.py: every query's mask (COCO RLE) and score per sample, and the metrics.
``lvseg evaluate`` on the reference MSDA op must store the same masks and print the same metrics. A pixel may
differ only where the upsampled logit is so close to the threshold that another CPU's rounding can flip it
(tests/parity.py); on this project's machine none differs (docs/metrics.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import COMPILED_RELATIVE_TOLERANCE, RELATIVE_TOLERANCE
from PIL import Image

from lvseg.cli import main
from lvseg.errors import InvalidInputError
from lvseg.metrics.pipeline import (
    _annotated_position,
    clean_a2d_text,
    detr_resize_size,
    find_pipeline,
    referformer_a2d_queries,
)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "eval_pipeline_a2d"
MINI = FIXTURES / "a2d_mini"
GOLDEN = FIXTURES / "golden" / "referformer_a2d"
sys.path.insert(0, str(HERE / "fixtures" / "eval_pipeline"))
from e2e_models import referformer_checkpoint  # noqa: E402

pytest.importorskip("h5py")


def golden_predictions() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image_id: (masks bool [Q, H, W], scores float64 [Q])} in the official order of queries."""
    from pycocotools.mask import decode

    out: dict[str, tuple[list, list]] = {}
    for p in json.loads((GOLDEN / "predictions.json").read_text()):
        masks, scores = out.setdefault(p["image_id"], ([], []))
        masks.append(decode(p["segmentation"]).astype(bool))
        scores.append(p["score"])
    return {k: (np.stack(m), np.array(s)) for k, (m, s) in out.items()}


@pytest.fixture(scope="module")
def referformer_folder(tmp_path_factory):
    """The e2e checkpoint converted with `lvseg convert` into a model folder."""
    tmp = tmp_path_factory.mktemp("rf_a2d")
    ckpt, _ = referformer_checkpoint(tmp / "official.pth")
    folder = tmp / "model"
    assert main(["convert", "referformer", str(ckpt), "-o", str(folder), "--tokenizer",
                 str(HERE / "fixtures" / "referformer" / "tokenizer")]) == 0
    return folder


def use_backend(model, backend):
    from lvseg.ops import MSDeformAttn

    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.backend = backend


def near_threshold_only(model, sample, ours: np.ndarray, gold: np.ndarray, relative: float) -> int:
    """Pixels where ours != golden although the logit is not within ``relative`` of the threshold (0)."""
    frames = np.asarray(sample["frames"])
    position = _annotated_position(sample, frames.shape[0])
    masks, _, logits = referformer_a2d_queries(model, frames, sample["text"], position, keep_logits=True)
    assert np.array_equal(masks.numpy(), ours), "the API and `lvseg evaluate` disagree"
    # a flipped pixel of the resized frame maps to the nearest-resized pixels; compare at the input size
    margin = relative * logits.abs().max().item()
    confident = torch.nn.functional.interpolate(
        (logits.abs() > margin)[:, None].float(), size=ours.shape[-2:], mode="nearest"
    )[:, 0].bool().numpy()
    return int(((ours != gold) & confident).sum())


@pytest.mark.slow
def test_lvseg_evaluate_reproduces_the_official_a2d_evaluation(referformer_folder, tmp_path, monkeypatch, capsys):
    from lvseg.data import A2DSentences
    from lvseg.metrics.evaluate import _load_prediction

    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")  # the official side ran ms_deform_attn_core_pytorch
    out = tmp_path / "eval"
    assert main(["evaluate", str(referformer_folder), "--dataset", "a2d-sentences", "--root", str(MINI),
                 "--split", "test", "--dataset-arg", "num_frames=5", "-o", str(out), "--device", "cpu",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 6 and result["benchmark"] == "A2D-Sentences"
    manifest = json.loads((out / "evaluation.json").read_text())
    assert "main.py --eval" in manifest["predictions"]  # the official pipeline ran, not the fast path

    golden = golden_predictions()
    dataset = A2DSentences(MINI, "test", num_frames=5)
    stored = sorted((out / "predictions").glob("*.npz"))
    assert len(stored) == len(golden) == 6
    differing: dict[str, int] = {}
    for path in stored:
        sample = dataset[int(path.name.split("_")[0])]
        pred = _load_prediction(path)
        gold_masks, gold_scores = golden[sample["image_id"]]
        assert pred.kind == "queries" and tuple(pred.values.shape) == gold_masks.shape  # 5 queries, the frame size
        np.testing.assert_allclose(pred.scores.numpy(), gold_scores, rtol=RELATIVE_TOLERANCE, atol=0)
        if n := int((pred.values.numpy() != gold_masks).sum()):
            differing[sample["image_id"]] = n
    assert sum(m.mean() for m, _ in golden.values()) / len(golden) > 0.2  # not trivial masks
    if differing:  # only float rounding of another CPU may flip a pixel, where the logit is near the threshold
        from lvseg.hub import from_pretrained

        model = from_pretrained(referformer_folder, device="cpu")
        for path in stored:
            sample = dataset[int(path.name.split("_")[0])]
            if sample["image_id"] in differing:
                ours = _load_prediction(path).values.numpy()
                gold = golden[sample["image_id"]][0]
                assert near_threshold_only(model, sample, ours, gold, RELATIVE_TOLERANCE) == 0, differing
        return
    # the same masks and scores: the official metrics (percent here, fractions there)
    official = json.loads((GOLDEN / "metrics.json").read_text())
    assert 0 < official["mAP 0.5:0.95"] < 1 and 0 < official["P@0.5"] < 1  # the metrics are not degenerate
    assert len(official) == 13
    for key, value in official.items():  # the same names: mAP 0.5:0.95 ... AP 0.5:0.95 L, P@K, overall/mean IoU
        assert result[key] == pytest.approx(100 * value, rel=1e-12, abs=1e-12), key


@pytest.mark.slow
def test_compiled_op_differs_from_the_official_a2d_masks_only_near_the_threshold(referformer_folder):
    """The compiled CPU MSDA sums in another order: some pixels may flip, all of them near the threshold."""
    from lvseg.data import A2DSentences
    from lvseg.hub import from_pretrained
    from lvseg.ops import build

    try:
        build.load_extension("cpu")
    except Exception as exc:
        pytest.skip(f"the compiled CPU op is not available: {exc}")
    model = from_pretrained(referformer_folder, device="cpu")
    use_backend(model, "cpu")
    golden = golden_predictions()
    total = flipped = 0
    for sample in A2DSentences(MINI, "test", num_frames=5):
        if sample["video"] not in ("c_wide", "d_short"):  # two samples keep the test short
            continue
        frames = np.asarray(sample["frames"])
        masks, _, _ = referformer_a2d_queries(model, frames, sample["text"], _annotated_position(sample, len(frames)))
        ours, gold = masks.numpy(), golden[sample["image_id"]][0]
        if (ours != gold).any():
            bound = COMPILED_RELATIVE_TOLERANCE + RELATIVE_TOLERANCE  # compiled vs reference + reference vs golden
            assert near_threshold_only(model, sample, ours, gold, bound) == 0, sample["image_id"]
        flipped += int((ours != gold).sum())
        total += gold.size
    # measured here: 0 of 222,720 pixels (docs/metrics.md); rounding near the threshold may flip a few elsewhere
    assert flipped <= 1e-4 * total, (flipped, total)


# ------------------------------------------------------------------------------------------- fast unit checks
def test_detr_resize_size_is_referformers_a2d_transform():
    from torchvision.transforms import functional as TF

    # 4:3 up, 16:9 at the cap, 3:1 capped (short side round(640 * 96 / 288) = 213), portrait, already 360
    cases = {(240, 320): (360, 480), (180, 320): (360, 640), (96, 288): (213, 639), (320, 192): (600, 360),
             (360, 500): (360, 500), (100, 333): (192, 639)}
    for (h, w), expected in cases.items():
        assert detr_resize_size(h, w, 360, 640) == expected, (h, w)
        image = TF.resize(Image.new("RGB", (w, h)), list(expected))
        assert image.size == expected[::-1]
    # without a cap DETR's rule is torchvision's: the long side truncated
    assert detr_resize_size(100, 333, 360) == (360, 1198)


def test_clean_a2d_text_and_the_decoded_position():
    assert clean_a2d_text("The RED ball  on\tthe left ") == "the red ball on the left"
    clamped = {"annotated": torch.tensor([False, False, True, False, False]),
               "frame_indices": torch.tensor([0, 0, 0, 1, 2])}
    assert _annotated_position(clamped, 5) == 0  # sample_indx.index(frame_id): the first copy of frame 0
    at_end = {"annotated": torch.tensor([False, False, True, False, False]),
              "frame_indices": torch.tensor([3, 4, 5, 5, 5])}
    assert _annotated_position(at_end, 5) == 2
    assert _annotated_position({"center_index": 1}, 3) == 1
    with pytest.raises(InvalidInputError, match="one annotated frame"):
        _annotated_position({"annotated": torch.tensor([True, True])}, 2)
    with pytest.raises(InvalidInputError, match="frame_indices"):
        _annotated_position({"center_index": 0, "frame_indices": torch.tensor([0, 1])}, 3)


def test_evaluate_uses_the_official_pipeline_for_referformer_on_a2d_and_jhmdb():
    from lvseg.models.referformer.model import ReferFormer

    model = ReferFormer.__new__(ReferFormer)
    assert "datasets/a2d.py" in find_pipeline(model, "a2d").source
    assert "datasets/jhmdb.py" in find_pipeline(model, "jhmdb").source
    assert find_pipeline(model, "a2d+") is None


def test_a2d_reader_decodes_the_frames_read_video_gave():
    """The official dataset decoded the mp4 with torchvision's read_video: PyAV, frames by pts, to_rgb()."""
    import av

    from lvseg.data import A2DSentences

    with av.open(str(MINI / "Release" / "clips320H" / "d_short.mp4")) as container:
        frames = {f.pts: f.to_rgb().to_ndarray() for f in container.decode(video=0)}
    decoded = np.stack([frames[p] for p in sorted(frames)])
    sample = next(s for s in A2DSentences(MINI, "test", num_frames=5) if s["video"] == "d_short")
    assert sample["frame_indices"].tolist() == [0, 0, 1, 2, 2]  # 3 frames, a 5-frame clip
    assert np.array_equal(np.asarray(sample["frames"]), decoded[[0, 0, 1, 2, 2]])


def test_tiny_referformer_runs_the_a2d_pipeline_through_default_runner():
    import lvseg
    from lvseg.metrics.evaluate import default_runner

    model = lvseg.load("referformer-tiny.shapes", device="cpu")
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 50, 150, 3), dtype=np.uint8)  # 3:1, capped to 213x639
    sample = {"frames": torch.from_numpy(frames), "text": "The  Red circle",
              "annotated": torch.tensor([False, True, False]), "frame_indices": torch.tensor([0, 0, 1])}
    pred = default_runner(model, "a2d")(sample)
    masks, scores, logits = referformer_a2d_queries(model, frames, "the red circle", 0, keep_logits=True)
    q = model.config.num_queries
    assert pred.kind == "queries" and pred.values.shape == (q, 50, 150) and pred.scores.shape == (q,)
    assert torch.equal(pred.values, masks) and torch.equal(pred.scores, scores)
    assert logits.shape == (q, 213, 639)
    with pytest.raises(InvalidInputError, match="outside the clip"):
        referformer_a2d_queries(model, frames, "x", 3)
