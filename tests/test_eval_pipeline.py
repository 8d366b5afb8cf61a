"""Evaluation mode (lvseg/metrics/pipeline.py): the official pipeline end to end, from JPEG files to PNG masks.

The golden masks (tests/fixtures/eval_pipeline/golden/referformer_ytvos) were written by the official
``inference_ytvos.py`` (wjn922/ReferFormer 06fc218, CPU shims only, see golden.json) on the miniature dataset
tests/fixtures/eval_pipeline/ytvos_mini (4:3 frames resized down, 16:9 frames at 360 px already, 16:9 frames of
450x800, a 4:1 one-frame video resized up to 360x1440) with the deterministic checkpoint of e2e_models.py.
``lvseg evaluate`` on the reference MSDA op must write the same PNGs. Pixels are compared exactly; a pixel may
differ only where our upsampled logit is so close to the threshold that another CPU's float rounding can flip it
(tests/parity.py), and on this project's machine none differs (docs/metrics.md).
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
from lvseg.data import RefYouTubeVOS
from lvseg.errors import InvalidInputError
from lvseg.metrics.evaluate import default_runner
from lvseg.metrics.pipeline import (
    OfficialPipeline,
    find_pipeline,
    official_input,
    official_resize,
    referformer_ytvos_masks,
    register_pipeline,
)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "eval_pipeline"
MINI = FIXTURES / "ytvos_mini"
GOLDEN = FIXTURES / "golden" / "referformer_ytvos"
DAVIS_MINI = FIXTURES / "davis_mini"
GOLDEN_DAVIS = FIXTURES / "golden" / "referformer_davis"
sys.path.insert(0, str(FIXTURES))
from e2e_models import referformer_checkpoint  # noqa: E402


def golden_masks() -> dict[str, np.ndarray]:
    """{"video/exp_id/frame": bool [H, W]} of the official run."""
    return {str(p.relative_to(GOLDEN).with_suffix("")): np.array(Image.open(p)) > 0 for p in GOLDEN.rglob("*.png")}


@pytest.fixture(scope="module")
def referformer_folder(tmp_path_factory):
    """The e2e checkpoint converted with `lvseg convert` into a model folder."""
    tmp = tmp_path_factory.mktemp("rf_e2e")
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


def unexplained_pixels(model, key: str, ours: np.ndarray, relative: float) -> int:
    """Pixels of sample ``key`` ("video/exp_id") where ours != golden although |logit| exceeds the rounding bound."""
    dataset = RefYouTubeVOS(MINI, "valid")
    video, exp_id = key.split("/")
    sample = next(s for s in dataset if s["video"] == video and s["exp_id"] == exp_id)
    masks, _, logits = referformer_ytvos_masks(model, np.asarray(sample["frames"]), sample["text"])
    assert np.array_equal(masks.numpy(), ours), "the API and `lvseg evaluate` disagree"
    golden = golden_masks()
    gold = np.stack([golden[f"{key}/{name}"] for name in sample["frame_ids"]])
    margin = relative * logits.abs().max().item()
    return int(((masks.numpy() != gold) & (logits.abs().numpy() > margin)).sum())


@pytest.mark.slow
def test_lvseg_evaluate_writes_the_official_ytvos_masks(referformer_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")  # the official side ran ms_deform_attn_core_pytorch
    out = tmp_path / "eval"
    assert main(["evaluate", str(referformer_folder), "--dataset", "ref-youtube-vos", "--root", str(MINI),
                 "--split", "valid", "-o", str(out), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 5 and result["benchmark"] == "Ref-YouTube-VOS" and "submission" in result
    golden = golden_masks()
    ours = {str(p.relative_to(out / "Annotations").with_suffix("")): p for p in (out / "Annotations").rglob("*.png")}
    assert sorted(ours) == sorted(golden)  # the same videos, expressions and frame names
    differing: dict[str, int] = {}
    for key, path in ours.items():
        image = Image.open(path)
        assert image.mode == "L" and set(np.unique(np.array(image))) <= {0, 255}  # the official format
        mask = np.array(image) > 0
        assert mask.shape == golden[key].shape  # the original frame size, 120x480 included
        if (n := int((mask != golden[key]).sum())):
            differing[key.rsplit("/", 1)[0]] = differing.get(key.rsplit("/", 1)[0], 0) + n
    assert sum(m.sum() for m in golden.values()) > 0.2 * sum(m.size for m in golden.values())  # not trivial masks
    if differing:  # only float rounding of another CPU may flip a pixel, where the logit is near the threshold
        from lvseg.hub import from_pretrained

        model = from_pretrained(referformer_folder, device="cpu")
        for key in differing:
            stored = out / "Annotations" / key
            frames = sorted(stored.glob("*.png"))
            ours_key = np.stack([np.array(Image.open(p)) > 0 for p in frames])
            assert unexplained_pixels(model, key, ours_key, RELATIVE_TOLERANCE) == 0, differing


@pytest.mark.slow
def test_compiled_op_differs_from_the_official_masks_only_near_the_threshold(referformer_folder):
    """The compiled CPU MSDA sums in another order: some pixels may flip, all of them near the threshold."""
    from lvseg.hub import from_pretrained
    from lvseg.ops import build

    try:
        build.load_extension("cpu")
    except Exception as exc:
        pytest.skip(f"the compiled CPU op is not available: {exc}")
    model = from_pretrained(referformer_folder, device="cpu")
    use_backend(model, "cpu")
    golden = golden_masks()
    dataset = RefYouTubeVOS(MINI, "valid")
    total = flipped = 0
    for sample in dataset:
        if sample["video"] not in ("b_16x9", "d_wide"):  # two videos keep the test short
            continue
        masks, _, logits = referformer_ytvos_masks(model, np.asarray(sample["frames"]), sample["text"])
        key = f"{sample['video']}/{sample['exp_id']}"
        gold = np.stack([golden[f"{key}/{name}"] for name in sample["frame_ids"]])
        differ = masks.numpy() != gold
        margin = COMPILED_RELATIVE_TOLERANCE * logits.abs().max().item()
        assert int((differ & (logits.abs().numpy() > margin)).sum()) == 0, key
        flipped += int(differ.sum())
        total += differ.size
    # measured here: 0 of 311,040 pixels (docs/metrics.md); rounding near the threshold may flip a few elsewhere
    assert flipped <= 1e-4 * total, (flipped, total)


@pytest.mark.slow
def test_lvseg_evaluate_merges_the_official_davis_label_maps(referformer_folder, tmp_path, monkeypatch, capsys):
    """Ref-DAVIS17: the stored probabilities, merged per annotator, are the official ``anno_k`` PNGs; J&F equal."""
    from lvseg.data import RefDAVIS17
    from lvseg.hub import from_pretrained
    from lvseg.metrics.evaluate import _load_prediction
    from lvseg.metrics.pipeline import referformer_davis_probabilities
    from lvseg.metrics.refdavis import (
        DAVISUnsupervised,
        evaluate_davis_unsupervised_folder,
        load_ground_truth,
        objects_to_labels,
    )

    videos = ["blackswan", "b_4x3", "c_wide"]
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")
    out = tmp_path / "eval"
    assert main(["evaluate", str(referformer_folder), "--dataset", "ref-davis17", "--root", str(DAVIS_MINI),
                 "--split", "valid", "-o", str(out), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 16 and result["benchmark"] == "Ref-DAVIS17"
    assert 0 < result["J&F"] < 100

    dataset = RefDAVIS17(DAVIS_MINI, "valid")
    groups: dict[tuple[str, int], list[tuple[dict, np.ndarray]]] = {}
    for path in sorted((out / "predictions").glob("*.npz")):
        sample = dataset[int(path.name.split("_")[0])]
        pred = _load_prediction(path)
        assert pred.kind == "probabilities"
        groups.setdefault((sample["video"], sample["annotator"]), []).append((sample, pred.values.numpy()))
    assert len(groups) == 4 * len(videos)  # videos x 4 annotators
    assert any(len(objects) == 2 for objects in groups.values())  # a merge of two objects is compared
    ours = [DAVISUnsupervised() for _ in range(4)]
    differing = unexplained = 0
    model = None
    for (video, annotator), objects in groups.items():
        labels = objects_to_labels(np.stack([p for _, p in objects]))  # objects in exp_id order
        ours[annotator].add_sequence(video, load_ground_truth(DAVIS_MINI / "DAVIS", video)[0], labels)
        folder = GOLDEN_DAVIS / f"anno_{annotator}" / video
        gold = np.stack([np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))])
        assert labels.shape == gold.shape
        differ = labels != gold
        if differ.any():  # another CPU's rounding may decide where a probability is near 0.5 or two objects tie
            if model is None:
                model = from_pretrained(referformer_folder, device="cpu")
            probs = np.stack([referformer_davis_probabilities(model, np.asarray(s["frames"]), s["text"])[0].numpy()
                              for s, _ in objects])  # the exact values (stored ones are 0 below 0.5)
            near_half = (np.abs(probs - 0.5) < 0.02).any(0)
            top2 = np.sort(probs, axis=0)[-2:]
            near_tie = (top2[1] - top2[0] < 0.02) if len(probs) > 1 else np.zeros_like(near_half)
            differing += int(differ.sum())
            unexplained += int((differ & ~near_half & ~near_tie).sum())
    assert unexplained == 0, (differing, unexplained)
    # `lvseg evaluate` scores exactly the merged predictions it stored ...
    assert result["J&F"] == 100 * float(np.mean([e.table()["J&F-Mean"] for e in ours]))
    if differing == 0:  # ... and, where they are the official label maps (this machine), the official J&F
        official = [evaluate_davis_unsupervised_folder(DAVIS_MINI / "DAVIS", GOLDEN_DAVIS / f"anno_{k}",
                                                       sequences=videos).table() for k in range(4)]
        assert result["J&F"] == 100 * float(np.mean([t["J&F-Mean"] for t in official]))
        assert result["J"] == 100 * float(np.mean([t["J-Mean"] for t in official]))


# ------------------------------------------------------------------------------------------- fast unit checks
def test_official_resize_truncates_the_long_side_and_has_no_cap():
    assert official_resize(Image.new("RGB", (800, 450)), 360).size == (640, 360)
    assert official_resize(Image.new("RGB", (480, 120)), 360).size == (1440, 360)  # no cap at 640
    # int(360 * 333 / 100) = 1198 where rounding would give 1199
    assert official_resize(Image.new("RGB", (333, 100)), 360).size == (1198, 360)
    assert official_resize(Image.new("RGB", (100, 333)), 360).size == (360, 1198)
    assert official_resize(Image.new("RGB", (1000, 100)), 360, max_size=640).size == (640, 64)


def test_official_input_is_the_torchvision_transform_of_the_pil_frame():
    import torchvision.transforms as T

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 90, 160, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = official_input(frames, 72, mean, std)
    transform = T.Compose([T.Resize(72), T.ToTensor(), T.Normalize(list(mean), list(std))])
    expected = torch.stack([transform(Image.fromarray(f)) for f in frames])
    assert x.shape == (2, 3, 72, 128) and x.is_contiguous()  # NCHW, not a channels-last view
    assert torch.equal(x, expected)
    # the fast path's antialiased torch resize gives other inputs (the difference the pipeline removes)
    from lvseg.video import preprocess_frames

    fast = preprocess_frames(frames, (72, 128), mean, std)
    assert not torch.equal(fast, x) and (fast - x).abs().max() < 0.2


def test_evaluate_uses_the_official_pipeline_for_referformer_on_ytvos_and_davis():
    from lvseg.models.referformer.model import ReferFormer

    pipeline = find_pipeline(ReferFormer.__new__(ReferFormer), "ytvos")
    assert pipeline is not None and "06fc218" in pipeline.source
    assert "inference_davis.py" in find_pipeline(ReferFormer.__new__(ReferFormer), "refdavis").source
    assert find_pipeline(ReferFormer.__new__(ReferFormer), "refcoco") is None
    assert find_pipeline(object(), "ytvos") is None
    with pytest.raises(ValueError, match="already registered"):
        register_pipeline(OfficialPipeline("ReferFormer", "ytvos", "another", (), lambda model: None))


def test_default_runner_runs_the_official_pipeline(tmp_path):
    """A tiny ReferFormer through default_runner(..., "ytvos") equals referformer_ytvos_masks on a wide clip."""
    import lvseg

    model = lvseg.load("referformer-tiny.shapes", device="cpu")
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 40, 200, 3), dtype=np.uint8)  # 5:1, resized to 96x480 without a cap
    run = default_runner(model, "ytvos")
    pred = run({"frames": torch.from_numpy(frames), "text": "the red circle"})
    masks, scores, logits = referformer_ytvos_masks(model, frames, "the red circle")
    assert pred.kind == "masks" and torch.equal(pred.values, masks) and torch.equal(pred.scores, scores)
    assert logits.shape == (2, 40, 200)
    with pytest.raises(InvalidInputError, match="uint8"):
        run({"frames": torch.zeros(2, 40, 200, 3), "text": "x"})
    with pytest.raises(InvalidInputError, match="text"):
        run({"frames": torch.from_numpy(frames), "text": ""})
