"""The kernel gradient of a Winograd layer, computed in the Winograd domain.

A layer that runs F(m, r) forward computes ``Y = AT [U * V] A`` per tile, with ``U = G g GT`` the
transformed kernel and ``V = BT d B`` the transformed input tile, summed over input channels: for
each of the ``n^d`` transformed positions ``xi``, ``M[xi] = V[xi] @ U[xi]`` (tiles x C times
C x O). Its kernel gradient follows by the chain rule through the same stages, backwards:

    dM = A dY AT              (the output-gradient tiles, through the transposed output transform)
    dU[xi] = V[xi]^T @ dM[xi]  (one GEMM per position, summing over examples and tiles)
    dg = GT dU G               (one small transform back)

so it costs what the forward costs: the input transform, one output-sized transform and
``n^d`` GEMMs, where lax computes the kernel gradient as a convolution whose "kernel" is the whole
output gradient. It is F(r, m) run backwards, in the words of Lavin and Gray.

Here that chain is JAX's own reverse mode of the forward `winograd` with respect to the kernel
alone: the input transform runs forward as it is, and the transposes of the output stage are
pads and reshapes. As a registry algorithm it takes the kernel-gradient geometry that
`jaxconv._autodiff` states (input and output gradient as lhs and rhs, the kernel as the result)
and rebuilds the forward layer from it.

Reference: A. Lavin and S. Gray, "Fast algorithms for convolutional neural networks" (CVPR 2016),
section 4 (the gradient computations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv._algorithm import Algorithm
from jaxconv._autodiff import _swap01
from jaxconv._geometry import ConvGeometry, normalize
from jaxconv._winograd import TILES, WINOGRAD, winograd

__all__ = ["WGRAD"]

# Measured on the reference CPU (2 cores, float32) on the 3x3x3 layer 2x16x32x32x32 -> 32: the
# kernel gradient by F(4,3)^3 ran 55.3 ms against the forward's 6.43 ms (lax's: 90.7 ms).
BACKWARD_COST = 8.6


def forward_of(g: ConvGeometry) -> ConvGeometry | None:
  """The forward layer whose kernel gradient `g` is, or None when `g` is not that shape."""
  if max(g.lhs_dilation, default=1) > 1 or g.ndim == 0:
    return None
  lhs_spec, rhs_spec, out_spec = g.dimension_numbers
  # _autodiff._transpose_rhs: lhs = x (batch and feature swapped), rhs = the output gradient,
  # window strides = the layer's kernel dilation, kernel dilation = its strides.
  kernel = g.out_spatial
  padding = []
  for n, o, k, s, d, (lo, _) in zip(
    g.in_spatial, g.kernel, kernel, g.rhs_dilation, g.strides, g.padding
  ):
    padding.append((lo, (o - 1) * s + (k - 1) * d + 1 - n - lo))
  fwd_rhs = list(g.out_shape)  # the kernel's shape in its own layout
  try:
    return normalize(
      jax.ShapeDtypeStruct(g.lhs_shape, g.dtype),
      jax.ShapeDtypeStruct(tuple(fwd_rhs), g.dtype),
      g.rhs_dilation,
      padding,
      None,
      g.strides,
      lax.ConvDimensionNumbers(_swap01(lhs_spec), _swap01(out_spec), _swap01(rhs_spec)),
      g.batch_group_count,
      g.feature_group_count,
      g.precision,
      g.preferred_element_type,
    )
  except (TypeError, ValueError):
    return None


class Wgrad(Algorithm):
  """A Winograd layer's kernel gradient, in the Winograd domain."""

  name = "wgrad"
  exact = False

  def forced(self) -> dict:
    return {"wgrad": None, **{f"wgrad{m}": m for m in TILES}}

  def cannot(self, g: ConvGeometry) -> str | None:
    fwd = forward_of(g)
    if fwd is None or tuple(fwd.out_shape) != tuple(g.rhs_shape):
      return "it computes kernel gradients of layers, and this convolution is not one"
    why = WINOGRAD.cannot(fwd)
    return None if why is None else f"the forward layer cannot run Winograd: {why}"

  def variants(self, g: ConvGeometry) -> tuple[tuple[int, ...], ...]:
    return WINOGRAD.variants(forward_of(g))

  def resolve(self, g: ConvGeometry, hint: object) -> tuple[int, ...]:
    return WINOGRAD.resolve(forward_of(g), hint)

  def predict(self, g: ConvGeometry, variant) -> float | None:
    fwd = forward_of(g)
    if fwd.ndim < 3:
      return None
    forward = WINOGRAD.predict(fwd, variant)
    return None if forward is None else forward * BACKWARD_COST

  def why_not_predicted(self, g: ConvGeometry) -> str:
    if forward_of(g).ndim < 3:
      return (
        "a 2-D kernel gradient in the Winograd domain measured slower than lax's (ResNet-50 "
        "28x28x128: 16.5 against 13.5 ms)"
      )
    return "wgrad: " + WINOGRAD.why_not_predicted(forward_of(g))

  def explain(self, g: ConvGeometry, variant) -> str:
    return f"the kernel gradient of {WINOGRAD.explain(forward_of(g), variant)}, transformed"

  def tolerance(self, g: ConvGeometry, variant) -> float:
    return WINOGRAD.tolerance(forward_of(g), variant)

  def describe(self, g: ConvGeometry, variant) -> dict:
    return WINOGRAD.describe(forward_of(g), variant)

  def label(self, variant) -> str:
    return "wgrad" if variant is None else f"wgrad{max(variant)}"

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant) -> jax.Array:
    fwd = forward_of(g)
    w0 = jnp.zeros(fwd.rhs_shape, lhs.dtype)
    _, pullback = jax.vjp(lambda w: winograd(lhs, w, fwd, variant), w0)
    (dw,) = pullback(rhs.astype(fwd.out_dtype))
    return dw.astype(g.out_dtype)


WGRAD = Wgrad()
