"""Training recipes: the official ReferFormer, MTTR and LAVT schedules and the small Shapes models that lvseg ships.

A :class:`Preset` names the model family it trains, the model it starts from, the :class:`TrainConfig` values and
how to build the training/validation datasets from a data root. ``lvseg.train(preset=...)`` and
``lvseg train --preset ...`` use them; every value can be overridden.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
from .mttr_data import a2d_mttr_data, ytvos_mttr_data

__all__ = [
    "Preset",
    "PRESETS",
    "get_preset",
    "train_bpe_tokenizer",
    "shapes_tokenizer",
    "shapes_tiny_config",
    "build_shapes_tiny",
    "shapes_prepare",
    "ensure_shapes",
    "ShuffledExpressions",
    "SHAPES_SIZE",
    "SHAPES_FRAMES",
    "SHAPES_PRETRAIN_STEPS",
    "SHAPES_REFINE_STEPS",
    "shapes_refine_schedule",
    "shapes_wordpiece_tokenizer",
    "lavt_shapes_tiny_config",
    "build_lavt_shapes_tiny",
    "locater_shapes_tiny_config",
    "build_locater_shapes_tiny",
    "lavt_shapes_data",
    "LAVT_VIDEO_FRAMES",
    "lavt_video_transforms",
    "lavt_video_a2d_data",
    "lavt_video_ytvos_data",
    "lavt_video_refcoco_pretrain_data",
    "is_motion_expression",
    "ExpressionSubset",
]

logger = logging.getLogger(__name__)

SHAPES_SIZE = 96  # frame size of the embedded Shapes model (square)
SHAPES_FRAMES = 8  # frames per generated Shapes video
SHAPES_CLIP = 4  # training clip length (consecutive frames)


@dataclass(frozen=True)
class Preset:
    """A named recipe. ``model`` is a registry name or a callable returning a fresh model; ``data`` builds
    ``(train, val)`` datasets from a data root (``val`` may be None)."""

    name: str
    family: str
    model: str | Callable[[], Any]
    train: dict[str, Any] = field(default_factory=dict)
    data: Callable[[str | Path], tuple[Dataset, Dataset | None]] | None = None
    description: str = ""
    #: a stage run on the preset's freshly built model before training (not on resume or on a model you pass):
    #: ``prepare(model, data_root, seed, progress, steps) -> record`` (a JSON-able dict saved as
    #: ``<output_dir>/prepare.json``); ``steps`` is ``TrainConfig.prepare_steps`` (None = the preset's own)
    prepare: Callable[[Any, Path, int, bool, int | None], dict[str, Any]] | None = None
    #: config changes applied to the starting model, keeping its weights (``lvseg.train(model_overrides=...)``)
    model_overrides: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ tokenizer
def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 400, max_length: int = 32) -> Any:
    """A RoBERTa-style byte-level BPE tokenizer trained on ``corpus`` (``<s>``, ``<pad>``, ``</s>``, ``<unk>``,
    ``<mask>`` = ids 0-4, like roberta-base), as a ``transformers`` tokenizer that saves with the model."""
    import tempfile

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(corpus),
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        return RobertaTokenizerFast(vocab=f"{tmp}/vocab.json", merges=f"{tmp}/merges.txt", model_max_length=max_length)


def shapes_tokenizer() -> Any:
    """The BPE tokenizer of the Shapes vocabulary (every word, sentence-initial and after a space)."""
    from ..data.shapes import VOCABULARY

    words = list(VOCABULARY)
    corpus = [" ".join(words)] * 4 + [f"{w} {v}" for w in words for v in words]
    return train_bpe_tokenizer(corpus, vocab_size=400)


def shapes_tiny_config(vocab_size: int, size: int = SHAPES_SIZE) -> Any:
    """The ReferFormer configuration of the embedded Shapes model (~1 M parameters).

    A timm ConvNeXt test-size CNN (strides 4-32, LayerNorm, trained from scratch) with a temporal convolution per
    level (so motion expressions can be grounded), 2 encoder + 3 decoder layers of width 64 and a 2-layer RoBERTa
    of width 64 on a BPE vocabulary of the Shapes words. Two departures from the official configuration make it
    learn on a CPU budget: one query instead of five (the sentence-conditioned query has to find the referred
    object itself, instead of five queries each segmenting some object and a score choosing among them), and the
    sentence feature is the mean of the word states (``sentence_pooling="mean"``): a from-scratch RoBERTa's
    ``<s>`` pooler output stays almost the same for every sentence for thousands of steps.
    """
    from ..models.base import PreprocessConfig
    from ..models.referformer.config import ReferFormerConfig

    text = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 40,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    pre = PreprocessConfig(short_side=size, max_size=size, window=36, overlap=0, max_text_tokens=32)
    return ReferFormerConfig(
        preprocessing=pre,
        backbone="timm",
        timm_model="test_convnext",
        temporal_kernel=3,
        hidden_dim=64,
        nheads=4,
        enc_layers=2,
        dec_layers=3,
        dim_feedforward=128,
        dropout=0.0,
        mask_dim=32,
        num_queries=1,
        sentence_pooling="mean",
        query_reference="text",
        text_encoder=text,
        max_frames_per_pass=36,
    )


def build_shapes_tiny(size: int = SHAPES_SIZE) -> Any:
    """A freshly initialised embedded-model architecture with its tokenizer (random weights)."""
    from ..models.referformer.model import ReferFormer

    tokenizer = shapes_tokenizer()
    return ReferFormer(shapes_tiny_config(len(tokenizer), size), tokenizer=tokenizer)


SHAPES_REFINE_STEPS = 12000  # stage 3 of the embedded model: training on with the stride-1 mask head
SHAPES_PRETRAIN_STEPS = 6000  # stage 1 of the embedded model: dense attribute pre-training of the backbone


def shapes_refine_schedule(steps: int = SHAPES_REFINE_STEPS) -> dict[str, Any]:
    """Length and LR drop of stage 3 (``referformer-tiny-shapes-hr``): ``steps`` steps, LR x0.1 at 3/4 of them."""
    return {"max_steps": steps, "lr_drop_steps": (steps * 3 // 4,)}


def shapes_prepare(
    model: Any, data_root: Path, seed: int, progress: bool = True, steps: int | None = None
) -> dict[str, Any]:
    """Stage 1 of the Shapes recipe: :func:`lvseg.train.shapes_pretrain.pretrain_backbone_on_shapes` on the
    ``train`` split under ``data_root`` (generated first when missing), ``SHAPES_PRETRAIN_STEPS`` steps unless
    ``steps`` says otherwise."""
    from .shapes_pretrain import pretrain_backbone_on_shapes

    ensure_shapes(data_root)
    return pretrain_backbone_on_shapes(
        model, data_root, steps=steps or SHAPES_PRETRAIN_STEPS, lr=3e-3, seed=seed, progress=progress
    )


# ------------------------------------------------------------------------------------------------ tiny LAVT
def shapes_wordpiece_tokenizer() -> Any:
    """A WordPiece (BERT) tokenizer whose vocabulary is the Shapes words, laid out like bert-base-uncased's
    (``[PAD]``=0, ``[unused0-98]``, ``[UNK]``=100, ``[CLS]``=101, ``[SEP]``=102, ``[MASK]``=103, then the words),
    plus the words of the tokenizer check's probe sentence, so lvseg's BERT tokenizer checks accept it."""
    import tempfile

    from transformers import BertTokenizer

    from ..data.shapes import VOCABULARY
    from ..models.layers.text import PROBE_SENTENCE

    words = sorted(set(VOCABULARY) | set(PROBE_SENTENCE.split()))
    specials = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(specials + words) + "\n", encoding="utf-8")
        return BertTokenizer(str(vocab), do_lower_case=True)


def lavt_shapes_tiny_config(vocab_size: int, size: int = SHAPES_SIZE) -> Any:
    """A tiny LAVT image model for Shapes frames (~1.1 M parameters, see :data:`PRESETS` ``lavt-tiny-shapes``).

    The official architecture at toy sizes: Swin of width 16 (depths 2-2-2-2, heads 1-2-4-8, window 6, so the
    24/12/6 maps of a 96x96 frame are whole windows and the 3x3 one is padded as officially), one PWAM head per
    stage, a 2-layer BERT of width 64 on :func:`shapes_wordpiece_tokenizer`'s vocabulary, frames kept at
    ``size`` x ``size`` and the official image token budget (20)."""
    from ..models.base import PreprocessConfig
    from ..models.lavt.config import IMAGE_TOKEN_BUDGET, LAVTConfig

    text = {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 32,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    pre = PreprocessConfig(short_side=size, max_size=size, window=8, overlap=0, max_text_tokens=IMAGE_TOKEN_BUDGET)
    return LAVTConfig(
        preprocessing=pre,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window=6,
        fusion_heads=(1, 1, 1, 1),
        drop_path_rate=0.0,
        image_size=size,
        text_encoder=text,
    )


def build_lavt_shapes_tiny(size: int = SHAPES_SIZE) -> Any:
    """A freshly initialised tiny LAVT for Shapes with its WordPiece tokenizer (random weights)."""
    from ..models.lavt.model import LAVT

    tokenizer = shapes_wordpiece_tokenizer()
    return LAVT(lavt_shapes_tiny_config(len(tokenizer), size), tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------ tiny Locater
def locater_shapes_tiny_config(vocab_size: int, size: int = SHAPES_SIZE, image_size: int | None = None) -> Any:
    """A tiny Locater for Shapes frames (538,167 parameters at the defaults, see :data:`PRESETS`
    ``locater-tiny-shapes``).

    The official architecture at toy sizes: 16-pixel patches, width 64, a 2-block ViT with 4 heads, 2 fusion
    stages of 1 + 1 blocks, a 1-layer BiLSTM over 32-wide embeddings of :func:`shapes_wordpiece_tokenizer`'s ids,
    4 memory / query heads, the HEAD memory sizes, 3 global frames, frames kept at ``size`` x ``size`` and the
    official 22 token positions. The model resizes frames to ``image_size`` squares (default ``2 * size``: a 12x12
    token grid on 96-pixel frames, so that a patch covers 8 frame pixels; at ``size`` itself the 6x6 grid left a
    Shapes object one patch or less and the model learned little beyond objectness, docs/models/locater.md)."""
    from ..models.base import PreprocessConfig
    from ..models.locater.config import LocaterConfig

    pre = PreprocessConfig(
        short_side=size, max_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), window=8, max_text_tokens=22
    )
    return LocaterConfig(
        preprocessing=pre,
        image_size=2 * size if image_size is None else image_size,
        embed_dim=64,
        vision_depth=2,
        vision_heads=4,
        fusion_stages=2,
        fuse_depth=1,
        post_depth=1,
        fusion_heads=4,
        mlp_ratio=2.0,
        vocab_size=vocab_size,
        word_dim=32,
        text_layers=1,
        memory_heads=4,
        query_heads=4,
    )


def build_locater_shapes_tiny(size: int = SHAPES_SIZE, image_size: int | None = None) -> Any:
    """A freshly initialised tiny Locater for Shapes with its WordPiece tokenizer (random weights); the sizes as
    :func:`locater_shapes_tiny_config`."""
    from ..models.locater.model import Locater

    tokenizer = shapes_wordpiece_tokenizer()
    return Locater(locater_shapes_tiny_config(len(tokenizer), size, image_size), tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------ data
class ShuffledExpressions(Dataset):
    """A text-blind control: every sample keeps its video and masks but gets the expression of another sample
    (a fixed random permutation), so a model trained on it cannot learn language grounding."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        n = len(dataset)  # type: ignore[arg-type]
        order = list(range(n))
        random.Random(seed).shuffle(order)
        self.texts = [self._text(order[i]) for i in range(n)]

    def _text(self, index: int) -> str:
        ds = self.dataset
        if hasattr(ds, "samples") and hasattr(ds, "videos"):  # RefYouTubeVOS-style index: no frame decoding
            vid, exp_id, _ = ds.samples[index]
            return ds.videos[vid]["expressions"][exp_id]["exp"]
        return ds[index]["text"]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        sample["text"] = self.texts[index]
        return sample


