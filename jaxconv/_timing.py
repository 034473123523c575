"""Side-by-side timing: compiled ahead, interleaved rounds, medians and per-round ratios.

A call made right after another program's runs cold, on the caches, thread pools and clock speeds
that program left, so each function's first call of a round is made and waited for but not
counted (``warm=True``), as the tuner's timer does (`jaxconv._tune._default_timer`). Counted, in
rounds of about 50 ms, it made a Winograd kernel gradient (ResNet-50's 28x28x128 and 7x7x512
layers, batch 8, Intel Xeon, both flag settings) 1.02-1.14x slower in the slot after lax's than
the very same program in the slots after itself; left out, 1.00-1.03x (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
  "interleaved_call_rounds",
  "interleaved_medians",
  "interleaved_rounds",
  "ratio_text",
  "round_ratios",
]


def interleaved_rounds(
  fns: Sequence[Callable[..., jax.Array]],
  args: Sequence[jax.Array],
  *,
  rounds: int = 7,
  min_round_s: float = 0.05,
  warm: bool = True,
) -> list[list[float]]:
  """Seconds per call of each function in each of `rounds` interleaved rounds.

  Each function is compiled ahead (`jax.jit(f).lower(*args).compile()`) and warmed up; every round
  times each function in turn, repeating a call until `min_round_s` has passed, so that a burst of
  noise on a shared machine hits all of them alike. Ratios are the figures to trust (see
  `round_ratios`); a single absolute time means little.

  With `warm`, each function's first call of a round is made and waited for but not counted: it
  runs on the caches and threads the function before it left (see the module docstring).

  Example:
    >>> import jax.numpy as jnp
    >>> t = interleaved_rounds([jnp.sin, jnp.cos], [jnp.ones(8)], rounds=3, min_round_s=0.001)
    >>> len(t), len(t[0]), all(s > 0 for s in t[0])
    (2, 3, True)
  """
  compiled = [jax.jit(f).lower(*args).compile() for f in fns]
  reps = []
  for c in compiled:  # warm up, and size each round
    jax.block_until_ready(c(*args))
    start = time.perf_counter()
    jax.block_until_ready(c(*args))
    reps.append(max(1, int(min_round_s / max(time.perf_counter() - start, 1e-6))))
  times: list[list[float]] = [[] for _ in compiled]
  for _ in range(rounds):
    for i, (c, n) in enumerate(zip(compiled, reps)):
      if warm:
        jax.block_until_ready(c(*args))
      start = time.perf_counter()
      for _ in range(n):
        out = c(*args)
      jax.block_until_ready(out)
      times[i].append((time.perf_counter() - start) / n)
  return times


def interleaved_medians(
  fns: Sequence[Callable[..., jax.Array]],
  args: Sequence[jax.Array],
  *,
  rounds: int = 7,
  min_round_s: float = 0.05,
) -> list[float]:
  """Median seconds per call of each function over `interleaved_rounds`.

  Example:
    >>> import jax.numpy as jnp
    >>> t = interleaved_medians([jnp.sin, jnp.cos], [jnp.ones(8)], rounds=3, min_round_s=0.001)
    >>> len(t), all(s > 0 for s in t)
    (2, True)
  """
  times = interleaved_rounds(fns, args, rounds=rounds, min_round_s=min_round_s)
  return [float(np.median(t)) for t in times]


def round_ratios(base: Sequence[float], other: Sequence[float]) -> tuple[float, float, float]:
  """The first quartile, median and third quartile of the per-round speedups ``base / other``.

  Two functions timed in the same round ran a fraction of a second apart, so a slow spell of a
  shared machine that lasts a few rounds moves both of that round's times and not their ratio: the
  median of the per-round ratios is the steadier speedup, and their quartiles say how far it can
  be trusted (a range that straddles 1.0 is no evidence of a difference).

  Example:
    >>> round_ratios([2.0, 4.0, 2.0, 2.2, 3.0], [1.0, 2.0, 1.0, 1.0, 1.0])
    (2.0, 2.0, 2.2)
  """
  if len(base) != len(other) or not base:
    raise ValueError(f"need as many rounds of each, and some: {len(base)} and {len(other)}")
  ratios = np.asarray(base, float) / np.asarray(other, float)
  lo, mid, hi = np.percentile(ratios, [25, 50, 75])
  return float(lo), float(mid), float(hi)


def ratio_text(base: Sequence[float], other: Sequence[float]) -> str:
  """`round_ratios` as a table cell: the median speedup and, in brackets, its quartiles.

  Example:
    >>> ratio_text([2.0, 4.0, 2.0, 2.2, 3.0], [1.0, 2.0, 1.0, 1.0, 1.0])
    '2.00x (2.00-2.20)'
  """
  lo, mid, hi = round_ratios(base, other)
  return f"{mid:.2f}x ({lo:.2f}-{hi:.2f})"


def interleaved_call_rounds(
  calls: Mapping[str, Callable[[], Any]],
  *,
  rounds: int = 7,
  min_round_s: float = 0.05,
  warm: bool = True,
) -> dict[str, list[float]]:
  """Seconds per call of blocking callables (another library's, say) in each interleaved round.

  Each round calls every one in turn, repeatedly until `min_round_s` has passed; the callables
  must block until their result is ready and be warmed up by the caller. With `warm`, the first
  call of each in a round is not counted (as in `interleaved_rounds`).

  Example:
    >>> t = interleaved_call_rounds({"a": lambda: None}, rounds=2, min_round_s=0.001)
    >>> len(t["a"])
    2
  """
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      if warm:
        call()
      n, start = 0, time.perf_counter()
      while n == 0 or time.perf_counter() - start < min_round_s:  # at least one call
        call()
        n += 1
      times[name].append((time.perf_counter() - start) / n)
  return times
