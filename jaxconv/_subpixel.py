"""Sub-pixel decomposition: an input-dilated convolution as stride-1 convolutions of its phases.

An input dilated by ``a`` (a stride-``a`` layer's input gradient, `lax.conv_transpose`, Flax's
``ConvTranspose``) is ``a - 1`` zeros out of every ``a`` values per axis, and lax multiplies them
all. Per axis, with padding ``lo``, stride 1 and an undilated kernel ``w`` of length ``K``,
output ``o = p + a q`` of phase ``p`` reads the dilated input at ``p + a q + k - lo``, a real input
only for the taps ``k = k0 + a m`` with ``k0 = (lo - p) mod a``, at ``x[q + c + m]`` with
``c = (p + k0 - lo) / a``. So every phase is an ordinary stride-1 correlation of the undilated
input with the kernel's phase ``w[k0::a]``, padded by ``-c`` in front:

    y[p::a] = conv(x, w[k0::a], padding=(-c, ...)).

The ``a^d`` phase convolutions (products over the dilated axes) run on whatever the registry picks
for them (``algorithm="auto"``: Winograd, direct, lax, ...), then interleave. Together they do
``1 / a^d`` of lax's products, and none of them with an inserted zero.

Reference: W. Shi et al., "Real-time single image and video super-resolution using an efficient
sub-pixel convolutional neural network" (CVPR 2016), on transposed convolution as sub-pixel
convolution.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv._algorithm import Algorithm, Variant
from jaxconv._geometry import ConvGeometry, derive

__all__ = [
  "SUBPIXEL",
  "decomposable",
  "fastest_predicted",
  "interleave",
  "loosest_tolerance",
  "phase_taps",
]


def phase_taps(g: ConvGeometry, axis: int) -> list[tuple[int, int, int]]:
  """Per output phase ``p`` of an input-dilated axis: its first tap ``k0``, taps, offset ``c``."""
  a, k, lo = g.lhs_dilation[axis], g.kernel[axis], g.padding[axis][0]
  return [((lo - p) % a, len(range((lo - p) % a, k, a)), (p + (lo - p) % a - lo) // a)
          for p in range(a)]  # fmt: skip


def _axis_phases(g: ConvGeometry, axis: int) -> list[tuple[int, slice, tuple[int, int], int]]:
  """One axis's phases: (output phase p, kernel slice, padding, output count)."""
  a, k, o, n = g.lhs_dilation[axis], g.kernel[axis], g.out_spatial[axis], g.in_spatial[axis]
  if a == 1:
    return [(0, slice(None), g.padding[axis], o)]
  phases = []
  for p, (k0, taps, c) in enumerate(phase_taps(g, axis)[:o]):
    count = len(range(p, o, a))
    phases.append((p, slice(k0, k, a), (-c, count + taps - 1 - n + c), count))
  return phases


def _phases(g: ConvGeometry):
  """Every phase: (per-axis kernel slices, padding, output counts), with its ConvGeometry."""
  per_axis = [_axis_phases(g, d) for d in range(g.ndim)]
  rhs_spec = g.dimension_numbers.rhs_spec
  for combo in itertools.product(*per_axis):
    _, slices, padding, _ = zip(*combo)
    kernel = [len(range(k)[sl]) for k, sl in zip(g.kernel, slices)]
    if 0 in kernel:
      yield combo, None
      continue
    rhs = list(g.rhs_shape)
    for d, size in enumerate(kernel):
      rhs[rhs_spec[2 + d]] = size
    sub = derive(
      g, g.lhs_shape, rhs, window_strides=_strides(g), padding=padding, lhs_dilation=None
    )
    yield combo, dataclasses.replace(sub, reversed_kernel=g.reversed_kernel)


def _strides(g: ConvGeometry) -> tuple[int, ...]:
  return tuple(1 if a > 1 else s for a, s in zip(g.lhs_dilation, g.strides))


def _candidates(g: ConvGeometry):
  """Each algorithm and variant that can compute `g` (a phase convolution: no input dilation)."""
  from jaxconv._registry import REGISTRY  # the registry lists this module too

  return [(a, v) for a in REGISTRY if a.cannot(g) is None for v in a.variants(g)]