def ensure_shapes(
    root: str | Path, num_train: int = 1200, num_val: int = 60, seed: int = 0, size: int = SHAPES_SIZE
) -> None:
    """Generate the Shapes train/valid splits of the embedded model's recipe at ``root`` where missing."""
    from ..data import shapes

    root = Path(root)
    for split, n in (("train", num_train), ("valid", num_val)):
        if not (root / "meta_expressions" / split / "meta_expressions.json").is_file():
            logger.info("generating Shapes %s (%d videos) under %s", split, n, root)
            shapes.generate(root, split, num_videos=n, frames=SHAPES_FRAMES, size=size, seed=seed, progress=False)


def shapes_data(
    root: str | Path, num_train: int = 1200, num_val: int = 60, seed: int = 0, size: int = SHAPES_SIZE
) -> tuple[Dataset, Dataset]:
    """Shapes train/valid at ``root`` (generated first when missing) as training clips and evaluation videos."""
    from ..data import ClipSampling, RefYouTubeVOS
    from ..data.transforms import RandomHorizontalFlip

    root = Path(root)
    ensure_shapes(root, num_train, num_val, seed, size)
    train = RefYouTubeVOS(
        root, "train", sampling=ClipSampling(num_frames=SHAPES_CLIP, mode="random"), transform=RandomHorizontalFlip(0.5)
    )
    val = RefYouTubeVOS(root, "valid")
    return train, val


