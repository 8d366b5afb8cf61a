"""Registry entries for every VLP-RVOS configuration of the paper's tables (no model code imported here), and
:func:`build`, which makes the untrained model of an entry.

The authors released no weights (xwt909090/VLP-RVOS at 86ba38d has no checkpoint link, no model code and no
configs), so no entry can be downloaded: each says "no official weights: train with `lvseg train --preset ...`".
The numbers are the official README's tables (labelled as paper numbers, not measured by lvseg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...registry import ModelEntry, PaperMetric, register

__all__ = ["build", "config_for", "load_clip_backbone", "load_vlmo_backbone", "VARIANTS", "TRAINED_ON"]

_PAPER = (
    "Zhou, Xiong, Zhou, Li, He, Wang, Harnessing Vision-Language Pretrained Models with Temporal-Aware "
    "Adaptation for Referring Video Object Segmentation (VLP-RVOS, arXiv:2405.10610; v1: Driving Referring "
    "Video Object Segmentation with Vision-Language Pre-trained Models)"
)
_README = "VLP-RVOS README (xwt909090/VLP-RVOS 86ba38d)"

# architecture -> (backbone kind, backbone description, image size)
VARIANTS: dict[str, tuple[str, str, int]] = {
    "vlp-rvos-clip-b16": ("clip", "CLIP ViT-B/16 (frozen, OpenAI weights)", 352),
    "vlp-rvos-clip-l14": ("clip", "CLIP ViT-L/14 (frozen, OpenAI weights)", 336),
    "vlp-rvos-vlmo-b": ("vlmo", "VLMo-B (frozen, vlmo_base_patch16_384_coco)", 352),
    "vlp-rvos-vlmo-l": ("vlmo", "VLMo-L (frozen, vlmo_large_patch16_384_coco)", 352),
}

# tag -> (training data, training preset family suffix)
TRAINED_ON = {
    "ytvos": "Ref-YouTube-VOS",
    "refcoco-ytvos": "RefCOCO/+/g pre-training, then Ref-YouTube-VOS",
    "mevis": "MeViS",
    "a2d": "A2D-Sentences (JHMDB-Sentences evaluated with it)",
}

_YTVOS = "Ref-YouTube-VOS"
_DAVIS = "Ref-DAVIS17"
# (architecture, tag) -> ((dataset, split, metric, value), ...) from the README tables
_NUMBERS: dict[tuple[str, str], tuple[tuple[str, str, str, float], ...]] = {
    ("vlp-rvos-clip-b16", "ytvos"): ((_YTVOS, "valid", "J&F", 59.7), (_DAVIS, "valid", "J&F", 60.3)),
    ("vlp-rvos-vlmo-b", "ytvos"): ((_YTVOS, "valid", "J&F", 60.1), (_DAVIS, "valid", "J&F", 61.2)),
    ("vlp-rvos-clip-b16", "refcoco-ytvos"): ((_YTVOS, "valid", "J&F", 62.9), (_DAVIS, "valid", "J&F", 65.1)),
    ("vlp-rvos-vlmo-b", "refcoco-ytvos"): ((_YTVOS, "valid", "J&F", 63.1), (_DAVIS, "valid", "J&F", 65.5)),
    ("vlp-rvos-clip-l14", "refcoco-ytvos"): ((_YTVOS, "valid", "J&F", 66.0), (_DAVIS, "valid", "J&F", 68.2)),
    ("vlp-rvos-vlmo-l", "refcoco-ytvos"): ((_YTVOS, "valid", "J&F", 67.6), (_DAVIS, "valid", "J&F", 70.2)),
    ("vlp-rvos-clip-b16", "mevis"): (("MeViS", "valid (split not stated)", "J&F", 44.6),),
    ("vlp-rvos-vlmo-b", "mevis"): (("MeViS", "valid (split not stated)", "J&F", 45.4),),
}
_A2D = {  # A2D mAP (COCO AP@[.5:.95]), mIoU, oIoU; JHMDB the same
    "vlp-rvos-clip-b16": (53.3, 69.5, 76.7, 44.2, 71.9, 73.6),
    "vlp-rvos-vlmo-b": (53.9, 72.7, 78.5, 44.6, 72.3, 73.7),
    "vlp-rvos-clip-l14": (59.4, 75.3, 84.0, 46.0, 75.9, 77.9),
    "vlp-rvos-vlmo-l": (63.1, 77.7, 86.2, 47.1, 76.6, 78.3),
}
for _arch, _v in _A2D.items():
    _NUMBERS[(_arch, "a2d")] = (
        ("A2D-Sentences", "test", "mAP", _v[0]),
        ("A2D-Sentences", "test", "mIoU", _v[1]),
        ("A2D-Sentences", "test", "oIoU", _v[2]),
        ("JHMDB-Sentences", "all", "mAP", _v[3]),
        ("JHMDB-Sentences", "all", "mIoU", _v[4]),
        ("JHMDB-Sentences", "all", "oIoU", _v[5]),
    )


def preset_name(name: str) -> str:
    """The training preset of a registry name: ``vlp-rvos-clip-b16.ytvos`` -> ``vlp-rvos-clip-b16-ytvos``."""
    return name.replace(".", "-")


for (_arch, _tag), _metrics in _NUMBERS.items():
    _kind, _backbone, _size = VARIANTS[_arch]
    _name = f"{_arch}.{_tag}"
    register(
        ModelEntry(
            name=_name,
            family="vlp_rvos",
            backbone=_backbone,
            training_data=TRAINED_ON[_tag],
            paper_metrics=tuple(
                PaperMetric(ds, split, m, v, f"{_README} (paper numbers)") for ds, split, m, v in _metrics
            ),
            source=None,
            license="apache-2.0",
            paper=_PAPER,
            description=f"VLP-RVOS ({_backbone}) trained on {TRAINED_ON[_tag]}; lvseg's implementation from the "
            "paper (the authors released no model code). No official weights: train with "
            f"`lvseg train --preset {preset_name(_name)}`.",
            default=_tag == "refcoco-ytvos",
            train_preset=preset_name(_name),
        )
    )


def config_for(name: str) -> Any:
    """The :class:`~lvseg.models.vlp_rvos.config.VLPRVOSConfig` of a registry name (``arch.tag`` or ``arch``)."""
    from ...errors import ModelNotFoundError
    from .config import VLPRVOSConfig, clip_backbone, vlmo_backbone, vlp_rvos_preprocessing

    arch = name.split(".", 1)[0]
    if arch not in VARIANTS:
        raise ModelNotFoundError(f"{name!r} is not a VLP-RVOS configuration; known: {', '.join(VARIANTS)}")
    kind, _, size = VARIANTS[arch]
    if kind == "clip":
        vision, text, projection = clip_backbone("ViT-B/16" if arch.endswith("b16") else "ViT-L/14")
        text_prompts = 37
    else:
        vision, text, projection = vlmo_backbone("base" if arch.endswith("-b") else "large")
        text_prompts = 8
    layers = int(vision["num_hidden_layers"])
    # the released default taps blocks (3, 7, 9, 11) of 12; a 24-layer tower taps the same relative depths
    extract = (3, 7, 9, 11) if layers == 12 else (7, 15, 19, 23)
    max_text = int(text["max_position_embeddings"]) - text_prompts
    return VLPRVOSConfig(
        preprocessing=vlp_rvos_preprocessing(size, 6, max_text_tokens=max_text),
        backbone=kind,
        vision=vision,
        text=text,
        projection_dim=projection,
        image_size=size,
        text_prompts=text_prompts,
        deep_prompt_layers=tuple(range(1, layers)),
        temporal_layers=tuple(range(layers)),
        guide_layers=tuple(range(layers)),
        extract_layers=extract,
    )


def load_clip_backbone(model: Any, folder: str | Path, *, tokenizer: bool = True) -> None:
    """Load a ``transformers.CLIPModel.save_pretrained`` folder strictly into ``model``'s frozen CLIP backbone
    (keys, shapes; a mismatch raises :class:`~lvseg.errors.CheckpointError` listing them) and, with ``tokenizer``,
    make the folder's tokenizer the model's (:class:`~lvseg.errors.TokenizerError` when it has none)."""
    from ...errors import CheckpointError, ConfigError, TokenizerError

    if model.config.backbone != "clip":
        raise ConfigError(f"this VLP-RVOS has a {model.config.backbone} backbone, not CLIP: use its own converter")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} is not a CLIP folder (no config.json): convert the CLIP weights to a CLIPModel folder first"
        )
    from transformers import AutoTokenizer, CLIPModel

    from ...hub import TOKENIZER_FILES, load_state_dict_strict

    frozen = getattr(model.backbone, "clip")  # noqa: B009 - the CLIPModel inside the backbone adapter
    load_state_dict_strict(frozen, CLIPModel.from_pretrained(folder).state_dict(), str(folder))
    frozen.requires_grad_(False)
    if tokenizer:
        fix = "save the CLIP tokenizer beside the weights (tokenizer.save_pretrained(DIR)) or pass tokenizer="
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise TokenizerError(f"{folder} has none of the tokenizer files {', '.join(TOKENIZER_FILES)}: {fix}")
        try:
            loaded = AutoTokenizer.from_pretrained(folder)
        except Exception as exc:  # the Rust `tokenizers` raises a plain Exception for a malformed tokenizer.json
            raise TokenizerError(f"cannot load the tokenizer in {folder} ({exc}): {fix}") from exc
        vocab = int(model.config.text["vocab_size"])
        if len(loaded) > vocab:
            raise TokenizerError(
                f"the tokenizer in {folder} has {len(loaded)} tokens but the text encoder only {vocab} rows: {fix}"
            )
        model.tokenizer = loaded


def load_vlmo_backbone(model: Any, source: str | Path) -> None:
    """Load an official VLMo checkpoint (``.pt``, through :func:`lvseg.models.vlp_rvos.vlmo.load_vlmo`, resized to
    the model's ``image_size``) strictly into ``model``'s frozen VLMo backbone."""
    import importlib

    from ...errors import ConfigError
    from ...hub import load_state_dict_strict

    if model.config.backbone != "vlmo":
        raise ConfigError(f"this VLP-RVOS has a {model.config.backbone} backbone, not VLMo")
    vlmo_module = importlib.import_module(".vlmo", __package__)
    loaded = vlmo_module.load_vlmo(source, image_size=model.config.image_size)
    frozen = getattr(model.backbone, "vlmo")  # noqa: B009 - the VLMo inside the backbone adapter
    load_state_dict_strict(frozen, loaded.state_dict(), str(source))
    frozen.requires_grad_(False)


def build(name: str, backbone: str | Path | None = None, tokenizer: Any = None) -> Any:
    """The untrained VLP-RVOS of a registry name, on a frozen backbone.

    Args:
        name: a registry name such as ``"vlp-rvos-clip-b16.ytvos"``.
        backbone: the pretrained backbone. CLIP: a folder as ``transformers.CLIPModel.save_pretrained`` writes it
            (``config.json`` + weights, tokenizer files beside them), e.g. converted from the OpenAI CLIP file; its
            weights load strictly (:func:`load_clip_backbone`) and its tokenizer becomes the model's unless
            ``tokenizer`` is given. VLMo: the official ``.pt`` file (:func:`load_vlmo_backbone`); pass
            ``tokenizer`` (bert-base-uncased's). None: a randomly initialised backbone (tests, speed measurements).
        tokenizer: the tokenizer to use (default: the CLIP folder's).

    Save the result (``model.save_pretrained(DIR)``) and train it: ``lvseg train --preset PRESET --model DIR``.
    """
    from ...errors import TokenizerError
    from .model import VLPRVOS

    model = VLPRVOS(config_for(name), tokenizer)
    if backbone is not None and model.config.backbone == "vlmo":
        if tokenizer is None:
            raise TokenizerError(
                "VLMo reads bert-base-uncased WordPiece ids: pass tokenizer=BertTokenizer.from_pretrained(DIR) "
                "with bert-base-uncased's vocab.txt"
            )
        load_vlmo_backbone(model, backbone)
    elif backbone is not None:
        load_clip_backbone(model, backbone, tokenizer=tokenizer is None)
    return model
