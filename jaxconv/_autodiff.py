"""Derivatives of jaxconv's algorithms, computed by jaxconv's algorithms.

JAX can differentiate im2col and Winograd as written, but reverse mode would then run the
transposes of their data movement: im2col's patch gather becomes a scatter-add, and each of
Winograd's n^2 strided tile views becomes a full-size padded array, summed one by one. Instead every
convolution jaxconv runs (all but a forced lax and trivial ones) is one primitive,
``jaxconv_conv``, with the rules lax's own convolution has:

* it is **bilinear**, so its tangent is ``conv(dx, w) + conv(x, dw)`` with the same geometry and
  algorithm (`ad.defbilinear`): forward mode (`jvp`, `jacfwd`) stays a jaxconv convolution;
* its **transposes** are convolutions again, computed by `jaxconv.conv_general_dilated` with
  ``algorithm="auto"``, so the same rule that picks the forward algorithm picks the backward ones;
* under **vmap** the mapped axis is folded into the batch or the features (or groups) of one larger
  convolution, which keeps the algorithm;
* it **lowers** to the algorithm itself, and its abstract evaluation is lax's, so shapes, dtypes
  and shardings are exactly lax's; with explicitly sharded operands the algorithm runs with the
  mesh axes switched to Auto (`jax.sharding.auto_axes`), XLA propagating the shardings inside.

Since the transposes and the batched forms bind the primitive (or lax) again, every higher
derivative, `vmap` of a gradient and gradient of a `vmap` stays on these rules.

The transposes, per spatial axis (the axes are independent). Write ``L`` for the input length,
``K`` the kernel length, ``O`` the output length, ``s`` the stride, ``(lo, hi)`` the padding, ``a``
the input (lhs) dilation and ``d`` the kernel (rhs) dilation; dilated lengths are ``La = (L-1)a+1``,
``Kd = (K-1)d+1``, ``Os = (O-1)s+1``. The forward convolution reads

    y[o] = sum_k xp[o s + k d] w[k],   xp[j] = x[(j - lo) / a] where that is an integer in range.

*Input gradient.* Collecting the terms of ``x[i]``: ``dx[i] = sum_{o,k} g[o] w[k] [o s + k d - lo =
i a]``. With ``g`` dilated by ``s`` and the kernel reversed (``k -> K-1-k``) this is again a
correlation: input ``g`` with lhs dilation ``s``, window stride ``a``, kernel dilation ``d`` and
low padding ``Kd - 1 - lo``; the high padding ``La + Kd - 1 - Os - (Kd - 1 - lo)`` makes the padded
length ``La + Kd - 1``, which yields exactly ``L`` outputs. Features swap roles (the kernel's input
and output feature dimensions trade places). With G feature groups the kernel's output features
split into (G, O/G) and G moves into its input-feature dimension, so the transpose is grouped by G
too; with B batch groups the same regrouping runs, and the result's B feature blocks go back into
the batch dimension (lax splits the batch group-major).

*Kernel gradient.* ``dw[k] = sum_o g[o] xp[o s + k d]``: a correlation of ``x`` (lhs dilation ``a``,
low padding ``lo``) with ``g`` as the kernel, dilated by ``s``, window stride ``d``; the high
padding ``Os - La + Kd - 1 - lo`` leaves exactly ``K`` outputs. The batch dimension is contracted,
so the input's batch and feature dimensions swap roles, as do the cotangent's (now the kernel) and
the result's (in the kernel's layout). Feature groups of the forward become batch groups of the
kernel gradient and vice versa.

*Kernel gradient of an input-dilated convolution* (a transposed convolution: ``a > 1``, ``s = 1``,
no groups). The form above convolves the dilated input, ``a - 1`` zeros between its elements, and
most of its products are with those zeros. Collecting the terms instead by input element,
``dw[k] = sum_i x[i] g[lo + i a - k d]``, and reversing the kernel (``k -> K-1-k``), this is a
correlation of ``g`` (low padding ``Kd - 1 - lo``, window stride ``d``) with ``x`` as the kernel,
dilated by ``a``: the form of a strided convolution's kernel gradient, with no inserted zeros to
multiply. The high padding ``Kd - 1 + La - O - (Kd - 1 - lo)`` leaves exactly ``K`` outputs; the
batch dimension is contracted, so the cotangent's batch and feature dimensions swap roles, as do
the input's, and the result, in the kernel's layout, is reversed back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxconv._geometry import ConvGeometry, normalize, renormalize

__all__ = ["conv", "conv_p", "kernel_gradient_geometry"]

conv_p = Primitive("jaxconv_conv")
"""One non-lax convolution: operands (lhs, rhs); params geometry, algorithm, tile."""


def conv(
  lhs: jax.Array,
  rhs: jax.Array,
  g: ConvGeometry,
  algorithm: str,
  tile: tuple[int, ...] | None,
  out_sharding: Any = None,
) -> jax.Array:
  """Runs `algorithm` ("im2col" or "winograd") on `g`, with jaxconv's derivative rules.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv._geometry import normalize
    >>> x, w = jnp.ones((1, 1, 5)), jnp.ones((1, 1, 3))
    >>> g = normalize(x, w, (1,), "VALID")
    >>> jax.grad(lambda x: conv(x, w, g, "im2col", None).sum())(x).tolist()
    [[[1.0, 2.0, 3.0, 2.0, 1.0]]]
  """
  bind = lambda lhs, rhs: conv_p.bind(lhs, rhs, geometry=g, algorithm=algorithm, tile=tile)
  if not any(_explicit_axes(x) for x in (lhs, rhs)):
    return bind(lhs, rhs)
  # Explicitly sharded operands: the algorithms' reshapes and gathers have no sharding rule for
  # every case, so they run with the mesh axes Auto (XLA propagates the operands' shardings, as in
  # a plain `jit`), and the result gets `out_sharding`, or the sharding lax would give it.
  if out_sharding is None:
    out_sharding = _abstract_eval(
      jax.typeof(lhs), jax.typeof(rhs), geometry=g, algorithm=algorithm, tile=tile
    ).sharding
  return jax.sharding.auto_axes(bind, out_sharding=out_sharding)(lhs, rhs)


def _explicit_axes(x: Any) -> bool:
  aval = x if isinstance(x, jax.core.ShapedArray) else jax.typeof(x)
  sharding = getattr(aval, "sharding", None)
  return bool(getattr(getattr(sharding, "mesh", None), "explicit_axes", ()))


def _run(lhs, rhs, *, geometry, algorithm, tile):
  # Looked up at call time, so that the entry point's `_run` stays the one place algorithms run.
  from jaxconv import _api

  return _api._run(lhs, rhs, geometry, algorithm, tile)


def _abstract_eval(lhs, rhs, *, geometry, algorithm, tile):
  del algorithm, tile
  g = geometry
  # lax's rule gives the result's sharding, varying manual axes and memory space as well as its
  # shape and dtype, so jaxconv's output type is exactly lax's under every mesh.
  out, _ = lax.conv_general_dilated_p.abstract_eval(
    lhs,
    rhs,
    window_strides=g.strides,
    padding=g.padding,
    lhs_dilation=g.lhs_dilation,
    rhs_dilation=g.rhs_dilation,
    dimension_numbers=g.dimension_numbers,
    feature_group_count=g.feature_group_count,
    batch_group_count=g.batch_group_count,
    precision=None,
    preferred_element_type=None if g.preferred_element_type is None else g.out_dtype,
    out_sharding=None,
  )
  if tuple(out.shape) != g.out_shape or np.dtype(out.dtype) != g.out_dtype:
    raise AssertionError(f"geometry {g} disagrees with lax's abstract evaluation {out}")
  return out


conv_p.def_impl(_run)
conv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(conv_p, mlir.lower_fun(_run, multiple_results=False))


# Axis surgery. ---------------------------------------------------------------------------------


def _split(x: jax.Array, axis: int, n: int) -> jax.Array:
  """Splits `axis` (size n*m) into two axes (n, m), n major."""
  shape = list(x.shape)
  shape[axis : axis + 1] = [n, shape[axis] // n]
  return x.reshape(shape)


def _fold(x: jax.Array, src: int, dst: int) -> jax.Array:
  """Folds axis `src` into axis `dst` as its major part; `dst` is numbered without `src`."""
  rest = [i for i in range(x.ndim) if i != src]
  x = jnp.transpose(x, [*rest[:dst], src, *rest[dst:]])
  shape = list(x.shape)
  shape[dst : dst + 2] = [shape[dst] * shape[dst + 1]]
  return x.reshape(shape)


def _swap01(spec: Sequence[int]) -> tuple[int, ...]:
  return (spec[1], spec[0], *spec[2:])


def _dilated(n: int, d: int) -> int:
  return (n - 1) * d + 1 if n else 0


def _jaxconv(lhs, rhs, **kwargs) -> jax.Array:
  from jaxconv._api import _convolve

  return _convolve(lhs, rhs, **kwargs, algorithm="auto")


def _aval(x):
  return x.aval if hasattr(x, "aval") else jax.typeof(x)


def _sharding_of(aval) -> Any:
  """The sharding a transpose must give its result: the operand's, when it is explicit."""
  return aval.sharding if _explicit_axes(aval) else None


