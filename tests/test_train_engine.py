"""lvseg.train end to end on a tiny ReferFormer: optimisation, kill-and-resume exactness, atomic checkpoints,
DDP equivalence under torchrun (gloo), logs and plots, and clear errors for bad configurations."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lvseg.errors import ConfigError

SIZE = 64

# One training run, in its own process (for SIGKILL and torchrun). argv: root tokenizer_dir out steps batch resume
# exact (no dropout, SGD: Adam turns float-rounding noise on zero-expectation gradients into lr-sized steps)
RUN_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["LVSEG_MSDA_BACKEND"] = "reference"
    import torch
    torch.set_num_threads(1)
    from transformers import AutoTokenizer
    from lvseg.data import ClipSampling, RefYouTubeVOS
    from lvseg.data.transforms import RandomHorizontalFlip
    from lvseg.models.referformer.model import ReferFormer
    from lvseg.train.api import train
    from lvseg.train.presets import shapes_tiny_config
    root, tok_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    steps, batch, resume, no_dropout = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1", sys.argv[7] == "1"
    rank = int(os.environ.get("RANK", "0"))
    os.makedirs(out, exist_ok=True)  # each process's id, so that a test can kill the workers of a torchrun
    with open(os.path.join(out, f"pid_rank{rank}"), "w") as fh:
        fh.write(str(os.getpid()))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = ReferFormer(shapes_tiny_config(len(tok), size=64), tokenizer=tok)
    data = RefYouTubeVOS(root, "train", sampling=ClipSampling(num_frames=2, mode="random"),
                         transform=RandomHorizontalFlip(0.5))
    delay = float(os.environ.get("TEST_SAMPLE_DELAY", "0"))  # slow reads: a run a test kills must not end first
    if delay:
        import time

        class Slow(torch.utils.data.Dataset):
            def __init__(self, base):
                self.base = base

            def __len__(self):
                return len(self.base)

            def __getitem__(self, i):
                time.sleep(delay)
                return self.base[i]

        data = Slow(data)
    lr = 1e-2 if no_dropout else 1e-3
    train(model, data, None, out, batch_size=batch, max_steps=steps, lr=lr, lr_backbone=lr,
          lr_text_encoder=lr, clip_max_norm=1.0, checkpoint_every=1, keep_last=2, progress=False,
          resume=resume, device="cpu", log_every=1, tensorboard=False, disable_dropout=no_dropout,
          optimizer="sgd" if no_dropout else "adamw")
    torch.save(model.state_dict(), os.path.join(out, f"weights_rank{rank}.pt"))
""")


