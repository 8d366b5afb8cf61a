"""Evaluation mode for MTTR (lvseg/metrics/pipeline_mttr.py): the official pipeline end to end, JPEG files to PNGs.

The golden masks (tests/fixtures/eval_pipeline_mttr/golden/mttr_ytvos) were written by the official
``Trainer.evaluate_refer_youtube_vos`` (mttr2021/MTTR 2cc35ab, shims listed in golden.json) on the miniature
dataset tests/fixtures/eval_pipeline_mttr/ytvos_mini (4:3 resized down, 16:9 resized up with 10 frames, a 4:1
one-frame video whose long side is capped, 9:16, and a 100x333 video where DETR's rounding differs from
torchvision's) with the tiny MTTR parity fixture's weights (e2e_mttr.py). ``lvseg evaluate`` must write the same
PNGs: a pixel may differ only where the logit is so close to the threshold that float rounding decides it
(tests/parity.py); on this project's machine, with the eager attention the evaluation runs, none of 2,859,048
pixels does (docs/metrics.md).

A2D-Sentences: the predictions (every query's mask and score) of the official ``evaluate_a2d_sentences`` on
tests/fixtures/eval_pipeline_mttr/a2d_mini (golden/mttr_a2d); here 0 pixels differ and the metrics are equal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import RELATIVE_TOLERANCE
from PIL import Image

from lvseg.cli import main
from lvseg.data import RefYouTubeVOS
from lvseg.metrics.evaluate import default_runner
from lvseg.metrics.pipeline import find_pipeline
from lvseg.metrics.pipeline_mttr import (
    MTTR_YTVOS_SIZE,
    clean_text,
    detr_resize_size,
    mttr_input,
    mttr_ytvos_masks,
)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "eval_pipeline_mttr"
MINI = FIXTURES / "ytvos_mini"
GOLDEN = FIXTURES / "golden" / "mttr_ytvos"
sys.path.insert(0, str(FIXTURES))
from e2e_mttr import mttr_checkpoint, mttr_folder  # noqa: E402

# fraction of 2,859,048 golden pixels that may differ (measured here: 0 with the eager attention the evaluation
# runs; 1-2 with the fused one, logits of |x| < 4e-7): another CPU may round differently
MAX_DIFFERING = 1e-5


def golden_masks() -> dict[str, np.ndarray]:
    """{"video/exp_id/frame": bool [H, W]} of the official run."""
    root = GOLDEN / "Annotations"
    return {str(p.relative_to(root).with_suffix("")): np.array(Image.open(p)) > 0 for p in root.rglob("*.png")}


@pytest.fixture(scope="module")
def mttr_model_folder(tmp_path_factory):
    """The official-format checkpoint converted with `lvseg convert mttr` into a model folder."""
    tmp = tmp_path_factory.mktemp("mttr_e2e")
    return mttr_folder(mttr_checkpoint(tmp / "official.pth.tar"), tmp / "model")


def load(folder: Path, fused: bool = True):
    from lvseg.hub import from_pretrained

    model = from_pretrained(folder, device="cpu")
    if fused != model.config.fused_attention:  # the attention path is chosen when the backbone is built
        model.config.fused_attention = fused
        rebuilt = type(model)(model.config, tokenizer=model.tokenizer)
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt.eval()
    return model


def compare(model, videos: set[str] | None = None) -> tuple[int, int, int]:
    """(differing pixels, of which unexplained by rounding, total pixels) of ``mttr_ytvos_masks`` vs the golden."""
    golden = golden_masks()
    differing = unexplained = total = 0
    for sample in RefYouTubeVOS(MINI, "valid"):
        if videos is not None and sample["video"] not in videos:
            continue
        masks, scores, logits = mttr_ytvos_masks(model, np.asarray(sample["frames"]), sample["text"])
        key = f"{sample['video']}/{sample['exp_id']}"
        gold = np.stack([golden[f"{key}/{name}"] for name in sample["frame_ids"]])
        assert masks.shape == gold.shape and scores.shape == (gold.shape[0],)
        differ = masks.numpy() != gold
        margin = RELATIVE_TOLERANCE * logits.abs().max().item()
        differing += int(differ.sum())
        unexplained += int((differ & (logits.abs().numpy() > margin)).sum())
        total += differ.size
    return differing, unexplained, total


@pytest.mark.slow
def test_lvseg_evaluate_writes_the_official_ytvos_masks(mttr_model_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(mttr_model_folder), "--dataset", "ref-youtube-vos", "--root", str(MINI),
                 "--split", "valid", "-o", str(out), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 6 and result["benchmark"] == "Ref-YouTube-VOS" and "submission" in result
    manifest = json.loads((out / "evaluation.json").read_text())
    assert "evaluate_refer_youtube_vos @ 2cc35ab" in manifest["predictions"]  # the official pipeline ran
    golden = golden_masks()
    ours = {str(p.relative_to(out / "Annotations").with_suffix("")): p for p in (out / "Annotations").rglob("*.png")}
    assert sorted(ours) == sorted(golden)  # the same videos, expressions and frame names
    differing: dict[str, int] = {}
    for key, path in ours.items():
        image = Image.open(path)
        assert image.mode == "L" and set(np.unique(np.array(image))) <= {0, 255}  # the official format
        mask = np.array(image) > 0
        assert mask.shape == golden[key].shape  # the frame size: 100x333 and 120x480 included
        if n := int((mask != golden[key]).sum()):
            video_exp = key.rsplit("/", 1)[0]
            differing[video_exp] = differing.get(video_exp, 0) + n
    pixels = sum(m.size for m in golden.values())
    foreground = sum(m.sum() for m in golden.values()) / pixels
    assert 0.2 < foreground < 0.95  # neither empty nor full masks: boundaries are compared
    assert sum(differing.values()) <= MAX_DIFFERING * pixels, differing
    if differing:  # only float rounding may flip a pixel, where the logit is at the threshold
        model = load(mttr_model_folder)
        flipped, unexplained, _ = compare(model, {key.split("/")[0] for key in differing})
        assert unexplained == 0 and flipped == sum(differing.values()), differing


@pytest.mark.slow
def test_the_evaluation_runs_the_eager_attention_of_a_fused_model(mttr_model_folder):
    """The official code computes the attention eagerly and lvseg's models use SDPA by default: the evaluation
    pipeline switches a fused model to the eager path (bit for bit the official computation on CPU) for its
    forward and back after, and gives the official masks up to pixels whose logit is within rounding of 0
    (measured here: none, docs/metrics.md)."""
    model = load(mttr_model_folder)
    assert model.config.fused_attention
    flipped, unexplained, total = compare(model, {"a_4x3", "c_wide", "e_odd"})
    assert unexplained == 0 and flipped <= MAX_DIFFERING * total, (flipped, total)
    assert model.config.fused_attention and model.backbone.fused_attention  # restored after each video


def test_the_query_choice_is_not_decided_by_rounding(mttr_model_folder):
    """The referred query (argmax of the time-averaged probability) wins by more than 10x the parity tolerance
    (measured: 0.3-3 % of the winner's probability on every video), so rounding does not pick another query."""
    model = load(mttr_model_folder)
    for sample in RefYouTubeVOS(MINI, "valid"):
        if sample["video"] not in ("c_wide", "e_odd"):
            continue
        x = mttr_input(np.asarray(sample["frames"]), *MTTR_YTVOS_SIZE, model.preprocessing.mean,
                       model.preprocessing.std)
        with torch.inference_mode():
            out = model(x[None], [clean_text(sample["text"])])
        top2 = out["pred_is_referred"].softmax(-1)[..., 0].mean(1)[0].topk(2).values
        assert top2[0] - top2[1] > 10 * RELATIVE_TOLERANCE * top2[0], sample["video"]


# ------------------------------------------------------------------------------------------- fast unit checks
def test_detr_resize_rounds_as_detr_not_as_torchvision():
    assert detr_resize_size(720, 1280, 360, 640) == (360, 640)
    assert detr_resize_size(384, 512, 360, 640) == (360, 480)
    assert detr_resize_size(270, 480, 360, 640) == (360, 640)  # up
    assert detr_resize_size(120, 480, 360, 640) == (160, 640)  # long side capped
    assert detr_resize_size(480, 270, 360, 640) == (640, 360)  # portrait
    assert detr_resize_size(360, 500, 360, 640) == (360, 500)  # already the size: untouched
    # round(640 * 100 / 333) = 192, then int(192 * 333 / 100) = 639 (torchvision's max_size gives 192x640)
    assert detr_resize_size(100, 333, 360, 640) == (192, 639)
    from torchvision.transforms import functional as TF

    assert TF.resize(Image.new("RGB", (333, 100)), 360, max_size=640).size[::-1] == (192, 640)
    assert detr_resize_size(240, 320, 320, 576) == (320, 426)  # JHMDB frames at A2D's eval size


def test_mttr_input_is_the_official_transform_of_the_pil_frames():
    import torchvision.transforms as T

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 50, 167, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = mttr_input(frames, 36, 64, mean, std)
    size = detr_resize_size(50, 167, 36, 64)
    transform = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(list(mean), list(std))])
    expected = torch.stack([transform(Image.fromarray(f)) for f in frames])
    assert x.shape == (2, 3, *size) and x.is_contiguous()
    assert torch.equal(x, expected)