def decomposable(g: ConvGeometry) -> str | None:
  """Why `g`'s input dilation cannot be split into phases, or None when it can."""
  if max(g.lhs_dilation, default=1) == 1:
    return "it decomposes an input dilation (lhs_dilation), and this convolution has none"
  for axis, (a, s, d) in enumerate(zip(g.lhs_dilation, g.strides, g.rhs_dilation)):
    if a > 1 and (s > 1 or d > 1):
      return (
        f"spatial axis {axis} has an input dilation ({a}) with a stride ({s}) or kernel "
        f"dilation ({d}) greater than 1"
      )
  return None


def fastest_predicted(sub: ConvGeometry) -> float:
  """The best predicted time of a phase convolution `sub` (lax's where nothing else predicts)."""
  return min(t for a, v in _candidates(sub) if (t := a.predict(sub, v)) is not None)


def loosest_tolerance(sub: ConvGeometry) -> float:
  """The largest tolerance of the algorithms that may compute a phase convolution `sub`."""
  return max(a.tolerance(sub, v) for a, v in _candidates(sub))


class Subpixel(Algorithm):
  """An input-dilated convolution as the interleaved stride-1 convolutions of its phases."""

  name = "subpixel"
  exact = False  # the phases may run Winograd

  def cannot(self, g: ConvGeometry) -> str | None:
    return decomposable(g)

  def predict(self, g: ConvGeometry, variant: Variant) -> float | None:
    """The phases' best predicted times, added up (lax's where nothing else is predicted)."""
    del variant
    return sum(fastest_predicted(sub) for _, sub in _phases(g) if sub is not None)

  def explain(self, g: ConvGeometry, variant: Variant) -> str:
    del variant
    n = math.prod(g.lhs_dilation)
    return f"{n} stride-1 phase convolutions of the undilated input, no products with zeros"

  def nested(self, g: ConvGeometry, variant: Variant) -> tuple[ConvGeometry, ...]:
    del variant
    return tuple(sub for _, sub in _phases(g) if sub is not None)

  def tolerance(self, g: ConvGeometry, variant: Variant) -> float:
    del variant
    return max(loosest_tolerance(sub) for _, sub in _phases(g) if sub is not None)

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: Variant) -> jax.Array:
    del variant
    from jaxconv._api import _convolve  # the entry point, which reads the registry

    _, rhs_spec, out_spec = g.dimension_numbers
    parts = {}
    for combo, sub in _phases(g):
      phase = tuple(p for p, *_ in combo)
      counts = [c for *_, c in combo]
      if sub is None:  # a phase no tap reaches: zeros
        shape = list(g.out_shape)
        for d, c in enumerate(counts):
          shape[out_spec[2 + d]] = c
        parts[phase] = jnp.zeros(shape, g.out_dtype)
        continue
      index = [slice(None)] * rhs.ndim
      for d, (_, sl, _, _) in enumerate(combo):
        index[rhs_spec[2 + d]] = sl
      parts[phase] = _convolve(
        lhs,
        rhs[tuple(index)],
        sub.strides,
        sub.padding,
        None,
        sub.rhs_dilation,
        g.dimension_numbers,
        g.feature_group_count,
        g.batch_group_count,
        g.precision,
        g.preferred_element_type,
        reversed_kernel=g.reversed_kernel,  # a slice of a reversed kernel is a reversed slice
      )
    return interleave(parts, g.lhs_dilation, g.out_spatial, out_spec[2:])


def interleave(parts: dict, factors, sizes, axes) -> jax.Array:
  """The array whose outputs ``phase[d] :: factors[d]`` along ``axes[d]`` are ``parts[phase]``.

  Axis by axis: each phase is padded to ``ceil(size / factor)``, the phases are stacked right
  after the axis, and the two axes merge (a reshape), cropped to `sizes`.
  """
  for d in reversed(range(len(factors))):
    a, o, axis = factors[d], sizes[d], axes[d]
    if a == 1:
      continue
    size, merged = -(-o // a), {}
    for phase, part in sorted(parts.items()):
      pad = [(0, 0)] * part.ndim
      pad[axis] = (0, size - part.shape[axis])
      merged.setdefault(phase[:d] + phase[d + 1 :], []).append(jnp.pad(part, pad))
    parts = {}
    for key, group in merged.items():
      y = jnp.stack(group, axis=axis + 1)
      shape = (*y.shape[:axis], size * len(group), *y.shape[axis + 2 :])
      parts[key] = lax.slice_in_dim(y.reshape(shape), 0, o, axis=axis)
  (y,) = parts.values()
  return y


SUBPIXEL = Subpixel()