@pytest.fixture(autouse=True)
def _reference_op(monkeypatch):
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny Shapes root (train + valid), the Shapes tokenizer saved to a folder, and the run script."""
    from lvseg.data import shapes
    from lvseg.train.presets import shapes_tokenizer

    base = tmp_path_factory.mktemp("train")
    root = base / "shapes"
    shapes.generate(root, "train", num_videos=3, frames=4, size=SIZE, seed=0, progress=False)
    shapes.generate(root, "valid", num_videos=2, frames=4, size=SIZE, seed=0, progress=False)
    tok_dir = base / "tokenizer"
    shapes_tokenizer().save_pretrained(str(tok_dir))
    script = base / "run.py"
    script.write_text(RUN_SCRIPT)
    return {"root": root, "tok": tok_dir, "script": script, "base": base}


def _subprocess_env():
    env = dict(os.environ, LVSEG_MSDA_BACKEND="reference", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_args(env, out, steps, batch, resume=False, no_dropout=False):
    return [str(env["script"]), str(env["root"]), str(env["tok"]), str(out), str(steps), str(batch),
            "1" if resume else "0", "1" if no_dropout else "0"]


def _run_in_process(env, out, steps, batch, no_dropout=False):
    """The same run as the script, in this process (saves a Python start-up), single-threaded like the script."""
    import runpy

    threads = torch.get_num_threads()
    argv = sys.argv
    try:
        sys.argv = _run_args(env, out, steps, batch, no_dropout=no_dropout)
        runpy.run_path(str(env["script"]), run_name="__main__")
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)


def _tiny_model(env):
    from transformers import AutoTokenizer

    from lvseg.models.referformer.model import ReferFormer
    from lvseg.train.presets import shapes_tiny_config

    tok = AutoTokenizer.from_pretrained(str(env["tok"]))
    torch.manual_seed(0)
    return ReferFormer(shapes_tiny_config(len(tok), size=SIZE), tokenizer=tok)


def _train_data(env, split="train"):
    from lvseg.data import ClipSampling, RefYouTubeVOS

    if split == "train":
        return RefYouTubeVOS(env["root"], "train", sampling=ClipSampling(num_frames=2, mode="fixed"))
    return RefYouTubeVOS(env["root"], split)


@pytest.mark.parametrize("mask_refine", [0, 16], ids=["stride4", "refined"])
def test_a_few_steps_decrease_the_loss_on_a_fixed_batch(env, mask_refine):
    from lvseg.data import collate_clips
    from lvseg.train.api import with_config_changes
    from lvseg.train.engine import build_targets, prepare_frames
    from lvseg.train.losses import ReferFormerCriterion

    model = with_config_changes(_tiny_model(env), {"mask_refine": mask_refine} if mask_refine else {})
    data = _train_data(env)
    batch = collate_clips([data[0], data[5]])
    frames = prepare_frames(batch["frames"], model, torch.device("cpu"))
    targets = build_targets(batch, torch.device("cpu"))
    crit = ReferFormerCriterion(mask_stride=model.config.mask_stride)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = crit(model(frames, batch["text"]), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_writes_logs_plot_checkpoints_and_loadable_models(env, tmp_path):
    import lvseg

    model = _tiny_model(env)
    out = tmp_path / "run"
    result = lvseg.train(model, _train_data(env), _train_data(env, "valid"), out, batch_size=2, max_steps=3,
                         log_every=1, checkpoint_every=2, keep_last=1, eval_max_samples=2, progress=False,
                         tensorboard=False)
    assert result.steps == 3
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == [1, 2, 3]
    assert all(r["loss"] > 0 and "loss_dice_0" in r and r["clips_per_s"] > 0 for r in train_lines)
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 1 and 0 <= evals[0]["J&F"] <= 100 and evals[0]["num_expressions"] == 2
    assert result.best_metric == evals[0]["J&F"] and result.metrics["J&F"] == evals[0]["J&F"]
    # keep_last=1: only the newest checkpoint stays
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003.pt"]
    with open(result.plot_file, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    loaded = lvseg.load(str(result.best_checkpoint), device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.tokenizer("the red circle")["input_ids"] == model.tokenizer("the red circle")["input_ids"]
    # the same folder again without resume is refused rather than mixed with the old run
    with pytest.raises(ConfigError, match="resume"):
        lvseg.train(model, _train_data(env), None, out, max_steps=1, progress=False)


def test_kill_and_resume_is_bit_identical(env, tmp_path):
    steps = 6
    ref = tmp_path / "ref"
    _run_in_process(env, ref, steps, 2)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *_run_args(env, run, steps, 2)], env=_subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step_00000002.pt").exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists()
    from lvseg.train.checkpoint import list_checkpoints

    done = [step for step, _ in list_checkpoints(run / "checkpoints")]
    assert done and max(done) < steps
    subprocess.run([sys.executable, *_run_args(env, run, steps, 2, resume=True)], check=True, env=_subprocess_env(),
                   timeout=300, capture_output=True)
    a = torch.load(ref / "weights_rank0.pt")
    b = torch.load(run / "weights_rank0.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = [json.loads(x) for x in (ref / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


DDP_STEPS = 3


def _process_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _torchrun(env, out, steps, resume=False):
    """A 2-process gloo run of batch 1 per process (SGD, no dropout) under torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *_run_args(env, out, steps, 1, resume=resume, no_dropout=True)]


