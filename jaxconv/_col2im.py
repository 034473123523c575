"""col2im: an input-dilated convolution as one GEMM of the undilated input, then an overlap-add.

Per spatial axis, with input dilation ``a``, kernel dilation ``d``, low padding ``lo`` and window
stride 1, the dilated and padded input is ``xp[lo + i a] = x[i]`` (zeros elsewhere), so

    y[o] = sum_k xp[o + k d] w[k] = sum_{i, k : i a = o + k d - lo} x[i] w[k].

Every product of a real input with a tap is therefore one entry of

    Z[i, k] = sum_c x[i, c] w[k, c, :],

one GEMM of the undilated input, ``(N * prod(L), C) @ (C, prod(K) * O)``, with no multiplication by
an inserted zero, and each output sums the entries that land on it: output ``o = a q + p`` (phase
``p``) takes ``Z[q + c, k]`` for every tap with ``c = (p + k d - lo) / a`` an integer. That sum, the
*col2im* step of Caffe's deconvolution layer, is one pass: each output phase (a combination of the
axes' phases) adds the shifted views of its taps' slices of ``Z`` (`lax.pad` shifts and crops),
every product read once, and the ``prod(a)`` phases interleave.

Against the sub-pixel decomposition (`_subpixel.py`), which runs ``a^d`` small convolutions, this
is one large GEMM (``prod(K) * O`` columns) and one pass of additions; it does the same products.

Reference: Y. Jia et al., "Caffe: convolutional architecture for fast feature embedding" (2014),
whose deconvolution layer is a GEMM followed by col2im; V. Dumoulin, F. Visin, "A guide to
convolution arithmetic for deep learning" (2016), on transposed convolution.
"""

from __future__ import annotations

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._algorithm import Algorithm, Variant
from jaxconv._geometry import ConvGeometry, grouped_operands
from jaxconv._im2col import accumulate_dtype, compute_dtype, patch_budget
from jaxconv._loops import map_blocks
from jaxconv._subpixel import interleave

__all__ = ["COL2IM", "col2im"]