# Transposes. -----------------------------------------------------------------------------------


def _transpose_lhs(ct, lhs, rhs, *, geometry: ConvGeometry, algorithm, tile):
  del algorithm, tile
  g = geometry
  aval = _aval(lhs)
  if math.prod(ct.shape) == 0 or math.prod(rhs.shape) == 0 or math.prod(aval.shape) == 0:
    return jnp.zeros(aval.shape, aval.dtype)
  lhs_spec, rhs_spec, out_spec = g.dimension_numbers
  groups = max(g.feature_group_count, g.batch_group_count)
  w = rhs
  if groups > 1:  # (O, I) -> (O/G, G*I): the groups move to the transposed output features
    w = _fold(_split(w, rhs_spec[0], groups), rhs_spec[0], rhs_spec[1])
  w = lax.rev(w, rhs_spec[2:]).astype(ct.dtype)
  padding = []
  for n, k, o, s, (lo, _), a, d in zip(
    g.in_spatial, g.kernel, g.out_spatial, g.strides, g.padding, g.lhs_dilation, g.rhs_dilation
  ):
    kd = _dilated(k, d)
    before = kd - 1 - lo
    padding.append((before, _dilated(n, a) + kd - 1 - _dilated(o, s) - before))
  out = _jaxconv(
    ct,
    w,
    window_strides=g.lhs_dilation,
    padding=padding,
    lhs_dilation=g.strides,
    rhs_dilation=g.rhs_dilation,
    dimension_numbers=lax.ConvDimensionNumbers(out_spec, _swap01(rhs_spec), lhs_spec),
    feature_group_count=groups,
    precision=g.precision,
    preferred_element_type=g.preferred_element_type,
    out_sharding=_sharding_of(aval) if g.batch_group_count == 1 else None,
    reversed_kernel=not g.reversed_kernel,  # rev(rev(w)) is w again: XLA cancels the pair
  ).astype(aval.dtype)
  if g.batch_group_count > 1:  # (N/B, B*C) -> (N, C), batch groups major as lax splits them
    out = _fold(_split(out, lhs_spec[1], g.batch_group_count), lhs_spec[1], lhs_spec[0])
  return out


