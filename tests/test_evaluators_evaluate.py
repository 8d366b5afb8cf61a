"""lvseg.evaluate end to end with a small deterministic model: protocol dispatch, results, resuming, submissions."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

import lvseg
from lvseg.errors import InvalidInputError
from lvseg.metrics.evaluate import build_dataset, format_result, main_cli
from lvseg.models.base import ModelConfig, PreprocessConfig, RVOSModel
from lvseg.predictor import Predictor

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)}


@dataclass
class ColourConfig(ModelConfig):
    architecture: str = "test-colour"
    preprocessing: PreprocessConfig = field(
        default_factory=lambda: PreprocessConfig(short_side=32, max_size=64, window=0))


class ColourModel(RVOSModel):
    """Segments the pixels whose colour is the one named in the expression (within 40 levels per channel)."""

    config_class = ColourConfig
    architecture = "test-colour"

    def segment(self, frames: torch.Tensor, text: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.config.preprocessing
        mean = torch.tensor(pre.mean).view(1, 1, 3, 1, 1)
        std = torch.tensor(pre.std).view(1, 1, 3, 1, 1)
        rgb = (frames * std + mean) * 255  # [B, T, 3, H, W]
        logits = []
        for b, sentence in enumerate(text):
            name = next((c for c in COLOURS if c in sentence), None)
            if name is None:
                logits.append(torch.full(rgb.shape[1:2] + rgb.shape[3:], -10.0))
                continue
            target = torch.tensor(COLOURS[name], dtype=torch.float32).view(1, 3, 1, 1)
            logits.append(40.0 - (rgb[b] - target).abs().amax(1))  # [T, H, W], > 0 inside the colour
        out = torch.stack(logits)
        return out, (out > 0).float().mean((-2, -1))


def _video(t_len: int = 3, h: int = 32, w: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames = np.full((t_len, h, w, 3), 128, np.uint8)
    red = np.zeros((t_len, h, w), bool)
    blue = np.zeros((t_len, h, w), bool)
    for t in range(t_len):
        red[t, 4 + t:14 + t, 3 + 2 * t:15 + 2 * t] = True
        blue[t, 18:28, 30 - t:44 - t] = True
    frames[red] = COLOURS["red"]
    frames[blue] = COLOURS["blue"]
    return frames, red, blue


class MiniRVOS:
    """A dataset in lvseg's sample format (plain dicts) following the MeViS protocol."""

    protocol = "mevis"
    split = "valid_u"

    def __init__(self, has_ground_truth: bool = True, protocol: str = "mevis", declare: bool = True) -> None:
        self.with_masks = has_ground_truth
        self.has_ground_truth = has_ground_truth if declare else None
        self.protocol = protocol
        frames, red, blue = _video()
        self.items = [("the red square", red), ("the blue square", blue), ("the green square", red)]
        self.frames = torch.from_numpy(frames)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        text, gt = self.items[i]
        sample = {"frames": self.frames, "text": text, "video": "vid", "exp_id": str(i), "instance_id": i,
                  "frame_ids": [f"{t:05d}" for t in range(len(gt))]}
        if self.with_masks:
            sample["masks"] = torch.from_numpy(gt)
        return sample


@pytest.fixture(scope="module")
def model() -> ColourModel:
    return ColourModel(ColourConfig())


def test_evaluate_mevis_protocol(model: ColourModel) -> None:
    result = lvseg.evaluate(model, MiniRVOS(), progress=False)
    # red and blue are segmented exactly (no resize at 32x48); "green" finds nothing: J = F = 0 there
    assert result["benchmark"] == "MeViS" and result["samples"] == 3
    assert result["J"] == pytest.approx(200 / 3) and result["F"] == pytest.approx(200 / 3)
    assert result["J&F"] == pytest.approx(200 / 3)
    assert "MeViS: 3 sample(s)" in format_result(result)


