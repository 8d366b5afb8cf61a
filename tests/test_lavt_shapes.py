"""The tiny LAVT Shapes recipe (``lavt-tiny-shapes``, benchmarks/train_shapes_lavt.py): its WordPiece tokenizer,
its data (single frames of the non-motion expressions) and a few training steps through ``lvseg.train``.
The hour-long run itself is documented in docs/models/lavt.md, not run here."""

import json
import math

import pytest
import torch

SIZE = 64


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from lvseg.train.presets import ensure_shapes

    root = tmp_path_factory.mktemp("lavt_shapes")
    ensure_shapes(root, num_train=3, num_val=1, size=SIZE)
    return root


def test_wordpiece_tokenizer_covers_the_shapes_words_and_passes_the_bert_checks():
    from lvseg.data.shapes import VOCABULARY
    from lvseg.models.layers.text import check_tokenizer
    from lvseg.train.presets import lavt_shapes_tiny_config, shapes_wordpiece_tokenizer

    tok = shapes_wordpiece_tokenizer()
    config = lavt_shapes_tiny_config(len(tok))
    check_tokenizer(tok, config.text_encoder, source="test", fix="none")  # raises TokenizerError on a problem
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]) == [0, 100, 101, 102]
    for word in VOCABULARY:  # every Shapes word is one known token
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] > 103, (word, ids)
    assert config.text_encoder["vocab_size"] == len(tok) and config.image_size == 96


def test_data_keeps_single_frames_of_the_non_motion_expressions(shapes_root):
    from lvseg.train.presets import ShuffledExpressions, is_motion_expression, lavt_shapes_data

    assert is_motion_expression("the red circle moving left") and is_motion_expression("the object standing still")
    assert not is_motion_expression("the leftmost object") and not is_motion_expression("the big red circle")
    train, val = lavt_shapes_data(shapes_root, num_train=3, num_val=1, size=SIZE)
    every = [train.videos[v]["expressions"][e]["exp"] for v, e, _ in train.dataset.samples]
    kept = [train.videos[v]["expressions"][e]["exp"] for v, e, _ in train.samples]
    assert any(is_motion_expression(t) for t in every)  # the generator wrote motion expressions: they are dropped
    assert kept and not any(is_motion_expression(t) for t in kept)
    assert len(train) == len(kept) == sum(not is_motion_expression(t) for t in every)
    sample = train[0]
    assert sample["frames"].shape == (1, SIZE, SIZE, 3) and sample["masks"].shape == (1, SIZE, SIZE)
    assert not any(is_motion_expression(val[i]["text"]) for i in range(len(val)))
    assert val[0]["frames"].shape[0] == 8  # validation: whole videos
    shuffled = ShuffledExpressions(train, seed=0)
    assert sorted(shuffled.texts) == sorted(kept) and shuffled.texts != kept


def test_preset_builds_and_trains_a_few_steps(shapes_root, tmp_path):
    import lvseg
    from lvseg.train.presets import get_preset, lavt_shapes_data

    preset = get_preset("lavt-tiny-shapes")
    assert preset.family == "lavt" and preset.train["batch_size"] == 8
    model = preset.model()
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    train, val = lavt_shapes_data(shapes_root, num_train=3, num_val=1, size=SIZE)
    out = tmp_path / "run"
    result = lvseg.train(model, train, val, out, preset="lavt-tiny-shapes", max_steps=3, batch_size=2,
                         eval_every=3, eval_max_samples=1, checkpoint_every=0, log_every=1, progress=False,
                         tensorboard=False)
    assert result.steps == 3
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 1 and 0 <= evals[0]["J&F"] <= 100
    loaded = lvseg.load(str(result.final_checkpoint), device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    texts = ["the big red circle", "the leftmost object"]
    assert torch.equal(loaded.tokenize(texts)[0], model.tokenize(texts)[0])  # the tokenizer travels with the weights
    logits, scores = loaded.segment(torch.zeros(2, 1, 3, SIZE, SIZE), texts)
    assert logits.shape == (2, 1, 96, 96) and scores.shape == (2, 1)


def test_preset_recipe_lowers_the_loss_on_a_fixed_batch(shapes_root, tmp_path):
    """The recipe's optimiser and learning rate (warm-up left out) on two fixed Shapes frames: the loss falls."""
    from lvseg.train.engine import TrainConfig, Trainer
    from lvseg.train.presets import get_preset, lavt_shapes_data

    train, _ = lavt_shapes_data(shapes_root, num_train=3, num_val=1, size=SIZE)
    torch.manual_seed(0)
    batch = [train[0], train[len(train) // 2]]  # flips drawn once: the same two samples every step
    preset = get_preset("lavt-tiny-shapes")
    recipe = {**preset.train, "epochs": 15, "max_steps": 15, "batch_size": 2, "warmup_steps": 0, "checkpoint_every": 0,
              "eval_every": 0, "log_every": 1}
    config = TrainConfig(output_dir=str(tmp_path / "fixed"), progress=False, tensorboard=False, **recipe)
    result = Trainer(preset.model(), batch, config).fit()
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 15 and losses[-1] < 0.5 * losses[0], losses