def _dilated_kernel_form(g: ConvGeometry) -> bool:
  """Whether the kernel gradient is taken in its dilated-kernel form (module docstring)."""
  ungrouped = g.feature_group_count == 1 and g.batch_group_count == 1
  return ungrouped and max(g.strides, default=1) == 1 and max(g.lhs_dilation, default=1) > 1


def _transpose_rhs(ct, lhs, rhs, *, geometry: ConvGeometry, algorithm, tile):
  del algorithm, tile
  g = geometry
  aval = _aval(rhs)
  if math.prod(ct.shape) == 0 or math.prod(lhs.shape) == 0 or math.prod(aval.shape) == 0:
    return jnp.zeros(aval.shape, aval.dtype)
  lhs_spec, rhs_spec, out_spec = g.dimension_numbers
  if _dilated_kernel_form(g):
    padding = []
    for n, k, o, (lo, _), a, d in zip(
      g.in_spatial, g.kernel, g.out_spatial, g.padding, g.lhs_dilation, g.rhs_dilation
    ):
      before = _dilated(k, d) - 1 - lo
      padding.append((before, _dilated(k, d) - 1 + _dilated(n, a) - o - before))
    reversed_dw = _jaxconv(
      ct,
      lhs.astype(ct.dtype),
      window_strides=g.rhs_dilation,
      padding=padding,
      rhs_dilation=g.lhs_dilation,
      dimension_numbers=lax.ConvDimensionNumbers(_swap01(out_spec), _swap01(lhs_spec), rhs_spec),
      precision=g.precision,
      preferred_element_type=g.preferred_element_type,
      out_sharding=_sharding_of(aval),
    )
    return lax.rev(reversed_dw, rhs_spec[2:]).astype(aval.dtype)
  return _jaxconv(
    lhs.astype(ct.dtype), ct, **_kernel_gradient_call(g), out_sharding=_sharding_of(aval)
  ).astype(aval.dtype)


