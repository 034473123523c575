"""Determinism, and the trace-time caches under several threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax import lax

import jaxconv
from tests.util import random_array, rel_err, rng_for

DN = ("NHWC", "HWIO", "NHWC")


def test_same_inputs_give_bitwise_identical_outputs():
  rng = rng_for("determinism")
  x, w = random_array(rng, (2, 12, 11, 8), np.float32), random_array(rng, (3, 3, 8, 8), np.float32)
  for algorithm in ("im2col", "winograd4", "auto"):
    runs = [
      np.asarray(
        jax.jit(
          lambda x, w, a=algorithm: jaxconv.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=DN, algorithm=a
          )
        )(x, w)
      )
      for _ in range(3)
    ]
    assert all(np.array_equal(runs[0], r) for r in runs[1:]), algorithm


def test_threads_tracing_at_once_share_the_caches_safely():
  def job(i: int) -> float:
    rng = rng_for(f"thread{i % 4}")
    size, algorithm = 6 + i % 4, ("im2col", "winograd2", "winograd4")[i % 3]
    x = random_array(rng, (1, size, size + 1, 3), np.float32)
    w = random_array(rng, (3, 3, 3, 2), np.float32)
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN, precision="highest")
    out = jax.jit(lambda x, w: jaxconv.conv_general_dilated(x, w, **kw, algorithm=algorithm))(x, w)
    return rel_err(out, lax.conv_general_dilated(x, w, **kw))

  with ThreadPoolExecutor(max_workers=8) as pool:
    errors = list(pool.map(job, range(24)))
  assert max(errors) < 1e-5
  info = jaxconv.cache_info()
  for name, stats in info.items():
    if name == "autotune":  # measurements on disk, not a trace-time LRU
      continue
    assert stats.maxsize is not None and stats.currsize <= stats.maxsize, name
  assert info["geometry"].hits > 0 and info["im2col_indices"].currsize > 0