def shapes_test_data(root: str | Path, num_videos: int = 100, size: int = SHAPES_SIZE) -> Any:
    """The held-out Shapes videos the Shapes benchmarks report on, next to the training ``root``.

    They live in their own root, ``<root>-test``, as a ``valid`` split generated with seed 1 (a test meta file in
    the training root would remove same-named videos from its valid split). Generated when missing; an existing
    folder must hold ``num_videos`` videos, so that a number is never reported on a different test set than the
    one asked for.

    Returns:
        ``RefYouTubeVOS(<root>-test, "valid")``.
    """
    import json

    from ..data import RefYouTubeVOS, shapes

    root = Path(root)
    test_root = root.with_name(root.name + "-test")
    meta = test_root / "meta_expressions" / "valid" / "meta_expressions.json"
    if not meta.is_file():
        logger.info("generating %d held-out Shapes videos under %s", num_videos, test_root)
        shapes.generate(
            test_root, "valid", num_videos=num_videos, frames=SHAPES_FRAMES, size=size, seed=1, progress=False
        )
    found = len(json.loads(meta.read_text())["videos"])
    if found != num_videos:
        raise DatasetError(
            f"{test_root} holds {found} held-out Shapes videos, not the {num_videos} asked for; pass "
            f"--num-test {found} to use them, or delete {test_root} to generate {num_videos}"
        )
    return RefYouTubeVOS(test_root, "valid")


def is_motion_expression(text: str) -> bool:
    """Whether a Shapes expression names a motion ("moving left", "standing still", ...): an image model cannot
    ground those from one frame."""
    from ..data.shapes import MOTION_PHRASES

    return any(phrase in text for phrase in MOTION_PHRASES.values())


class ExpressionSubset(Dataset):
    """The samples of a :class:`~lvseg.data.RefYouTubeVOS`-style dataset whose expression passes ``keep(text)``;
    exposes ``samples`` and ``videos`` like the dataset (so :class:`ShuffledExpressions` reads texts without
    decoding frames)."""

    def __init__(self, dataset: Any, keep: Callable[[str], bool]) -> None:
        self.dataset = dataset
        self.videos = dataset.videos
        self.indices = [
            i
            for i, (vid, exp_id, _) in enumerate(dataset.samples)
            if keep(dataset.videos[vid]["expressions"][exp_id]["exp"])
        ]
        self.samples = [dataset.samples[i] for i in self.indices]
        if not self.indices:
            raise ConfigError("no expression of the dataset passes the filter: check the data root and split")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[self.indices[index]]


