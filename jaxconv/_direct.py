"""Direct convolution: a sum over kernel taps of shifted views, for depthwise and narrow groups.

A depthwise layer has no channel sum, so it is no GEMM at all; XLA's CPU convolution runs it at
well under 1 GFLOP/s. Written with the groups ``Q`` (feature groups, or batch groups), the ``I``
input features of a group and its ``O'`` output features, every convolution reads

    y[e, o, q, o'] = sum_k sum_i xp[e, i, o * s + k * d, q] * w[i, k, q, o'],

with ``xp`` the dilated and padded input (`lax.pad`), ``o`` and ``k`` multi-indices over the
spatial axes, ``s`` the strides and ``d`` the kernel dilation. For a fixed tap ``k`` the values
``xp[:, :, o * s + k * d]`` over every output position ``o`` are one strided slice of ``xp``; the
convolution is two static loops of elementwise products and sums, vectorised across the groups
(the last axis, as channels are in memory). Two forms, by which index is short:

* **taps** (``prod(kernel) <= prod(out)``, every forward layer and input gradient): a sum over
  the ``taps x I`` slices, each times its weights. XLA fuses it into one pass over the output
  whose reads of ``xp`` stay in cache (neighbouring rows).
  With strides or an input dilation, each tap's view is a slice of the unpadded input padded
  with zeros by itself (fused; the padded copy is never made), and an input dilated by ``a``
  (a strided layer's input gradient, a transposed convolution) splits into ``a`` output phases
  per axis, sub-pixel style: each phase sums only the taps that meet real input, so no product
  with an inserted zero is computed.
* **positions** (more taps than output positions: a depthwise layer's kernel gradient, where
  the "kernel" is the output gradient and the "output" the kernel's few taps): for each output
  position, a sum over the first kernel axis of slices, each times the matching weight rows,
  then one reduction over the remaining axes and ``I``. Chunks of at most `MAX_TERMS` slices run
  in a loop, which bounds the compiled program.

It performs the same products as lax, so NaN and infinity propagate as in lax and the error is
that of a direct summation. It is meant for few features per group: with ``I`` (taps form) or
``O'`` (positions form) large the loops would do a GEMM's work one element at a time.
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
from jaxconv._geometry import ConvGeometry
from jaxconv._subpixel import interleave
from jaxconv._winograd import work_dtype

__all__ = ["DIRECT", "direct"]

MAX_FEATURES = 8  # input features per group (taps form), output features per group (positions)
MAX_TERMS = 1400  # slices in one unrolled sum: bounds compile time (49 positions x 28 rows: 2.8 s)

# `auto`'s model, measured interleaved on the reference CPU (2 cores, float32): ConvNeXt's 7x7
# depthwise layer 8x56x56x96 (236 MFLOP) ran its forward and input gradient in 3.8-5.8 ms
# (40-60 GFLOP/s) and its kernel gradient in 18-23 ms (10-13 GFLOP/s).
TAPS_RATE = 45e9
POSITIONS_RATE = 11e9
STREAM_RATE = 10e9  # bytes/s of input and output through one fused pass


def _positions_form(g: ConvGeometry) -> bool:
  return math.prod(g.kernel) > math.prod(g.out_spatial)


def _groups(g: ConvGeometry) -> int:
  return max(g.feature_group_count, g.batch_group_count)


def _work_dtype(g: ConvGeometry) -> np.dtype:
  # Products in the accumulation type, as Winograd's (float32 for half precision, the promotion
  # with preferred_element_type); booleans as int32 counts.
  if g.dtype == np.bool_ and g.preferred_element_type is None:
    return np.dtype(np.int32)
  return work_dtype(g)


def _split_axes(x: jax.Array, splits: dict[int, tuple[int, ...]]) -> tuple[jax.Array, list]:
  """Splits axes of `x` in place (a bitcast); returns it and each old axis's new axes."""
  shape, where = [], []
  for axis, size in enumerate(x.shape):
    parts = splits.get(axis, (size,))
    where.append(list(range(len(shape), len(shape) + len(parts))))
    shape.extend(parts)
  return x.reshape(shape), where


