"""im2col: every receptive field gathered into a patch matrix, then one GEMM.

For one example with channels-last input ``x`` of spatial shape ``S`` and ``C`` features, the input
is first dilated and padded (`lax.pad` with interior padding does both, and negative padding crops).
Output position ``o`` and kernel tap ``k`` read the padded input at ``o * stride + k *
rhs_dilation`` in every spatial dimension; flattening both gives one integer matrix ``index[M, K]``
(``M`` output positions, ``K`` taps) that depends only on the static geometry, so it is built once
in numpy and cached. The gather ``x_flat[index]`` is the patch matrix ``(M, K, C)`` and the
convolution is the contraction ``patches[m, k, c] * kernel[k, c, o]``: one GEMM with ``K * C`` as
the inner dimension (a batched GEMM over groups when `feature_group_count` or `batch_group_count` >
1). The result is exact in the sense that it performs the same products as the direct convolution,
only summed in a different order. The per-example computation is vmapped over the batch.

Where the input needs padding or dilation, the gather reads the unpadded input instead: each
index of the padded grid maps back to the input element that `lax.pad` puts there, and those
that hold an inserted zero point past the end, where the gather's ``fill`` mode reads zeros.
XLA:CPU otherwise fuses the pad into the gather, recomputing the padded grid's coordinates for
every element read (measured on an Intel Xeon, 3x3 kernels, padding 1: 32x32x32x3 -> 32 took
2.75 ms that way against 1.24 ms from the unpadded input; 8x150x150x3 -> 16, 12.1 against 5.8 ms).

The patch matrix is ``K`` times larger than the input. When it would exceed `patch_budget()` bytes,
the work is split: first over blocks of examples (`jaxconv._loops.map_blocks`), then, when one
example alone is too big, over blocks of output positions.

Reference: K. Chellapilla, S. Puri, P. Simard, "High performance convolutional neural networks for
document processing" (2006); the Caffe implementation popularised the name.
"""

from __future__ import annotations

import functools
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._algorithm import Algorithm, Variant
from jaxconv._geometry import ConvGeometry, grouped_operands
from jaxconv._loops import map_blocks

__all__ = ["IM2COL", "im2col", "im2col_indices", "patch_budget", "set_patch_budget"]

# 256 MiB keeps im2col within 1.5x of lax's peak memory on large inputs (bench/memory.py), and every
# patch GEMM is still about 100,000 rows tall at 64x224x224x64.
_DEFAULT_BUDGET = 256 << 20
RUN_MAX_FEATURES = 8
_budget = int(os.environ.get("JAXCONV_PATCH_BUDGET", _DEFAULT_BUDGET))


def patch_budget() -> int:
  """Returns the largest patch buffer, in bytes, that im2col materialises at once.

  The default is 256 MiB, or the integer in the environment variable ``JAXCONV_PATCH_BUDGET``.
  """
  return _budget


def set_patch_budget(nbytes: int) -> int:
  """Sets the patch buffer budget (bytes) for functions traced afterwards; returns the old one.

  Example:
    >>> import jaxconv
    >>> old = jaxconv.set_patch_budget(256 << 20)
    >>> _ = jaxconv.set_patch_budget(old)
  """
  global _budget
  if int(nbytes) <= 0:
    raise ValueError(f"`nbytes` must be a positive number of bytes, got {nbytes!r}.")
  old, _budget = _budget, int(nbytes)
  return old


@functools.lru_cache(maxsize=256)
def im2col_indices(
  padded: tuple[int, ...],
  out: tuple[int, ...],
  kernel: tuple[int, ...],
  strides: tuple[int, ...],
  rhs_dilation: tuple[int, ...],
) -> np.ndarray:
  """Flat gather indices ``(prod(out), prod(kernel))`` into the padded input grid.

  Cached per static geometry (a bounded LRU): building them is numpy work done at trace time.
  """
  flat_strides = np.cumprod((1, *padded[:0:-1]))[::-1]
  index = np.zeros((1,) * (2 * len(out)), dtype=np.int64)
  for d, (o, k, s, r, fs) in enumerate(zip(out, kernel, strides, rhs_dilation, flat_strides)):
    shape_o = [1] * len(out)
    shape_o[d] = o
    shape_k = [1] * len(out)
    shape_k[d] = k
    pos = (
      np.arange(o).reshape(shape_o + [1] * len(out)) * s
      + np.arange(k).reshape([1] * len(out) + shape_k) * r
    )
    index = index + pos * int(fs)
  index = index.reshape(math.prod(out), math.prod(kernel))
  dtype = np.int32 if math.prod(padded) < 2**31 else np.int64
  index = index.astype(dtype)
  index.flags.writeable = False
  return index


