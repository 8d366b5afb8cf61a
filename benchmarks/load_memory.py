"""Peak memory and time of loading a model: parameters built on the meta device (lvseg's loader) versus built
with random weights and then overwritten (lvseg before, and what the official repositories do).

    python benchmarks/load_memory.py                          # LAVT Swin-B w12 image model (228 M parameters)
    python benchmarks/load_memory.py --model lavt-swin-t --rounds 3
    python benchmarks/load_memory.py --folder path/to/converted_model   # any Hub-format folder

Each load runs in a fresh process (so ``ru_maxrss`` is that load's peak), the two ways interleaved, ``--rounds``
times; the table shows medians. Both ways read the same ``model.safetensors`` with ``safetensors.torch.load_file``
and check it with :func:`lvseg.hub.load_state_dict_strict`; they differ only in how the model is built:

* ``meta``: under :func:`lvseg.hub.parameters_on_meta` (the path of :func:`lvseg.from_pretrained` and
  :func:`lvseg.load`), parameters take the file's tensors, so the weights are in memory once;
* ``eager``: random initialisation first, then ``load_state_dict`` copies the file's tensors over it (weights
  twice at the peak, plus the time of the random initialisation).

Both then read every weight once (a checksum, as a first forward would): ``safetensors`` may map the file rather
than read it, and mapped pages count in the RSS only once read. The tokenizer (loaded the same way by both) is
left out. ``base`` is the RSS after importing torch, lvseg and the
model's package, before anything is built. The weights are random; the built-in ``--model`` configurations have the
official sizes (LAVT Swin-B w12 / Swin-T w7 with BERT-base, 480 px).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# official LAVT sizes (research notes §1; parameter counts match ../reference/state_dicts/lavt_base.json)
MODELS: dict[str, dict[str, Any]] = {
    "lavt-swin-b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window=12),
    "lavt-swin-t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window=7),
}

CHILD = r"""
import json, os, resource, sys, time
folder, mode = sys.argv[1], sys.argv[2]

def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024

import torch
torch.set_num_threads(1)
from lvseg import hub
from lvseg.models import get_model_class
from pathlib import Path
config = hub._read_config(Path(folder))
cls = get_model_class(config.architecture)
base = rss_mb()
start = time.perf_counter()
state = hub._load_weights(Path(folder) / hub.WEIGHTS_NAME)
if mode == "meta":
    with hub.parameters_on_meta():
        model = cls(config)
else:
    model = cls(config)
hub.load_state_dict_strict(model, state, folder)
del state
model.eval()
with torch.no_grad():  # read every weight once, as a first forward would (file pages count once read)
    checksum = sum(float(t.float().sum()) for t in model.state_dict().values() if t.is_floating_point())
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"mode": mode, "seconds": seconds, "peak_mb": peak, "after_mb": rss_mb(), "base_mb": base,
                  "params": params, "checksum": checksum}))
"""


def make_folder(name: str, out: Path) -> None:
    """Write a Hub-format folder (config.json + model.safetensors, random weights) for a built-in model."""
    import torch
    from safetensors.torch import save_model

    from lvseg.models.base import PreprocessConfig
    from lvseg.models.lavt.config import IMAGE_TOKEN_BUDGET, LAVTConfig
    from lvseg.models.lavt.model import LAVT
    from lvseg.models.layers.text import BERT_BASE_CONFIG

    torch.manual_seed(0)
    sizes = MODELS[name]
    config = LAVTConfig(
        preprocessing=PreprocessConfig(short_side=480, max_size=480, max_text_tokens=IMAGE_TOKEN_BUDGET),
        fusion_heads=(1, 1, 1, 1),
        drop_path_rate=0.3,
        image_size=480,
        text_encoder=dict(BERT_BASE_CONFIG),
        **sizes,
    )
    model = LAVT(config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    save_model(model, str(out / "model.safetensors"))


def run_child(folder: Path, mode: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} load failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="lavt-swin-b")
    parser.add_argument("--folder", help="a Hub-format model folder to load instead of a built-in model")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lvseg-load-memory-") as tmp:
        if args.folder:
            folder, label = Path(args.folder), args.folder
        else:
            folder, label = Path(tmp) / args.model, args.model
            subprocess.run([sys.executable, __file__, "--make-folder", args.model, str(folder)], check=True)
        rows: dict[str, list[dict[str, Any]]] = {"meta": [], "eager": []}
        for _ in range(args.rounds):
            for mode in ("eager", "meta"):
                rows[mode].append(run_child(folder, mode))
    med = {
        mode: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_mb", "after_mb", "base_mb")}
        for mode, runs in rows.items()
    }
    params = rows["meta"][0]["params"]
    sums = {r["checksum"] for runs in rows.values() for r in runs}
    if len(sums) != 1:
        raise SystemExit(f"the two ways loaded different weights (checksums {sorted(sums)})")
    print(f"{label}: {params / 1e6:.1f} M parameters ({params * 4 / 2**20:.0f} MiB fp32), medians of {args.rounds}")
    print("| build | load s | peak RSS MiB | RSS after MiB | base MiB | peak - base MiB |")
    print("|---|---|---|---|---|---|")
    for mode in ("eager", "meta"):
        m = med[mode]
        print(
            f"| {mode} | {m['seconds']:.2f} | {m['peak_mb']:.0f} | {m['after_mb']:.0f} | {m['base_mb']:.0f} | "
            f"{m['peak_mb'] - m['base_mb']:.0f} |"
        )
    e, m = med["eager"], med["meta"]
    print(
        f"meta / eager: peak RSS {m['peak_mb'] / e['peak_mb']:.2f}x, peak above base "
        f"{(m['peak_mb'] - m['base_mb']) / (e['peak_mb'] - e['base_mb']):.2f}x, load time "
        f"{m['seconds'] / e['seconds']:.2f}x"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--make-folder":
        make_folder(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
