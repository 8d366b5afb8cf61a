"""lvseg.evaluate runs each benchmark the way its official script does, from the model's own outputs.

A small scripted RVOSModel reads its candidates from the expression ("y0 y1 x0 x1 p | ..."): each candidate is a
box whose logit is logit(p) inside and -8 outside, scored p. That gives hand-made cases where

* (a) Ref-DAVIS17: two objects of one annotator overlap, the lower object index is the less probable one;
* (b) A2D-Sentences: the top-scoring candidate is wrong and a lower-scored one is right (all-query mAP differs);
* (c) A2D-S+: the model's output is at stride 4, so align_corners=True and False upsampling disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from coco_reference import pycocotools_map

import lvseg
from lvseg.errors import InvalidInputError
from lvseg.metrics.evaluate import SamplePrediction, _load_prediction, _save_prediction, default_runner
from lvseg.metrics.refdavis import DAVISUnsupervised
from lvseg.metrics.referring import LocaterEvaluator
from lvseg.models.base import ModelConfig, PreprocessConfig, RVOSModel
from lvseg.predictor import Predictor

H, W = 24, 32


@dataclass
class ScriptedConfig(ModelConfig):
    architecture: str = "test-scripted"
    stride: int = 1  # output resolution = input / stride
    preprocessing: PreprocessConfig = field(
        default_factory=lambda: PreprocessConfig(short_side=H, max_size=W, window=0))


def _candidates(text: str) -> list[tuple[int, int, int, int, float]]:
    out = []
    for part in text.split("|"):
        y0, y1, x0, x1, p = part.split()
        out.append((int(y0), int(y1), int(x0), int(x1), float(p)))
    return out


class ScriptedModel(RVOSModel):
    """Candidates from the expression; ``segment`` keeps the best-scored one in every frame."""

    config_class = ScriptedConfig
    architecture = "test-scripted"

    def __init__(self, config: ScriptedConfig) -> None:
        super().__init__(config)
        self.protocol_calls: list[tuple[str | None, int]] = []

    def _logits(self, text: str, t: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[Q, t, h / stride, w / stride] logits and [Q] scores of one expression."""
        cands = _candidates(text)
        full = torch.full((len(cands), t, h, w), -8.0)
        for q, (y0, y1, x0, x1, p) in enumerate(cands):
            full[q, :, y0:y1, x0:x1] = math.log(p / (1 - p))
        s = self.config.stride
        low = F.avg_pool2d(full.flatten(0, 1), s).unflatten(0, (len(cands), t)) if s > 1 else full
        return low, torch.tensor([c[4] for c in cands])

    def segment(self, frames: torch.Tensor, text: Sequence[str],
                protocol: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _, h, w = frames.shape
        self.protocol_calls.append((protocol, t))
        logits, scores = [], []
        for sentence in text:
            low, sc = self._logits(sentence, t, h, w)
            best = int(sc.argmax())
            logits.append(low[best])
            scores.append(sc[best].expand(t))
        return torch.stack(logits), torch.stack(scores)

    def segment_annotated_frame(self, frames: torch.Tensor, text: Sequence[str],
                                frame_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _, h, w = frames.shape
        index = t // 2 if frame_index is None else frame_index
        out = [self._logits(sentence, t, h, w) for sentence in text]
        return torch.stack([lo[:, index] for lo, _ in out]), torch.stack([sc for _, sc in out])

    def benchmark_protocol(self, benchmark: str) -> str | None:
        return "whole-video" if benchmark == "refdavis" else None


def _box(y0: int, y1: int, x0: int, x1: int, t: int = 2) -> np.ndarray:
    m = np.zeros((t, H, W), bool)
    m[:, y0:y1, x0:x1] = True
    return m


def _frames(t: int) -> torch.Tensor:
    return torch.full((t, H, W, 3), 100, dtype=torch.uint8)


# ------------------------------------------------------------------------------------------ (a) Ref-DAVIS17
GT_A, GT_B = (2, 12, 2, 14), (8, 20, 16, 28)   # the two objects' ground-truth boxes
PRED_A, PRED_B = (2, 12, 2, 20), (8, 20, 16, 28)  # object 0 spills into object 1, less confidently


class MiniRefDAVIS:
    """One video, two objects x four annotators (exp_id = 4 * object + annotator), DAVIS layout on disk."""

    protocol = "refdavis"
    split = "valid"
    has_ground_truth = True

    def __init__(self, root: Path) -> None:
        self.root = root
        folder = root / "Annotations_unsupervised" / "480p" / "v"
        folder.mkdir(parents=True)
        labels = np.zeros((2, H, W), np.uint8)
        labels[_box(*GT_A)] = 1
        labels[_box(*GT_B)] = 2
        for t, lab in enumerate(labels):
            Image.fromarray(lab, mode="L").save(folder / f"{t:05d}.png")
        self.labels = labels
        boxes = [(PRED_A, 0.7), (PRED_B, 0.9)]
        self.texts = [" ".join(map(str, boxes[e // 4][0])) + f" {boxes[e // 4][1]}" for e in range(8)]

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"frames": _frames(2), "text": self.texts[i], "video": "v", "exp_id": i}


def _davis_jf(gt: np.ndarray, pred: np.ndarray) -> float:
    evaluation = DAVISUnsupervised()
    evaluation.add_sequence("v", gt, pred)
    return 100 * evaluation.table()["J&F-Mean"]


def test_refdavis_overlaps_go_to_the_more_probable_object(tmp_path: Path) -> None:
    data = MiniRefDAVIS(tmp_path / "DAVIS")
    model = ScriptedModel(ScriptedConfig())
    result = lvseg.evaluate(model, data, output_dir=tmp_path / "run", progress=False)
    # ReferFormer's merge: argmax over [0.1, p_0, p_1]; the overlap belongs to object 1 (0.9 > 0.7)
    by_probability = np.zeros((2, H, W), np.uint8)
    by_probability[_box(*PRED_A)] = 1
    by_probability[_box(*PRED_B)] = 2
    by_index = by_probability.copy()
    by_index[_box(*PRED_A)] = 1  # what binary masks give: the lower index wins
    expected, index_order = _davis_jf(data.labels, by_probability), _davis_jf(data.labels, by_index)
    assert index_order < expected - 1  # the two rules disagree on this case
    assert result["J&F"] == pytest.approx(expected, abs=1e-9)  # every annotator identical: mean = one table
    # the family's DAVIS protocol ran each video in one segment() call (ReferFormer: 36-frame clips inside it)
    assert model.protocol_calls == [("whole-video", 2)] * 8
    # the stored probabilities are exact above 0.5 (zero below) and resuming reuses them: same numbers, no model run
    pred = _load_prediction(sorted((tmp_path / "run" / "predictions").iterdir())[0])
    inside = torch.from_numpy(_box(*PRED_A))
    p_a = torch.tensor(math.log(0.7 / 0.3), dtype=torch.float32).sigmoid()
    assert pred.kind == "probabilities" and (pred.values[inside] == p_a).all() and (pred.values[~inside] == 0).all()
    calls = len(model.protocol_calls)
    assert lvseg.evaluate(model, data, output_dir=tmp_path / "run", progress=False) == result
    assert len(model.protocol_calls) == calls
    # a custom runner stores other predictions: it may not resume this folder
    with pytest.raises(InvalidInputError, match="another evaluation"):
        lvseg.evaluate(model, data, output_dir=tmp_path / "run", progress=False, runner=lambda s: None)


def test_probability_storage_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand((3, 17, 29), generator=gen)
    pred = SamplePrediction("probabilities", probs, torch.rand(3, generator=gen))
    _save_prediction(tmp_path / "p.npz", pred)
    back = _load_prediction(tmp_path / "p.npz")
    keep = probs >= 0.5
    assert torch.equal(back.values[keep], probs[keep]) and (back.values[~keep] == 0).all()
    assert torch.equal(back.scores, pred.scores)
    queries = SamplePrediction("queries", probs > 0.3, torch.arange(3.0))
    _save_prediction(tmp_path / "q.npz", queries)
    again = _load_prediction(tmp_path / "q.npz")
    assert again.kind == "queries" and torch.equal(again.values, queries.values)


# ------------------------------------------------------------------------------------------ (b) A2D-Sentences
class MiniA2D:
    """Three clips of 3 frames, the centre one annotated (lvseg.data.A2DSentences' sample format)."""

    protocol = "a2d"
    split = "test"
    has_ground_truth = True
    # (GT box, candidates): sample 0 top candidate right; 1: top wrong, second right; 2: top half right
    CASES = [
        ((4, 14, 4, 16), "4 14 4 16 0.9 | 15 22 20 30 0.3"),
        ((6, 18, 10, 24), "0 6 0 8 0.8 | 6 18 10 24 0.6 | 18 24 0 6 0.55"),
        ((2, 20, 2, 12), "2 11 2 12 0.7 | 2 20 2 12 0.65"),
    ]

    def __len__(self) -> int:
        return len(self.CASES)

    def __getitem__(self, i: int) -> dict[str, Any]:
        gt_box, text = self.CASES[i]
        masks = torch.zeros((3, H, W), dtype=torch.bool)
        masks[1] = torch.from_numpy(_box(*gt_box, t=1)[0])
        return {"frames": _frames(3), "text": text, "video": f"vid{i}", "image_id": f"v_vid{i}_f_{i + 5}_i_1",
                "masks": masks, "annotated": torch.tensor([False, True, False]), "center_index": 1}


def _pycocotools_map(data: MiniA2D) -> float:
    gts, preds = [], []
    for i, (gt_box, text) in enumerate(data.CASES):
        image_id = f"v_vid{i}_f_{i + 5}_i_1"
        gts.append({"image_id": image_id, "mask": _box(*gt_box, t=1)[0]})
        preds += [{"image_id": image_id, "mask": _box(y0, y1, x0, x1, t=1)[0], "score": p}
                  for y0, y1, x0, x1, p in _candidates(text)]
    return 100 * pycocotools_map(gts, preds)[0]


def test_a2d_map_ranks_every_query(tmp_path: Path) -> None:
    data, model = MiniA2D(), ScriptedModel(ScriptedConfig())
    result = lvseg.evaluate(model, data, output_dir=tmp_path, progress=False)
    assert result["mAP 0.5:0.95"] == pytest.approx(_pycocotools_map(data), abs=1e-9)
    stored = _load_prediction(sorted((tmp_path / "predictions").iterdir())[1])
    assert stored.kind == "queries" and stored.values.shape == (3, H, W)
    # top-1 only (what the Predictor's masks give) is a different, lower mAP; P@K and the IoUs are top-1 in both
    predictor = Predictor(model, progress=False)

    def top1(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        out = predictor(sample["frames"], sample["text"])
        return out.masks, out.scores

    top1_result = lvseg.evaluate(model, data, progress=False, runner=top1)
    assert top1_result["mAP 0.5:0.95"] < result["mAP 0.5:0.95"] - 1
    for key in ("P@0.5", "P@0.9", "overall_iou", "mean_iou"):
        assert top1_result[key] == pytest.approx(result[key])
    # sample 1's top candidate misses; sample 2's has IoU exactly 0.5, not counted (MTTR's strict '>')
    assert result["P@0.5"] == pytest.approx(100 / 3)


def test_a2d_clip_length_other_than_the_models_window_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    data = MiniA2D()
    data.num_frames = 3  # type: ignore[attr-defined]
    model = ScriptedModel(ScriptedConfig(preprocessing=PreprocessConfig(short_side=H, max_size=W, window=10)))
    with caplog.at_level("WARNING", logger="lvseg.metrics.evaluate"):
        lvseg.evaluate(model, data, progress=False)
    assert "num_frames=10" in caplog.text


def test_a2d_candidates_are_post_processed_like_mttr() -> None:
    """Stride-2 outputs on 2x-upscaled frames: masks = threshold-nearest post-processing of each candidate."""
    from lvseg.models.mttr.model import postprocess_masks

    model = ScriptedModel(ScriptedConfig(stride=2))
    frames = torch.full((3, 2 * H, 2 * W, 3), 100, dtype=torch.uint8)  # resized to 24x32 for the model
    sample = {"frames": frames, "text": "3 13 5 17 0.8 | 0 9 20 31 0.6", "video": "v", "image_id": "v_v_f_1_i_1",
              "masks": torch.zeros((3, 2 * H, 2 * W), dtype=torch.bool), "annotated": torch.tensor([0, 1, 0]) > 0}
    pred = default_runner(model, "a2d")(sample)
    logits, scores = model.segment_annotated_frame(torch.zeros(1, 3, 3, H, W), [sample["text"]], 1)
    expected = postprocess_masks(logits[0], (H, W), (H, W), (2 * H, 2 * W))
    assert pred.kind == "queries" and torch.equal(pred.values, expected) and torch.equal(pred.scores, scores[0])


# ------------------------------------------------------------------------------------------ (c) A2D-S+
class MiniA2DPlus:
    protocol = "a2d+"
    split = "MUL"
    has_ground_truth = True
    CASES = [((5, 15, 6, 19), "5 15 6 19 0.9"), ((3, 21, 9, 30), "2 19 10 27 0.8")]

    def __len__(self) -> int:
        return len(self.CASES)

    def __getitem__(self, i: int) -> dict[str, Any]:
        gt_box, text = self.CASES[i]
        return {"frames": _frames(2), "text": text, "video": f"v{i}", "obj_id": "1",
                "masks": torch.from_numpy(_box(*gt_box)), "annotated": torch.tensor([True, True])}


def test_a2d_plus_upsamples_probabilities_with_align_corners() -> None:
    data, model = MiniA2DPlus(), ScriptedModel(ScriptedConfig(stride=4))
    result = lvseg.evaluate(model, data, progress=False)
    by_corners: dict[bool, LocaterEvaluator] = {True: LocaterEvaluator(), False: LocaterEvaluator()}
    for i in range(len(data)):
        sample = data[i]
        low, _ = model.segment(torch.zeros(1, 2, 3, H, W), [sample["text"]])  # [1, 2, 6, 8]
        for corners, evaluator in by_corners.items():
            probs = F.interpolate(low[0].sigmoid().unsqueeze(1), size=(H, W), mode="bilinear",
                                  align_corners=corners)[:, 0]
            evaluator.add(probs > 0.5, sample["masks"])
    expected, other = by_corners[True].summary(), by_corners[False].summary()
    assert expected["overall_iou"] != pytest.approx(other["overall_iou"])  # the two rules disagree here
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


# ------------------------------------------------------------------------------------------ family hooks
@pytest.fixture(scope="module")
def tiny_referformer() -> RVOSModel:
    from lvseg.registry import DEFAULT_MODEL

    return lvseg.load(DEFAULT_MODEL)


def test_referformer_evaluation_hooks(tiny_referformer: RVOSModel) -> None:
    """The bundled tiny ReferFormer: every query of the annotated frame, its DAVIS protocol and post-processing."""
    model = tiny_referformer
    assert model.benchmark_protocol("refdavis") == "davis" and model.benchmark_protocol("a2d+") is None
    assert model.output_upsampling("ytvos") == "direct" and model.output_upsampling("frame") == "threshold-nearest"
    frames = torch.randn(1, 3, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    logits, scores = model.segment_annotated_frame(frames, ["the red circle"], 2)
    with torch.no_grad():
        out = model(frames, ["the red circle"], valid_indices=[2])
    q, stride = model.config.num_queries, model.config.mask_stride  # the bundled model makes stride-1 masks
    assert logits.shape == (1, q, 64 // stride, 96 // stride) and scores.shape == (1, q)
    assert torch.equal(logits, out["pred_masks"][:, 0])
    assert torch.equal(scores, out["pred_logits"][:, 0].float().sigmoid().max(-1).values)


def test_referformer_runs_ref_davis_with_its_davis_protocol(tiny_referformer: RVOSModel, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on the real family: inference_davis.py's protocol, probabilities merged by the evaluator."""
    from lvseg.metrics.refdavis import RefDAVIS17Evaluator

    model = tiny_referformer
    data = MiniRefDAVIS(tmp_path / "DAVIS")
    texts = ["the red circle", "the blue square"]
    data.texts = [texts[e // 4] for e in range(8)]
    gen = torch.Generator().manual_seed(1)
    video = (torch.rand(2, H, W, 3, generator=gen) * 255).to(torch.uint8)
    monkeypatch.setattr(MiniRefDAVIS, "__getitem__", lambda self, i: {"frames": video, "text": self.texts[i],
                                                                       "video": "v", "exp_id": i})
    seen: list[Any] = []
    segment = model.segment

    def spy(frames: torch.Tensor, text: Sequence[str], protocol: str | None = None) -> Any:
        seen.append(protocol)
        return segment(frames, text, protocol=protocol)

    monkeypatch.setattr(model, "segment", spy)
    result = lvseg.evaluate(model, data, progress=False)
    assert seen == ["davis"] * 8
    # the same by hand: the official inference_davis.py pipeline (lvseg.metrics.pipeline), one davis-protocol pass
    # per expression, probabilities straight into the evaluator
    from lvseg.metrics.pipeline import referformer_davis_probabilities

    monkeypatch.setattr(model, "segment", segment)
    evaluator = RefDAVIS17Evaluator(tmp_path / "DAVIS")
    for obj, text in enumerate(texts):  # the four annotators of an object share the expression here
        probs, _ = referformer_davis_probabilities(model, video.numpy(), text)
        assert probs.shape == (2, H, W)
        for annotator in range(4):
            evaluator.add("v", obj, annotator, probs)
    assert result["J&F"] == pytest.approx(evaluator.summary()["J&F"], abs=1e-12)
