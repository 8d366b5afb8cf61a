"""VLP-RVOS training fidelity to the released scripts: one optimiser step per clip with the prompt tokens carried
detached (``engine.py``), and the released learning-rate split as parameter groups (5e-5 / 1e-4)."""

import pytest
import torch
from torch.utils.data import Dataset

TEXT = "the big red circle"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from lvseg.data import ClipSampling, RefYouTubeVOS
    from lvseg.train.presets import ensure_shapes

    root = tmp_path_factory.mktemp("vlp_train_shapes")
    ensure_shapes(root, num_train=2, num_val=1, size=64)
    torch.manual_seed(0)
    return RefYouTubeVOS(root, "train", sampling=ClipSampling(num_frames=8, mode="random"))[0]


class _Fixed(Dataset):
    """One sample, always (so the run sees exactly it)."""

    def __init__(self, sample):
        self.sample = sample

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return dict(self.sample)


def _model():
    from lvseg.models.vlp_rvos.config import tiny_config
    from lvseg.models.vlp_rvos.model import VLPRVOS
    from lvseg.train.presets import shapes_tokenizer

    tokenizer = shapes_tokenizer()
    torch.manual_seed(0)
    model = VLPRVOS(tiny_config(len(tokenizer), image_size=64, clip_frames=4), tokenizer)
    for guide in model.guides.values():  # open the gates so the guides get gradients too
        torch.nn.init.constant_(guide.gate, 0.5)
    return model


def _trainer(model, sample, tmp_path, **options):
    from lvseg.train.engine import TrainConfig, Trainer

    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=1, lr=1e-3, lr_backbone=0.0,
                         lr_text_encoder=0.0, eval_every=0, checkpoint_every=0, progress=False, tensorboard=False,
                         **options)
    return Trainer(model, _Fixed(sample), config)


def test_step_per_clip_steps_after_each_clip_and_carries_the_prompts_detached(sample, tmp_path):
    model = _model()
    calls = []

    def before(module, args, kwargs):
        calls.append({"frames": args[0].shape[1], "video_prompt": kwargs.get("video_prompt"),
                      "weight": module.segDecoder.conv_out.weight.detach().clone()})

    def after(module, args, kwargs, output):
        calls[-1]["prompt_token"] = output["prompt_token"].detach().clone()

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)
    trainer = _trainer(model, sample, tmp_path, step_per_clip=True)
    result = trainer.fit()
    # one batch of two 4-frame clips: two forwards, the first from the start of the video, the second with the
    # first's prompt tokens (no graph back into clip 1), and an optimiser step between them
    assert [c["frames"] for c in calls] == [4, 4]
    assert calls[0]["video_prompt"] is None
    carried = calls[1]["video_prompt"]
    assert carried is not None and not carried.requires_grad
    assert torch.equal(carried, calls[0]["prompt_token"])
    assert not torch.equal(calls[0]["weight"], calls[1]["weight"])  # clip 2 sees the weights after clip 1's step
    # the optimiser stepped once per clip; the run and its LR schedule count batches
    state = trainer.optimizer.state  # parameters that got no gradient (e.g. closed paths) have no state
    steps = {int(state[p]["step"]) for g in trainer.optimizer.param_groups for p in g["params"] if p in state}
    assert steps == {1, 2}
    assert int(state[model.segDecoder.conv_out.weight]["step"]) == 2
    assert int(state[model.initial_history]["step"]) == 1  # only the first clip starts from the learned history
    assert result.steps == 1 and trainer.scheduler.last_epoch == 1


def test_without_step_per_clip_one_step_covers_both_clips(sample, tmp_path):
    model = _model()
    calls = []
    model.register_forward_pre_hook(lambda m, a, k: calls.append((a[0].shape[1], k.get("video_prompt"))),
                                    with_kwargs=True)
    trainer = _trainer(model, sample, tmp_path)
    trainer.fit()
    assert [(t, p) for t, p in calls] == [(8, None)]  # one forward runs both clips
    state = trainer.optimizer.state
    steps = {int(state[p]["step"]) for g in trainer.optimizer.param_groups for p in g["params"] if p in state}
    assert steps == {1}


def test_released_lr_split_reaches_the_optimiser():
    from lvseg.train.engine import TrainConfig, _param_groups
    from lvseg.train.vlp_rvos_presets import VLP_RVOS_LR_GROUPS, VLP_RVOS_RECIPE

    model = _model()
    groups = _param_groups(model, TrainConfig(**{**VLP_RVOS_RECIPE, "loss_weights": None}))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    trainable = {n for n, p in names.items() if not n.startswith("backbone.")}
    assert {n for n, p in names.items() if id(p) in lr_of} == trainable  # every added module once, no backbone
    slow = ("prompt_encoder.", "initial_history", "history_proj.", "deep_prompts", "guides.", "word_to_vision.",
            "segDecoder.")
    for name in trainable:
        expected = 5e-5 if name.startswith(slow) else 1e-4
        assert lr_of[id(names[name])] == expected, name
    assert lr_of[id(names["reduce.0.0.weight"])] == 1e-4  # the released reduce/resizer group: OPTIM.LR
    assert sum(1 for n in trainable if n.startswith(slow)) > 0 and len(VLP_RVOS_LR_GROUPS) == 3


def test_every_released_preset_uses_the_split_and_per_clip_steps():
    from lvseg.train.presets import PRESETS

    vlp = {name: p for name, p in PRESETS.items() if p.family == "vlp_rvos" and name != "vlp-rvos-tiny-shapes"}
    assert len(vlp) >= 12
    for name, preset in vlp.items():
        assert preset.train["step_per_clip"] is True, name
        assert preset.train["lr"] == 1e-4 and {lr for _, lr in preset.train["lr_groups"]} == {5e-5}, name


def test_step_per_clip_and_lr_groups_reject_bad_settings():
    from lvseg.errors import ConfigError
    from lvseg.train.engine import TrainConfig, _param_groups
    from lvseg.train.objectives import make_objective

    with pytest.raises(ConfigError, match="grad_accum"):
        TrainConfig(step_per_clip=True, grad_accum=2)
    with pytest.raises(ConfigError, match="regular expression"):
        TrainConfig(lr_groups=(("seg(", 1e-4),))
    with pytest.raises(ConfigError, match="finite"):
        TrainConfig(lr_groups=(("seg", float("nan")),))
    with pytest.raises(ConfigError, match="pairs"):
        TrainConfig(lr_groups=("segDecoder",))
    with pytest.raises(ConfigError, match="step_per_clip"):
        make_objective("lavt", None, None).split({}, torch.nn.Linear(1, 1))
    # lists (as JSON gives them back) are accepted, and no split leaves the groups as they were
    assert TrainConfig(lr_groups=[["segDecoder", 5e-5]]).lr_groups == (("segDecoder", 5e-5),)
    model = _model()
    plain = _param_groups(model, TrainConfig(lr=1e-4, lr_backbone=0.0, lr_text_encoder=0.0))
    assert [g["name"] for g in plain] == ["main"]
    assert len(plain[0]["params"]) == sum(1 for n, p in model.named_parameters() if not n.startswith("backbone."))