def _operands(lhs: jax.Array, rhs: jax.Array, g: ConvGeometry) -> tuple[jax.Array, jax.Array]:
  """``x`` as ``(E, I, *S, Q)`` and ``w`` as ``(I, *K, Q, O')``, in the work dtype.

  Each is one in-place split of the user's axes and one transpose, which XLA makes a bitcast
  where the user's layout already has the groups last (NHWC depthwise, and that layout's kernel
  gradient).
  """
  dt = _work_dtype(g)
  q, fgc, bgc = _groups(g), g.feature_group_count, g.batch_group_count
  lb, lf, *ls = g.dimension_numbers.lhs_spec
  x, at = _split_axes(lhs, {lb: (bgc, g.out_batch), lf: (fgc, g.group_in_features)})
  perm = (at[lb][1], at[lf][1], *(at[a][0] for a in ls), at[lb][0], at[lf][0])  # E I S B G
  x = jnp.transpose(x, perm).reshape(g.out_batch, g.group_in_features, *g.in_spatial, q)
  ro, ri, *rs = g.dimension_numbers.rhs_spec
  w, at = _split_axes(rhs, {ro: (q, g.out_features // q)})
  w = jnp.transpose(w, (at[ri][0], *(at[a][0] for a in rs), *at[ro]))  # I K Q O'
  return x.astype(dt), w.astype(dt)


def _view(x: jax.Array, start, step, count) -> jax.Array:
  """``x[:, :, start + step * arange(count)]`` per spatial axis: one strided slice."""
  nd = len(start)
  begin = (0, 0, *start, 0)
  end = (*x.shape[:2], *(b + (c - 1) * s + 1 for b, s, c in zip(start, step, count)), x.shape[-1])
  return lax.slice(x, begin, end, (1, 1, *step, 1)) if nd else x


def _tap_view(x: jax.Array, offset, strides, out) -> jax.Array | None:
  """``x[:, :, offset + strides * o]`` for every output ``o``, zero outside `x`; None if all zero.

  The valid outputs read one strided slice, padded with zeros to the output's extent; XLA fuses
  the slice and the pad into the sum, so the padded input is never materialised (a fresh buffer
  the input's size costs a pass and a page fault per 4 KiB).
  """
  begin, end, step, pads = [0, 0], [*x.shape[:2]], [1, 1], [(0, 0, 0)] * 2
  for t, s, o, n in zip(offset, strides, out, x.shape[2:-1]):
    first = 0 if t >= 0 else -(t // s)  # the first o with t + s * o >= 0: ceil(-t / s)
    last = min(o - 1, (n - 1 - t) // s) if n - 1 - t >= 0 else -1  # the last within x
    if first > last:
      return None
    begin.append(t + s * first)
    end.append(t + s * last + 1)
    step.append(s)
    pads.append((first, o - 1 - last, 0))
  begin.append(0), end.append(x.shape[-1]), step.append(1), pads.append((0, 0, 0))
  view = lax.slice(x, begin, end, step)
  return lax.pad(view, jnp.zeros((), x.dtype), pads)


def _taps(
  x: jax.Array, w: jax.Array, g: ConvGeometry, low: tuple[int, ...], dilation: tuple[int, ...]
) -> jax.Array:
  """(E, *out, Q, O'): the sum over taps and input features of strided views times weights.

  `low` is the padding `x` still lacks before each spatial axis and `dilation` the input
  dilation it still lacks (zeros and ones when `x` is dilated and padded already). An axis
  dilated by ``a`` (with stride 1) splits into ``a`` output phases, sub-pixel style: output
  ``p + a * q`` meets real input only through the taps with ``p + k * d - low`` divisible by
  ``a``, which read ``x[q + (p + k * d - low) / a]``; each phase is a stride-1 sum over those
  taps alone, and the phases interleave. No product with an inserted zero is computed.
  """
  out, mult, nd = g.out_spatial, w.shape[-1], g.ndim
  phases = [range(min(a, o)) for a, o in zip(dilation, out)]
  parts = {}
  for phase in itertools.product(*phases):
    counts = tuple(len(range(p, o, a)) for p, o, a in zip(phase, out, dilation))
    acc: list[jax.Array] | None = None
    for k in itertools.product(*map(range, g.kernel)):
      lead = [p + kk * d - lo for p, kk, d, lo in zip(phase, k, g.rhs_dilation, low)]
      if any(t % a for t, a in zip(lead, dilation)):
        continue  # this tap meets only inserted zeros in this phase
      offset = tuple(t // a for t, a in zip(lead, dilation))
      steps = tuple(1 if a > 1 else s for a, s in zip(dilation, g.strides))
      view = _tap_view(x, offset, steps, counts)  # (E, I, *counts, Q)
      if view is None:  # the tap only ever meets padding
        continue
      for i in range(w.shape[0]):
        # One sum per output feature of a group: the groups stay the last (vectorised) axis.
        lanes = (1,) * (view.ndim - 2) + (-1,)  # explicit broadcast over (E, *counts)
        terms = [view[:, i] * w[(i, *k, slice(None), j)].reshape(lanes) for j in range(mult)]
        acc = terms if acc is None else [a + t for a, t in zip(acc, terms)]
    shape = (x.shape[0], *counts, x.shape[-1], mult)
    parts[phase] = jnp.zeros(shape, x.dtype) if acc is None else jnp.stack(acc, axis=-1)
  return interleave(parts, dilation, out, tuple(range(1, nd + 1)))


def _positions(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """(E, *out, Q, O'): per output position, a sum over the first kernel axis, then a reduction."""
  out, kernel, nd, mult = g.out_spatial, g.kernel, g.ndim, w.shape[-1]
  positions = list(itertools.product(*map(range, out)))
  s0, d0 = g.strides[0], g.rhs_dilation[0]
  rows = max(1, min(kernel[0], MAX_TERMS // len(positions)))
  chunks = -(-kernel[0] // rows)
  if chunks * rows != kernel[0]:  # zero weight rows make the chunks equal
    pad = chunks * rows - kernel[0]
    w = jnp.pad(w, [(0, 0), (0, pad)] + [(0, 0)] * (nd + 1))
    x = jnp.pad(x, [(0, 0), (0, 0), (0, pad * d0)] + [(0, 0)] * nd)

  def partial(c: jax.Array | int, acc: list[jax.Array] | None) -> list[jax.Array]:
    # Unreduced sums, one per output position and output feature: (E, I, *K[1:], Q) each. They
    # stay elementwise (one vectorised pass per sum); the reduction runs once, at the end.
    wc = lax.dynamic_slice_in_dim(w, c * rows, rows, axis=1)
    xc = lax.dynamic_slice_in_dim(x, c * rows * d0, (rows - 1) * d0 + 1 + (out[0] - 1) * s0, 2)
    sums = []
    for o in positions:
      for j in range(mult):
        total = None if acc is None else acc[len(sums)]
        for r in range(rows):
          start = (o[0] * s0 + r * d0, *(oo * s for oo, s in zip(o[1:], g.strides[1:])))
          view = _view(xc, start, (1, *g.rhs_dilation[1:]), (1, *kernel[1:]))[:, :, 0]
          term = view * wc[None, :, r, ..., j]
          total = term if total is None else total + term
        sums.append(total)
    return sums

  if chunks == 1:
    sums = partial(0, None)
  else:
    zeros = jnp.zeros((x.shape[0], x.shape[1], *kernel[1:], x.shape[-1]), x.dtype)
    sums = lax.fori_loop(0, chunks, partial, [zeros] * (len(positions) * mult))
  # The barrier keeps the sums out of the reduction's fusion, where they would not vectorise.
  sums = lax.optimization_barrier(jnp.stack(sums))  # (P * O', E, I, *K[1:], Q)
  y = sums.sum(axis=tuple(range(2, nd + 2)))  # (P * O', E, Q)
  y = y.reshape(len(positions), mult, x.shape[0], x.shape[-1])
  return jnp.transpose(y, (2, 0, 3, 1)).reshape(x.shape[0], *out, x.shape[-1], mult)


def direct(lhs: jax.Array, rhs: jax.Array, g: ConvGeometry) -> jax.Array:
  """Computes the convolution `g` describes by direct summation; layouts as the user gave them."""
  if g.is_empty:
    return jnp.zeros(g.out_shape, g.out_dtype)
  x, w = _operands(lhs, rhs, g)
  # Each tap's view pads (and sub-pixel phases undilate) itself, so the padded, dilated input is
  # never materialised: measured at 8x112x112x96, 3x3 stride 2, 3.4 ms against 15.7 ms from a
  # padded copy. Not at stride 1 without dilation, where the padded copy is faster (ConvNeXt's
  # 7x7 layer: 3.9 against 21 ms, 49 fused pads checking bounds on every element), nor where an
  # axis is both dilated and strided.
  plain = max(g.strides, default=1) == 1 and max(g.lhs_dilation, default=1) == 1
  both = any(a > 1 and s > 1 for a, s in zip(g.lhs_dilation, g.strides))
  if not (_positions_form(g) or plain or both):
    y = _taps(x, w, g, tuple(lo for lo, _ in g.padding), g.lhs_dilation)
  else:
    config = [(0, 0, 0), (0, 0, 0), *g.pad_config, (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), config)  # dilates, pads and (negative) crops
    ones = (1,) * g.ndim
    y = _positions(x, w, g) if _positions_form(g) else _taps(x, w, g, (0,) * g.ndim, ones)
  chex.assert_shape(y, (g.out_batch, *g.out_spatial, _groups(g), g.out_features // _groups(g)))
  y = y.reshape(g.out_batch, *g.out_spatial, g.out_features)
  y = jnp.transpose(y, g.channels_last_to_out)
  if g.dtype == np.bool_ and g.preferred_element_type is None:
    return y != 0
  return y.astype(g.out_dtype)


class Direct(Algorithm):
  """Shifted views times per-group weights: depthwise and narrow-group convolution."""

  name = "direct"

  def cannot(self, g: ConvGeometry) -> str | None:
    if _groups(g) == 1:
      return "it vectorises across groups, and this convolution has one: a GEMM's work"
    if _positions_form(g):
      per_group, terms = g.out_features // _groups(g), math.prod(g.out_spatial)
      if per_group > MAX_FEATURES:
        return (
          f"it sums element by element, and {per_group} output features per group "
          f"(> {MAX_FEATURES}) are a GEMM's work"
        )
      if terms > MAX_TERMS:
        return f"{terms} output positions would unroll into more than {MAX_TERMS} sums"
      return None
    if g.group_in_features > MAX_FEATURES:
      return (
        f"it sums element by element, and {g.group_in_features} input features per group "
        f"(> {MAX_FEATURES}) are a GEMM's work"
      )
    terms = math.prod(g.kernel) * g.group_in_features
    if terms > MAX_TERMS:
      return f"{terms} kernel taps x input features would unroll into more than {MAX_TERMS} sums"
    return None

  def predict(self, g: ConvGeometry, variant: Variant) -> float:
    del variant
    itemsize = np.dtype(_work_dtype(g)).itemsize
    moved = itemsize * (math.prod(g.lhs_shape) + math.prod(g.rhs_shape) + math.prod(g.out_shape))
    rate = POSITIONS_RATE if _positions_form(g) else TAPS_RATE
    return g.flops / rate + moved / STREAM_RATE

  def explain(self, g: ConvGeometry, variant: Variant) -> str:
    del variant
    form = "output positions" if _positions_form(g) else "kernel taps"
    return (
      f"{_groups(g)} groups of {g.group_in_features} input features: a sum over {form} of "
      "shifted views, where XLA's grouped convolution is slow"
    )

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: Variant) -> jax.Array:
    del variant
    return direct(lhs, rhs, g)


DIRECT = Direct()
