"""Loading and saving models: registry names, ``hf-hub:`` ids and local folders.

Everything that touches the Hub goes through ``huggingface_hub`` (its cache layout, ``HF_HOME``/``HF_HUB_CACHE``,
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, tokens), and only safetensors are ever read from it: lvseg never unpickles a
file that came from the network.

A Hub-format model folder holds::

    config.json          the ModelConfig (architecture, sizes, preprocessing)
    model.safetensors    all weights, the text encoder included
    tokenizer files      when the model has a tokenizer (tokenizer.json, vocab.json, merges.txt, ...)
    README.md            a model card with YAML metadata (library_name: lvseg, license, datasets, model-index)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import (
    CheckpointError,
    ConfigError,
    HubError,
    InvalidInputError,
    OfflineError,
    UnsupportedDtypeError,
    WeightsNotPublishedError,
)
from .models import get_model_class
from .models.base import ModelConfig, RVOSModel
from .registry import ModelEntry, get_entry
from .utils import atomic_path, atomic_write_text, ensure_folder, make_temp_folder

__all__ = [
    "load",
    "download",
    "save_pretrained",
    "from_pretrained",
    "push_to_hub",
    "resolve_device",
    "resolve_dtype",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HF_HUB_PREFIX = "hf-hub:"
# What a model folder may contain; pickles (.bin, .pth, .pt, .pkl) are never fetched.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.md", "*.model"]
PACKAGE_ROOT = Path(__file__).resolve().parent

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


# --------------------------------------------------------------------------------------------- device / dtype
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a requested device that is absent raises a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    requested = device
    if isinstance(requested, bool) or not isinstance(requested, (str, int, torch.device)):
        raise InvalidInputError(
            f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {type(requested).__name__} ({requested!r})"
        )
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"invalid device {requested!r}; use 'cpu', 'cuda' or 'cuda:N' (N a GPU index)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device {str(device)!r} was requested but PyTorch sees no CUDA GPU; use device='cpu' or install a "
                "CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {str(device)!r} was requested but MPS is not available; use device='cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"lvseg runs on 'cpu', 'cuda[:N]' or 'mps', not {str(device)!r}")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """Check that ``device`` can run ``dtype`` (``None`` keeps the weights' dtype, float32)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise UnsupportedDtypeError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16, float64")
        dtype = _DTYPES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UnsupportedDtypeError(
            f"models run in a floating-point dtype, got {dtype}; use torch.float32, torch.bfloat16 or torch.float16"
        )
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UnsupportedDtypeError(
            f"{torch.cuda.get_device_name(device)} cannot run bfloat16; use dtype=torch.float16 or torch.float32"
        )
    if device.type in ("cpu", "mps") and dtype != torch.float32:
        failure = _half_precision_failure(device.type, dtype)
        if failure:
            raise UnsupportedDtypeError(
                f"{device.type} cannot run {dtype} on this PyTorch build ({failure}); use dtype=torch.float32"
            )
    return dtype


@functools.cache
def _half_precision_failure(device_type: str, dtype: torch.dtype) -> str | None:
    """Probe the two ops every model needs (old CPU builds lack half-precision kernels), once per process;
    returns the error text, or None when the dtype runs."""
    try:
        x = torch.ones(2, 3, 4, 4, dtype=dtype, device=device_type)
        torch.nn.functional.conv2d(x, torch.ones(1, 3, 1, 1, dtype=dtype, device=device_type))
        x.flatten(1) @ torch.ones(48, 2, dtype=dtype, device=device_type)
    except RuntimeError as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------------- saving
def _model_card(model: RVOSModel, entry: ModelEntry | None, name: str) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = entry.paper_metrics if entry else ()
    eval_results = [
        EvalResult(
            task_type="referring-video-object-segmentation",
            task_name="Referring Video Object Segmentation",
            dataset_type=m.dataset.lower().replace(" ", "-"),
            dataset_name=m.dataset,
            dataset_split=m.split,
            metric_type=m.metric,
            metric_name=f"{m.metric} (paper)",
            metric_value=m.value,
            source_name=m.source,
            source_url=entry.source.url if entry and entry.source else None,
        )
        for m in metrics
    ]
    datasets = sorted({m.dataset for m in metrics})
    data = ModelCardData(
        library_name="lvseg",
        license=entry.license if entry else "apache-2.0",
        tags=["lvseg", "referring-video-object-segmentation", "video-segmentation", model.config.architecture],
        datasets=datasets or None,
        model_name=name,
        eval_results=eval_results or None,
    )
    lines = [f"# {name}", ""]
    if entry and entry.description:
        lines += [entry.description, ""]
    lines += [
        f"A `{model.config.architecture}` model for referring video object segmentation, packaged for "
        "[lvseg](https://pypi.org/project/lvseg/).",
        "",
        "## Usage",
        "",
        "```python",
        "import lvseg",
        f'model = lvseg.load("{name}")',
        'result = model.predict("clip.mp4", "the man riding a bike")',
        'result.save_overlay("overlay.mp4")',
        "```",
        "",
    ]
    if entry:
        lines += ["## Provenance", "", f"- backbone: {entry.backbone}", f"- training data: {entry.training_data}"]
        if entry.source:
            lines.append(f"- converted from the official checkpoint: {entry.source.url}")
            if entry.source.sha256:
                lines.append(f"  (sha256 {entry.source.sha256})")
            if entry.source.notes:
                lines.append(f"  {entry.source.notes}")
        if entry.paper:
            lines.append(f"- paper: {entry.paper}")
        lines.append("")
    if metrics:
        lines += [
            "## Results (as reported by the paper / official README, not re-measured by lvseg)",
            "",
            "| dataset | split | metric | value | source |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {m.dataset} | {m.split} | {m.metric} | {m.value:g} | {m.source} |" for m in metrics]
        lines.append("")
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))
    return str(card)


