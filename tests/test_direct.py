"""The direct algorithm against lax: every layout, stride, padding, dilation, group kind and dtype.

Its gradient geometries are tested as lax itself states them: every convolution in the jaxpr of
lax's VJP (the input gradient, again grouped; the kernel gradient, batch-grouped) is run by
"direct" and compared with lax's.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _direct, _tune
from tests.util import HIGHEST, TOLERANCE, check_against_lax, random_array, rel_err, rng_for

NHWC = ("NHWC", "HWIO", "NHWC")

# (name, lhs shape, rhs shape, conv keyword arguments)
CASES = [
  ("depthwise-same", (2, 9, 8, 6), (3, 3, 1, 6), dict(padding="SAME", feature_group_count=6)),
  ("depthwise-7x7", (2, 12, 11, 4), (7, 7, 1, 4), dict(padding="SAME", feature_group_count=4)),
  ("multiplier-stride2", (2, 9, 9, 3), (3, 3, 1, 6),
   dict(window_strides=(2, 2), padding="VALID", feature_group_count=3)),
  ("narrow-groups-all-dilations", (2, 10, 8, 6), (3, 3, 2, 6),
   dict(window_strides=(2, 1), padding=((1, 2), (0, 1)), lhs_dilation=(2, 1),
        rhs_dilation=(1, 2), feature_group_count=3)),
  ("negative-padding", (1, 9, 10, 4), (3, 3, 1, 4),
   dict(padding=((-1, 1), (-1, -1)), feature_group_count=4)),
  ("negative-strided-taps-in-padding", (2, 1, 9, 4), (5, 3, 1, 4),
   dict(window_strides=(2, 3), padding=((2, 2), (1, -2)), feature_group_count=4)),
  ("strided-all-padding", (1, 2, 2, 3), (3, 3, 1, 3),
   dict(window_strides=(2, 2), padding=((5, 0), (5, 0)), feature_group_count=3)),
  ("subpixel-transposed", (2, 5, 6, 4), (4, 3, 1, 8),
   dict(window_strides=(1, 2), padding=((2, 1), (1, 1)), lhs_dilation=(2, 1),
        feature_group_count=4)),
  ("subpixel-dilated-both", (2, 4, 5, 3), (3, 2, 1, 3),
   dict(padding=((3, 0), (1, 2)), lhs_dilation=(3, 2), rhs_dilation=(2, 1),
        feature_group_count=3)),
  ("same-lower-nchw", (2, 4, 7, 6), (4, 1, 2, 3),
   dict(window_strides=(1, 2), padding="SAME_LOWER", feature_group_count=4,
        dimension_numbers=("NCHW", "OIHW", "NCHW"))),
  ("odd-layouts", (6, 5, 2, 7), (2, 1, 6, 3),
   dict(window_strides=(1, 2), padding=((1, 0), (0, 2)), feature_group_count=6,
        dimension_numbers=("CHNW", "WIOH", "WNHC"))),
  ("batch-groups", (4, 7, 7, 3), (3, 3, 3, 4), dict(padding="SAME", batch_group_count=2)),
  ("two-groups-of-four", (2, 8, 8, 8), (3, 3, 4, 6), dict(padding="SAME", feature_group_count=2)),
  ("1d-dilated", (2, 17, 4), (5, 1, 8),
   dict(window_strides=(1,), padding="SAME", rhs_dilation=(3,), feature_group_count=4,
        dimension_numbers=("NWC", "WIO", "NWC"))),
  ("3d-depthwise", (2, 6, 7, 5, 4), (3, 3, 3, 1, 4),
   dict(window_strides=(1, 2, 1), padding="SAME", feature_group_count=4,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
  ("0d", (3, 4), (2, 4), dict(window_strides=(), padding=(), feature_group_count=2,
                              dimension_numbers=("NC", "IO", "NC"))),
]  # fmt: skip
IDS = [c[0] for c in CASES]
DTYPES = ["float32", "float64", "bfloat16", "float16", "complex64", "int32", "bool"]


def _kwargs(kwargs):
  spatial = 3 if "NDHWC" in str(kwargs.get("dimension_numbers")) else 2
  out = dict(window_strides=(1,) * spatial, dimension_numbers=NHWC, precision=HIGHEST)
  out.update(kwargs)
  return out


def _operands(name, lhs_shape, rhs_shape, dtype):
  rng = rng_for(name + str(dtype))
  return random_array(rng, lhs_shape, dtype), random_array(rng, rhs_shape, dtype)


@pytest.mark.parametrize(("name", "lhs_shape", "rhs_shape", "kwargs"), CASES, ids=IDS)
def test_direct_matches_lax(name, lhs_shape, rhs_shape, kwargs):
  x, w = _operands(name, lhs_shape, rhs_shape, "float32")
  kwargs = _kwargs(kwargs)
  if "negative" in name:  # jitted XLA:CPU is wrong here: compare with the pre-padded lax path
    ref = jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="lax")
    out = jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="direct")
    assert rel_err(out, ref) <= TOLERANCE[np.dtype(np.float32)]
  else:
    check_against_lax(x, w, "direct", **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [0, 2, 7], ids=lambda i: IDS[i])
def test_direct_dtypes(case, dtype):
  name, lhs_shape, rhs_shape, kwargs = CASES[case]
  x, w = _operands(name, lhs_shape, rhs_shape, dtype)
  check_against_lax(x, w, "direct", **_kwargs(kwargs))


def test_direct_preferred_element_type():
  x, w = _operands("pet", (2, 8, 8, 4), (3, 3, 1, 4), "int8")
  check_against_lax(
    x, w, "direct", **_kwargs(dict(padding="SAME", feature_group_count=4)),
    preferred_element_type=jnp.int32,
  )  # fmt: skip
  x, w = _operands("pet-f", (2, 8, 8, 4), (3, 3, 1, 4), "bfloat16")
  check_against_lax(
    x, w, "direct", **_kwargs(dict(padding="SAME", feature_group_count=4)),
    preferred_element_type=jnp.float32,
  )  # fmt: skip


def _lax_vjp_convs(x, w, kwargs):
  """Every convolution lax's VJP computes, as (lhs, rhs, params) with random operands."""
  f = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  y = jax.eval_shape(f, x, w)
  jaxpr = jax.make_jaxpr(lambda x, w, ct: jax.vjp(f, x, w)[1](ct))(
    x, w, jnp.zeros(y.shape, y.dtype)
  )
  found = []

  def visit(jx):
    for eqn in jx.eqns:
      if eqn.primitive is lax.conv_general_dilated_p:
        found.append((eqn.invars[0].aval, eqn.invars[1].aval, eqn.params))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return found