def test_clean_text_is_the_official_cleaning():
    assert clean_text("The  red ball on the LEFT ") == "the red ball on the left"
    assert clean_text("\ta\nb  c") == "a b c"


def test_evaluate_uses_the_official_pipeline_for_mttr_on_ytvos(mttr_model_folder):
    from lvseg.models.mttr import MTTR

    pipeline = find_pipeline(MTTR.__new__(MTTR), "ytvos")
    assert pipeline is not None and "2cc35ab" in pipeline.source and pipeline.family == "MTTR"
    assert find_pipeline(MTTR.__new__(MTTR), "refdavis") is None
    model = load(mttr_model_folder)
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 30, 150, 3), dtype=np.uint8)  # 5:1 -> 128x640
    pred = default_runner(model, "ytvos")({"frames": torch.from_numpy(frames), "text": "A  dog"})
    masks, scores, logits = mttr_ytvos_masks(model, frames, "a dog")
    assert pred.kind == "masks" and torch.equal(pred.values, masks) and torch.equal(pred.scores, scores)
    assert masks.shape == logits.shape == (2, 30, 150)
    assert torch.equal(masks, logits > 0) or int((masks != (logits > 0)).sum()) <= 2  # sigmoid rounds at 0.5


# --------------------------------------------------------------------------------------------- A2D-Sentences
A2D_MINI = FIXTURES / "a2d_mini"
GOLDEN_A2D = FIXTURES / "golden" / "mttr_a2d"


