import os
import sys
from pathlib import Path

import huggingface_hub.constants  # noqa: F401  (see below)
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests import their helpers (toymodels, hubserver) by name

torch.set_num_threads(min(2, os.cpu_count() or 1))
# huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported. Import it here, before any test sets the
# variable, so that every test sees the same Hub mode whichever subset of the suite runs (before: running
# tests/test_app.py then tests/test_hub.py froze offline mode on, and the local test Hub was "unreachable").


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Settings that change what later code does without saying so: a test module that leaves one of them set makes
# every test after it run another path (e.g. LVSEG_MSDA_BACKEND=reference: the compiled-op tests then silently
# ran the pure-PyTorch op; HF_HUB_OFFLINE=1: Hub tests then never reach the test server).
_WATCHED_PREFIXES = ("LVSEG_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE")


def _watched_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_WATCHED_PREFIXES)}


@pytest.fixture(autouse=True, scope="module")
def _no_environment_leaks(request):
    """Fail a test module that leaves a watched environment variable changed (its tests or its fixtures)."""
    before = _watched_environment()
    yield
    after = _watched_environment()
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    if changed:
        for key, (old, _) in changed.items():  # restore, so that one leak does not fail every later module
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        pytest.fail(f"{request.module.__name__} left environment variables changed (before, after): {changed}; "
                    "use monkeypatch.setenv (or a MonkeyPatch context in module fixtures)")