def lax_call(params: dict) -> dict:
  """`conv_general_dilated` keyword arguments of a convolution `_lax_vjp_convs` found."""
  names = ("window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers")
  names += ("feature_group_count", "batch_group_count")
  return {**{k: params[k] for k in names}, "precision": HIGHEST}


@pytest.mark.parametrize(
  ("name", "lhs_shape", "rhs_shape", "kwargs"), [c for c in CASES if c[0] != "0d"], ids=IDS[:-1]
)
def test_direct_runs_lax_gradient_geometries(name, lhs_shape, rhs_shape, kwargs):
  x, w = _operands(name, lhs_shape, rhs_shape, "float64")
  kwargs = _kwargs(kwargs)
  ran = 0
  for i, (la, ra, p) in enumerate(_lax_vjp_convs(x, w, kwargs)):
    if any(lo < 0 or hi < 0 for lo, hi in p["padding"]):
      continue  # lax's own result is unreliable there (tests/test_regressions.py)
    rng = rng_for(f"{name}-{i}")
    a, b = rng.standard_normal(la.shape), rng.standard_normal(ra.shape)
    call = lax_call(p)
    try:
      jaxconv.plan(a, b, **call, algorithm="direct")
    except NotImplementedError:
      continue
    check_against_lax(a, b, "direct", **call)
    ran += 1
  assert ran >= 1  # at least one gradient of every case is a direct geometry


def test_gradients_through_direct_match_lax():
  x, w = _operands("grad", (2, 12, 11, 8), (5, 5, 1, 8), "float64")
  kwargs = _kwargs(dict(window_strides=(2, 1), padding="SAME", feature_group_count=8))
  ours = lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="direct")
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    assert rel_err(got, want) <= 1e-12
  # Second derivatives stay on the same rules.
  hv = lambda f: jax.grad(lambda x: jnp.vdot(jax.grad(loss(f))(x, w), x))(x)
  assert rel_err(hv(ours), hv(ref)) <= 1e-12


def test_auto_runs_depthwise_and_its_gradients_directly():
  x, w = jnp.ones((4, 24, 24, 32)), jnp.ones((7, 7, 1, 32))
  kwargs = _kwargs(dict(padding="SAME", feature_group_count=32))
  assert jaxconv.plan(x, w, **kwargs).algorithm == "direct"
  grad = jax.grad(lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs).sum(), (0, 1))
  with _tune.planned() as seen:
    jax.jit(grad).lower(x, w)
  kinds = {(p.geometry.batch_group_count > 1, p.algorithm) for p in seen}
  assert kinds == {(False, "direct"), (True, "direct")}, [p.reason for p in seen]


def test_direct_declines_wide_groups_with_a_reason():
  x, w = jnp.ones((1, 8, 8, 32)), jnp.ones((3, 3, 16, 16))
  with pytest.raises(NotImplementedError, match=r"16 input features per group .* Algorithms that"):
    jaxconv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2, algorithm="direct"
    )
  with pytest.raises(NotImplementedError, match="this convolution has one: a GEMM's work"):
    jaxconv.conv_general_dilated(
      x[..., :2], w[:, :, :2, :4], (1, 1), "SAME", dimension_numbers=NHWC, algorithm="direct"
    )


def test_direct_positions_form_chunks_long_sums():
  # A kernel gradient whose rows exceed one unrolled chunk runs in a loop of chunks.
  x, w = _operands("chunks", (2, 40, 6, 3), (3, 3, 1, 3), "float64")
  kwargs = _kwargs(dict(padding="SAME", feature_group_count=3))
  old = _direct.MAX_TERMS
  try:
    _direct.MAX_TERMS = 50  # 9 positions: chunks of 5 rows of 40
    test_direct_runs_lax_gradient_geometries("chunks", x.shape, w.shape, dict(kwargs))
  finally:
    _direct.MAX_TERMS = old
