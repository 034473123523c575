"""Which algorithm runs, and why.

`choose` is the single place where an algorithm is picked: `plan` reports its answer and the entry
point runs it, so what `plan` says is what runs. A forced algorithm that cannot handle a geometry
raises NotImplementedError naming the reason and the algorithms that can.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxconv._geometry import ConvGeometry

__all__ = ["ALGORITHMS", "Plan", "choose"]

ALGORITHMS = ("auto", "lax", "im2col", "winograd")

# im2col beats XLA's CPU convolution when the GEMM's inner dimension K*C is small (few input
# features, e.g. an RGB stem): XLA's convolution is then far from its GEMM rate, while one
# gathered GEMM is not. With many features XLA's convolution runs near GEMM speed and the K-fold
# patch matrix costs more than it saves. Threshold measured with `jaxconv bench` (docs/).
IM2COL_MAX_INNER = 64


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `jaxconv.conv_general_dilated` will do for one set of arguments.

  Attributes:
    algorithm: the algorithm that runs ("lax" or "im2col").
    reason: one sentence on why.
    out_shape: the result's shape.
    out_dtype: the result's dtype.
    flops: floating-point operations of the direct convolution (2 per multiply-add).
    geometry: the normalised description every algorithm consumes.
  """

  algorithm: str
  reason: str
  out_shape: tuple[int, ...]
  out_dtype: np.dtype
  flops: int
  geometry: ConvGeometry


def _im2col_inner(g: ConvGeometry) -> int:
  return math.prod(g.kernel) * g.group_in_features


def _cannot(g: ConvGeometry, algorithm: str) -> str | None:
  """Why `algorithm` cannot run `g`, or None when it can."""
  if algorithm == "winograd":
    return "the Winograd algorithm is not available yet"
  return None


def _auto(g: ConvGeometry) -> tuple[str, str]:
  inner = _im2col_inner(g)
  if g.is_empty:
    return "lax", "the result is empty or all zeros; there is nothing to compute"
  if g.ndim == 0:
    return "lax", "a 0-D convolution is a single matrix product that lax already emits"
  if inner <= IM2COL_MAX_INNER and math.prod(g.kernel) > 1:
    return "im2col", (
        f"the GEMM inner dimension K*C = {inner} <= {IM2COL_MAX_INNER}: XLA's convolution is slow "
        "on few input features, one gathered GEMM is not"
    )
  return "lax", (
      f"the GEMM inner dimension K*C = {inner} > {IM2COL_MAX_INNER}: XLA's convolution runs near "
      "GEMM speed and the patch matrix would cost more than it saves"
  )


def choose(g: ConvGeometry, algorithm: str) -> Plan:
  """Picks the algorithm for `g`.

  Args:
    g: the normalised convolution.
    algorithm: one of `ALGORITHMS`.

  Returns:
    The plan.

  Raises:
    TypeError: if `algorithm` is not a string.
    ValueError: if `algorithm` is not a known name.
    NotImplementedError: if a forced algorithm cannot compute `g`.
  """
  if not isinstance(algorithm, str):
    raise TypeError(f"`algorithm` must be a string, one of {ALGORITHMS}, got {algorithm!r}.")
  if algorithm not in ALGORITHMS:
    raise ValueError(f"`algorithm` must be one of {ALGORITHMS}, got {algorithm!r}.")
  if algorithm == "auto":
    name, reason = _auto(g)
  else:
    why_not = _cannot(g, algorithm)
    if why_not is not None:
      able = [a for a in ALGORITHMS[1:] if _cannot(g, a) is None]
      raise NotImplementedError(
          f"algorithm={algorithm!r} cannot compute this convolution: {why_not}. "
          f"Algorithms that can: {', '.join(able)}."
      )
    name, reason = algorithm, "requested by the caller"
  return Plan(
      algorithm=name, reason=reason, out_shape=g.out_shape, out_dtype=g.out_dtype,
      flops=g.flops, geometry=g,
  )