def lavt_shapes_data(
    root: str | Path, num_train: int = 1200, num_val: int = 60, seed: int = 0, size: int = SHAPES_SIZE
) -> tuple[Dataset, Dataset]:
    """Shapes for an image model: the train/valid splits of :func:`shapes_data` (generated first when missing)
    restricted to the expressions without a motion phrase; training samples are single frames (one per frame of
    every expression, random horizontal flips that swap "left"/"right"), validation samples whole videos
    (scored frame by frame)."""
    from ..data import ClipSampling, RefYouTubeVOS
    from ..data.transforms import RandomHorizontalFlip

    root = Path(root)
    ensure_shapes(root, num_train, num_val, seed, size)

    def still(text: str) -> bool:
        return not is_motion_expression(text)

    train = RefYouTubeVOS(
        root, "train", sampling=ClipSampling(num_frames=1, mode="fixed"), transform=RandomHorizontalFlip(0.5)
    )
    val = RefYouTubeVOS(root, "valid")
    return ExpressionSubset(train, still), ExpressionSubset(val, still)


def ytvos_data(root: str | Path) -> tuple[Dataset, Dataset | None]:
    """Ref-YouTube-VOS train with ReferFormer's clip sampling (5 frames) and augmentation, clips whose object is
    visible in no frame redrawn (as the official dataset does); no local validation."""
    from ..data import ClipSampling, RedrawInvisible, RefYouTubeVOS
    from ..data.transforms import train_transforms

    return RedrawInvisible(
        RefYouTubeVOS(
            root, "train", sampling=ClipSampling(num_frames=5, mode="referformer"), transform=train_transforms()
        )
    ), None


#: sub-folders of a joint-training data root (see :func:`joint_data`)
JOINT_LAYOUT = (
    "<root>/ref-youtube-vos/   Ref-YouTube-VOS (meta_expressions/train/meta_expressions.json, "
    "train/JPEGImages, train/Annotations, train/meta.json)\n"
    "<root>/refer/             REFER's data/ folder: refcoco/refs(unc).p + instances.json, "
    "refcoco+/refs(unc).p + instances.json, refcocog/refs(umd).p + instances.json, "
    "images/mscoco/images/train2014/COCO_train2014_<id:012d>.jpg"
)


def _refer_normalised_sentence(sample: dict[str, Any]) -> dict[str, Any]:
    """Use REFER's normalised sentence (``sent``: lower case, no punctuation) as the text, as ReferFormer's
    ``convert_refexp_to_coco.py`` does (its ``caption`` is ``sentence["sent"]``)."""
    sample["text"] = sample["sent"]
    return sample


def joint_data(root: str | Path) -> tuple[Dataset, Dataset | None]:
    """ReferFormer's joint training set (``main_joint.py``, ``--dataset_file joint``): RefCOCO, RefCOCO+ and
    RefCOCOg train as 5-frame pseudo-videos (:class:`lvseg.data.PseudoVideo`) followed by Ref-YouTube-VOS train
    clips (as :func:`ytvos_data`), concatenated in the official order; no local validation.

    ``root`` holds two sub-folders (a missing one raises :class:`lvseg.errors.DatasetError`)::

        <root>/ref-youtube-vos/   the Ref-YouTube-VOS layout (train split)
        <root>/refer/             REFER's data/ folder (refcoco, refcoco+ with unc splits; refcocog with umd)
                                  and COCO train2014 under images/mscoco/images/train2014/

    As officially: one sample per RefCOCO sentence, its text REFER's normalised ``sent`` (the official converted
    annotations' caption), the image plus 4 independently augmented copies in a random order, then the same
    training transforms as Ref-YouTube-VOS (:func:`lvseg.data.transforms.train_transforms`); every part redraws
    a clip whose object was cropped out of all frames with another sample of the same part
    (:class:`lvseg.data.RedrawInvisible`), as each official dataset's ``__getitem__`` loop does.

    Returns ``(train, None)``: ``train`` is a ``ConcatDataset`` of the four parts; every sample has the
    Ref-YouTube-VOS training format (``frames`` float ``[5, 3, H, W]`` after the transforms, ``masks``,
    ``object_masks``, ``boxes``, ``valid``, ``text``, ...).
    """
    from torch.utils.data import ConcatDataset

    from ..data import PseudoVideo, RedrawInvisible, RefCOCO
    from ..data.transforms import train_transforms
    from ..errors import DatasetError

    root = Path(root)
    ytvos_root, refer_root = root / "ref-youtube-vos", root / "refer"
    needed = [
        ytvos_root,
        refer_root / "refcoco",
        refer_root / "refcoco+",
        refer_root / "refcocog",
        refer_root / "images/mscoco/images/train2014",
    ]
    missing = [str(p) for p in needed if not p.is_dir()]
    if missing:
        raise DatasetError(
            f"joint training data root {str(root)!r} lacks {', '.join(missing)}. Expected layout:\n"
            f"{JOINT_LAYOUT}\n(see docs/train.md, 'Joint training')."
        )
    parts: list[Dataset] = []
    for name in ("refcoco", "refcoco+", "refcocog"):  # the official order: RefCOCO/+/g first, Ref-YouTube-VOS last
        images = RefCOCO(refer_root, "train", dataset=name, transform=_refer_normalised_sentence)
        parts.append(RedrawInvisible(PseudoVideo(images, num_frames=5, transform=train_transforms())))
    parts.append(ytvos_data(ytvos_root)[0])
    return ConcatDataset(parts), None