def test_evaluate_resumes_after_an_interruption(model: ColourModel, tmp_path: Path) -> None:
    dataset = MiniRVOS()
    predictor = Predictor(model, progress=False)
    calls: list[str] = []

    def runner(sample: dict[str, Any], fail_at: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        calls.append(sample["exp_id"])
        out = predictor(sample["frames"], sample["text"])
        return out.masks, out.scores

    with pytest.raises(KeyboardInterrupt):
        lvseg.evaluate(model, dataset, output_dir=tmp_path, progress=False, runner=lambda s: runner(s, fail_at=1))
    stored = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert len(stored) == 1 and stored[0].startswith("0000000_vid_0")  # nothing half-written
    calls.clear()
    resumed = lvseg.evaluate(model, dataset, output_dir=tmp_path, progress=False, runner=runner)
    assert calls == ["1", "2"]  # only the samples that were not done
    fresh = lvseg.evaluate(model, dataset, progress=False)
    assert resumed == fresh
    calls.clear()
    again = lvseg.evaluate(model, dataset, output_dir=tmp_path, progress=False, runner=runner)
    assert calls == [] and again == fresh
    assert (tmp_path / "results.json").is_file()
    # the same folder cannot silently mix another evaluation's predictions
    with pytest.raises(InvalidInputError, match="another evaluation"):
        lvseg.evaluate(model, MiniRVOS(protocol="a2d+"), output_dir=tmp_path, progress=False)
    # resume=False recomputes everything
    calls.clear()
    lvseg.evaluate(model, dataset, output_dir=tmp_path, progress=False, runner=runner, resume=False)
    assert calls == ["0", "1", "2"]


def test_evaluate_writes_a_submission_without_ground_truth(model: ColourModel, tmp_path: Path) -> None:
    result = lvseg.evaluate(model, MiniRVOS(has_ground_truth=False, protocol="ytvos"), output_dir=tmp_path,
                            progress=False)
    assert result["benchmark"] == "Ref-YouTube-VOS"
    with zipfile.ZipFile(result["submission"]) as zf:
        names = sorted(zf.namelist())
    assert len(names) == 9 and names[0] == "Annotations/vid/0/00000.png"
    with pytest.raises(InvalidInputError, match="output_dir"):
        lvseg.evaluate(model, MiniRVOS(has_ground_truth=False, protocol="ytvos"), progress=False)


def test_evaluate_frame_level_protocols(model: ColourModel) -> None:
    locater = lvseg.evaluate(model, MiniRVOS(protocol="a2d+"), progress=False)
    # 9 frames: 6 exact (IoU 1), 3 with an empty prediction (IoU 0)
    assert locater["P@0.9"] == pytest.approx(200 / 3, abs=1e-4) and locater["mean_iou"] == pytest.approx(200 / 3, abs=1e-4)
    a2d = lvseg.evaluate(model, MiniRVOS(protocol="a2d"), progress=False)
    assert a2d["benchmark"] == "A2D-Sentences" and a2d["P@0.5"] == pytest.approx(200 / 3)
    assert 0 < a2d["mAP 0.5:0.95"] < 100
    lavt = lvseg.evaluate(model, MiniRVOS(protocol="refcoco"), progress=False, max_samples=2)
    assert lavt["samples"] == 2 and lavt["overall_iou"] == 100.0


def test_evaluate_input_errors(model: ColourModel) -> None:
    with pytest.raises(InvalidInputError, match="protocol"):
        lvseg.evaluate(model, [{"frames": None}], progress=False)
    with pytest.raises(InvalidInputError, match="empty"):
        lvseg.evaluate(model, [], protocol="mevis", progress=False)
    with pytest.raises(InvalidInputError, match="unknown dataset"):
        build_dataset("no-such-benchmark", "/tmp")


def test_cli_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_cli(["-m", "no-such-model-xyz", "--dataset", "mevis", "--root", "/nonexistent"]) == 1
    assert "no-such-model-xyz" in capsys.readouterr().err
    from lvseg.cli import main

    # through `lvseg evaluate MODEL ...` (the model first, so the CLI hands every argument over)
    assert main(["evaluate", "no-such-model-xyz", "--dataset", "mevis", "--root", "/nonexistent"]) == 1
    assert "no-such-model-xyz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_cli(["--dataset", "mevis", "--root", "/x"])


def test_ground_truth_is_detected_from_the_first_sample(model: ColourModel, tmp_path: Path) -> None:
    labelled = MiniRVOS(declare=False)
    assert labelled.has_ground_truth is None  # unknown: evaluate looks at the first sample
    assert lvseg.evaluate(model, labelled, progress=False)["J&F"] == pytest.approx(200 / 3)
    result = lvseg.evaluate(model, MiniRVOS(has_ground_truth=False, declare=False), output_dir=tmp_path,
                            progress=False)
    assert result["benchmark"] == "MeViS" and Path(result["submission"]).is_file()
    with zipfile.ZipFile(result["submission"]) as zf:
        assert sorted(zf.namelist())[0] == "vid/0/00000.png"  # MeViS: video folders at the top


def test_reproduce_script_lists_paper_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from lvseg.registry import get_entry, list_models

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("lvseg_reproduce", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    reported = [(n, m) for n in list_models() for m in get_entry(n).paper_metrics if m.dataset == "Ref-YouTube-VOS"]
    if not reported:
        pytest.skip("no registry entry reports a Ref-YouTube-VOS number yet")
    assert module.main(["--dataset", "ref-youtube-vos", "--list"]) == 0
    out = capsys.readouterr().out
    name, metric = reported[0]
    assert name in out and f"{metric.value:g}" in out and "not run (--list)" in out
