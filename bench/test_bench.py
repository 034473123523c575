"""One benchmark per (layer, algorithm); `lax` first in each layer's group, at precision HIGHEST.

Each function is compiled ahead (`jax.jit(f).lower(...).compile()`) and warmed up; the timed call
ends in `block_until_ready`. `benchmark.extra_info` carries direct-convolution GFLOP/s, the speedup
over lax (lax timed in this process, once per layer), the normwise relative error against a float64
reference, and the backend, device and versions.
"""

from __future__ import annotations

from typing import Any

import jax
import pytest

import jaxconv
from jaxconv._bench import conv_fn, machine_info, plan_key, reference, rel_error
from jaxconv._shapes import Shape
from jaxconv._timing import interleaved_medians


class LayerData:
  """Inputs, float64 reference and lax's median time of the current layer (one layer kept)."""

  def __init__(self) -> None:
    self.name: str | None = None
    self.lax_s: dict[str, float] = {}

  def load(self, shape: Shape) -> tuple[Any, Any, Any]:
    if self.name != shape.name:  # tests run layer by layer: keep one layer's arrays at a time
      x, k = shape.arrays()
      self.ref = reference(shape, x, k)
      self.x, self.k = jax.device_put(x), jax.device_put(k)
      self.name = shape.name
    return self.x, self.k, self.ref

  def lax_seconds(self, shape: Shape) -> float:
    """lax's median for `shape`: from its own benchmark if it ran, else measured now."""
    if shape.name not in self.lax_s:
      x, k, _ = self.load(shape)
      self.lax_s[shape.name] = interleaved_medians([conv_fn(shape, "lax")], [x, k], rounds=5)[0]
    return self.lax_s[shape.name]


@pytest.fixture(scope="session")
def layer_data() -> LayerData:
  return LayerData()


@pytest.fixture(scope="session")
def machine() -> dict:
  return machine_info()


def test_conv(benchmark, case: tuple[Shape, str], layer_data: LayerData, machine: dict) -> None:
  shape, algorithm = case
  x, k, ref = layer_data.load(shape)
  compiled = jax.jit(conv_fn(shape, algorithm)).lower(x, k).compile()
  y = jax.block_until_ready(compiled(x, k))  # warm-up, and the result whose error is reported
  error = rel_error(y, ref)
  del y

  benchmark.group = f"{shape.name}: {shape.describe()}"
  benchmark(lambda: jax.block_until_ready(compiled(x, k)))

  median = benchmark.stats.stats.median
  if algorithm == "lax":
    layer_data.lax_s[shape.name] = median
  ran, tile = plan_key(shape, algorithm)
  flops = shape_flops(shape)
  benchmark.extra_info.update(
    {
      "shape": shape.name,
      "algorithm": algorithm,
      "ran": ran,
      "tile": list(tile) if tile else None,
      "dtype": shape.dtype,
      "flops": flops,
      "gflops": flops / median / 1e9,
      "speedup_vs_lax": layer_data.lax_seconds(shape) / median,
      "rel_error": error,
      "backend": machine["backend"],
      "device_kind": machine["device_kind"],
      "jax": machine["jax"],
      "jaxlib": machine["jaxlib"],
    }
  )


def shape_flops(shape: Shape) -> int:
  """Direct-convolution FLOPs of `shape`, as `jaxconv.plan` counts them."""
  structs = [jax.ShapeDtypeStruct(s, shape.dtype) for s in (shape.lhs, shape.rhs)]
  return jaxconv.plan(*structs, **shape.kwargs()).flops