@pytest.mark.slow
def test_lvseg_evaluate_gives_the_official_a2d_predictions_and_metrics(mttr_model_folder, tmp_path, capsys):
    """Every query's mask and score of each annotated frame equal what the official ``evaluate_a2d_sentences``
    handed to ``COCO.loadRes`` (-ws 8 -ebs 1), and where no pixel differs the metrics equal the official ones."""
    from pycocotools import mask as mask_utils

    from lvseg.data import A2DSentences
    from lvseg.metrics.evaluate import _load_prediction, _sample_key
    from lvseg.metrics.pipeline_mttr import mttr_a2d_queries

    out = tmp_path / "eval"
    assert main(["evaluate", str(mttr_model_folder), "--dataset", "a2d-sentences", "--root", str(A2D_MINI),
                 "--split", "test", "--dataset-arg", "num_frames=8", "-o", str(out), "--device", "cpu",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 5 and result["benchmark"] == "A2D-Sentences"
    assert "evaluate_a2d_sentences @ 2cc35ab" in json.loads((out / "evaluation.json").read_text())["predictions"]
    info = json.loads((GOLDEN_A2D / "golden.json").read_text())
    golden: dict[str, list[dict]] = {}
    for p in json.loads((GOLDEN_A2D / "predictions.json").read_text()):
        golden.setdefault(p["image_id"], []).append(p)  # the queries of one frame, in query order
    dataset = A2DSentences(A2D_MINI, "test", num_frames=8)
    model = None
    differing = unexplained = total = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        pred = _load_prediction(out / "predictions" / f"{_sample_key(index, sample)}.npz")
        gold = golden[sample["image_id"]]
        assert pred.kind == "queries" and pred.values.shape[0] == len(gold)
        scores = torch.tensor([g["score"] for g in gold])
        assert (pred.scores - scores).abs().max() <= RELATIVE_TOLERANCE * scores.abs().max()
        gold_masks = np.stack([mask_utils.decode({"size": g["segmentation"]["size"],
                                                  "counts": g["segmentation"]["counts"].encode()}) > 0 for g in gold])
        differ = pred.values.numpy() != gold_masks
        total += differ.size
        if differ.any():
            if model is None:
                model = load(mttr_model_folder)
            _, _, logits = mttr_a2d_queries(model, np.asarray(sample["frames"]), sample["text"],
                                            sample["center_index"])
            margin = RELATIVE_TOLERANCE * logits.abs().max().item()
            differing += int(differ.sum())
            unexplained += int((differ & (logits.abs().numpy() > margin)).sum())
    assert unexplained == 0 and differing <= MAX_DIFFERING * total, (differing, total)
    official = info["official_metrics"]
    assert official["overall_iou"] > 0.3 and official["P@0.5"] > 0  # not a trivial comparison
    print(f"A2D: {differing} of {total} query pixels differ; ours {result}")
    if differing == 0:
        for ours, theirs in (("P@0.5", "P@0.5"), ("P@0.9", "P@0.9"), ("overall_iou", "overall_iou"),
                             ("mean_iou", "mean_iou")):
            assert result[ours] == pytest.approx(100 * official[theirs], rel=1e-12, abs=1e-12), ours
        for key, value in result.items():
            if key.startswith("mAP") or key.startswith("AP"):
                assert value == pytest.approx(100 * official[key], rel=1e-9, abs=1e-12), key