@functools.lru_cache(maxsize=256)
def unpadded_indices(
  spatial: tuple[int, ...],
  pad_config: tuple[tuple[int, int, int], ...],
  padded: tuple[int, ...],
  out: tuple[int, ...],
  kernel: tuple[int, ...],
  strides: tuple[int, ...],
  rhs_dilation: tuple[int, ...],
) -> np.ndarray:
  """`im2col_indices` mapped from the padded grid to flat indices into the unpadded input.

  Padded position ``j`` of an axis holds input element ``(j - low) / (interior + 1)`` where that
  is an integer in range (as `lax.pad` places them) and a zero elsewhere; those positions point at
  ``prod(spatial)``, one past the end, which a ``fill`` gather reads as zero.
  """
  index = im2col_indices(padded, out, kernel, strides, rhs_dilation)
  coords = np.unravel_index(index.astype(np.int64), padded)
  flat = np.zeros(index.shape, np.int64)
  valid = np.ones(index.shape, bool)
  for c, n, (lo, _, interior) in zip(coords, spatial, pad_config):
    q, r = np.divmod(c - lo, interior + 1)
    valid &= (r == 0) & (q >= 0) & (q < n)
    flat = flat * n + np.clip(q, 0, max(n - 1, 0))
  size = math.prod(spatial)
  result = np.where(valid, flat, size).astype(np.int32 if size < 2**31 - 1 else np.int64)
  result.flags.writeable = False
  return result


def compute_dtype(g: ConvGeometry) -> np.dtype:
  # Half-precision floats gather and multiply in their own type but accumulate in float32 (as lax
  # does on CPU and GPU); booleans are counted in int32 and compared with zero.
  if g.dtype == np.bool_:
    return np.dtype(np.int32)
  return g.dtype


def accumulate_dtype(g: ConvGeometry) -> np.dtype | None:
  if g.preferred_element_type is not None:
    return g.preferred_element_type
  if g.dtype in (np.dtype(jnp.bfloat16), np.dtype(np.float16)):
    return np.dtype(np.float32)
  if g.dtype == np.bool_:
    return np.dtype(np.int32)
  return None