def _needs_shapes_base() -> Any:
    raise ConfigError(
        "preset 'referformer-tiny-shapes-hr' continues a run of the 'referformer-tiny-shapes' preset: "
        "pass model=<that run's output_dir>/best (CLI: --model runs/shapes/best); "
        "benchmarks/train_shapes.py runs both stages"
    )


_REFERFORMER_FINETUNE = dict(
    lr=1e-4,
    lr_backbone=5e-5,
    lr_text_encoder=1e-5,
    weight_decay=5e-4,
    clip_max_norm=0.1,
    batch_size=1,
    epochs=6,
    lr_drops=(3, 5),
    freeze_text_encoder=True,
)
_REFERFORMER_JOINT = dict(_REFERFORMER_FINETUNE, epochs=12, lr_drops=(8, 10), seed=42)
_JOINT_DESCRIPTION = (
    "official joint RefCOCO/+/g pseudo-video + Ref-YouTube-VOS training (12 epochs, LR drops at 8 "
    "and 10, text encoder frozen; torchrun on 32 GPUs for the global batch of 32). Starts from the "
    "released joint weights: the official run starts from ImageNet/Kinetics backbone weights and "
    "RoBERTa-base, which lvseg does not build; pass such a model to train from those"
)

# what MTTR's A2D and Ref-YouTube-VOS configs share (RoBERTa frozen: its LR is unused)
_MTTR_RECIPE = dict(
    lr=1e-4,
    lr_backbone=1e-5,
    lr_text_encoder=5e-5,
    weight_decay=1e-4,
    clip_max_norm=0.1,
    lr_gamma=0.4,
    freeze_text_encoder=True,
    precision="fp16",
    seed=42,
)


def refcoco_lavt_data(root: str | Path, dataset: str = "refcoco") -> tuple[Dataset, Dataset | None]:
    """LAVT's RefCOCO training data: REFER's ``data/`` folder (``root``: refcoco/refs(unc).p + instances.json,
    images/mscoco/images/train2014/), train split, one sample per sentence with its raw text, the official mask
    rule (``overlap="lavt"``: pixels covered by two polygon parts are background), frames resized to 480x480
    without keeping the aspect and normalised (no augmentation, as officially). No in-loop validation set (the
    trainer's validation is Ref-YouTube-VOS J&F on videos): score checkpoints with
    ``lvseg evaluate DIR --dataset refcoco`` (LAVT's per-sentence IoU protocol).

    The official loader draws one random sentence per object each epoch; here every sentence is a sample."""
    from ..data import RefCOCO
    from ..data.transforms import Compose, Normalize, ResizeSquare

    transform = Compose([ResizeSquare(480), Normalize()])
    train = RefCOCO(root, "train", dataset=dataset, overlap="lavt", transform=transform)
    return train, None


#: frames per training clip of the LAVT video presets: LAVT-RS's ``--num_frames`` is left at its default (1) by
#: the README's training commands, with which its A2D and Ref-YouTube-VOS training loops cannot run (see
#: docs/models/lavt.md, "Training"); the value behind the released weights is not recorded. 3 is the smallest clip
#: the official sampler builds in full (the annotated frame and its two local neighbours).
LAVT_VIDEO_FRAMES = 3


def lavt_video_transforms(size: int = 480) -> Any:
    """LAVT-RS's training transform for every video dataset (``train.get_transform``): each frame resized to
    ``size`` x ``size`` without keeping the aspect (bilinear; masks nearest) and normalised with the ImageNet
    mean/std; no augmentation."""
    from ..data.transforms import Compose, Normalize, ResizeSquare

    return Compose([ResizeSquare(size), Normalize()])


def lavt_video_a2d_data(
    root: str | Path, num_frames: int = LAVT_VIDEO_FRAMES, size: int = 480
) -> tuple[Dataset, Dataset | None]:
    """A2D-Sentences ``train`` as LAVT-RS trains on it (``data/a2d.py``, ``subset='train'``): one sample per
    (sentence, annotated frame showing its instance) (MTTR's list), a ``num_frames`` clip drawn around the
    annotated frame by ``ClipSampling(mode="referformer")`` (the annotated frame, one frame 1-3 before, one 1-3
    after, the rest from outside that window), :func:`lavt_video_transforms`, the loss on the annotated frame only;
    a sample whose annotated mask is empty is replaced by a random other one (:class:`lvseg.data.RedrawInvisible`,
    the official ``instance_check`` loop). No validation set: A2D is scored with ``lvseg.evaluate``."""
    from ..data import A2DSentences, ClipSampling, RedrawInvisible

    sampling = ClipSampling(num_frames=num_frames, mode="referformer")
    train = A2DSentences(root, "train", sampling=sampling, transform=lavt_video_transforms(size))
    return RedrawInvisible(train), None


def lavt_video_ytvos_data(
    root: str | Path, num_frames: int = LAVT_VIDEO_FRAMES, size: int = 480
) -> tuple[Dataset, Dataset | None]:
    """Ref-YouTube-VOS ``train`` as LAVT-RS trains on it (``data/ytvos.py``): one sample per (video, expression,
    anchor) with anchors every ``num_frames`` frames of the sorted frame list, the clip drawn around the anchor by
    ``ClipSampling(mode="referformer")``, :func:`lavt_video_transforms`, every frame supervised (the object's mask,
    empty where it is absent); a clip showing the object in no frame is redrawn (the official ``instance_check``
    loop). No local validation (the official evaluation is the competition server)."""
    from ..data import ClipSampling, RedrawInvisible, RefYouTubeVOS

    sampling = ClipSampling(num_frames=num_frames, mode="referformer")
    return RedrawInvisible(RefYouTubeVOS(root, "train", sampling=sampling, transform=lavt_video_transforms(size))), None


