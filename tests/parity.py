"""Comparing lvseg's outputs with the official code's golden outputs so that the comparison holds on any CPU.

The golden fixtures were written once, by the official code on one machine. Another CPU (another SIMD width,
another oneDNN kernel, another thread count) rounds differently, so an absolute tolerance on outputs whose
magnitude runs to hundreds (mask logits) encodes one machine's rounding. Every output is compared relative to
its own magnitude instead:

    max |ours - golden| <= RELATIVE_TOLERANCE * max |golden|        (per output tensor)

Measured on an AMD EPYC (AVX2, no AVX-512), torch 2.14.1, for the ReferFormer (R50, Swin, Video Swin) and MTTR
fixtures on the reference MSDA path, across ``ATEN_CPU_CAPABILITY=default|avx2``, ``ONEDNN_MAX_CPU_ISA=SSE41``
and 1 or 2 threads: the largest deviation of any output was 8.3e-6 (see docs/testing.md). RELATIVE_TOLERANCE
leaves a factor of 12 over that, while a single swapped pair of converted weights gives deviations of 1e-2 and
more (``tests/test_*parity*`` check that a swap fails this same comparison).

Binary masks are checked with the same bound: a pixel may differ from the golden mask only where the logit is
within the bound of the threshold (there the sign is rounding, not the model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

RELATIVE_TOLERANCE = 1e-4
"""Largest allowed max|ours - golden| / max|golden| of one output tensor, on the reference MSDA op."""

COMPILED_RELATIVE_TOLERANCE = 1e-5
"""Largest allowed max|compiled - reference| / max|reference| of one output, the same model on the same machine."""


def relative_deviation(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| over all elements (tensors of the same shape, any dims)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def parity_failures(outputs: Mapping[str, torch.Tensor], golden: Mapping[str, torch.Tensor],
                    tolerance: float = RELATIVE_TOLERANCE) -> dict[str, float]:
    """The outputs whose relative deviation from ``golden[key]`` exceeds ``tolerance``: {key: deviation}."""
    deviations = {key: relative_deviation(value, golden[key]) for key, value in outputs.items()}
    return {key: d for key, d in deviations.items() if not d <= tolerance}


def assert_parity(outputs: Mapping[str, torch.Tensor], golden: Mapping[str, torch.Tensor],
                  tolerance: float = RELATIVE_TOLERANCE) -> None:
    """Fail with every output (and its relative deviation) that is further than ``tolerance`` from golden."""
    failures = parity_failures(outputs, golden, tolerance)
    assert not failures, "relative deviation above {:.0e}: {}".format(
        tolerance, ", ".join(f"{k} {d:.2e}" for k, d in failures.items()))


def threshold_margin_failures(to_mask: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor,
                              golden_mask: torch.Tensor, margin: float) -> int:
    """Pixels of ``golden_mask`` that rounding of ``logits`` by at most ``margin`` cannot explain.

    ``to_mask`` turns logits into the binary mask (the protocol's post-processing, monotone in the logits);
    ``logits`` are ours. A pixel set in ``to_mask(logits - margin)`` is set whatever the rounding, one unset in
    ``to_mask(logits + margin)`` is unset whatever the rounding: the golden mask must lie between the two.
    """
    surely_on = to_mask(logits - margin).bool()
    maybe_on = to_mask(logits + margin).bool()
    golden_mask = golden_mask.bool()
    if surely_on.shape != golden_mask.shape:
        raise AssertionError(f"mask shape {tuple(surely_on.shape)} != golden {tuple(golden_mask.shape)}")
    return int((surely_on & ~golden_mask).sum()) + int((golden_mask & ~maybe_on).sum())


def swap_weights(state: dict[str, torch.Tensor], a: str, b: str) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with the same-shaped tensors ``a`` and ``b`` exchanged (a wrong key mapping)."""
    if state[a].shape != state[b].shape:
        raise AssertionError(f"{a} {tuple(state[a].shape)} and {b} {tuple(state[b].shape)} differ in shape")
    if torch.equal(state[a], state[b]):
        raise AssertionError(f"{a} and {b} hold equal values: swapping them changes nothing")
    swapped = dict(state)
    swapped[a], swapped[b] = state[b], state[a]
    return swapped
