"""Distributed and resumable evaluation (lvseg/metrics/distributed.py) and ``lvseg evaluate --dataset shapes``.

Real torchrun launches (gloo on CPU) of the bundled ``referformer-tiny.shapes`` model on a generated Shapes split:
two processes (and two nodes) give exactly the metrics of one; a rank killed mid-run leaves only whole prediction
files, and the run resumes on three processes reusing them (same inodes: not recomputed) with the metrics of one
process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lvseg.errors import DatasetError, InvalidInputError
from lvseg.metrics import distributed
from lvseg.metrics.evaluate import _load_prediction, evaluate, main_cli, shapes_dataset
from lvseg.train.distributed import DistInfo

MODEL = "referformer-tiny.shapes"
METRICS = ("J&F", "J", "F")


@pytest.fixture(autouse=True)
def _reference_op(monkeypatch):
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread here as in the torchrun workers (OMP_NUM_THREADS=1), so that a run in this process and
    a rank compute each sample with the same float rounding: the test then compares scores exactly too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _subprocess_env():
    env = dict(os.environ, LVSEG_MSDA_BACKEND="reference", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 2-video Shapes valid split and the one-process evaluation of the bundled model on it."""
    import lvseg

    base = tmp_path_factory.mktemp("evaldist")
    root = base / "shapes"
    dataset = shapes_dataset(root, "valid", num_videos=2)
    model = lvseg.load(MODEL, device="cpu")
    previous = os.environ.get("LVSEG_MSDA_BACKEND")
    os.environ["LVSEG_MSDA_BACKEND"] = "reference"  # the module fixture runs before the autouse one
    try:
        single = evaluate(model, dataset, output_dir=base / "single", progress=False)
    finally:
        if previous is None:
            os.environ.pop("LVSEG_MSDA_BACKEND", None)
        else:
            os.environ["LVSEG_MSDA_BACKEND"] = previous
    return {"base": base, "root": root, "samples": len(dataset), "single": single, "model": model}


def test_shapes_split_is_generated_once_and_scored_as_ref_youtube_vos(shapes, capsys):
    root = shapes["root"]
    meta = root / "meta_expressions" / "valid" / "meta_expressions.json"
    expressions = sum(len(v["expressions"]) for v in json.loads(meta.read_text())["videos"].values())
    assert shapes["samples"] == expressions > 2
    single = shapes["single"]
    assert single["samples"] == expressions and single["protocol"] == "ytvos"
    assert 50 < single["J&F"] <= 100  # the bundled model segments Shapes (89.7 on the 100-video test split)
    stamp = meta.stat().st_mtime_ns
    # the command line on the existing split: not regenerated, the same numbers, JSON with the sample count
    code = main_cli([MODEL, "--dataset", "shapes", "--root", str(root), "--json", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and meta.stat().st_mtime_ns == stamp
    assert out == {k: single[k] for k in out} and set(METRICS) | {"samples"} <= set(out)
    # parameters that contradict the generated split are named, with the fix
    with pytest.raises(DatasetError, match=r"num_videos=2 \(asked: 5\).*another --root"):
        shapes_dataset(root, "valid", num_videos=5)
    code = main_cli([MODEL, "--dataset", "shapes", "--root", str(root), "--dataset-arg", "seed=3"])
    assert code == 1 and "seed=1 (asked: 3)" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="Shapes split must be"):
        shapes_dataset(root, "val")
    # valid and test in one root: Ref-YouTube-VOS would drop the test videos' names (video00000...) from valid
    with pytest.raises(DatasetError, match="already holds a Shapes valid split.*another --root"):
        shapes_dataset(root, "test")
    assert not (root / "meta_expressions" / "test").exists()


def test_plan_shard_skips_stored_predictions_and_removes_partial_files(tmp_path):
    pred = tmp_path / "predictions"
    pred.mkdir()
    for name in ("0000000_a_0.npz", "0000003_b_1.npz", "0000004.npz"):
        (pred / name).write_bytes(b"x")
    (pred / ".0000001_a_1.npz.k2j4.tmp").write_bytes(b"half")  # what a process killed while writing leaves
    (pred / "notes.txt").write_text("not a prediction")
    assert distributed.stored_indices(pred) == {0, 3, 4}
    assert distributed.plan_shard(pred, 7, True, DistInfo()) == [1, 2, 5, 6]
    assert not (pred / ".0000001_a_1.npz.k2j4.tmp").exists() and (pred / "notes.txt").exists()
    assert distributed.plan_shard(pred, 7, False, DistInfo()) == list(range(7))  # resume=False: everything


def test_torchrun_two_processes_give_exactly_the_one_process_metrics(shapes):
    out = shapes["base"] / "two"
    proc = subprocess.run(
        _torchrun(2, "-m", "lvseg", "evaluate", MODEL, "--dataset", "shapes", "--root", str(shapes["root"]),
                  "-o", str(out), "--json", "--device", "cpu"),
        env=_subprocess_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr  # both ranks computed a shard
    result = json.loads(proc.stdout)  # rank 0 alone prints
    assert result == shapes["single"]  # metrics compared with ==: bit-identical
    assert json.loads((out / "results.json").read_text()) == shapes["single"]
    # the stored predictions are those of the one-process run
    two = sorted((out / "predictions").glob("*.npz"))
    one = sorted((shapes["base"] / "single" / "predictions").glob("*.npz"))
    assert [p.name for p in two] == [p.name for p in one] and len(two) == shapes["samples"]
    for a, b in zip(one, two):
        pa, pb = _load_prediction(a), _load_prediction(b)
        assert np.array_equal(pa.values.numpy(), pb.values.numpy()), a.name
        assert np.array_equal(pa.scores.numpy(), pb.scores.numpy()), a.name


@pytest.mark.slow  # two torchrun agents: ~40 s on 2 loaded cores
def test_two_nodes_give_exactly_the_one_process_metrics(shapes):
    """Multi-node torchrun: two agents (node ranks 0 and 1, one process each) meeting at a master address."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = shapes["base"] / "nodes"
    args = ["-m", "lvseg", "evaluate", MODEL, "--dataset", "shapes", "--root", str(shapes["root"]), "-o", str(out),
            "--json", "--device", "cpu"]  # fmt: skip
    nodes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}",
                          "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", *args],
                         env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]  # fmt: skip
    try:
        outputs = [node.communicate(timeout=400) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "rank 1: " in outputs[1][1] and outputs[1][0] == ""  # node 1 computed a shard and printed nothing
    assert json.loads(outputs[0][0]) == shapes["single"]


# lvseg.evaluate under torchrun with slow reads (so that a test can kill a rank mid-run); argv: root out delay
KILL_SCRIPT = textwrap.dedent("""
    import json, logging, os, sys, time
    import lvseg
    from lvseg.data import RefYouTubeVOS

    logging.basicConfig(level=logging.INFO)

    root, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"pid_rank{rank}"), "w") as fh:
        fh.write(str(os.getpid()))

    class SlowReads(RefYouTubeVOS):
        def __getitem__(self, index):
            time.sleep(delay)
            return super().__getitem__(index)

    result = lvseg.evaluate(lvseg.load("referformer-tiny.shapes", device="cpu"), SlowReads(root, "valid"),
                            output_dir=out, progress=False)
    if rank == 0:
        print("RESULT " + json.dumps({k: result[k] for k in ("J&F", "J", "F", "samples")}), flush=True)