def save_pretrained(
    model: RVOSModel,
    save_directory: str | Path,
    *,
    entry: ModelEntry | None = None,
    name: str | None = None,
    model_card: bool = True,
) -> Path:
    """Write ``model`` as a Hub-format folder (config, safetensors weights, tokenizer, model card).

    Every file is written atomically, so an interrupted save never leaves a half-written weights file.

    Args:
        model: the model to save (its weights are saved in their current dtype).
        save_directory: the folder to write (created if needed).
        entry: the registry entry the weights belong to; its paper metrics and provenance go into the card.
        name: the model's name in the card (default: ``entry.name`` or the folder name).
        model_card: write ``README.md``.
    """
    from safetensors.torch import save_model

    if not isinstance(model, RVOSModel):
        raise InvalidInputError(f"save_pretrained needs an lvseg RVOSModel, got {type(model).__name__}")
    directory = ensure_folder(save_directory)  # a read-only or impossible folder fails here, before any writing
    model.config.save(directory / CONFIG_NAME)
    from . import __version__

    metadata = {"format": "pt", "architecture": model.config.architecture, "lvseg_version": __version__}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        # save_model de-duplicates tied tensors (e.g. shared embeddings) so the file loads back strictly.
        save_model(model, str(tmp), metadata=metadata)
    if model.tokenizer is None and isinstance(getattr(model.config, "text_encoder", None), dict):
        logger.warning(
            "%s has a text encoder but no tokenizer: %s will not load until its tokenizer files are "
            "added (model.tokenizer.save_pretrained(DIR))",
            model.config.architecture,
            directory,
        )
    if model.tokenizer is not None:
        tmp_dir = make_temp_folder(directory / "tokenizer")  # files keep the umask's mode when moved out
        try:
            model.tokenizer.save_pretrained(str(tmp_dir))
            for file in tmp_dir.iterdir():
                os.replace(file, directory / file.name)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    if model_card:
        card_name = name or (entry.name if entry else directory.resolve().name)
        atomic_write_text(directory / "README.md", _model_card(model, entry, card_name))
    logger.info("saved %s to %s", model.config.architecture, directory)
    return directory


# --------------------------------------------------------------------------------------------- loading
def _read_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG_NAME}: it is not an lvseg model folder. Convert an official checkpoint "
            "with `lvseg convert FAMILY CHECKPOINT -o DIR` or save one with model.save_pretrained(DIR)."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-download or re-convert the model") from exc
    if not isinstance(raw, dict) or "architecture" not in raw:
        raise ConfigError(f"{path} has no 'architecture' field: it is not an lvseg config")
    if not isinstance(raw["architecture"], str):
        raise ConfigError(
            f"{path}: config field 'architecture' must be a string such as 'referformer', got {raw['architecture']!r}"
        )
    cls = get_model_class(raw["architecture"])
    try:
        return cls.config_class.from_dict(raw)
    except ConfigError as exc:  # name the file: the field names alone do not say which model is broken
        raise ConfigError(f"{path}: {exc}") from exc


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} has no {WEIGHTS_NAME}. lvseg loads safetensors only; convert official .pth checkpoints "
            "with `lvseg convert FAMILY CHECKPOINT -o DIR`."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({exc}). Delete it and download again (`lvseg download NAME "
            "--force`, or remove the model from the Hugging Face cache with `hf cache delete`)."
        ) from exc


