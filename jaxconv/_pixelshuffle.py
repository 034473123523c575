"""Pixel shuffle: an input-dilated convolution as one stride-1 convolution, then depth to space.

The sub-pixel decomposition (`_subpixel.py`) splits an input dilated by ``a`` per axis into ``a``
phase convolutions of the undilated input: phase ``p`` takes the taps ``w[k0_p::a]`` (``T_p`` of
them) and its output ``q`` is ``sum_m x[q + c_p + m] w[k0_p + a m]``. Every phase is also a
correlation with one common window of ``W >= T_p`` taps starting at input offset ``c``: place the
phase's taps ``e_p`` zeros into the window and read its outputs ``s_p`` positions further on,
with ``c + s_p + e_p = c_p``:

    y[p + a q] = z_p[q + s_p],  z_p[r] = sum_j x[r + c + j] W_p[j],  W_p[j] = w[k0_p + a (j - e_p)]

(``W_p`` zero where ``j - e_p`` is not in ``[0, T_p)``). Stacking the ``a^d`` phase kernels
``W_p`` along the output features makes the whole convolution **one** stride-1 convolution of the
undilated input, padded by ``-c`` in front, with ``a^d`` times the output features and
``max_p s_p`` more outputs per axis, followed by a *pixel shuffle* that moves each group of
features to its place in the output (the periodic shuffling of Shi et al.'s efficient sub-pixel
convolution layer, PyTorch's ``PixelShuffle``). Per axis the window with the fewest products
(window times outputs) is chosen (`_axis_windows`).

Against the separate phases this reads and transforms the input once, not ``a^d`` times, and runs
one GEMM with ``a^d`` times the columns. The price is the zero taps of phases shorter than ``W``
and the extra outputs of shifted ones: a 4x4 kernel at stride 2 splits into four 2x2 phases (no
zeros; with lax's ``SAME`` padding, one more output per axis), a 3x3 kernel into phases of 2x2,
2x1, 1x2 and 1x1 taps stacked as 2x2 (16 products where lax's real ones are 9). The stacked
convolution goes to the registry, so a 2x2 window can run Winograd F(4, 2): 25 products per 16
outputs against the direct method's 64.

Reference: W. Shi et al., "Real-time single image and video super-resolution using an efficient
sub-pixel convolutional neural network" (CVPR 2016).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._algorithm import Algorithm, Variant
from jaxconv._geometry import ConvGeometry, derive
from jaxconv._subpixel import (
  decomposable,
  fastest_predicted,
  interleave,
  loosest_tolerance,
  phase_taps,
)

__all__ = ["PIXELSHUFFLE"]

# Bytes/s of the shuffle, a copy of the stacked result into the output (read and written): 8 x 28
# x 28 x 256 float32 features to 8 x 56 x 56 x 64 took 0.31 ms on the 2-core AMD EPYC (0.36 with
# YNNPACK fusions off), 41 GB/s.
SHUFFLE_RATE = 40e9


def _axis_windows(
  g: ConvGeometry, axis: int
) -> tuple[list[tuple[slice, int, int]], int, tuple[int, int], int]:
  """One axis: per phase (kernel slice, zeros in front, shift); window, padding, stacked outputs.

  A phase whose taps start at input offset ``c_p`` may sit anywhere in a window of ``W`` taps
  (zeros before and after it), so its window starts anywhere in ``[c_p - W + T_p, c_p]``. Where
  no start suits every phase, a phase is *shifted*: its outputs are read ``shift`` positions
  further into the stacked result, which then needs that many more outputs. Of the windows from
  the longest phase up, the one with the fewest products (window times outputs) is kept: a 4x4
  kernel at stride 2 with lax's ``SAME`` padding has phases at offsets -1 and 0, and takes two
  taps and one more output per axis rather than three taps.
  """
  a, k, o, n = g.lhs_dilation[axis], g.kernel[axis], g.out_spatial[axis], g.in_spatial[axis]
  if a == 1:
    return [(slice(None), 0, 0)], k, g.padding[axis], o
  count = -(-o // a)  # outputs per phase: the last phases' extra one is cropped after the shuffle
  phases = phase_taps(g, axis)
  taps = [t for _, t, _ in phases]
  live = [(c, t) for _, t, c in phases if t]
  start = min(c for c, _ in live)  # every phase's window starts here unless shifted
  windows = range(max(taps), max(c - start + t for c, t in live) + 1)
  spread = lambda w: max(0, max(c - w + t for c, t in live) - start)
  window = min(windows, key=lambda w: (w * (count + spread(w)), w))
  rows = count + spread(window)
  out = []
  for k0, t, c in phases:
    first = max(start, c - window + t) if t else start  # where this phase's window starts
    out.append((slice(k0, k, a), c - first if t else 0, first - start))
  return out, window, (-start, rows + window - 1 - n + start), rows


def _plan(g: ConvGeometry):
  """Every axis's phases, the stacked kernel's shape, and the stride-1 convolution it runs."""
  axes = [_axis_windows(g, d) for d in range(g.ndim)]
  rhs_spec = g.dimension_numbers.rhs_spec
  rhs = list(g.rhs_shape)
  for d, (_, window, _, _) in enumerate(axes):
    rhs[rhs_spec[2 + d]] = window
  rhs[rhs_spec[0]] *= math.prod(g.lhs_dilation)
  padding = [padding for _, _, padding, _ in axes]
  stacked = derive(g, g.lhs_shape, rhs, padding=padding, lhs_dilation=None)
  return axes, stacked


def _stack(rhs: jax.Array, g: ConvGeometry, axes) -> jax.Array:
  """The phase kernels, placed in the common window, side by side in the output features.

  Output features are grouped (``feature_group_count`` or ``batch_group_count`` groups, each a
  contiguous block), so the phases go inside each group: feature ``(group, phase, o)``.
  """
  spec = g.dimension_numbers.rhs_spec
  w = jnp.transpose(rhs, (*spec[2:], spec[1], spec[0]))  # (*K, I, O)
  groups = g.feature_group_count * g.batch_group_count
  pieces = []
  for combo in itertools.product(*(phases for phases, *_ in axes)):
    piece = w[tuple(sl for sl, _, _ in combo)]
    pad = [(front, window - front - piece.shape[d], 0)
           for d, ((_, front, _), (_, window, _, _)) in enumerate(zip(combo, axes))]  # fmt: skip
    pieces.append(lax.pad(piece, jnp.zeros((), w.dtype), [*pad, (0, 0, 0), (0, 0, 0)]))
  stacked = jnp.stack(pieces, axis=-2)  # (*L, I, P, O)
  *lead, i, p, o = stacked.shape
  stacked = stacked.reshape(*lead, i, p, groups, o // groups).swapaxes(-3, -2)
  stacked = stacked.reshape(*lead, i, groups * p * (o // groups))
  return jnp.transpose(stacked, np.argsort((*spec[2:], spec[1], spec[0])))


class PixelShuffle(Algorithm):
  """An input-dilated convolution as one stride-1 convolution of stacked phases, then a shuffle."""

  name = "pixelshuffle"
  exact = False  # the stacked convolution may run Winograd

  def cannot(self, g: ConvGeometry) -> str | None:
    return decomposable(g)

  def predict(self, g: ConvGeometry, variant: Variant) -> float | None:
    """The stacked convolution's best predicted time plus the shuffle's copy."""
    del variant
    _, stacked = _plan(g)
    out_bytes = math.prod(g.out_shape) * np.dtype(g.out_dtype).itemsize
    return fastest_predicted(stacked) + 2 * out_bytes / SHUFFLE_RATE

  def explain(self, g: ConvGeometry, variant: Variant) -> str:
    del variant
    _, stacked = _plan(g)
    return (
      f"one stride-1 convolution with a {stacked.kernel} window and the "
      f"{math.prod(g.lhs_dilation)} phases stacked as output features, then a pixel shuffle"
    )

  def nested(self, g: ConvGeometry, variant: Variant) -> tuple[ConvGeometry, ...]:
    del variant
    return (_plan(g)[1],)

  def tolerance(self, g: ConvGeometry, variant: Variant) -> float:
    del variant
    return loosest_tolerance(_plan(g)[1])

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: Variant) -> jax.Array:
    del variant
    from jaxconv._api import _convolve  # the entry point, which reads the registry

    if g.is_empty:
      return jnp.zeros(g.out_shape, g.out_dtype)
    axes, stacked = _plan(g)
    y = _convolve(
      lhs,
      _stack(rhs, g, axes),
      stacked.strides,
      stacked.padding,
      None,
      stacked.rhs_dilation,
      g.dimension_numbers,
      g.feature_group_count,
      g.batch_group_count,
      g.precision,
      g.preferred_element_type,
    )
    # Features (group, phase, o) back to one array per phase, each in the output layout, its
    # outputs read from the phase's shift on.
    out_spec = g.dimension_numbers.out_spec
    feature, groups = out_spec[1], g.feature_group_count * g.batch_group_count
    phases = list(itertools.product(*(range(len(p)) for p, *_ in axes)))
    split = y.reshape(*y.shape[:feature], groups, len(phases), -1, *y.shape[feature + 1 :])
    parts = {}
    for i, phase in enumerate(phases):
      part = lax.index_in_dim(split, i, feature + 1, keepdims=False)
      part = part.reshape(*y.shape[:feature], -1, *y.shape[feature + 1 :])
      for d, (p, (per_phase, _, _, rows)) in enumerate(zip(phase, axes)):
        shift, spread = per_phase[p][2], max(s for *_, s in per_phase)
        part = lax.slice_in_dim(part, shift, shift + rows - spread, axis=out_spec[2 + d])
      parts[phase] = part
    return interleave(parts, g.lhs_dilation, g.out_spatial, out_spec[2:])


PIXELSHUFFLE = PixelShuffle()
