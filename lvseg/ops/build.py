"""Just-in-time build of the compiled MSDA backends, with a persistent cache and a safe fallback.

The extensions are compiled on first use with ``torch.utils.cpp_extension.load`` (ninja) from the sources in
``lvseg/ops/csrc`` and cached on disk under a folder whose name is a hash of everything that makes a binary
different: the sources, the torch version, the CUDA version, the compiler (path and ``--version``), the
Python ABI, the flags and, for CUDA, the target architectures. Later processes import the cached binary
directly (no ninja run, no recompile), after checking its size and sha256 against the marker written when it
was built; a damaged entry is rebuilt with one logged warning. Each build goes into a new folder, builds of one
entry are serialised by a file lock, and the marker that installs a build is replaced atomically.

Cache location, first match wins:

1. ``$LVSEG_CACHE_DIR/ops``
2. ``$TORCH_EXTENSIONS_DIR/lvseg`` (you asked torch to keep extensions there)
3. ``$XDG_CACHE_HOME/lvseg/ops``, by default ``~/.cache/lvseg/ops``

Build output is quiet unless ``LVSEG_VERBOSE_BUILD=1``. Any failure (no compiler, no ninja, no nvcc, a
compile error) is reported once per process as an :class:`MSDABuildWarning` saying why and how to fix it, and
the caller falls back to the ``reference`` backend.

Run ``python -m lvseg.ops.build`` to compile ahead of time (e.g. in a Docker image) and see what was built.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from lvseg.errors import LVSegError
from lvseg.utils import atomic_write_text

try:
    import fcntl
except ImportError:  # Windows: builds still go to their own folders and the marker is replaced atomically
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MSDABuildWarning",
    "BuildError",
    "BuildInfo",
    "Installed",
    "CacheDamaged",
    "verify_installed",
    "cache_root",
    "build_info",
    "compile_cuda_object",
    "load_extension",
    "build",
    "main",
]

logger = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
VERBOSE_ENV = "LVSEG_VERBOSE_BUILD"
KINDS = ("cpu", "cuda")
# Layout of a cache entry: a marker naming build-*/<name>.so with its size and sha256, a lock file, one folder per
# build. Part of the cache key, so releases that wrote the library into the entry folder itself never share an
# entry with this one.
CACHE_LAYOUT = 2

# Sources of each extension (relative to csrc/). Every file in csrc/ is hashed into the key of both, so an
# edit of a shared header rebuilds both.
_SOURCES = {
    "cpu": ["ms_deform_attn_cpu_bind.cpp", "ms_deform_attn_cpu.cpp"],
    "cuda": ["ms_deform_attn_cuda_bind.cpp", "ms_deform_attn_cuda.cu"],
}
_CFLAGS = ["-O3", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
_CUDA_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]


class MSDABuildWarning(RuntimeWarning):
    """A compiled MSDA backend could not be built or loaded; the pure-PyTorch backend is used instead."""


class BuildError(LVSegError, RuntimeError):
    """Why a compiled backend cannot be built, with the fix in the message."""


@dataclass
class BuildInfo:
    """What identifies one build of one extension (all of it goes into the cache key)."""

    kind: str
    name: str
    directory: Path
    sources: list[Path]
    compiler: str
    compiler_version: str
    key_parts: dict[str, str] = field(default_factory=dict)

    @property
    def marker(self) -> Path:
        """Written (atomically) after a successful build and import: names the installed shared library and
        its size and sha256, which are checked before every import."""
        return self.directory / "lvseg-build.json"

    @property
    def lock_file(self) -> Path:
        """Locked (``flock``) by the process that builds or repairs this entry; the others wait for it."""
        return self.directory / "lvseg-build.lock"

    @property
    def library(self) -> Path | None:
        """The installed shared library named by the marker, or ``None`` if nothing is installed (not checked:
        see :func:`verify_installed`)."""
        try:
            record = json.loads(self.marker.read_text())
            return self.directory / record["library"]
        except (OSError, ValueError, TypeError, KeyError):
            return None


@dataclass
class Installed:
    """An installed build whose shared library matched the size and sha256 recorded in the marker."""

    library: Path
    module_name: str


class CacheDamaged(Exception):
    """A cache entry whose marker or shared library does not match (internal: the entry is rebuilt)."""


_lock = threading.RLock()
_loaded: dict[str, ModuleType | None] = {}
_warned: set[str] = set()


def _cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, imported without its import-time notices (e.g. "No CUDA runtime is
    found") unless LVSEG_VERBOSE_BUILD=1."""
    with _quiet_build():
        from torch.utils import cpp_extension
    return cpp_extension


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cache_root() -> Path:
    """Folder that holds the builds (see the module docstring for the order of precedence)."""
    if os.environ.get("LVSEG_CACHE_DIR"):
        return Path(os.environ["LVSEG_CACHE_DIR"]).expanduser() / "ops"
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]).expanduser() / "lvseg"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "lvseg" / "ops"