def _phase_taps(g: ConvGeometry, d: int) -> list[list[tuple[int, int]]]:
  """Per output phase p of spatial axis d: the taps that reach it, each with its shift c."""
  k, a, dil, lo = g.kernel[d], g.lhs_dilation[d], g.rhs_dilation[d], g.padding[d][0]
  return [[(t, (p + t * dil - lo) // a) for t in range(k) if (p + t * dil - lo) % a == 0]
          for p in range(a)]  # fmt: skip


def _fold(z: jax.Array, g: ConvGeometry, flipped: bool) -> jax.Array:
  """Sums the products `z` (E, *L, *K, O) that land on each output: (E, *out, O).

  With `flipped`, `z` holds the taps in reverse order (see `col2im`): tap ``t`` of an axis of
  length ``K`` at index ``K - 1 - t``.

  Each output phase (one per combination of the axes' phases) adds up the shifted views of its
  taps' slices of `z` in one pass, so every product is read once; the phases then interleave.
  """
  nd, e = g.ndim, z.shape[0]
  q = [-(-o // a) for o, a in zip(g.out_spatial, g.lhs_dilation)]  # outputs per phase, padded
  zero = jnp.zeros((), z.dtype)
  phase_taps = [_phase_taps(g, d) for d in range(nd)]
  parts = {}
  for phase in itertools.product(*(range(a) for a in g.lhs_dilation)):
    acc = None
    for taps in itertools.product(*(phase_taps[d][p] for d, p in enumerate(phase))):
      index = tuple(k - 1 - t if flipped else t for (t, _), k in zip(taps, g.kernel))
      part = z[(slice(None),) * (1 + nd) + index]
      # part[j] = z[j + c] on every axis: a shift, cropped or zero-filled by `lax.pad`
      config = [(0, 0, 0), *((-c, qd + c - n, 0) for (_, c), qd, n in zip(taps, q, g.in_spatial))]
      part = lax.pad(part, zero, [*config, (0, 0, 0)])
      acc = part if acc is None else acc + part
    parts[phase] = jnp.zeros((e, *q, z.shape[-1]), z.dtype) if acc is None else acc
  return interleave(parts, g.lhs_dilation, g.out_spatial, range(1, 1 + nd))


def _products_bytes(g: ConvGeometry) -> int:
  """Bytes of the products Z, every real input times every tap (in the accumulation dtype)."""
  itemsize = np.dtype(accumulate_dtype(g) or compute_dtype(g)).itemsize
  return g.out_batch * math.prod(g.in_spatial) * math.prod(g.kernel) * g.out_features * itemsize


def col2im(lhs: jax.Array, rhs: jax.Array, g: ConvGeometry) -> jax.Array:
  """Computes the convolution described by `g` (window stride 1) by GEMM and overlap-add."""
  if g.is_empty:
    return jnp.zeros(g.out_shape, g.out_dtype)
  nd, groups = g.ndim, g.feature_group_count
  cdt, acc = compute_dtype(g), accumulate_dtype(g)
  # A reversed kernel (`ConvGeometry.reversed_kernel`) is reversed once more, which XLA cancels,
  # and the fold reads the products' taps in reverse order.
  flipped = g.reversed_kernel
  if flipped:
    rhs = lax.rev(rhs, g.dimension_numbers.rhs_spec[2:])
  x, w = grouped_operands(lhs, rhs, g, cdt)  # (N, 1, *L, C), (*K, I, G, 1, O')
  x = x[:, 0]
  taps, cin_g, o_g = math.prod(g.kernel), g.group_in_features, g.out_features // groups
  # (I, G, taps * O'): every tap's output features side by side, the GEMM's columns.
  w = jnp.moveaxis(w.reshape(taps, cin_g, groups, o_g), 0, 2).reshape(cin_g, groups, taps * o_g)

  def block(xb: jax.Array) -> jax.Array:
    e = xb.shape[0]
    rows = xb.reshape(e * math.prod(g.in_spatial), groups, cin_g)
    if groups == 1:
      z = jnp.dot(rows[:, 0], w[:, 0], precision=g.precision, preferred_element_type=acc)
    else:
      z = jnp.einsum("mgc,cgo->mgo", rows, w, precision=g.precision, preferred_element_type=acc)
    z = z.reshape(e, *g.in_spatial, groups, *g.kernel, o_g)
    z = jnp.moveaxis(z, 1 + nd, -2).reshape(e, *g.in_spatial, *g.kernel, g.out_features)
    return _fold(z, g, flipped)

  per_example = _products_bytes(g) // max(g.out_batch, 1)
  y = map_blocks(block, x, max(1, patch_budget() // max(per_example, 1)))
  chex.assert_shape(y, (g.out_batch, *g.out_spatial, g.out_features))
  y = jnp.transpose(y, g.channels_last_to_out)
  if g.dtype == np.bool_ and g.preferred_element_type is None:
    return y != 0
  return y.astype(g.out_dtype)


# `auto`'s model: two rates measured on the reference CPU (float32, HIGHEST, 2 cores) on six
# stride-2 transposed convolutions (8x14x14x256 -> 128 to 8x56x56x64 -> 64, 3x3 and 4x4): the
# GEMM ran at 333-412 GFLOP/s (208-399 with YNNPACK off), the overlap-add at 14-20 GB/s of
# products (15-31).
GEMM_RATE = 350e9  # FLOP/s of the products' GEMM
FOLD_RATE = 19e9  # bytes/s of products through the overlap-add


def _gemm_flops(g: ConvGeometry) -> int:
  rows = g.out_batch * math.prod(g.in_spatial)
  return 2 * rows * g.group_in_features * math.prod(g.kernel) * g.out_features


class Col2im(Algorithm):
  """One GEMM of the undilated input with every tap, then an overlap-add: lax's products."""

  name = "col2im"

  def cannot(self, g: ConvGeometry) -> str | None:
    if max(g.lhs_dilation, default=1) == 1:
      return (
        "it folds the products of an input-dilated convolution (lhs_dilation), and this "
        "convolution has no input dilation"
      )
    if max(g.strides, default=1) > 1:
      return f"its outputs are at window stride 1, and this convolution has strides {g.strides}"
    if g.batch_group_count > 1:
      return f"it has no batch groups (batch_group_count={g.batch_group_count})"
    return None

  def predict(self, g: ConvGeometry, variant: Variant) -> float | None:
    """The GEMM at `GEMM_RATE` plus the products through the overlap-add at `FOLD_RATE`."""
    del variant
    if not np.issubdtype(g.dtype, np.floating):  # fitted to float32 only
      return None
    return _gemm_flops(g) / GEMM_RATE + _products_bytes(g) / FOLD_RATE

  def explain(self, g: ConvGeometry, variant: Variant) -> str:
    del variant
    return (
      f"one GEMM of the undilated input with all {math.prod(g.kernel)} taps and an overlap-add, "
      "no products with zeros"
    )

  def why_not_predicted(self, g: ConvGeometry) -> str:
    return f"col2im's model was fitted to floating-point layers, not {g.dtype}"

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: Variant) -> jax.Array:
    del variant
    return col2im(lhs, rhs, g)


COL2IM = Col2im()
