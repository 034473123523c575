"""Derivatives through jaxconv's algorithms equal lax's, and the backward pass is convolutions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _api
from tests.util import HIGHEST, rel_err, rng_for

ALGORITHMS = ["im2col", "winograd4"]

# (name, lhs shape, rhs shape, dtype, conv keyword arguments): every layout, stride, padding form,
# dilation and group kind, in 1-D and 2-D, each a geometry Winograd can compute too.
CASES = [
  ("nhwc-same", (2, 7, 9, 4), (3, 3, 4, 6), "float32",
   dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
  ("nchw-stride2-valid", (2, 3, 9, 8), (5, 3, 3, 3), "float64",
   dict(window_strides=(2, 2), padding="VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))),
  ("negative-pad-rhs-dilation", (1, 8, 10, 3), (3, 3, 3, 4), "float32",
   dict(window_strides=(2, 1), padding=((1, 2), (0, -1)), rhs_dilation=(1, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
  ("lhs-dilation-groups", (2, 4, 5, 6), (4, 2, 3, 2), "float64",
   dict(window_strides=(1, 1), padding=((2, 1), (1, 1)), lhs_dilation=(2, 1),
        dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=2)),
  ("lhs-rhs-dilation-negative-pad", (2, 5, 6, 3), (3, 2, 3, 4), "float64",
   dict(window_strides=(1, 1), padding=((2, -1), (1, 3)), lhs_dilation=(2, 3), rhs_dilation=(2, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
  ("1d-transposed-oih", (3, 4, 7), (5, 4, 4), "float32",
   dict(window_strides=(1,), padding=((3, 1),), lhs_dilation=(2,),
        dimension_numbers=("NCH", "OIH", "NCH"))),
  ("depthwise-same-lower", (2, 6, 7, 4), (3, 3, 1, 8), "float32",
   dict(window_strides=(1, 2), padding="SAME_LOWER", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=4)),
  ("batch-groups", (4, 6, 6, 3), (3, 3, 3, 4), "float32",
   dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        batch_group_count=2)),
  ("odd-layouts", (3, 5, 2, 6), (2, 3, 4, 3), "float64",
   dict(window_strides=(1, 2), padding=((1, 0), (0, 2)),
        dimension_numbers=("CHNW", "WIOH", "WNHC"))),
  ("1d-stride3", (2, 13, 3), (4, 3, 5), "float64",
   dict(window_strides=(3,), padding=((2, 1),), dimension_numbers=("NWC", "WIO", "NWC"))),
  ("1d-dilated-batch-groups", (4, 4, 12), (6, 4, 3), "float32",
   dict(window_strides=(1,), padding=((2, 1),), rhs_dilation=(2,),
        dimension_numbers=("NCH", "OIH", "NCH"), batch_group_count=2)),
  ("1d-transposed-groups", (2, 6, 5), (6, 2, 3), "float32",
   dict(window_strides=(1,), padding=((2, 2),), lhs_dilation=(3,),
        dimension_numbers=("NCH", "OIH", "NCH"), feature_group_count=3)),
  ("preferred-float64", (2, 6, 6, 3), (3, 3, 3, 5), "float32",
   dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=np.float64)),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def _tolerance(dtype, algorithm: str) -> float:
  if np.dtype(dtype) == np.float64:
    return 1e-11
  return 1e-4 if algorithm.startswith("winograd") else 1e-5  # F(4, 3)'s float32 rounding


def _operands(name, lhs_shape, rhs_shape, dtype):
  rng = rng_for(name)
  x = rng.standard_normal(lhs_shape).astype(dtype)
  w = rng.standard_normal(rhs_shape).astype(dtype)
  return x, w, rng


def _convs(kwargs, algorithm):
  kwargs = dict(kwargs, precision=HIGHEST)
  ours = lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm=algorithm)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  return ours, ref


def _assert_close(got, want, tol):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    err = rel_err(a, b)
    assert err <= tol, f"normwise relative error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name,lhs_shape,rhs_shape,dtype,kwargs", CASES, ids=IDS)
def test_first_derivatives_match_lax(name, lhs_shape, rhs_shape, dtype, kwargs, algorithm):
  x, w, rng = _operands(name, lhs_shape, rhs_shape, dtype)
  ours, ref = _convs(kwargs, algorithm)
  y = jax.eval_shape(ref, x, w)
  ct = rng.standard_normal(y.shape).astype(y.dtype)
  tx, tw = rng.standard_normal(x.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)

  def derivatives(conv):
    def f(x, w, ct, tx, tw):
      y, vjp = jax.vjp(conv, x, w)
      _, tangent = jax.jvp(conv, (x, w), (tx, tw))
      return y, vjp(ct), tangent

    return jax.jit(f)(x, w, ct, tx, tw)

  _assert_close(derivatives(ours), derivatives(ref), _tolerance(dtype, algorithm))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_second_derivatives_match_lax(algorithm):
  name, _, _, dtype, kwargs = CASES[1]  # stride 2: every transpose is strided
  x, w, rng = _operands(name, (1, 2, 6, 5), (2, 2, 3, 3), dtype)
  ours, ref = _convs(kwargs, algorithm)
  ct = rng.standard_normal(jax.eval_shape(ref, x, w).shape)

  def second(conv):
    loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * ct)
    hvp = jax.jvp(jax.grad(loss, (0, 1)), (x, w), (x, w))[1]
    return hvp, jax.hessian(loss)(x, w), jax.jacfwd(conv, 1)(x, w), jax.jacrev(conv, 1)(x, w)

  _assert_close(jax.jit(lambda: second(ours))(), jax.jit(lambda: second(ref))(), 1e-11)


# (lhs axis, rhs axis, groups): every branch of the batching rule, mapped axes not in front.
VMAPS = [
  (1, None, {}),
  (3, None, {"batch_group_count": 2}),
  (None, 2, {}),
  (None, 0, {"feature_group_count": 2}),
  (None, 3, {"batch_group_count": 2}),
  (2, 1, {"feature_group_count": 2}),
  (0, 3, {"batch_group_count": 2}),
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("lhs_axis,rhs_axis,groups", VMAPS)
def test_vmap_and_its_gradient_match_lax(lhs_axis, rhs_axis, groups, algorithm):
  rng = rng_for(f"vmap{lhs_axis}{rhs_axis}{groups}")
  v = 3
  x = rng.standard_normal((4, 6, 5, 4))
  w = rng.standard_normal((3, 3, 4 // groups.get("feature_group_count", 1), 4))
  if lhs_axis is not None:
    x = np.stack([x] * v, lhs_axis) * rng.standard_normal(v).reshape(
      [v if i == lhs_axis else 1 for i in range(5)]
    )
  if rhs_axis is not None:
    w = np.stack([w] * v, rhs_axis) * rng.standard_normal(v).reshape(
      [v if i == rhs_axis else 1 for i in range(5)]
    )
  kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours, ref = _convs(dict(kwargs, **groups), algorithm)

  def batched(conv):
    mapped = jax.vmap(conv, (lhs_axis, rhs_axis))
    loss = lambda x, w: jnp.sum(jnp.sin(mapped(x, w)))
    return mapped(x, w), jax.grad(loss, (0, 1))(x, w)

  _assert_close(jax.jit(lambda: batched(ours))(), jax.jit(lambda: batched(ref))(), 1e-11)


def _count(hlo: str, op: str) -> int:
  return hlo.count(f"stablehlo.{op}") + hlo.count(f"= {op}(")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("groups", [{}, {"feature_group_count": 2}])
def test_backward_pass_is_convolutions_not_scatters(algorithm, strides, groups):
  x = jnp.ones((2, 9, 9, 4))
  w = jnp.ones((3, 3, 4 // groups.get("feature_group_count", 1), 6))
  kwargs = dict(window_strides=strides, padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours, _ = _convs(dict(kwargs, **groups), algorithm)
  grad = jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2), (0, 1))

  # The gradient is three convolutions: the forward and its two transposes, all jaxconv's.
  convs = [
    e.primitive.name
    for e in jax.make_jaxpr(grad)(x, w).jaxpr.eqns
    if e.primitive.name in ("jaxconv_conv", "conv_general_dilated")
  ]
  assert len(convs) == 3 and convs.count("jaxconv_conv") >= 1, convs
  forward = jax.jit(ours).lower(x, w).as_text()
  backward = jax.jit(grad).lower(x, w).as_text()
  assert _count(forward, "scatter") == 0
  assert _count(backward, "scatter") == 0

  if algorithm != "im2col":
    return
  # Without the rules, JAX would transpose im2col's patch gather into a scatter.
  p = jaxconv.plan(x, w, **kwargs, **groups, precision=HIGHEST, algorithm=algorithm)
  through = lambda x, w: _api._run(x, w, p.geometry, p.algorithm, p.tile)
  naive = jax.jit(jax.grad(lambda x, w: jnp.sum(through(x, w) ** 2), (0, 1))).lower(x, w)
  assert _count(naive.as_text(), "scatter") > 0


def test_lax_algorithm_stays_plain_lax():
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
  dn = ("NHWC", "HWIO", "NHWC")
  f = lambda x, w: jnp.sum(jaxconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                                        algorithm="lax"))  # fmt: skip
  names = {e.primitive.name for e in jax.make_jaxpr(jax.grad(f, (0, 1)))(x, w).jaxpr.eqns}
  assert "conv_general_dilated" in names and "jaxconv_conv" not in names


def test_complex_vjp_matches_lax():
  rng = rng_for("complex")
  x = (rng.standard_normal((2, 6, 6, 3)) + 1j * rng.standard_normal((2, 6, 6, 3))).astype("c8")
  w = (rng.standard_normal((3, 3, 3, 2)) + 1j * rng.standard_normal((3, 3, 3, 2))).astype("c8")
  ours, ref = _convs(
    dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
    "im2col",
  )
  ct = (1 + 2j) * jnp.ones((2, 6, 6, 2), "c8")
  _assert_close(jax.vjp(ours, x, w)[1](ct), jax.vjp(ref, x, w)[1](ct), 1e-5)


def test_eager_numpy_operands_and_zero_sized_gradients():
  x, w = np.ones((0, 5, 5, 2), np.float32), np.ones((3, 3, 2, 2), np.float32)
  dn = ("NHWC", "HWIO", "NHWC")
  f = lambda x, w: jnp.sum(jaxconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                                        algorithm="im2col"))  # fmt: skip
  dx, dw = jax.grad(f, (0, 1))(x, w)
  assert dx.shape == x.shape and dw.shape == w.shape and not np.any(dw)
  x = np.ones((1, 5, 5, 2), np.float32)
  dx, dw = jax.grad(f, (0, 1))(x, w)
  g = lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn))
  ref = jax.grad(g, (0, 1))(x, w)
  _assert_close((dx, dw), ref, 1e-6)