def _kernel_gradient_call(g: ConvGeometry) -> dict:
  """The convolution arguments of the kernel gradient of `g` (module docstring), but the dilated
  kernel form's: input ``x``, kernel the output gradient."""
  lhs_spec, rhs_spec, out_spec = g.dimension_numbers
  padding = []
  for n, k, o, s, (lo, _), a, d in zip(
    g.in_spatial, g.kernel, g.out_spatial, g.strides, g.padding, g.lhs_dilation, g.rhs_dilation
  ):
    padding.append((lo, _dilated(o, s) - _dilated(n, a) + _dilated(k, d) - 1 - lo))
  return dict(
    window_strides=g.rhs_dilation,
    padding=padding,
    lhs_dilation=g.lhs_dilation,
    rhs_dilation=g.strides,
    dimension_numbers=lax.ConvDimensionNumbers(
      _swap01(lhs_spec), _swap01(out_spec), _swap01(rhs_spec)
    ),
    feature_group_count=g.batch_group_count,
    batch_group_count=g.feature_group_count,
    precision=g.precision,
    preferred_element_type=g.preferred_element_type,
  )


def kernel_gradient_geometry(g: ConvGeometry) -> ConvGeometry | None:
  """The geometry of the convolution that reverse mode runs for the kernel gradient of `g`.

  None where it takes the dilated-kernel form (`_dilated_kernel_form`) or `g` is empty.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv._geometry import normalize
    >>> g = normalize(jnp.ones((8, 6, 6, 2)), jnp.ones((3, 3, 2, 4)), (1, 1), "SAME",
    ...               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> kernel_gradient_geometry(g).out_shape  # the kernel's
    (3, 3, 2, 4)
  """
  if g.is_empty or _dilated_kernel_form(g):
    return None
  dtype = jax.ShapeDtypeStruct
  lhs, ct = dtype(g.lhs_shape, g.dtype), dtype(g.out_shape, g.dtype)
  return normalize(lhs, ct, **_kernel_gradient_call(g))


ad.defbilinear(conv_p, _transpose_lhs, _transpose_rhs)


# Batching. -------------------------------------------------------------------------------------


def _rebind(lhs, rhs, g: ConvGeometry, fgc: int, bgc: int, algorithm: str, tile):
  """The same convolution on reshaped operands, with the same algorithm and tile."""
  g2 = renormalize(g, lhs, rhs, fgc, bgc)
  return conv_p.bind(lhs, rhs, geometry=g2, algorithm=algorithm, tile=tile)


def _batch(args, dims, *, geometry: ConvGeometry, algorithm, tile):
  lhs, rhs = args
  lb, rb = dims
  g = geometry
  lhs_spec, rhs_spec, out_spec = g.dimension_numbers
  fgc, bgc = g.feature_group_count, g.batch_group_count
  size = lhs.shape[lb] if lb is not None else rhs.shape[rb]
  if size == 0:  # folding an empty axis would lose the other axis's size
    return jnp.zeros((0, *g.out_shape), g.out_dtype), 0
  bind = lambda x, w, f, b: _rebind(x, w, g, f, b, algorithm, tile)

  if lb is not None and rb is not None:
    # Each mapped pair is its own group: (V*N or V*C) with the kernel's (V*O).
    w = _fold(rhs, rb, rhs_spec[0])
    if bgc > 1:
      out = bind(_fold(lhs, lb, lhs_spec[0]), w, fgc, bgc * size)
    else:
      out = bind(_fold(lhs, lb, lhs_spec[1]), w, fgc * size, bgc)
    return _split(out, out_spec[1], size), out_spec[1]

  if lb is not None:
    if bgc == 1:  # mapped examples are just more examples
      out = bind(_fold(lhs, lb, lhs_spec[0]), rhs, fgc, bgc)
      return _split(out, out_spec[0], size), out_spec[0]
    # Batch groups stay major: (V, B*n) -> (B, V*n) -> B*V*n.
    x = _split(lhs, lhs_spec[0] + (lb <= lhs_spec[0]), bgc)
    x = _fold(x, lb + (lhs_spec[0] < lb), lhs_spec[0] + 1)
    out = bind(_fold(x, lhs_spec[0], lhs_spec[0]), rhs, fgc, bgc)
    return _split(out, out_spec[0], size), out_spec[0]

  if fgc == 1 and bgc == 1:  # mapped kernels are just more output features
    out = bind(lhs, _fold(rhs, rb, rhs_spec[0]), fgc, bgc)
    return _split(out, out_spec[1], size), out_spec[1]
  # Groups stay major in the output features: (V, G*o) -> (G, V*o) -> G*V*o, and back.
  groups = max(fgc, bgc)
  w = _split(rhs, rhs_spec[0] + (rb <= rhs_spec[0]), groups)
  w = _fold(w, rb + (rhs_spec[0] < rb), rhs_spec[0] + 1)
  out = bind(lhs, _fold(w, rhs_spec[0], rhs_spec[0]), fgc, bgc)
  out = _split(_split(out, out_spec[1], groups), out_spec[1] + 1, size)
  return _fold(out, out_spec[1], out_spec[1] + 1), out_spec[1]


batching.primitive_batchers[conv_p] = _batch
