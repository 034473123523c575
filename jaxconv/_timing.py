"""Side-by-side timing: compiled ahead, interleaved rounds, medians and ratios."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["interleaved_calls", "interleaved_medians"]


def interleaved_medians(
  fns: Sequence[Callable[..., jax.Array]],
  args: Sequence[jax.Array],
  *,
  rounds: int = 7,
  min_round_s: float = 0.05,
) -> list[float]:
  """Median seconds per call of each function, measured in interleaved rounds.

  Each function is compiled ahead (`jax.jit(f).lower(*args).compile()`) and warmed up; every round
  times each function in turn, repeating a call until `min_round_s` has passed, so that a burst of
  noise on a shared machine hits all of them alike. Ratios of the returned medians are the figures
  to trust; a single absolute time means little.

  Example:
    >>> import jax.numpy as jnp
    >>> t = interleaved_medians([jnp.sin, jnp.cos], [jnp.ones(8)], rounds=3, min_round_s=0.001)
    >>> len(t), all(s > 0 for s in t)
    (2, True)
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
      start = time.perf_counter()
      for _ in range(n):
        out = c(*args)
      jax.block_until_ready(out)
      times[i].append((time.perf_counter() - start) / n)
  return [float(np.median(t)) for t in times]


def interleaved_calls(
  calls: Mapping[str, Callable[[], Any]], *, rounds: int = 7, min_round_s: float = 0.05
) -> dict[str, float]:
  """Median seconds per call of blocking callables (another library's, say), interleaved.

  Each round calls every one in turn, repeatedly until `min_round_s` has passed; the callables
  must block until their result is ready and be warmed up by the caller.

  Example:
    >>> t = interleaved_calls({"a": lambda: None}, rounds=2, min_round_s=0.001)
    >>> t["a"] > 0
    True
  """
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      n, start = 0, time.perf_counter()
      while time.perf_counter() - start < min_round_s:
        call()
        n += 1
      times[name].append((time.perf_counter() - start) / n)
  return {name: float(np.median(t)) for name, t in times.items()}
