"""benchmarks/shapes_report.py: what the Shapes training benchmarks write (per-run results, the per-kind table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import shapes_report  # noqa: E402


def _run(jf: float, kinds: dict[str, float]) -> dict:
    return {"J&F": jf, "by_kind": {k: {"J&F": v, "J": v, "F": v, "num_expressions": 3} for k, v in kinds.items()}}


def test_kinds_side_by_side_lists_each_kind_of_each_run():
    results = {"model": _run(40.0, {"color": 78.04, "motion": 26.0}), "control": _run(31.0, {"color": 30.0}),
               "old": {"J&F": 20.0}}  # a results.json written before by_kind existed
    table = shapes_report.kinds_side_by_side(results)
    assert table == {"color": {"model": 78.0, "control": 30.0}, "motion": {"model": 26.0}}


def test_eval_only_keeps_the_training_time_of_the_run(tmp_path):
    first = shapes_report.write_run_results(tmp_path, {"J&F": 30.0, "train_seconds": 1234.5, "threads": 1}, False)
    assert first["train_seconds"] == 1234.5
    rescored = shapes_report.write_run_results(tmp_path, {"J&F": 31.0, "train_seconds": None, "threads": 2}, True)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == rescored == {"J&F": 31.0, "train_seconds": 1234.5, "threads": 1}
    fresh = tmp_path / "fresh"
    fresh.mkdir()  # a re-score of a run without results.json: no training time is known
    assert shapes_report.write_run_results(fresh, {"J&F": 1.0, "train_seconds": None}, True)["train_seconds"] is None
    leftovers = [p.name for d in (tmp_path, fresh) for p in d.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # written through a temporary file renamed into place


@pytest.mark.parametrize("script", ["train_shapes_vlp_rvos.py", "train_shapes_locater.py", "train_shapes_lavt.py"])
def test_shapes_benchmarks_import_the_report_helpers(script):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--eval-only" in out.stdout


def test_locater_both_passes_each_child_one_start_folder(tmp_path, monkeypatch):
    """``train_shapes_locater.py --both``: the pre-training stages run once, and each child gets the last stage's
    folder as its one ``--pretrained`` (the stages' own options are not passed on)."""
    import train_shapes_locater as bench

    calls = []

    class Child:
        def __init__(self, cmd, **_):
            calls.append(cmd[2:])

        def wait(self):
            return 1  # stop before reading results

    monkeypatch.setattr(bench.subprocess, "Popen", Child)
    monkeypatch.setattr(bench, "ground_once", lambda args, folder, start: folder)
    out = tmp_path / "run"
    argv = ["--output-dir", str(out), "--both", "--pretrained", "earlier", "--ground-steps=40", "--vit-lr", "0"]
    assert bench.main(argv) == 1
    child = ["--vit-lr", "0", "--pretrained", str(out / "grounded")]
    model, control = ["--output-dir", str(out / "model"), *child], ["--output-dir", str(out / "control"), *child]
    assert calls == [model, [*control, "--control"]]
    assert bench._drop_option(["--a", "1", "--b=2", "--c", "--b", "3"], "--b") == ["--a", "1", "--c"]