""")


def _process_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow  # two torchrun launches (5 processes) on a loaded 2-core machine: ~1 min
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker states from /proc")
def test_a_killed_rank_leaves_whole_files_and_the_run_resumes_on_three_processes(shapes, tmp_path):
    script = tmp_path / "run_eval.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "run"
    pred = out / "predictions"
    agent = subprocess.Popen(_torchrun(2, str(script), str(shapes["root"]), str(out), "0.4"), env=_subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    try:
        while not (pred.is_dir() and distributed.stored_indices(pred)):
            assert agent.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline
            time.sleep(0.02)
        victim = int((out / "pid_rank1").read_text())
        os.kill(victim, signal.SIGKILL)  # rank 1 dies; torchrun then stops rank 0 and fails
        assert agent.wait(timeout=120) != 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    survivor = int((out / "pid_rank0").read_text())
    while _process_running(survivor):
        assert time.time() < deadline, "rank 0 outlived its agent"
        time.sleep(0.02)
    assert not (out / "results.json").exists()
    stored = sorted(pred.glob("*.npz"))
    assert 1 <= len(stored) < shapes["samples"], "the kill must land mid-run"
    for path in stored:  # every file under its final name is whole
        _load_prediction(path)
    inodes = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stored}

    proc = subprocess.run(_torchrun(3, str(script), str(shapes["root"]), str(out), "0"), env=_subprocess_env(),
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(stored)} of {shapes['samples']} prediction(s) already stored" in proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])  # JSON floats round-trip exactly
    assert result == {k: shapes["single"][k] for k in (*METRICS, "samples")}
    for name, stamp in inodes.items():  # reused, not recomputed (a rewrite renames a new file into place)
        path = pred / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, name
    assert len(list(pred.glob("*.npz"))) == shapes["samples"]
    assert not [p for p in pred.iterdir() if p.name.endswith(".tmp")]


def test_several_processes_need_an_output_folder(shapes):
    proc = subprocess.run(
        _torchrun(2, "-m", "lvseg", "evaluate", MODEL, "--dataset", "shapes", "--root", str(shapes["root"]),
                  "--device", "cpu", "--max-samples", "2"),
        env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "pass output_dir= (lvseg evaluate: -o DIR)" in proc.stderr