@pytest.fixture(scope="module")
def ddp_run(env):
    """One uninterrupted 2-process run of DDP_STEPS steps, shared by the DDP tests."""
    out = env["base"] / "ddp"
    proc = subprocess.run(_torchrun(env, out, DDP_STEPS), env=_subprocess_env(), timeout=300, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ddp_gloo_matches_single_process_with_the_same_global_batch(env, ddp_run, tmp_path):
    steps = DDP_STEPS
    single = tmp_path / "single"
    _run_in_process(env, single, steps, 2, no_dropout=True)
    ddp = ddp_run
    r0 = torch.load(ddp / "weights_rank0.pt")
    r1 = torch.load(ddp / "weights_rank1.pt")
    one = torch.load(single / "weights_rank0.pt")
    init = _tiny_model(env).state_dict()
    moved, diff = 0.0, 0.0
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"ranks disagree on {key}"
        if r0[key].is_floating_point():
            moved = max(moved, (one[key] - init[key]).abs().max().item())
            diff = max(diff, (one[key] - r0[key]).abs().max().item())
    assert moved > 1e-3  # training changed the weights
    assert diff < 1e-6, f"DDP and single-process weights differ by {diff} (training moved them by {moved})"
    # rank 0 alone writes: one log, whose losses are the global-batch losses of the single process
    log_ddp = [json.loads(x)["loss"] for x in (ddp / "log.jsonl").read_text().splitlines()]
    log_one = [json.loads(x)["loss"] for x in (single / "log.jsonl").read_text().splitlines()]
    assert log_ddp == pytest.approx(log_one, rel=1e-4)


CRASH_SCRIPT = textwrap.dedent("""
    import sys, time
    from lvseg.train.checkpoint import save_checkpoint

    class Slow:
        def __reduce__(self):
            print("writing", flush=True)
            time.sleep(60)
            return (int, (0,))

    save_checkpoint(sys.argv[1], 2, {"step": 2, "model": {}, "payload": Slow()}, keep_last=1)
""")


def test_a_process_killed_while_writing_never_corrupts_the_previous_checkpoint(tmp_path):
    from lvseg.train.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint

    ckpt = tmp_path / "checkpoints"
    save_checkpoint(ckpt, 1, {"step": 1, "model": {"w": torch.arange(4.0)}}, keep_last=1)
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt)], env=_subprocess_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"  # inside torch.save, temp file open
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [s for s, _ in list_checkpoints(ckpt)] == [1]
    state = load_latest_checkpoint(ckpt)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.arange(4.0))
    # a damaged newest file (not written by us) is skipped in favour of the previous one
    (ckpt / "step_00000005.pt").write_bytes(b"not a checkpoint")
    assert load_latest_checkpoint(ckpt)["step"] == 1


def test_bad_configurations_raise_clear_errors(env, tmp_path):
    import lvseg
    from lvseg.train.engine import TrainConfig
    from lvseg.train.presets import get_preset

    model = _tiny_model(env)
    data = _train_data(env)
    with pytest.raises(ConfigError, match="empty"):
        lvseg.train(model, [], None, tmp_path / "a")
    with pytest.raises(ConfigError, match="empty"):
        lvseg.train(model, torch.utils.data.Subset(data, []), None, tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown training option"):
        lvseg.train(model, data, None, tmp_path / "a", learning_rate=1e-3)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="fp16.*GPU"):
        lvseg.train(model, data, None, tmp_path / "b", precision="fp16", device="cpu", max_steps=1)
    with pytest.raises(ConfigError, match="grad_accum"):
        lvseg.train(model, data, None, tmp_path / "c", grad_accum=10_000, max_steps=1)
    with pytest.raises(ConfigError, match="referformer-r50-ytvos"):
        get_preset("referformer-r50-ytvo")
    from toymodels import make_color_model

    with pytest.raises(ConfigError, match="preset .* trains the 'referformer' family"):
        lvseg.train(make_color_model(), data, None, tmp_path / "d", preset="referformer-r50-ytvos")
    model.tokenizer = None
    with pytest.raises(ConfigError, match="tokenizer"):
        lvseg.train(model, data, None, tmp_path / "e")