def im2col(lhs: jax.Array, rhs: jax.Array, g: ConvGeometry) -> jax.Array:
  """Computes the convolution described by `g` by im2col; layouts as the user gave them."""
  if g.is_empty:
    return jnp.zeros(g.out_shape, g.out_dtype)
  nd, fgc, bgc = g.ndim, g.feature_group_count, g.batch_group_count
  cdt = compute_dtype(g)
  padded, out = g.padded_spatial, g.out_spatial
  # Padding or dilation: gather from the unpadded input, inserted zeros read by `fill`.
  fill = any(c != (0, 0, 0) for c in g.pad_config)
  # Along the last spatial dimension, with no kernel dilation there, the taps of one window are
  # contiguous in the flat channels-last input: gather runs of kw*C elements, not kw runs of C.
  # Fewer, longer slices pay off when C is small (measured: RGB-like inputs), not when it is large.
  kw = g.kernel[-1] if nd else 1
  use_runs = (
    not fill and nd > 0 and kw > 1 and g.rhs_dilation[-1] == 1 and g.in_features <= RUN_MAX_FEATURES
  )
  # A reversed kernel (`ConvGeometry.reversed_kernel`) is reversed once more, which XLA cancels,
  # and the gather reads every window's taps in reverse order. (Runs read forwards, and their
  # small kernels are cheap to reverse.)
  flipped = g.reversed_kernel and not use_runs
  if flipped:
    rhs = lax.rev(rhs, g.dimension_numbers.rhs_spec[2:])
  x, w = grouped_operands(lhs, rhs, g, cdt)  # (N/B, B, *S, C), (*K, I, G, B, O')
  taps, cin_g = math.prod(g.kernel), g.group_in_features
  w = w.reshape(taps, *w.shape[nd:])

  if use_runs:
    starts = im2col_indices(padded, out, (*g.kernel[:-1], 1), g.strides, g.rhs_dilation)
    index = starts * g.in_features
  elif fill:
    geometry = (g.in_spatial, g.pad_config, padded, out, g.kernel, g.strides, g.rhs_dilation)
    index = unpadded_indices(*geometry)
  else:
    index = im2col_indices(padded, out, g.kernel, g.strides, g.rhs_dilation)
  if flipped:  # every axis reversed is the row-major tap order reversed
    index = np.ascontiguousarray(index[:, ::-1])
  acc = accumulate_dtype(g)
  rows = index.shape[0]

  def gather(xf: jax.Array, idx: jax.Array) -> jax.Array:
    # xf: (B, P, C), one flat (unpadded) example; idx: (m, K or K/kw) -> (B, m, K*C)
    m = idx.shape[0]
    if fill:
      patches = xf.at[:, idx].get(mode="fill", fill_value=0)
      return patches.reshape(bgc, m, taps * g.in_features)
    if not use_runs:
      return xf.at[:, idx].get(mode="promise_in_bounds").reshape(bgc, m, taps * g.in_features)
    dnums = lax.GatherDimensionNumbers(
      offset_dims=(2,), collapsed_slice_dims=(), start_index_map=(0,)
    )
    run = jax.vmap(
      lambda v: lax.gather(
        v, idx[..., None], dnums, (kw * g.in_features,), mode="promise_in_bounds"
      )
    )
    return run(xf.reshape(bgc, -1)).reshape(bgc, m, taps * g.in_features)

  def gemm(xf: jax.Array, idx: jax.Array) -> jax.Array:
    m = idx.shape[0]
    patches = gather(xf, idx)
    chex.assert_shape(patches, (bgc, m, taps * g.in_features))
    if bgc == 1 and fgc == 1:  # the common case: one plain GEMM, no group axes for XLA to move
      kernel = w.reshape(taps * cin_g, g.out_features)
      return jnp.dot(patches[0], kernel, precision=g.precision, preferred_element_type=acc)
    patches = patches.reshape(bgc, m, taps, fgc, cin_g)
    y = jnp.einsum(
      "bmkgc,kcgbo->mgbo", patches, w, precision=g.precision, preferred_element_type=acc
    )
    return y.reshape(m, g.out_features)

  per_row = bgc * taps * g.in_features * np.dtype(cdt).itemsize  # patch bytes per output row
  budget = patch_budget()
  block = max(1, min(rows, budget // max(per_row, 1)))

  def one_example(xe: jax.Array) -> jax.Array:
    chex.assert_shape(xe, (bgc, *g.in_spatial, g.in_features))
    xf = xe.reshape(bgc, math.prod(g.in_spatial), g.in_features)
    # When one example alone exceeds the budget: blocks of output positions (rows of `index`).
    y = map_blocks(lambda idx: gemm(xf, idx), jnp.asarray(index), block)
    return y.reshape(*out, g.out_features)

  examples_per_chunk = max(1, budget // max(per_row * rows, 1))
  y = map_blocks(jax.vmap(one_example), x, examples_per_chunk)
  chex.assert_shape(y, (g.out_batch, *out, g.out_features))
  y = jnp.transpose(y, g.channels_last_to_out)
  if g.dtype == np.bool_ and g.preferred_element_type is None:
    return y != 0
  return y.astype(g.out_dtype)


# `auto`'s model: im2col pays only for a GEMM small on both sides (an RGB stem such as the seed
# example, 3 -> 16), where XLA's CPU convolution runs far below its GEMM rate while one gathered
# GEMM does not; with 64 outputs (VGG's first layer) lax is faster again, and on wide layers
# XLA's CPU gather is slower than its convolution.
MAX_INNER = 64  # kernel taps x input features
MAX_OUT = 32
# FLOP/s in that regime, in the units of lax's model: its prediction on the seed layer (57 GFLOP/s)
# times im2col's measured 1.55x there (docs/benchmarks.md).
SMALL_GEMM_RATE = 88e9


class Im2col(Algorithm):
  """A gather of every receptive field, then one GEMM: the same products as lax."""

  name = "im2col"

  def cannot(self, g: ConvGeometry) -> str | None:
    del g
    return None

  def _small(self, g: ConvGeometry) -> bool:
    ungrouped = g.feature_group_count == 1 and g.batch_group_count == 1
    inner = math.prod(g.kernel) * g.group_in_features
    return ungrouped and inner <= MAX_INNER and g.out_features <= MAX_OUT

  def predict(self, g: ConvGeometry, variant: Variant) -> float | None:
    del variant
    return g.flops / SMALL_GEMM_RATE if self._small(g) else None

  def explain(self, g: ConvGeometry, variant: Variant) -> str:
    del variant
    return (
      f"a GEMM of inner dimension K*C = {math.prod(g.kernel) * g.group_in_features} with "
      f"{g.out_features} outputs, where XLA's convolution is slow and one gathered GEMM is not"
    )

  def why_not_predicted(self, g: ConvGeometry) -> str:
    inner = math.prod(g.kernel) * g.group_in_features
    return (
      f"im2col pays only for an ungrouped GEMM with K*C <= {MAX_INNER} and <= {MAX_OUT} outputs "
      f"(here K*C = {inner}, {g.out_features} outputs)"
    )

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: Variant) -> jax.Array:
    del variant
    return im2col(lhs, rhs, g)


IM2COL = Im2col()