def duplicate_frame(frame: Any, mask: Any) -> tuple[Any, Any]:
    """The pseudo-video "augmentation" of LAVT-RS's RefCOCO pre-training: the image and its mask unchanged."""
    return frame, mask


def lavt_video_refcoco_pretrain_data(
    root: str | Path, num_frames: int = LAVT_VIDEO_FRAMES, size: int = 480
) -> tuple[Dataset, Dataset | None]:
    """LAVT-RS's video pre-training set (``--image_combined_3d_pretrain``, ``data/refer_video.py``): the train
    splits of RefCOCO (unc), RefCOCO+ (unc) and RefCOCOg (umd) concatenated in that order, one sample per sentence
    with its raw text, the official mask rule (``overlap="lavt"``), the image repeated ``num_frames`` times
    unchanged, :func:`lavt_video_transforms`. ``root`` is REFER's ``data/`` folder (refcoco/, refcoco+/,
    refcocog/, images/mscoco/images/train2014/). No validation set (the official run scores oIoU on the three val
    splits every epoch; lvseg's trainer scores Ref-YouTube-VOS-style J&F, so score with ``lvseg.evaluate``)."""
    from torch.utils.data import ConcatDataset

    from ..data import PseudoVideo, RefCOCO

    parts: list[Dataset] = []
    for name, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):  # the official order
        images = RefCOCO(root, "train", dataset=name, split_by=split_by, overlap="lavt")
        transform = lavt_video_transforms(size)
        parts.append(PseudoVideo(images, num_frames, transform=transform, augment=duplicate_frame, shuffle=False))
    return ConcatDataset(parts), None


# LAVT-RIS train.py: AdamW lr 5e-5, wd 1e-2 except backbone norms / position tables, poly 0.9 per iteration,
# 40 epochs, batch 32 in total (4 GPUs x 8), gradient clipping none; BERT: only encoder layers 0-9 optimised
_LAVT_RECIPE: dict[str, Any] = dict(
    lr=5e-5,
    lr_backbone=5e-5,
    lr_text_encoder=5e-5,
    weight_decay=1e-2,
    lr_schedule="poly",
    poly_power=0.9,
    no_decay_keywords=("norm", "absolute_pos_embed", "relative_position_bias_table"),
    frozen_parameters=(r"text_encoder\.embeddings\.", r"text_encoder\.encoder\.layer\.(10|11)\."),
    clip_max_norm=0.0,
    epochs=40,
    batch_size=8,
)

# LAVT-RS train.py for --model lavt_video: the image recipe's optimizer (param groups, no decay on backbone norms and
# position tables, BERT encoder layers 0-9 only) and per-iteration poly 0.9; the README RVOS commands set the rest
_LAVT_VIDEO_RECIPE: dict[str, Any] = dict(_LAVT_RECIPE)
_LAVT_VIDEO_START = (
    "Starts from the released RefCOCO/+/g-pretrained video model, the official --pretrained_video_lavt_weights_on_"
    "refcocos starting point (the README command starts from Kinetics-400 Video Swin-T and bert-base-uncased, "
    "which lvseg does not build; pass such a model to train from those)"
)