# Files one of which a saved transformers tokenizer always has.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")


def _load_tokenizer(directory: Path, config: ModelConfig) -> Any:
    """The tokenizer saved in a model folder, checked against the config's text encoder (``None`` for a model
    without one and no tokenizer files).

    transformers 5 builds an empty tokenizer, without raising, from a folder whose tokenizer files are missing or
    incomplete; a model with it would ignore its text, so such a folder is refused here.
    """
    from .errors import TokenizerError
    from .models.layers.text import check_tokenizer

    text_config = getattr(config, "text_encoder", None)
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not isinstance(text_config, dict) and not (directory / "tokenizer_config.json").is_file():
        return None  # a model without a text encoder, saved without a tokenizer
    fix = (
        f"The model folder {directory} lacks its tokenizer files or holds the wrong ones: convert the official "
        "checkpoint again (`lvseg convert FAMILY CHECKPOINT -o DIR --tokenizer TOKENIZER_DIR`), copy in the "
        "tokenizer files the model was saved with (model.tokenizer.save_pretrained(DIR)), or download it again "
        "(`lvseg download NAME --force`)."
    )
    if not present:
        raise TokenizerError(
            f"the model's text encoder needs a tokenizer but {directory} has none of "
            f"{', '.join(TOKENIZER_FILES)}. {fix}"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:  # the Rust `tokenizers` raises a plain Exception for a malformed tokenizer.json
        raise TokenizerError(f"cannot load the tokenizer in {directory} ({type(exc).__name__}: {exc}). {fix}") from exc
    if isinstance(text_config, dict):
        check_tokenizer(tokenizer, text_config, source=str(directory), fix=fix)
    return tokenizer


# parameters_on_meta() swaps nn.Module.register_parameter while at least one thread is inside it; the swapped-in
# function moves parameters to the meta device only for the threads inside (another thread building a model for
# training meanwhile gets ordinary parameters).
_META_STATE = threading.local()
_META_LOCK = threading.Lock()
_META_USERS = 0
_ORIGINAL_REGISTER: Any = None


def _register_parameter(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
    _ORIGINAL_REGISTER(module, name, param)
    if param is not None and getattr(_META_STATE, "active", False) and param.device.type != "meta":
        module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device (no memory, no random initialisation); buffers
    stay real, so those computed at construction (relative position indices, ...) keep their values.

    :func:`load_state_dict_strict` then gives every parameter its tensor from the checkpoint, so a loaded model
    holds its weights once instead of twice (random weights + checkpoint) at the peak.
    """
    global _META_USERS, _ORIGINAL_REGISTER
    with _META_LOCK:
        if _META_USERS == 0:
            _ORIGINAL_REGISTER = torch.nn.Module.register_parameter
            torch.nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign,assignment]
        _META_USERS += 1
    previous = getattr(_META_STATE, "active", False)
    _META_STATE.active = True
    try:
        yield
    finally:
        _META_STATE.active = previous
        with _META_LOCK:
            _META_USERS -= 1
            if _META_USERS == 0:
                torch.nn.Module.register_parameter = _ORIGINAL_REGISTER  # type: ignore[method-assign]


def _tied_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Names that refer to one tensor (tied parameters or buffers), each mapped to all names of its group."""
    groups: dict[Any, list[str]] = {}
    for key, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(("object", id(tensor)), []).append(key)
    for key, tensor in model.state_dict(keep_vars=True).items():  # distinct objects over one storage
        if tensor.device.type != "meta" and tensor.numel():
            groups.setdefault(("storage", tensor.untyped_storage().data_ptr(), tensor.storage_offset()), []).append(key)
    tied: dict[str, list[str]] = {}
    for names in groups.values():
        unique = list(dict.fromkeys(names))
        if len(unique) > 1:
            for key in unique:
                tied.setdefault(key, [])
                tied[key] = list(dict.fromkeys([*tied[key], *unique]))
    return tied


def _materialise_parameters(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Replace each meta parameter by one made from its checkpoint tensor (cast to the parameter's dtype, no copy
    when it already has it); tied parameters stay one object."""
    made: dict[int, torch.nn.Parameter] = {}
    for key, param in list(model.named_parameters(remove_duplicate=False)):
        if param.device.type != "meta":
            continue
        new = made.get(id(param))
        if new is None:
            new = torch.nn.Parameter(state_dict[key].to(param.dtype), requires_grad=param.requires_grad)
            made[id(param)] = new
        owner, _, attr = key.rpartition(".")
        setattr(model.get_submodule(owner), attr, new)  # through setattr: RNNs refresh their flat weights


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` and fail with a readable list of what does not match.

    A model built under :func:`parameters_on_meta` takes the tensors of ``state_dict`` as its parameters (no
    second copy); its buffers are loaded as usual."""
    expected = model.state_dict(keep_vars=True)
    # Tied parameters appear under several names in state_dict() but only once in a de-duplicated file.
    aliases = _tied_names(model)
    missing = [k for k in expected if k not in state_dict and not any(a in state_dict for a in aliases.get(k, ()))]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state_dict
        if k in expected and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:

        def show(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" ... and {len(items) - 10} more" if len(items) > 10 else "")

        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {show(mismatched)}")
        raise CheckpointError(
            f"the weights in {source} do not fit the {type(model).__name__} described by its config.json: "
            + "; ".join(parts)
            + ". Likely causes: config.json and model.safetensors come from different models, or the file is an "
            "official checkpoint that was not converted (use `lvseg convert`)."
        )
    state_dict = dict(state_dict)
    for key, names in aliases.items():
        if key not in state_dict:
            state_dict[key] = next(state_dict[a] for a in names if a in state_dict)
    _materialise_parameters(model, state_dict)
    model.load_state_dict(state_dict, strict=True)  # buffers; parameters taken above copy onto themselves
    left = [k for k, t in model.state_dict(keep_vars=True).items() if t.device.type == "meta"]
    if left:
        raise CheckpointError(f"{source}: {len(left)} tensor(s) of the model were not loaded: {', '.join(left[:10])}")


def from_pretrained(
    directory: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> RVOSModel:
    """Build the model a Hub-format folder describes, load its weights strictly, and put it in eval mode."""
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(
            f"{directory} is a file, not a model folder: pass the folder that holds config.json and model.safetensors"
        )
    if not directory.is_dir():
        raise CheckpointError(f"model folder {directory} does not exist")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = _read_config(directory)
    model_class = get_model_class(config.architecture)
    tokenizer = _load_tokenizer(directory, config)  # before the weights: it is the quick check
    state_dict = _load_weights(directory / WEIGHTS_NAME)
    with parameters_on_meta():  # the weights come from the file: no random initialisation, one copy in memory
        model = model_class(config)
    load_state_dict_strict(model, state_dict, str(directory / WEIGHTS_NAME))
    model.tokenizer = tokenizer
    model.eval()
    model.to(device=torch_device, dtype=torch_dtype)
    return model


def _hub_snapshot(
    repo_id: str, revision: str | None, *, cache_dir: str | Path | None, token: str | bool | None, force_download: bool
) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at import, so a changed env var is honoured
    where = f"{repo_id}@{revision or 'main'}"
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            endpoint=endpoint,
            allow_patterns=ALLOW_PATTERNS,
            force_download=force_download,
            library_name="lvseg",
        )
    except RevisionNotFoundError as exc:
        raise HubError(f"revision {revision!r} does not exist in the Hub repo {repo_id}; check the revision") from exc
    except GatedRepoError as exc:
        raise HubError(
            f"{repo_id} is gated: accept its conditions on the Hub and log in (`hf auth login` or HF_TOKEN)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"Hub repo {repo_id} was not found (or it is private): check the name, or log in with `hf auth login` "
            "/ set HF_TOKEN if it is private"
        ) from exc
    except LocalEntryNotFoundError as exc:
        cache = cache_dir or constants.HF_HUB_CACHE
        if constants.is_offline_mode():
            raise OfflineError(
                f"offline mode is on (HF_HUB_OFFLINE=1) and {where} is not in the cache ({cache}). Download it "
                "once with network access (`lvseg download NAME`), or unset HF_HUB_OFFLINE."
            ) from exc
        raise OfflineError(
            f"could not reach the Hub at {endpoint or constants.ENDPOINT} to fetch {where}, and it is not in the "
            f"cache ({cache}). Check the network (or HF_ENDPOINT / proxy settings) and try again."
        ) from exc
    except HfHubHTTPError as exc:
        raise HubError(f"the Hub could not serve {where}: {exc}") from exc
    return Path(path)


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ``huggingface_hub``'s HTTP clients raise when the Hub cannot be reached (connection refused,
    DNS failure, timeout): ``httpx2`` (huggingface_hub 2.x), ``httpx`` (1.x) or ``requests`` (0.x), whichever
    are installed. Other ``OSError`` exceptions (e.g. an unreadable file in the folder) are not network errors."""
    errors: list[type[BaseException]] = []
    for module_name, attribute in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, attribute, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


def _parse_source(name_or_path: str | Path, revision: str | None) -> tuple[str, Any, str | None]:
    """-> (kind, target, revision) with kind one of 'local', 'hub', 'registry'."""
    text = str(name_or_path)
    if not text.strip():
        raise InvalidInputError(
            "no model name given: pass a registry name (see `lvseg list`), 'hf-hub:org/repo' or a local folder"
        )
    if text.startswith(HF_HUB_PREFIX):
        repo = text[len(HF_HUB_PREFIX) :]
        if "@" in repo:
            repo, at_revision = repo.split("@", 1)
            if revision is not None and revision != at_revision:
                raise InvalidInputError(f"two revisions given: '@{at_revision}' in the name and revision={revision!r}")
            revision = at_revision
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise InvalidInputError(f"{text!r} is not a valid 'hf-hub:org/repo[@revision]' id")
        return "hub", repo, revision
    path = Path(text).expanduser()
    if path.is_dir():
        return "local", path, revision
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.startswith("."):
        raise CheckpointError(
            f"{text!r} is not a model folder (it does not exist). For a Hub repo write 'hf-hub:{text}'."
            if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1
            else f"model folder {text!r} does not exist"
        )
    return "registry", get_entry(text), revision


def _not_published_message(entry: ModelEntry) -> str:
    if entry.train_preset:
        return (
            f"no official weights exist for {entry.name!r} (its authors released none), so it cannot be loaded by "
            f"name. Train it: build the starting model on its converted backbone (see docs/models/{entry.family}.md, "
            f"'Training'), then lvseg train --preset {entry.train_preset} --model START --data-root DATA "
            "--output-dir runs/x, and lvseg.load('runs/x/best')"
        )
    lines = [f"the weights of {entry.name!r} are not published on the Hub yet, so they cannot be downloaded by name."]
    if entry.source:
        lines.append(
            f"Get the official checkpoint from {entry.source.url}"
            + (f" ({entry.source.notes})" if entry.source.notes else "")
            + ", then convert it:"
        )
    else:
        lines.append("Convert the official checkpoint:")
    lines.append(f"    lvseg convert {entry.family} CHECKPOINT.pth -o {entry.name} --name {entry.name}")
    lines.append(f"and load the folder: lvseg.load('{entry.name}/') (or publish it with `lvseg push`).")
    return "\n".join(lines)


def download(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Resolve a model name to a local folder, downloading into the Hugging Face cache if needed."""
    kind, target, revision = _parse_source(name_or_path, revision)
    if kind == "local":
        return target
    if kind == "hub":
        return _hub_snapshot(target, revision, cache_dir=cache_dir, token=token, force_download=force_download)
    entry: ModelEntry = target
    if entry.bundled and revision is None:
        return PACKAGE_ROOT / entry.bundled
    if not entry.published or entry.hub_repo is None:
        raise WeightsNotPublishedError(_not_published_message(entry))
    return _hub_snapshot(
        entry.hub_repo, revision or entry.hub_revision, cache_dir=cache_dir, token=token, force_download=force_download
    )


def load(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    compile: bool = False,
) -> RVOSModel:
    """Load a model ready for inference (eval mode, on ``device`` in ``dtype``).

    Args:
        name_or_path: a registry name (``lvseg.list_models()``), ``"hf-hub:org/repo"`` (optionally
            ``"hf-hub:org/repo@revision"``), or a local Hub-format folder.
        revision: a Hub branch, tag or commit; by default a registry name uses its pinned commit.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        dtype: ``torch.float32`` (default), ``torch.bfloat16``, ``torch.float16`` or their names.
        cache_dir, token, force_download: passed to ``huggingface_hub``.
        compile: opt-in ``torch.compile`` of the model's heavy parts (see :func:`compile_model`): the first
            clip of each new size pays the compilation (minutes on a small CPU), later ones run the compiled code.

    Raises:
        ModelNotFoundError, WeightsNotPublishedError, OfflineError, HubError, CheckpointError, ConfigError,
        UnsupportedDtypeError (all subclasses of :class:`lvseg.errors.LVSegError`).
    """
    torch_device = resolve_device(device)
    resolve_dtype(dtype, torch_device)  # fail before any download
    if compile:
        _check_compiler(torch_device)  # fail before any download
    folder = download(name_or_path, revision=revision, cache_dir=cache_dir, token=token, force_download=force_download)
    model = from_pretrained(folder, device=torch_device, dtype=dtype)
    return compile_model(model) if compile else model


def _check_compiler(device: torch.device) -> None:
    """torch.compile's CPU backend (inductor) writes C++ and needs a compiler; say so before anything is loaded."""
    import shutil

    if device.type != "cpu":
        return
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(name and shutil.which(name) for name in names):
        raise ConfigError(
            "compile=True on CPU needs a C++ compiler (torch.compile's inductor backend generates C++), and none "
            "was found (CXX, c++, g++, clang++): install one (e.g. `apt-get install g++`) or load without compile=True"
        )


def compile_model(model: RVOSModel) -> RVOSModel:
    """Compile ``model`` in place with ``torch.compile`` and return it (what ``load(..., compile=True)`` does).

    A family that knows which of its parts are worth compiling says so with a ``compile_parts()`` method (ReferFormer:
    backbone, deformable transformer, cross-modal FPN); otherwise every direct submodule is compiled. The model's own
    Python (tokenizing, input checks, query selection) stays eager. Compilation happens on the first call with each
    new input size; the outputs equal the eager ones up to float rounding (fused kernels sum in another order).
    """
    compile_parts = getattr(model, "compile_parts", None)
    parts: list[torch.nn.Module] = compile_parts() if callable(compile_parts) else list(model.children())
    for part in parts:
        part.compile()
    logger.info(
        "compiled %d parts of %s with torch.compile (first call per input size compiles)",
        len(parts),
        type(model).__name__,
    )
    return model


def push_to_hub(
    directory: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload lvseg model",
) -> str:
    """Upload a Hub-format model folder to ``repo_id`` (created if needed) and return the new commit id.

    The folder is checked first (it must load strictly), so a broken model is never published.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalTokenNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    directory = Path(directory)
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise InvalidInputError(f"{repo_id!r} is not a Hub repo id: write it as 'org/name' (e.g. my-org/my-model)")
    from_pretrained(directory, device="cpu")  # validates config, weights and tokenizer
    stray = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pth", ".pt", ".pkl"))
    if stray:
        raise InvalidInputError(
            f"{directory} contains pickled files {stray}; remove them (lvseg publishes safetensors only)"
        )
    if constants.is_offline_mode():
        raise OfflineError(
            f"offline mode is on (HF_HUB_OFFLINE=1): cannot push {directory} to {repo_id}. Unset "
            "HF_HUB_OFFLINE and try again with network access."
        )
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token, library_name="lvseg")
    login = "log in with `hf auth login` or set HF_TOKEN to a token with write access"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(directory),
            revision=revision,
            commit_message=commit_message,
            allow_patterns=ALLOW_PATTERNS,
        )
    except LocalTokenNotFoundError as exc:
        raise HubError(f"pushing to {repo_id} needs a Hugging Face token: {login}") from exc
    except HFValidationError as exc:
        raise InvalidInputError(f"{repo_id!r} is not a valid Hub repo id ({exc}); use 'org/name'") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"branch {revision!r} does not exist in {repo_id}; create it first or omit --revision") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"cannot write to {repo_id}: the repo was not found or your token may not write to it; "
            f"check the name and {login}"
        ) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"the Hub refused the push to {repo_id} (HTTP {status}): {login}") from exc
        raise HubError(f"could not push {directory} to {repo_id}: {exc}") from exc
    except _network_errors() as exc:
        raise OfflineError(
            f"could not reach the Hub at {endpoint or constants.ENDPOINT} to push {directory} to {repo_id} "
            f"({type(exc).__name__}: {exc}). Check the network (or HF_ENDPOINT / proxy settings) and try again."
        ) from exc
    return info.oid


def copy_folder(source: str | Path, destination: str | Path) -> Path:
    """Copy a model folder (e.g. out of the Hub cache, whose files are symlinks) to a plain folder."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise InvalidInputError(f"{destination} is a file, not a folder: choose another -o/--output folder")
    try:
        shutil.copytree(source, destination, symlinks=False, dirs_exist_ok=True)
    except (shutil.Error, OSError) as exc:
        raise InvalidInputError(
            f"cannot copy the model to {destination} ({exc}); check that the folder is writable and has free space"
        ) from exc
    return destination
