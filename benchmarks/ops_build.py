"""First-use build time of the compiled CPU MSDA op: lvseg's layout against the one-file layout it replaced.

Usage::

    python benchmarks/ops_build.py              # 2 rounds, the two layouts interleaved
    python benchmarks/ops_build.py --rounds 3

Each build runs in a fresh process with an empty cache, from ``import lvseg.ops.build`` to an imported module,
so a round measures what a user waits for before the first mask. The layouts:

- ``split`` (lvseg's): the kernels (``ms_deform_attn_cpu.cpp``, ATen's light headers) and the pybind11 binding
  (``ms_deform_attn_cpu_bind.cpp``, ``torch/csrc/utils/pybind.h``) are two translation units, which ninja
  compiles in parallel, and neither parses ``torch/extension.h``;
- ``single`` (before): one translation unit that includes ``torch/extension.h`` and both sources, compiled with
  the same flags through the same ``torch.utils.cpp_extension.load`` call.

Printed per layout: the median wall seconds and the CPU seconds of the compiler processes (user + system of
the children, which does not depend on what else the machine is doing). The two layouts alternate round by
round so that load on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_SPLIT = textwrap.dedent(
    """
    import json, resource, sys, time
    start = time.perf_counter()
    from lvseg.ops import build
    module = build.build("cpu")
    wall = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall": wall, "cpu": children.ru_utime + children.ru_stime, "isa": module.isa()}))
    """
)

# The layout before: one translation unit with torch/extension.h in front of the same two sources.
_SINGLE = textwrap.dedent(
    """
    import json, os, resource, sys, time
    start = time.perf_counter()
    from lvseg.ops import build
    from torch.utils import cpp_extension
    out = sys.argv[1]
    source = os.path.join(out, "single.cpp")
    with open(source, "w") as f:
        f.write("#include <torch/extension.h>\\n")
        for name in ("ms_deform_attn_cpu.cpp", "ms_deform_attn_cpu_bind.cpp"):
            f.write('#include "%s"\\n' % (build.CSRC / name))
    module = cpp_extension.load(name="msda_single", sources=[source], extra_cflags=list(build._CFLAGS),
                                extra_ldflags=list(build._LDFLAGS), extra_include_paths=[str(build.CSRC)],
                                build_directory=out)
    wall = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall": wall, "cpu": children.ru_utime + children.ru_stime, "isa": module.isa()}))
    """
)


def _run(layout: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"lvseg-build-{layout}-") as tmp:
        env = dict(os.environ, LVSEG_CACHE_DIR=str(Path(tmp) / "cache"))
        script = _SPLIT if layout == "split" else _SINGLE
        done = subprocess.run([sys.executable, "-c", script, tmp], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {layout} build failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"single": [], "split": []}
    for r in range(args.rounds):
        for layout in ("single", "split") if r % 2 == 0 else ("split", "single"):
            results[layout].append(_run(layout))
            print(f"round {r + 1} {layout:6s} {results[layout][-1]['wall']:6.1f} s wall "
                  f"{results[layout][-1]['cpu']:6.1f} s compiler CPU", flush=True)
    print(f"\ncores: {os.cpu_count()}, load average before the last round: {os.getloadavg()[0]:.1f}")
    print(f"{'layout':8s} {'wall s (median)':>16s} {'compiler CPU s':>15s}")
    medians = {}
    for layout, rows in results.items():
        medians[layout] = (statistics.median(r["wall"] for r in rows), statistics.median(r["cpu"] for r in rows))
        print(f"{layout:8s} {medians[layout][0]:16.1f} {medians[layout][1]:15.1f}")
    print(f"speed-up of the split layout: {medians['single'][0] / medians['split'][0]:.2f}x wall, "
          f"{medians['single'][1] / medians['split'][1]:.2f}x compiler CPU")


if __name__ == "__main__":
    main()
