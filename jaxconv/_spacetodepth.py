"""Space to depth: a strided convolution as a stride-1 convolution of the input's phases.

Per axis with window stride ``s`` (no input or kernel dilation), output ``o`` reads the padded
input at ``s o + k``. Writing the tap as ``k = s j + p`` (phase ``p < s``, ``j < W = ceil(K / s)``),

    y[o] = sum_p sum_j X_p[o + j] W_p[j],   X_p[i] = xp[s i + p],   W_p[j] = w[s j + p]

(``W_p[j]`` zero where ``s j + p >= K``): a stride-1 correlation over ``j`` whose channel sum runs
over ``(p, c)``. Reshaping the padded input so that each block of ``s`` positions becomes ``s``
times the features (TensorFlow's ``space_to_depth``), and the kernel likewise, turns the layer
into **one** stride-1 convolution with a ``W``-wide window, ``s^d`` times the input features and
the same outputs, which goes back to the registry. A kernel as wide as its stride (a patchify
stem, ConvNeXt's 2x2 downsampling) becomes one 1x1 product; a 4x4 kernel at stride 2 (a DCGAN
layer, the input gradient of a 4x4 transposed convolution) a 2x2 convolution with no zero taps,
which Winograd F(4, 2) runs with 25 products per 16 outputs where lax does 64. A 3x3 kernel at
stride 2 stacks as 2x2 with 7 of 16 taps zero, and the rearranged input costs more than the
stride saves: the tuner decides.

Reference: the rearrangement is TensorFlow's ``tf.nn.space_to_depth``; the identity is the adjoint
of the pixel shuffle (`_pixelshuffle.py`) of W. Shi et al., "Real-time single image and video
super-resolution using an efficient sub-pixel convolutional neural network" (CVPR 2016).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv._algorithm import Algorithm, Variant
from jaxconv._geometry import ConvGeometry, derive
from jaxconv._subpixel import loosest_tolerance

__all__ = ["SPACETODEPTH"]


def _inner(g: ConvGeometry) -> tuple[list[int], ConvGeometry]:
  """Per axis the phase inputs' length, and the stride-1 convolution they make (channels last)."""
  nd = g.ndim
  rows, window, padding = [], [], []
  for s, k, pad, n, o in zip(g.strides, g.kernel, g.padding, g.in_spatial, g.out_spatial):
    if s == 1:
      rows.append(n)
      window.append(k)
      padding.append(pad)
    else:
      window.append(-(-k // s))
      rows.append(o + window[-1] - 1)
      padding.append((0, 0))
  blocks = math.prod(g.strides)
  lhs = (g.batch, *rows, g.in_features * blocks)
  rhs = (*window, g.group_in_features * blocks, g.out_features)
  dn = lax.ConvDimensionNumbers(
    (0, nd + 1, *range(1, nd + 1)), (nd + 1, nd, *range(nd)), g.dimension_numbers.out_spec
  )
  inner = derive(g, lhs, rhs, window_strides=(1,) * nd, padding=padding, dimension_numbers=dn)
  return rows, inner


def _to_depth(a: jax.Array, strides, groups: int) -> jax.Array:
  """(N, *S, C), each ``S[d]`` a multiple of ``strides[d]`` -> (N, *S / s, groups * s^d * C').

  The features of each block of positions go inside each of the ``groups`` feature groups, in the
  order (group, position in the block, feature).
  """
  n, *spatial, c = a.shape
  split = [v for size, s in zip(spatial, strides) for v in (size // s, s)]
  a = a.reshape(n, *split, groups, c // groups)
  nd = len(spatial)
  order = (0, *range(1, 2 * nd, 2), 2 * nd + 1, *range(2, 2 * nd + 1, 2), 2 * nd + 2)
  a = jnp.transpose(a, order)  # (N, *S / s, groups, *s, C')
  return a.reshape(n, *(size // s for size, s in zip(spatial, strides)), -1)


class SpaceToDepth(Algorithm):
  """A strided convolution as one stride-1 convolution of the input's phases stacked as features."""

  name = "spacetodepth"
  exact = False  # the stacked convolution may run Winograd

  def cannot(self, g: ConvGeometry) -> str | None:
    if max(g.strides, default=1) == 1:
      return f"it splits a window stride into phases, and this convolution has strides {g.strides}"
    if max(g.lhs_dilation) > 1:
      return f"it has no input dilation (lhs_dilation={g.lhs_dilation})"
    for axis, (s, d) in enumerate(zip(g.strides, g.rhs_dilation)):
      if s > 1 and d > 1:
        return f"spatial axis {axis} has both a stride ({s}) and a kernel dilation ({d})"
    if g.batch_group_count > 1:
      return f"it has no batch groups (batch_group_count={g.batch_group_count})"
    return None

  def explain(self, g: ConvGeometry, variant: Variant) -> str:
    del variant
    return (
      f"one stride-1 convolution with a {_inner(g)[1].kernel} window over the input's "
      f"{math.prod(g.strides)} phases stacked as features"
    )

  def why_not_predicted(self, g: ConvGeometry) -> str:
    del g
    return "space to depth is chosen by measurement only"

  def nested(self, g: ConvGeometry, variant: Variant) -> tuple[ConvGeometry, ...]:
    del variant
    return (_inner(g)[1],)

  def tolerance(self, g: ConvGeometry, variant: Variant) -> float:
    del variant
    return loosest_tolerance(_inner(g)[1])

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: Variant) -> jax.Array:
    del variant
    from jaxconv._api import _convolve  # the entry point, which reads the registry

    if g.is_empty:
      return jnp.zeros(g.out_shape, g.out_dtype)
    rows, inner = _inner(g)
    lhs_spec, rhs_spec, _ = g.dimension_numbers
    groups, strides = g.feature_group_count, g.strides
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # (N, *S, C)
    # Pad (or crop) each strided axis to exactly `stride * rows` positions.
    config = [(0, 0, 0)]
    for s, (lo, _), n, r in zip(strides, g.padding, g.in_spatial, rows):
      config.append((lo, s * r - n - lo, 0) if s > 1 else (0, 0, 0))
    x = lax.pad(x, jnp.zeros((), x.dtype), [*config, (0, 0, 0)])
    x = _to_depth(x, strides, groups)
    w = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # (*K, I, O)
    pad = [(0, s * wd - k, 0) for s, k, wd in zip(strides, g.kernel, inner.kernel)]
    w = lax.pad(w, jnp.zeros((), w.dtype), [*pad, (0, 0, 0), (0, 0, 0)])
    # The taps in blocks as the input's positions are: output features in front, as a batch,
    # (O, *K, I) -> (O, *W, s^d * I), then back to (*W, s^d * I, O).
    w = jnp.moveaxis(_to_depth(jnp.moveaxis(w, -1, 0), strides, 1), 0, -1)
    return _convolve(
      x,
      w,
      inner.strides,
      inner.padding,
      None,
      inner.rhs_dilation,
      inner.dimension_numbers,
      inner.feature_group_count,
      1,
      g.precision,
      g.preferred_element_type,
    )


SPACETODEPTH = SpaceToDepth()