def _compiler() -> tuple[str, str]:
    """(resolved compiler path, first line of its ``--version``) of the C++ compiler torch will use."""
    raw = os.environ.get("CXX") or "c++"
    parts = shlex.split(raw) or ["c++"]
    resolved = shutil.which(parts[0])
    source = "$CXX" if os.environ.get("CXX") else "the default compiler 'c++'"
    if resolved is None:
        raise BuildError(
            f"the C++ compiler {parts[0]!r} ({source}) was not found. Install one (e.g. `apt-get install g++`) or "
            "point $CXX at a working compiler."
        )
    try:
        proc = subprocess.run(
            [resolved, *parts[1:], "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(
            f"the C++ compiler {resolved!r} ({source}) does not run ({exc}). Point $CXX at a working compiler."
        ) from exc
    if proc.returncode != 0:
        raise BuildError(
            f"the C++ compiler {resolved!r} ({source}) failed `--version` (exit {proc.returncode}). Point $CXX at "
            "a working compiler such as g++."
        )
    first_line = (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else ""
    return " ".join([resolved, *parts[1:]]), first_line


def _nvcc_version(cuda_home: str) -> str:
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    try:
        proc = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(
            f"nvcc ({nvcc}) does not run ({exc}). Install the CUDA toolkit matching torch's CUDA "
            f"{torch.version.cuda} and set $CUDA_HOME."
        ) from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _cuda_arch_tag() -> str:
    """The architectures the CUDA build targets (torch uses TORCH_CUDA_ARCH_LIST, else the visible GPUs)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return f"list:{env}"
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return "gpus:" + ",".join(f"{a}.{b}" for a, b in caps)
    return "none"


def _sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _cxx_standard_flag() -> str:
    """The C++ standard torch's headers need (torch >= 2.10 needs C++20, older releases C++17)."""
    aten = Path(torch.__file__).resolve().parent / "include" / "ATen" / "ATen.h"
    try:
        needs_20 = "C++20" in aten.read_text(errors="ignore")
    except OSError:
        needs_20 = False
    return "-std=c++20" if needs_20 else "-std=c++17"


def compile_cuda_object(output_dir: Path, arch: str = "80") -> Path:
    """Compile the CUDA kernel source to an object file with nvcc, without linking or needing a GPU.

    Uses the include paths and flags of the JIT build; this is how the CUDA source is checked on machines
    with a CUDA toolkit but no GPU (CI). ``arch`` is a compute capability without the dot (e.g. ``"80"``).

    Raises:
        BuildError: nvcc is missing or the compilation failed (the compiler output is in the message).
    """
    cpp_extension = _cpp_extension()
    cuda_home = cpp_extension.CUDA_HOME
    nvcc = Path(cuda_home) / "bin" / "nvcc" if cuda_home else None
    if nvcc is None or not nvcc.exists():
        raise BuildError(f"nvcc was not found (CUDA_HOME={cuda_home!r}); install the CUDA toolkit or set $CUDA_HOME.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = CSRC / _SOURCES["cuda"][1]
    obj = output_dir / (source.stem + ".o")
    includes = [f"-I{p}" for p in cpp_extension.include_paths(device_type="cuda")] + [f"-I{CSRC}"]
    cmd = [
        str(nvcc),
        "-c",
        str(source),
        "-o",
        str(obj),
        *includes,
        _cxx_standard_flag(),
        *cpp_extension.COMMON_NVCC_FLAGS,
        *_CUDA_FLAGS,
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xcompiler",
        "-fPIC",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-DTORCH_EXTENSION_NAME=lvseg_msda_cuda_check",
        # the deprecated ATen APIs of the official kernel (.type(), .data<T>()) must not creep back in
        "-Werror",
        "deprecated-declarations",
        "-Xcompiler",
        "-Werror=deprecated-declarations",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(
            f"nvcc failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}\ncommand: {shlex.join(cmd)}"
        )
    return obj


def build_info(kind: str) -> BuildInfo:
    """Everything that identifies the ``kind`` ("cpu" or "cuda") build, and where it lives.

    Raises:
        BuildError: the toolchain for this kind is missing (no compiler, no nvcc, no CUDA-enabled torch).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    sources = [CSRC / s for s in _SOURCES[kind]]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise BuildError(
            f"the kernel sources {missing} are missing from the installed package; reinstall lvseg "
            "(`pip install --force-reinstall lvseg`)."
        )
    compiler, compiler_version = _compiler()
    parts = {
        "kind": kind,
        "sources": _sources_digest(),
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "compiler": compiler,
        "compiler_version": compiler_version,
        "python": sys.implementation.cache_tag or sys.version,
        "abi": str(sysconfig.get_config_var("SOABI")),
        "machine": platform.machine(),
        "cxx11_abi": str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
        "cflags": " ".join(_CFLAGS + _LDFLAGS),
        "cache_layout": str(CACHE_LAYOUT),
    }
    if kind == "cuda":
        cpp_extension = _cpp_extension()
        if torch.version.cuda is None:
            raise BuildError(
                f"this torch ({torch.__version__}) is built without CUDA; install a CUDA build of torch to use "
                "the cuda backend."
            )
        cuda_home = cpp_extension.CUDA_HOME
        if not cuda_home or not (Path(cuda_home) / "bin" / "nvcc").exists():
            raise BuildError(
                f"nvcc was not found (CUDA_HOME={cuda_home!r}). Install the CUDA toolkit matching torch's CUDA "
                f"{torch.version.cuda} and set $CUDA_HOME to it."
            )
        parts["nvcc"] = _nvcc_version(cuda_home)
        parts["cuda_home"] = str(cuda_home)
        parts["arch"] = _cuda_arch_tag()
        parts["cuda_flags"] = " ".join(_CUDA_FLAGS)
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    name = f"lvseg_msda_{kind}_{digest}"
    return BuildInfo(kind, name, cache_root() / name, sources, compiler, compiler_version, parts)


@contextlib.contextmanager
def _quiet_build():
    """Silence torch's build chatter (ABI notices, CUDA_HOME notices, ninja output) unless verbose."""
    if _verbose():
        yield
        return
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    old_level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        torch_logger.setLevel(old_level)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_installed(info: BuildInfo) -> Installed | None:
    """Check the installed build of ``info`` without loading it; ``None`` if nothing is installed yet.

    The marker must be readable, written for this build key, and name a shared library inside the entry's
    folder whose size and sha256 are the ones recorded after the build. A truncated or overwritten library is
    therefore never handed to ``dlopen``, which can kill the process with SIGBUS instead of raising.

    Raises:
        CacheDamaged: what does not match (the caller rebuilds the entry).
    """
    try:
        text = info.marker.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheDamaged(f"its marker {info.marker} cannot be read ({exc})") from exc
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise CacheDamaged(f"its marker {info.marker} is not valid JSON ({exc})") from exc
    fields = {"layout": int, "key": dict, "module": str, "library": str, "size": int, "sha256": str}
    wrong = [
        name for name, kind in fields.items() if not isinstance(record, dict) or not isinstance(record.get(name), kind)
    ]
    if wrong:
        raise CacheDamaged(f"its marker {info.marker} lacks valid {', '.join(wrong)} fields")
    if record["layout"] != CACHE_LAYOUT or record["key"] != info.key_parts:
        raise CacheDamaged(f"its marker {info.marker} was written for another build (layout or key differs)")
    relative = Path(record["library"])
    if relative.is_absolute() or ".." in relative.parts or len(relative.parts) != 2:
        raise CacheDamaged(f"its marker {info.marker} names a library outside the entry ({record['library']!r})")
    library = info.directory / relative
    if library.name.split(".")[0] != record["module"]:
        raise CacheDamaged(f"its marker {info.marker} names module {record['module']!r} for {library.name}")
    try:
        size = library.stat().st_size
        if size != record["size"]:
            raise CacheDamaged(
                f"{library} has {size} bytes where the build wrote {record['size']} (truncated or overwritten)"
            )
        digest = _sha256(library)
    except OSError as exc:
        raise CacheDamaged(f"the library it names, {library}, cannot be read ({exc.strerror or exc})") from exc
    if digest != record["sha256"]:
        raise CacheDamaged(f"the sha256 of {library} is not the one recorded after the build (the file was modified)")
    return Installed(library, record["module"])


def _import_library(installed: Installed) -> ModuleType:
    spec = importlib.util.spec_from_file_location(installed.module_name, installed.library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {installed.library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_installed(info: BuildInfo) -> ModuleType | None:
    """Import the installed build after :func:`verify_installed`; ``None`` if nothing is installed.

    Raises:
        CacheDamaged: the entry does not verify, or its verified library does not import.
    """
    installed = verify_installed(info)
    if installed is None:
        return None
    try:
        return _import_library(installed)
    except (ImportError, OSError) as exc:  # e.g. deleted by a forced rebuild in another process since the check
        raise CacheDamaged(f"{installed.library} does not import ({exc})") from exc


def _writable_cache_error(info: BuildInfo, exc: OSError) -> BuildError:
    return BuildError(
        f"cannot write the build cache {info.directory} ({exc.strerror or exc}). Make it writable or set "
        "$LVSEG_CACHE_DIR to a writable folder."
    )


@contextlib.contextmanager
def _entry_lock(info: BuildInfo) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the entry's lock file: one process builds or repairs an entry at a time,
    the others wait and then use its result. The kernel releases the lock when its holder dies, so a killed
    build never blocks later ones. Yields whether the lock is held (False where ``flock`` is unavailable)."""
    try:
        info.directory.mkdir(parents=True, exist_ok=True)
        handle = open(info.lock_file, "a+b")
    except OSError as exc:
        raise _writable_cache_error(info, exc) from exc
    with handle:
        held = False
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                logger.info(
                    "waiting for another process that is building the MSDA %s extension (lock %s)",
                    info.kind,
                    info.lock_file,
                )
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                held = True
            except OSError as exc:  # e.g. ENOLCK on some network filesystems
                # Builds still go to their own folders and the marker is replaced atomically, so the worst case
                # without the lock is two processes building the same thing.
                logger.debug("cannot lock %s (%s); building without the lock", info.lock_file, exc)
        yield held  # closing the handle releases the lock


def _compile(info: BuildInfo) -> tuple[ModuleType, float]:
    """Compile the extension into a new folder of its own inside the entry, and import it from there.

    Returns:
        (the imported module, seconds the build took).
    """
    with _quiet_build():
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            raise BuildError("ninja was not found. Install it with `pip install ninja` (or your package manager).")
        # A fresh folder per build: an installed library is never rewritten in place (a process may have it
        # mapped), and nothing is installed until the marker names this folder. os.mkdir honours the umask.
        while True:
            token = secrets.token_hex(3)
            build_dir = info.directory / f"build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{token}"
            try:
                build_dir.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise _writable_cache_error(info, exc) from exc
        start = time.perf_counter()
        # One line the user sees even where logging is not configured (the Python API's default level is
        # WARNING): the first mask waits for this build.
        logger.log(
            logging.INFO if logger.isEnabledFor(logging.INFO) else logging.WARNING,
            "compiling the MSDA %s op into %s (once per torch version; %s)",
            info.kind,
            info.directory,
            "about 10-40 s on 2 cores" if info.kind == "cpu" else "a few minutes",
        )
        env_cxx = os.environ.get("CXX")
        try:
            module = cpp_extension.load(
                # Python keeps one extension module per name in a process, so each build gets its own name:
                # a forced rebuild can then be imported beside the build this process already loaded.
                name=f"{info.name}_{token}",
                sources=[str(s) for s in info.sources],
                extra_cflags=list(_CFLAGS),
                extra_ldflags=list(_LDFLAGS),
                extra_cuda_cflags=list(_CUDA_FLAGS) if info.kind == "cuda" else None,
                extra_include_paths=[str(CSRC)],
                build_directory=str(build_dir),
                with_cuda=(info.kind == "cuda"),
                verbose=_verbose(),
            )
        except Exception as exc:  # compiler errors, linker errors, ninja failures
            shutil.rmtree(build_dir, ignore_errors=True)
            detail = str(exc).strip()
            if len(detail) > 3000:
                detail = "...\n" + detail[-3000:]
            raise BuildError(
                f"compiling the {info.kind} extension with {info.compiler!r} failed:\n{detail}\n"
                f"Check the compiler (CXX={env_cxx!r}) and, for cuda, that nvcc matches torch's CUDA "
                f"{torch.version.cuda}; run `LVSEG_VERBOSE_BUILD=1 python -m lvseg.ops.build` for the full log."
            ) from exc
    return module, time.perf_counter() - start


def _install(info: BuildInfo, module: ModuleType, seconds: float, remove_others: bool) -> Path:
    """Record the freshly built library in the marker (atomically), then (holding the lock) delete the other
    build folders."""
    # <entry>/build-...-<token>/<name>_<token>.so, whose module is named <name>_<token>
    library = Path(str(module.__file__))
    build_dir = library.parent
    record = {
        "layout": CACHE_LAYOUT,
        "key": info.key_parts,
        "name": info.name,
        "module": module.__name__,
        "library": library.relative_to(info.directory).as_posix(),
        "size": library.stat().st_size,
        "sha256": _sha256(library),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 1),
    }
    try:
        atomic_write_text(info.marker, json.dumps(record, indent=2))
    except OSError as exc:
        raise _writable_cache_error(info, exc) from exc
    if not remove_others:  # without the lock, another process may be building into one of them right now
        return library
    # Under the lock, every other build folder is superseded or abandoned (a killed build). Processes that still
    # run a superseded library keep their mapping: unlinking a mapped file does not affect them.
    for entry in info.directory.iterdir():
        if entry.is_dir() and entry.name.startswith("build-") and entry != build_dir:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(f".{info.marker.name}.") and entry.name.endswith(".tmp"):  # a killed write
            with contextlib.suppress(OSError):
                entry.unlink()
    return library


def build(kind: str, force: bool = False) -> ModuleType:
    """Compile (or reuse from the cache) and import the ``kind`` extension.

    A cached build is imported only after its size and sha256 match the marker (:func:`verify_installed`); a
    damaged entry is reported with one logged warning and rebuilt. Builds of one entry are serialised by a
    file lock, each goes into a new folder, and the marker that installs it is replaced atomically, so
    concurrent processes neither corrupt the cache nor load a half-written library.

    Args:
        kind: ``"cpu"`` or ``"cuda"``.
        force: compile anew even if a valid build is cached, and import the new library (also when this
            process already imported the old one).

    Raises:
        BuildError: with the reason and the fix.
    """
    info = build_info(kind)
    module: ModuleType | None = None
    if not force:
        with contextlib.suppress(CacheDamaged):  # checked again under the lock: another process may be repairing it
            module = _load_installed(info)
    if module is None:
        with _entry_lock(info) as locked:
            if not force:
                # another process may have built or repaired the entry while this one waited for the lock
                try:
                    module = _load_installed(info)
                except CacheDamaged as exc:
                    logger.warning(
                        "the cached MSDA %s build in %s is damaged: %s. Rebuilding it.", kind, info.directory, exc
                    )
            else:
                logger.info("rebuilding the MSDA %s extension (forced)", kind)
            if module is None:
                module, seconds = _compile(info)
                library = _install(info, module, seconds, remove_others=locked)
                logger.info("built the MSDA %s extension in %.1f s: %s", kind, seconds, library)
    with _lock:
        _loaded[kind] = module
    return module


def load_extension(kind: str) -> ModuleType | None:
    """The ``kind`` extension, built on first use; ``None`` (after one warning) if it cannot be built."""
    with _lock:
        if kind in _loaded:
            return _loaded[kind]
        try:
            module: ModuleType | None = build(kind)
        except Exception as exc:  # never crash a user because of a toolchain problem
            module = None
            if kind not in _warned:
                _warned.add(kind)
                warnings.warn(
                    f"lvseg: the compiled MSDA {kind} backend is unavailable, using the slower pure-PyTorch "
                    f"'reference' backend instead. Reason: {exc} (Set LVSEG_MSDA_BACKEND=reference to skip "
                    "the build attempt.)",
                    MSDABuildWarning,
                    stacklevel=3,
                )
        _loaded[kind] = module
        return module


def main(argv: list[str] | None = None) -> int:
    """``python -m lvseg.ops.build``: build the extensions ahead of time and report."""
    parser = argparse.ArgumentParser(
        prog="python -m lvseg.ops.build", description="Compile lvseg's MSDA extensions into the cache."
    )
    parser.add_argument(
        "--kind",
        choices=("auto", "cpu", "cuda", "all"),
        default="auto",
        help="auto: cpu, plus cuda when a CUDA torch and nvcc are available (default)",
    )
    parser.add_argument(
        "--force", action="store_true", help="compile anew into a new folder even if a valid build is cached"
    )
    args = parser.parse_args(argv)
    if args.kind == "auto":
        cpp_extension = _cpp_extension()
        kinds = ["cpu"]
        if torch.version.cuda is not None and cpp_extension.CUDA_HOME and torch.cuda.is_available():
            kinds.append("cuda")
    elif args.kind == "all":
        kinds = list(KINDS)
    else:
        kinds = [args.kind]
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cache {cache_root()}")
    failed = 0
    for kind in kinds:
        start = time.perf_counter()
        try:
            module = build(kind, force=args.force)
            info = build_info(kind)
        except BuildError as exc:
            failed += 1
            print(f"[FAIL] {kind}: {exc}")
            continue
        seconds = time.perf_counter() - start
        print(f"[ OK ] {kind}: {module.__file__} ({seconds:.1f} s; compiler {info.compiler_version})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
