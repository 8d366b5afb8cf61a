"""Locater end to end at toy sizes: the Shapes preset (``locater-tiny-shapes``) trains through ``lvseg.train`` (the
loss falls on a fixed batch, a run resumes bit-identically, a 2-process gloo DDP run keeps the ranks in step), and
``lvseg evaluate MODEL --dataset a2d-plus --subset SPAT`` runs on an A2D-S+ fixture with Locater's protocol, and
``--dataset jhmdb-locater`` on a JHMDB-S fixture in Locater's layout (tests/fixtures/locater_jhmdb)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SIZE = 64


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from lvseg.train.presets import ensure_shapes

    root = tmp_path_factory.mktemp("locater_shapes")
    ensure_shapes(root, num_train=3, num_val=1, size=SIZE)
    return root


def tiny_model():
    from lvseg.models.locater.model import Locater
    from lvseg.train.presets import locater_shapes_tiny_config, shapes_wordpiece_tokenizer

    tok = shapes_wordpiece_tokenizer()
    torch.manual_seed(0)
    return Locater(locater_shapes_tiny_config(len(tok), SIZE, image_size=SIZE), tokenizer=tok)


def test_forward_outputs_and_loss_fall_on_a_fixed_batch(shapes_root, tmp_path):
    """The recipe's optimiser (warm-up left out) on two fixed Shapes clips, the memory unrolled over each clip."""
    from lvseg.train.engine import TrainConfig, Trainer
    from lvseg.train.presets import get_preset, shapes_data

    train, _ = shapes_data(shapes_root, num_train=3, num_val=1, size=SIZE)
    torch.manual_seed(0)
    batch = [train[0], train[len(train) // 2]]
    model = tiny_model()
    out = model(torch.zeros(1, 3, 3, SIZE, SIZE), [batch[0]["text"]])
    assert out["logits"].shape == (1, 3, SIZE, SIZE) and out["aux_logits"].shape == (1, 3, 2, SIZE, SIZE)
    preset = get_preset("locater-tiny-shapes")
    assert preset.family == "locater"
    recipe = {**preset.train, "epochs": 12, "max_steps": 12, "batch_size": 2, "warmup_steps": 0,
              "checkpoint_every": 0, "eval_every": 0, "log_every": 1}
    config = TrainConfig(output_dir=str(tmp_path / "fixed"), progress=False, tensorboard=False, **recipe)
    result = Trainer(model, batch, config).fit()
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses  # the recipe's dice term falls more slowly than the BCE
    bce = [r["loss_mask"] for r in result.history if "loss_mask" in r]
    assert bce[-1] < 0.7 * bce[0], bce
    assert all("loss_dice" in r for r in result.history if "loss" in r)  # the preset's loss_weights reached it


def test_loss_weights_dice_term_and_the_family_reads_shared_keys():
    """LocaterLossWeights: the balanced BCE's foreground / background means (pixels labelled -1 left out), the aux
    weight, and the optional dice term, computed by hand; a dict of keys several families share (``dice``) is
    read with the trained model's family, and keys of another family are refused."""
    from lvseg.errors import ConfigError
    from lvseg.train.engine import TrainConfig
    from lvseg.train.losses import LocaterCriterion, LocaterLossWeights, LossWeights
    from lvseg.train.objectives import make_objective

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 4, 4, generator=g) * 3
    aux = torch.randn(1, 2, 2, 4, 4, generator=g) * 3
    target = (torch.rand(1, 2, 4, 4, generator=g) > 0.6).float()
    target[0, 1, 0] = -1  # a row without supervision
    outputs = {"logits": logits, "aux_logits": aux}

    def by_hand(lg, tg, fore, back):
        valid = tg >= 0
        p, t = lg[valid].sigmoid().clamp(1e-4, 1 - 1e-4), tg[valid]
        pos, neg = t == 1, t == 0
        bce = (-fore * torch.log(p[pos]).sum() / (fore * pos.sum() + 1e-4)
               - back * torch.log(1 - lg[valid][neg].sigmoid()).sum() / (back * neg.sum() + 1e-4))
        dice = []
        for i in range(lg.shape[0]):
            v = tg[i] >= 0
            q, u = lg[i][v].sigmoid(), tg[i][v]
            dice.append(1 - (2 * (q * u).sum() + 1) / (q.sum() + u.sum() + 1))
        return bce, torch.stack(dice).mean()

    flat_t = target.flatten(0, 1)
    main_bce, main_dice = by_hand(logits.flatten(0, 1), flat_t, 1.5, 0.5)
    aux_terms = [by_hand(aux[:, :, k].flatten(0, 1), flat_t, 1.5, 0.5) for k in range(2)]
    aux_bce = sum(b for b, _ in aux_terms)
    aux_dice = sum(d for _, d in aux_terms)
    plain = LocaterCriterion()(outputs, [target])
    torch.testing.assert_close(plain["loss"], main_bce + 0.4 * aux_bce)
    assert "loss_dice" not in plain
    weighted = LocaterCriterion(LocaterLossWeights(aux_weight=0.25, dice=2.0))(outputs, [target])
    torch.testing.assert_close(weighted["loss"], main_bce + 0.25 * aux_bce + 2.0 * (main_dice + 0.25 * aux_dice))
    torch.testing.assert_close(weighted["loss_dice"], main_dice)

    assert isinstance(TrainConfig(loss_weights={"aux_weight": 0.3}).loss_weights, LocaterLossWeights)
    shared = TrainConfig(loss_weights={"dice": 1.0}).loss_weights  # ReferFormer, MTTR, VLP-RVOS and Locater
    assert shared == {"dice": 1.0}
    assert make_objective("locater", shared).criterion.weights == LocaterLossWeights(dice=1.0)
    assert make_objective("referformer", shared).criterion.weights == LossWeights(dice=1.0)
    with pytest.raises(ConfigError, match=r"\['fore'\] are not 'mttr' loss weights; MTTRLossWeights has"):
        make_objective("mttr", {"fore": 1.0})
    with pytest.raises(ConfigError, match="Locater takes LocaterLossWeights"):
        make_objective("locater", LossWeights())


def test_train_resume_is_bit_identical_and_the_result_loads(shapes_root, tmp_path):
    import lvseg
    from lvseg.train.presets import shapes_data

    train, val = shapes_data(shapes_root, num_train=3, num_val=1, size=SIZE)
    common = dict(preset="locater-tiny-shapes", batch_size=2, log_every=1, progress=False, tensorboard=False,
                  eval_every=0, warmup_steps=1)
    full = lvseg.train(tiny_model(), train, None, tmp_path / "full", max_steps=4, checkpoint_every=0, **common)
    part = tmp_path / "part"
    lvseg.train(tiny_model(), train, None, part, max_steps=2, checkpoint_every=1, **common)
    resumed = lvseg.train(tiny_model(), train, None, part, max_steps=4, checkpoint_every=1, resume=True, **common)
    assert full.steps == resumed.steps == 4
    a = lvseg.load(str(full.final_checkpoint), device="cpu").state_dict()
    b = lvseg.load(str(resumed.final_checkpoint), device="cpu").state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    loaded = lvseg.load(str(full.final_checkpoint), device="cpu")
    logits, scores = loaded.segment(torch.zeros(1, 4, 3, SIZE, SIZE), ["the big red circle"])
    assert logits.shape == (1, 4, SIZE, SIZE) and scores.shape == (1, 4)


DDP_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, sys.argv[3])
    from test_locater_train_eval import tiny_model, SIZE
    from lvseg.train.api import train
    from lvseg.train.presets import shapes_data

    data, _ = shapes_data(sys.argv[1], num_train=3, num_val=1, size=SIZE)
    model = tiny_model()
    train(model, data, None, sys.argv[2], preset="locater-tiny-shapes", max_steps=2, batch_size=1,
          checkpoint_every=0, eval_every=0, log_every=1, progress=False, tensorboard=False, seed=0)
    import os
    torch.save(model.state_dict(), f"{sys.argv[2]}/weights_rank{os.environ.get('RANK', '0')}.pt")
