"""lax as an algorithm of the registry: XLA's own convolution, the baseline every other one beats.

`jax.lax.conv_general_dilated` lowers to one HLO convolution, which XLA compiles for the backend:
on CPU its own loops (or YNNPACK), on GPU cuDNN. It takes every geometry.

One correction: jitted XLA:CPU convolutions with a negative padding return wrong values (padding
((-1, 1), (-1, -1)) with a 3x3 kernel gave inf, and values that change from run to run). Where a
padding is negative the input is therefore dilated, padded and cropped by `lax.pad` first, and the
convolution runs on the result with no padding of its own: the same products, on every backend.
On CPU an input dilation is applied the same way, since XLA:CPU aborts on some input-dilated
convolutions.

The cost model is XLA:CPU's rate on the reference machine (docs/benchmarks.md): `RATE` for wide
layers, roughly in proportion to the input features per group below `FULL_RATE_FEATURES`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax import lax

from jaxconv._algorithm import Algorithm, Variant
from jaxconv._geometry import ConvGeometry

__all__ = ["LAX"]

RATE = 190e9  # direct-convolution FLOP/s of XLA's CPU convolution on wide layers (2 cores)
FULL_RATE_FEATURES = 128  # input features per group from which lax reaches RATE
MIN_SHARE = 0.3  # ungrouped layers with few features still reach this share of RATE
THREE_D_SHARE = 0.1  # 3-D convolutions reach at most this share of RATE

# Bound at import: patching `lax.conv_general_dilated` later (`jaxconv.use`) never routes it back.
_conv = lax.conv_general_dilated


class Lax(Algorithm):
  """`jax.lax.conv_general_dilated`, with negative paddings applied by `lax.pad` first."""

  name = "lax"

  def cannot(self, g: ConvGeometry) -> str | None:
    del g
    return None

  def predict(self, g: ConvGeometry, variant: Variant) -> float:
    """Measured: 102 GFLOP/s at 64 features, 164-196 at 128-512; ungrouped layers never fall
    below `MIN_SHARE` of `RATE` (59 GFLOP/s on VGG's RGB layer), grouped ones do (depthwise 3x3:
    0.6-0.7 GFLOP/s; a 7x7 depthwise layer's kernel gradient, batch-grouped: 1.8 GFLOP/s)."""
    del variant
    share = min(1.0, g.group_in_features / FULL_RATE_FEATURES)
    if g.batch_group_count > 1:  # a grouped kernel gradient: 1.8 GFLOP/s whatever its features
      share = 1 / FULL_RATE_FEATURES
    if g.feature_group_count == 1 and g.batch_group_count == 1:
      share = max(share, MIN_SHARE)
    if g.ndim == 3:  # 3-D: 40 GFLOP/s forward, 20 for a kernel gradient (2x16x32x32x32 -> 32)
      share = min(share, THREE_D_SHARE)
    # XLA skips the zeros an input dilation inserts into a layer's input: a transposed
    # convolution (stride 2, 3x3, 8x28x28x128 -> 64) ran in 5.96 ms against 6.37 ms for its
    # four sub-pixel phases. Not in a kernel-gradient shape (more taps than outputs): the
    # gradient of that layer's kernel took most of lax's 322 ms step against jaxconv's 25 ms.
    skipped = math.prod(g.lhs_dilation) if math.prod(g.kernel) <= math.prod(g.out_spatial) else 1
    return g.flops / skipped / (RATE * share)

  def tolerance(self, g: ConvGeometry, variant: Variant) -> float:
    del g, variant
    return 0.0  # the reference itself

  def run(
    self,
    lhs: jax.Array,
    rhs: jax.Array,
    g: ConvGeometry,
    variant: Variant,
    *,
    out_sharding: Any = None,
  ) -> jax.Array:
    del variant
    padding, lhs_dilation = g.padding, g.lhs_dilation
    # XLA:CPU's algebraic simplifier aborts the process on some input-dilated convolutions
    # (tests/test_regressions.py), so on CPU the dilation goes to lax.pad too; that ran the decoder
    # layers of docs/benchmarks.md at 0.96-1.05x the dilated convolution's speed. Other backends
    # keep it (cuDNN computes it as an input gradient), as `auto`'s choices follow the default
    # backend too (`jaxconv._select`).
    dilated_on_cpu = max(lhs_dilation, default=1) > 1 and jax.default_backend() == "cpu"
    if any(lo < 0 or hi < 0 for lo, hi in padding) or dilated_on_cpu:
      config = [(0, 0, 0)] * lhs.ndim
      for axis, pad in zip(g.dimension_numbers.lhs_spec[2:], g.pad_config):
        config[axis] = pad
      lhs = lax.pad(lhs, lax.full((), 0, lhs.dtype), config)
      padding, lhs_dilation = ((0, 0),) * g.ndim, (1,) * g.ndim
    return _conv(
      lhs,
      rhs,
      g.strides,
      padding,
      lhs_dilation,
      g.rhs_dilation,
      g.dimension_numbers,
      g.feature_group_count,
      g.batch_group_count,
      g.precision,
      g.preferred_element_type,
      out_sharding=out_sharding,
    )


LAX = Lax()