# the tiny Shapes LAVT (benchmarks/train_shapes_lavt.py): the official optimiser (AdamW, no decay on norms and
# position tables) at a from-scratch learning rate, warm-up and one LR drop instead of poly over 40 epochs
LAVT_SHAPES_STEPS = 3200
LAVT_SHAPES_RECIPE: dict[str, Any] = dict(
    lr=1e-3,
    lr_backbone=1e-3,
    lr_text_encoder=1e-3,
    weight_decay=1e-2,
    no_decay_keywords=("norm", "absolute_pos_embed", "relative_position_bias_table"),
    clip_max_norm=1.0,
    batch_size=8,
    epochs=4,
    max_steps=LAVT_SHAPES_STEPS,
    warmup_steps=200,
    lr_drop_steps=(LAVT_SHAPES_STEPS * 3 // 4,),
    disable_dropout=True,
    eval_every=1000,
    eval_max_samples=60,
    checkpoint_every=250,
    log_every=25,
)

# the tiny Shapes Locater: AdamW at a from-scratch learning rate, warm-up and one LR drop (lvseg's choice: the
# official training code, optimiser and schedule were never released)
LOCATER_SHAPES_STEPS = 3000
LOCATER_SHAPES_RECIPE: dict[str, Any] = dict(
    # balanced BCE + dice (LocaterLossWeights): the balanced BCE alone averages the background over the whole
    # frame, so a mask on every object costs little and the model learned objectness, not grounding
    loss_weights={"aux_weight": 0.4, "fore": 1.5, "back": 0.5, "dice": 1.0},
    lr=1e-3,
    lr_backbone=1e-3,
    lr_text_encoder=1e-3,
    weight_decay=1e-2,
    clip_max_norm=1.0,
    batch_size=4,
    epochs=10,
    max_steps=LOCATER_SHAPES_STEPS,
    warmup_steps=200,
    lr_drop_steps=(LOCATER_SHAPES_STEPS * 3 // 4,),
    eval_every=1000,
    eval_max_samples=60,
    checkpoint_every=250,
    log_every=25,
)

PRESETS: dict[str, Preset] = {
    "referformer-tiny-shapes": Preset(
        "referformer-tiny-shapes",
        "referformer",
        build_shapes_tiny,
        train=dict(
            lr=5e-4,
            lr_backbone=5e-4,
            lr_text_encoder=5e-4,
            weight_decay=1e-4,
            clip_max_norm=1.0,
            batch_size=2,
            epochs=2,
            max_steps=13000,
            warmup_steps=150,
            lr_drop_steps=(8500,),
            disable_dropout=True,
            eval_every=1000,
            eval_max_samples=120,
            checkpoint_every=250,
            log_every=25,
        ),
        data=shapes_data,
        prepare=shapes_prepare,
        description="the embedded referformer-tiny.shapes model: ~1 M parameters from scratch on Shapes (CPU); "
        "stage 1 pre-trains the backbone on the Shapes attributes",
    ),
    "referformer-tiny-shapes-hr": Preset(
        "referformer-tiny-shapes-hr",
        "referformer",
        _needs_shapes_base,
        train=dict(
            lr=2e-4,
            lr_backbone=2e-4,
            lr_text_encoder=2e-4,
            weight_decay=1e-4,
            clip_max_norm=1.0,
            batch_size=2,
            epochs=2,
            warmup_steps=100,
            disable_dropout=True,
            eval_every=1000,
            eval_max_samples=120,
            checkpoint_every=250,
            log_every=25,
            **shapes_refine_schedule(),
        ),
        data=shapes_data,
        model_overrides={"mask_refine": 16},
        description="stage 3 of the embedded model: a referformer-tiny-shapes run's best model grows the "
        "image-guided stride-1 mask head (mask_refine=16) and trains on with it",
    ),
    "referformer-r50-ytvos": Preset(
        "referformer-r50-ytvos",
        "referformer",
        "referformer-r50.refcoco",
        train=dict(_REFERFORMER_FINETUNE),
        data=ytvos_data,
        description="official Ref-YouTube-VOS fine-tuning from the RefCOCO-pretrained weights (--pretrained_weights; "
        "6 epochs, LR drops at 3 and 5, text encoder frozen)",
    ),
    "referformer-swin-l-ytvos": Preset(
        "referformer-swin-l-ytvos",
        "referformer",
        "referformer-swin-l.refcoco",
        train=dict(_REFERFORMER_FINETUNE, gradient_checkpointing=True),
        data=ytvos_data,
        description="official Swin-L Ref-YouTube-VOS fine-tuning (gradient checkpointing as --use_checkpoint)",
    ),
    "referformer-video-swin-b-ytvos": Preset(
        "referformer-video-swin-b-ytvos",
        "referformer",
        "referformer-video-swin-b.refcoco",
        train=dict(_REFERFORMER_FINETUNE, gradient_checkpointing=True),
        data=ytvos_data,
        description="official Video-Swin-B Ref-YouTube-VOS fine-tuning",
    ),
    # main_joint.py via scripts/dist_joint_train_ytvos.sh: --with_box_refine --binary --freeze_text_encoder
    # --epochs 12 --lr_drop 8 10, opts.py defaults otherwise (lrs, wd 5e-4, clip 0.1, batch 1 per GPU, 5 frames,
    # seed 42); 32 V100 with 1 clip each (issue #7), not from the RefCOCO-pretrained model and no balanced
    # sampling (issue #19); --use_checkpoint for Swin-L / Video-Swin-B (memory only)
    "referformer-r50-joint": Preset(
        "referformer-r50-joint",
        "referformer",
        "referformer-r50.joint",
        train=dict(_REFERFORMER_JOINT),
        data=joint_data,
        description=_JOINT_DESCRIPTION,
    ),
    "referformer-swin-l-joint": Preset(
        "referformer-swin-l-joint",
        "referformer",
        "referformer-swin-l.joint",
        train=dict(_REFERFORMER_JOINT, gradient_checkpointing=True),
        data=joint_data,
        description=_JOINT_DESCRIPTION + " (gradient checkpointing as --use_checkpoint)",
    ),
    "referformer-video-swin-b-joint": Preset(
        "referformer-video-swin-b-joint",
        "referformer",
        "referformer-video-swin-b.joint",
        train=dict(_REFERFORMER_JOINT, gradient_checkpointing=True),
        data=joint_data,
        description=_JOINT_DESCRIPTION + " (gradient checkpointing as --use_checkpoint)",
    ),
    "lavt-swin-b-refcoco": Preset(
        "lavt-swin-b-refcoco",
        "lavt",
        "lavt-swin-b.refcoco",
        train=dict(_LAVT_RECIPE),
        data=refcoco_lavt_data,
        description="official LAVT image recipe on RefCOCO (AdamW 5e-5, wd 1e-2 without decay on norms and "
        "position tables, poly 0.9 per iteration, 40 epochs, weighted CE; torchrun --nproc_per_node=4 for the "
        "global batch of 32); starts from the released weights",
    ),
    # README: --model lavt_video --dataset a2d --batch-size 4 --lr 0.00006 --wd 1e-2 --swin_type tiny --epochs 40
    # on 8 GPUs (global batch 32); fp32 (train_one_epoch_a2d runs autocast only with --use_amp, not passed)
    "lavt-video-swin-t-a2d": Preset(
        "lavt-video-swin-t-a2d",
        "lavt_video",
        "lavt-video-swin-t.refcoco-pretrain",
        train=dict(_LAVT_VIDEO_RECIPE, lr=6e-5, lr_backbone=6e-5, lr_text_encoder=6e-5, batch_size=4, epochs=40),
        data=lavt_video_a2d_data,
        description="official LAVT-RS A2D-Sentences recipe (AdamW 6e-5, wd 1e-2 without decay on norms and "
        "position tables, poly 0.9 per iteration, 40 epochs, weighted CE on the annotated frame, 3-frame clips "
        "around it; torchrun --nproc_per_node=8 for the global batch of 32). " + _LAVT_VIDEO_START,
    ),
    # README (its --dataset a2d --model_id a2d is a copy-paste slip for ytvos): --batch-size 1 --lr 0.00005
    # --epochs 30 on 8 GPUs (global batch 8); GradScaler(enabled=--use_amp), not passed: fp32
    "lavt-video-swin-t-ytvos": Preset(
        "lavt-video-swin-t-ytvos",
        "lavt_video",
        "lavt-video-swin-t.refcoco-pretrain",
        train=dict(_LAVT_VIDEO_RECIPE, batch_size=1, epochs=30),
        data=lavt_video_ytvos_data,
        description="official LAVT-RS Ref-YouTube-VOS recipe (AdamW 5e-5, poly 0.9 per iteration, 30 epochs, "
        "weighted CE on every frame of 3-frame clips; torchrun --nproc_per_node=8 for the global batch of 8). "
        + _LAVT_VIDEO_START,
    ),
    # --image_combined_3d_pretrain with args.py defaults (no README command): lr 5e-5, batch 8, 40 epochs
    "lavt-video-swin-t-refcoco-pretrain": Preset(
        "lavt-video-swin-t-refcoco-pretrain",
        "lavt_video",
        "lavt-video-swin-t.refcoco-pretrain",
        train=dict(_LAVT_VIDEO_RECIPE),
        data=lavt_video_refcoco_pretrain_data,
        description="LAVT-RS video pre-training on RefCOCO/+/g(umd) train images as still pseudo-videos "
        "(--image_combined_3d_pretrain with the args.py defaults: AdamW 5e-5, batch 8, 40 epochs, poly 0.9). "
        "Starts from the released pre-trained model itself (the official run starts from a Video Swin "
        "checkpoint, --pretrained_swin_weights, and bert-base-uncased)",
    ),
    "lavt-tiny-shapes": Preset(
        "lavt-tiny-shapes",
        "lavt",
        build_lavt_shapes_tiny,
        train=dict(LAVT_SHAPES_RECIPE),
        data=lavt_shapes_data,
        description="a ~1.1 M-parameter LAVT image model from scratch on Shapes frames with their non-motion "
        "expressions (CPU, about an hour): the check that the family learns language (benchmarks/train_shapes_lavt.py)",
    ),
    "locater-tiny-shapes": Preset(
        "locater-tiny-shapes",
        "locater",
        build_locater_shapes_tiny,
        train=dict(LOCATER_SHAPES_RECIPE),
        data=shapes_data,
        description="a 0.55 M-parameter Locater from scratch on Shapes clips (frames resized to 192 px, memory "
        "unrolled over each clip, balanced BCE + dice on the main and auxiliary decoders; lvseg's recipe, the "
        "official one is unreleased)",
    ),
    "mttr-swin-t-a2d": Preset(
        "mttr-swin-t-a2d",
        "mttr",
        "mttr-swin-t.a2d",
        # configs/a2d_sentences.yaml + README (-ws 10 -bs 3 -ng 2: batch 3 per process on 2 GPUs); AMP (fp16)
        train=dict(_MTTR_RECIPE, batch_size=3, epochs=70, lr_drops=(50,)),
        data=a2d_mttr_data,
        description="official MTTR A2D-Sentences recipe (window 10, 70 epochs, LR x0.4 at 50, text encoder "
        "frozen; torchrun --nproc_per_node=2 for the global batch of 6)",
    ),
    "mttr-swin-t-ytvos": Preset(
        "mttr-swin-t-ytvos",
        "mttr",
        "mttr-swin-t.ytvos",
        # configs/refer_youtube_vos.yaml + README (-ws 12 -bs 1 -ng 4); AMP (fp16). trainer.py builds
        # MultiStepLR([20], 0.4) but steps it as step(total_epoch_loss): the loss sum (>= 20) is taken as the epoch,
        # so the LR is x0.4 from the second epoch on -- what the released model was trained with
        train=dict(_MTTR_RECIPE, batch_size=1, epochs=30, lr_drops=(1,)),
        data=ytvos_mttr_data,
        description="official MTTR Ref-YouTube-VOS recipe (12-frame windows, all objects of a window as targets, "
        "30 epochs, LR x0.4 after epoch 1 as the official scheduler call does, text encoder frozen; "
        "torchrun --nproc_per_node=4 for the global batch of 4)",
    ),
}

# VLP-RVOS: one preset per registry entry, plus RefCOCO pre-training and joint training (vlp_rvos_presets.py)
from .vlp_rvos_presets import vlp_rvos_presets  # noqa: E402

PRESETS.update(vlp_rvos_presets())


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (a clear error lists the known ones)."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown training preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