""")


def test_ddp_gloo_two_processes_stay_in_step(shapes_root, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(shapes_root), str(out), str(Path(__file__).resolve().parent)],
                          env=env, timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len([r for r in records if r.get("kind") == "train"]) == 2
    r0 = torch.load(out / "weights_rank0.pt")
    r1 = torch.load(out / "weights_rank1.pt")
    init = tiny_model().state_dict()
    assert any(not torch.equal(r0[k], init[k]) for k in r0)  # training moved the weights
    params = dict(tiny_model().named_parameters())
    for key in params:  # DDP averaged the gradients: both ranks hold the same parameters
        assert torch.equal(r0[key], r1[key]), key
    # (the aux decoders' BatchNorm statistics are per rank: DDP broadcasts rank 0's before each forward only)


def write_a2dplus(root: Path, subset: str = "SPAT", h: int = 40, w: int = 52) -> None:
    import numpy as np
    from PIL import Image

    base = root / "A2D_SUBSET" / subset
    names = [f"{i:05d}" for i in range(1, 7)]
    rng = np.random.default_rng(0)
    for n in names:
        (base / "allPngs320H" / "vidA").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "allPngs320H" / "vidA" / f"{n}.png")
    (base / "mask").mkdir(parents=True)
    for n in ("00002", "00005"):
        m = torch.zeros(h, w)
        m[5:20, 10:30] = 1.0
        torch.save(m, base / "mask" / f"vidA_1_{n}.pth")
    torch.save(torch.zeros(h, w), base / "mask" / "vidA_2_00003.pth")
    torch.save({"vidA": len(names)}, base / "vid_frame_dict.pth")
    table = {"vidA": {"frames": names, "expressions": {
        "1": {"exp": "the big red circle", "labels": ["00002", "00005"]},
        "2": {"exp": "the leftmost object", "labels": ["00003"]}}}}
    (base / f"A2D_{subset}_test_expressions.json").write_text(json.dumps(table))


def test_evaluate_a2d_plus_subset_cli(tmp_path, capsys):
    import lvseg
    from lvseg.data import A2DSPlus
    from lvseg.metrics.evaluate import main_cli

    write_a2dplus(tmp_path / "data")
    model = tiny_model().eval()
    folder = model.save_pretrained(tmp_path / "model")
    code = main_cli([str(folder), "--dataset", "a2d-plus", "--subset", "SPAT", "--root", str(tmp_path / "data"),
                     "--json", "--device", "cpu"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "a2d+" and result["samples"] == 2
    expected = lvseg.evaluate(lvseg.load(str(folder), device="cpu"), A2DSPlus(tmp_path / "data", "SPAT"),
                              progress=False)
    for key, value in expected.items():
        if isinstance(value, float):
            assert result[key] == pytest.approx(value, abs=1e-9), key
    assert {"mAP", "overall_iou", "mean_iou", "P@0.5", "P@0.9"} <= set(result)
    assert 0 <= result["mean_iou"] <= 100


JHMDB_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "locater_jhmdb"


def test_jhmdb_locater_layout_reader():
    """JHMDB-S in Locater's layout (tests/fixtures/locater_jhmdb: ``category/video`` keys, masks named
    ``category_video_obj_frame.pth``, the nested frame-count table): frames sorted without duplicates, masks on the
    ``labels`` frames only, the typo table on the lower-cased query, clear errors for missing data."""
    from lvseg.data import JHMDBSentencesLocater
    from lvseg.errors import DatasetError, InvalidInputError

    for root in (JHMDB_FIXTURE, JHMDB_FIXTURE / "JHMDB"):  # the official --dataroot, or JHMDB/ itself
        ds = JHMDBSentencesLocater(root)
        assert len(ds) == 2
    s = ds[0]
    assert s["video"] == "brush_hair/girl_brushing_0" and s["obj_id"] == "0"
    assert s["frame_ids"] == ["00001", "00002", "00003", "00004", "00005"]
    assert s["frames"].shape == (5, 20, 24, 3) and s["frames"][:, 0, 0, 0].tolist() == [10, 20, 30, 40, 50]
    assert s["annotated"].tolist() == [False, True, False, True, False]
    expected = torch.zeros(20, 24, dtype=torch.bool)
    expected[4:12, 6:15] = True
    assert torch.equal(s["masks"][3], expected) and int(s["masks"][1].sum()) == 7 * 8
    assert not s["masks"][[0, 2, 4]].any()
    assert s["text"] == "Girl brushing her hair" and s["num_video_frames"] == 40
    t = ds[1]
    assert t["video"] == "walk/man_walking_1" and t["num_video_frames"] == 33
    assert t["text"] == "the person in red is standing"  # Locater's typo table applies to JHMDB too
    assert t["annotated"].tolist() == [False, False, True, False]
    with pytest.raises(InvalidInputError, match="test"):
        JHMDBSentencesLocater(JHMDB_FIXTURE, "train")
    with pytest.raises(DatasetError, match="JHMDB-S frames folder"):  # neither JHMDB/ nor its contents
        JHMDBSentencesLocater(JHMDB_FIXTURE / "JHMDB" / "images")


def test_jhmdb_locater_missing_mask_names_the_file(tmp_path):
    import shutil

    from lvseg.data import JHMDBSentencesLocater
    from lvseg.errors import DatasetError

    root = tmp_path / "data"
    shutil.copytree(JHMDB_FIXTURE, root)
    (root / "JHMDB" / "mask" / "walk_man_walking_1_0_00003.pth").unlink()
    ds = JHMDBSentencesLocater(root)
    with pytest.raises(DatasetError, match="walk_man_walking_1_0_00003.pth"):
        ds[1]
    shutil.rmtree(root / "JHMDB" / "images" / "walk")
    with pytest.raises(DatasetError, match="walk/man_walking_1"):
        JHMDBSentencesLocater(root)


def test_evaluate_jhmdb_locater_cli(tmp_path, capsys):
    """``lvseg evaluate MODEL --dataset jhmdb-locater`` scores with Locater's protocol: the whole listed video
    streamed through the Predictor, sigmoid probabilities upsampled with ``align_corners=True``, ``> 0.5``, and
    Locater's IoU / precision sums over the annotated frames (the same numbers computed here by hand)."""
    import numpy as np

    import lvseg
    from lvseg import Predictor
    from lvseg.data import JHMDBSentencesLocater
    from lvseg.metrics.evaluate import main_cli
    from lvseg.metrics.referring import LocaterEvaluator

    model = tiny_model().eval()
    folder = model.save_pretrained(tmp_path / "model")
    code = main_cli([str(folder), "--dataset", "jhmdb-locater", "--root", str(JHMDB_FIXTURE), "--json",
                     "--device", "cpu"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "jhmdb-locater" and result["samples"] == 2
    assert result["benchmark"] == "JHMDB-Sentences"
    loaded = lvseg.load(str(folder), device="cpu")
    predictor = Predictor(loaded, upsampling="probability-aligned", progress=False)
    by_hand = LocaterEvaluator("JHMDB-Sentences")
    for sample in JHMDBSentencesLocater(JHMDB_FIXTURE):
        masks = predictor(sample["frames"].numpy(), sample["text"]).masks
        frames = np.flatnonzero(sample["annotated"].numpy())
        by_hand.add(masks.numpy()[frames], sample["masks"].numpy()[frames])
    expected = by_hand.summary()
    assert {"mAP", "overall_iou", "mean_iou", "P@0.5", "P@0.9"} <= set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.gpu
def test_cuda_streaming_matches_cpu():
    """The same video and state on CUDA (fp32, TF32 off) as on the CPU, window by window."""
    from parity import assert_parity

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    video = torch.randn((1, 10, 3, SIZE, SIZE), generator=g)
    texts = ["the big red circle"]
    cpu, _ = model.segment(video, texts)
    gpu_model = model.to("cuda")
    state = gpu_model.init_stream_state(video[:, [1, 4, 7]].cuda(), texts)  # segment()'s global frames
    parts = []
    for lo, hi in ((0, 4), (4, 10)):
        part, _, state = gpu_model.segment_window(video[:, lo:hi].cuda(), texts, state)
        parts.append(part.cpu())
    assert_parity({"logits": torch.cat(parts, 1)}, {"logits": cpu})