def test_cli_runs_a_preset_and_resumes(env, tmp_path):
    from lvseg.train.api import main_cli

    out = tmp_path / "cli"
    args = ["--preset", "referformer-tiny-shapes", "--data-root", str(env["root"]), "-o", str(out),
            "--prepare-steps", "0", "--max-steps", "1", "--eval-max-samples", "1", "--no-progress", "--device", "cpu"]
    assert main_cli(args) == 0
    assert (out / "final" / "model.safetensors").is_file() and (out / "best" / "config.json").is_file()
    assert main_cli(args[:-6] + ["2", "--eval-max-samples", "1", "--no-progress", "--device", "cpu",
                                 "--resume"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == [1, 2]


def test_grad_accumulation_matches_the_larger_batch_and_bf16_checkpointing_runs(env, tmp_path):
    import lvseg

    initial = _tiny_model(env).state_dict()
    weights = {}
    for name, batch, accum in (("big", 2, 1), ("accum", 1, 2)):
        model = _tiny_model(env)
        lvseg.train(model, _train_data(env), None, tmp_path / name, batch_size=batch, grad_accum=accum, max_steps=2,
                    lr=1e-2, lr_backbone=1e-2, lr_text_encoder=1e-2, clip_max_norm=0.0, disable_dropout=True,
                    optimizer="sgd", progress=False, tensorboard=False)
        weights[name] = model.state_dict()
    diff = {k: (v - weights["accum"][k]).abs().max().item() for k, v in weights["big"].items()
            if v.is_floating_point()}
    worst = max(diff, key=diff.get)
    # float rounding differs between one batch of 2 and two of 1; a wrong accumulation (a sum, or one micro-batch
    # lost) would differ by a sizeable fraction of the update itself
    update = max((v - initial[k]).abs().max().item() for k, v in weights["big"].items() if v.is_floating_point())
    assert update > 1e-3
    assert diff[worst] < 1e-4 * update, f"{worst} differs by {diff[worst]} (largest update {update})"
    model = _tiny_model(env)
    result = lvseg.train(model, _train_data(env), None, tmp_path / "bf16", batch_size=1, max_steps=1,
                         precision="bf16", gradient_checkpointing=True, progress=False, tensorboard=False)
    assert result.steps == 1 and model.backbone.gradient_checkpointing
    record = json.loads((tmp_path / "bf16" / "log.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["loss"]) and record["global_batch"] == 1


def _address_space_in_use() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


class _SquareClips(torch.utils.data.Dataset):
    """In-memory 4-frame clips of ``size`` x ``size`` with a bright square to segment."""

    def __init__(self, size: int, n: int = 8) -> None:
        self.size, self.n = size, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        s = self.size
        frames = torch.full((4, s, s, 3), 30 * (i % 5), dtype=torch.uint8)
        masks = torch.zeros((4, s, s), dtype=torch.bool)
        masks[:, s // 4: s // 2, s // 4: s // 2] = True
        frames[masks] = 250
        return {"frames": frames, "masks": masks, "text": "the red square"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps the address space via /proc and RLIMIT_AS")
def test_a_batch_too_large_for_memory_gives_a_clear_error(env, tmp_path):
    """A real out-of-memory: the address space is capped (RLIMIT_AS) 400 MB above what this process maps. One step
    at batch 1 of 4x96x96 clips fits; batch 8 of 4x384x384 clips (several GB at its peak) does not, and the
    user gets the ConfigError with the fix, not torch's allocator error."""
    import resource

    import lvseg

    model = _tiny_model(env)
    options = dict(max_steps=1, progress=False, tensorboard=False, device="cpu")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space_in_use() + 400 * 2**20
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("the hard address-space limit is already below the test's cap")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        fits = lvseg.train(model, _SquareClips(96), None, tmp_path / "fits", batch_size=1, **options)
        with pytest.raises(ConfigError, match=r"out of memory at batch_size=8: lower batch_size \(and raise "
                                              r"grad_accum.*gradient_checkpointing=True") as info:
            lvseg.train(model, _SquareClips(384), None, tmp_path / "too_big", batch_size=8, **options)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert fits.steps == 1
    cause = info.value.__cause__  # what torch (or Python) raised underneath
    assert isinstance(cause, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(cause), cause


@pytest.mark.slow  # two more torchrun launches (~40 s on 2 loaded cores): process start-up dominates
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker states from /proc")
def test_ddp_run_killed_and_resumed_is_bit_identical(env, ddp_run, tmp_path):
    """torchrun with 2 gloo processes, both workers and the agent SIGKILLed after the step-1 checkpoint, then
    resumed: every rank ends with exactly the weights (and logged losses) of the uninterrupted run."""
    from lvseg.train.checkpoint import list_checkpoints

    run = tmp_path / "killed"
    # each sample takes 2 s to read in this run, so steps 2 and 3 cannot finish before the kill lands
    agent = subprocess.Popen(_torchrun(env, run, DDP_STEPS), env=dict(_subprocess_env(), TEST_SAMPLE_DELAY="2"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while not (run / "checkpoints" / "step_00000001.pt").exists():
            assert agent.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline
            time.sleep(0.02)
        # torchrun starts each worker in its own session: kill the workers by id, then the agent (a lost node)
        workers = [int((run / f"pid_rank{r}").read_text()) for r in (0, 1)]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    finally:
        agent.kill()
        agent.wait()
    for pid in workers:  # wait until the workers are gone (dead, or zombies waiting to be reaped)
        while _process_running(pid):
            assert time.time() < deadline, f"worker {pid} survived SIGKILL"
            time.sleep(0.02)
    assert not (run / "final").exists()
    done = [step for step, _ in list_checkpoints(run / "checkpoints")]
    assert done and max(done) < DDP_STEPS
    proc = subprocess.run(_torchrun(env, run, DDP_STEPS, resume=True), env=_subprocess_env(), timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        a = torch.load(ddp_run / f"weights_rank{rank}.pt")
        b = torch.load(run / f"weights_rank{rank}.pt")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"rank {rank}: {key}"
    log_a = [json.loads(x) for x in (ddp_run / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_referformer_ytvos_presets_start_from_the_refcoco_pretrained_weights():
    from lvseg.registry import get_entry
    from lvseg.train.presets import get_preset

    # the official Ref-YouTube-VOS fine-tuning loads the RefCOCO/+/g-pretrained model (--pretrained_weights)
    for backbone in ("r50", "swin-l", "video-swin-b"):
        preset = get_preset(f"referformer-{backbone}-ytvos")
        assert preset.model == f"referformer-{backbone}.refcoco"
        assert "refcoco" in get_entry(preset.model).training_data.lower()


def test_model_overrides_grow_a_trained_model_and_the_hr_preset_continues_a_shapes_run(env, tmp_path):
    import lvseg
    from lvseg.errors import ConfigError
    from lvseg.train.api import with_config_changes

    base = _tiny_model(env)
    grown = with_config_changes(base, {"mask_refine": 16})
    assert grown.config.mask_refine == 16 and base.config.mask_refine == 0
    kept = base.state_dict()
    new = {k: v for k, v in grown.state_dict().items() if k not in kept}
    assert new and all(k.startswith("mask_refiner.") for k in new)
    assert all(torch.equal(grown.state_dict()[k], v) for k, v in kept.items())
    with pytest.raises(ConfigError, match="not fields"):
        with_config_changes(base, {"mask_refinement": 16})
    with pytest.raises(ConfigError, match="remove trained weights"):
        with_config_changes(grown, {"mask_refine": 0})
    with pytest.raises(ConfigError, match="shape"):
        with_config_changes(base, {"mask_dim": 16})
    with pytest.raises(ConfigError, match="invalid config"):
        with_config_changes(base, {"mask_refine": -1})
    # the stage-3 preset needs the stage-2 model and says how to pass it
    with pytest.raises(ConfigError, match="--model"):
        lvseg.train(preset="referformer-tiny-shapes-hr", data_root=env["root"], output_dir=tmp_path / "x")
    start = tmp_path / "stage2"
    base.save_pretrained(start)
    result = lvseg.train(str(start), _train_data(env), None, tmp_path / "hr", preset="referformer-tiny-shapes-hr",
                         max_steps=2, progress=False, tensorboard=False, device="cpu")
    trained = lvseg.load(result.final_checkpoint, device="cpu")
    assert trained.config.mask_refine == 16 and trained.config.mask_stride == 1
    frames = torch.randn(1, 2, 3, SIZE, SIZE)
    assert trained._forward(frames, ["the red circle"], None, None, all_layer_masks=False)["pred_masks"].shape[-2:] \
        == (SIZE, SIZE)
    # the added parameters' initialisation is seeded (config.seed): the same run again gives the same weights
    twin = lvseg.train(str(start), _train_data(env), None, tmp_path / "hr2", preset="referformer-tiny-shapes-hr",
                       max_steps=2, progress=False, tensorboard=False, device="cpu")
    a, b = (lvseg.load(r.final_checkpoint, device="cpu").state_dict() for r in (result, twin))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming the finished run rebuilds the grown model and loads its checkpoint
    again = lvseg.train(str(start), _train_data(env), None, tmp_path / "hr", preset="referformer-tiny-shapes-hr",
                        max_steps=2, progress=False, tensorboard=False, device="cpu", resume=True)
    assert again.steps == 2


def test_resume_from_damaged_checkpoints_names_each_file(tmp_path):
    """A damaged training checkpoint is skipped for an older one; when none loads, the error names each file and
    what is wrong with it (not PyTorch's text)."""
    from lvseg.errors import CheckpointError
    from lvseg.train.checkpoint import load_latest_checkpoint, save_checkpoint

    ckpt = tmp_path / "checkpoints"
    first = save_checkpoint(ckpt, 1, {"step": 1, "model": {"w": torch.arange(4.0)}}, keep_last=5)
    second = save_checkpoint(ckpt, 2, {"step": 2, "model": {"w": torch.arange(4.0)}}, keep_last=5)
    second.write_bytes(second.read_bytes()[:100])
    assert load_latest_checkpoint(ckpt)["step"] == 1
    first.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError) as info:
        load_latest_checkpoint(ckpt)
    message = str(info.value)
    assert f"{second}: it is truncated or damaged" in message and f"{first}: it is not a PyTorch checkpoint" in message
    assert "weights_only" not in message
