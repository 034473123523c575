"""Property-based differential testing over the whole argument space (hypothesis).

Every drawn call goes to lax first. When lax rejects it, jaxconv must raise the same exception type;
when lax accepts it, every algorithm that accepts it must match lax at HIGHEST; so must `auto`'s
input and kernel gradients, and `jaxconv.conv_transpose` on lax.conv_transpose's own arguments.
lax's input-dilated convolutions run with the dilation applied by `lax.pad` first
(`tests.util.without_input_dilation`): XLA:CPU aborts the process on some of them.
Profiles: "ci" (the default, a few minutes in all) and "long" (``JAXCONV_HYPOTHESIS=long``, 5,000
examples per test).
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from jax import lax

import jaxconv
from tests.util import TOLERANCE, random_array, rel_err, without_input_dilation

settings.register_profile(
  "ci", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
settings.register_profile(
  "long", max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("JAXCONV_HYPOTHESIS", "ci"))

DTYPES = (np.float32, np.float64, np.float16, jnp.bfloat16, np.complex64, np.int32, np.int8)
FLOATS = DTYPES[:4]
SPATIAL_CHARS = "HWD"


@st.composite
def conv_calls(
  draw,
  dtypes: tuple = DTYPES,
  ranks: tuple[int, ...] = (0, 1, 2, 3),
  input_dilated: bool = False,
):
  """A random conv_general_dilated call: (lhs, rhs, kwargs). Mostly valid, sometimes not.

  With `input_dilated`: window stride 1, no batch groups and an input dilation on some axis (a
  transposed convolution's form).
  """
  nd = draw(st.sampled_from(ranks))
  spatial = SPATIAL_CHARS[:nd]
  lhs_spec = "".join(draw(st.permutations("NC" + spatial)))
  rhs_spec = "".join(draw(st.permutations("OI" + spatial)))
  out_spec = "".join(draw(st.permutations("NC" + spatial)))
  fgc = draw(st.sampled_from([1, 1, 1, 2, 3]))
  bgc = 1 if fgc > 1 or input_dilated else draw(st.sampled_from([1, 1, 1, 2]))
  cin_g = draw(st.integers(0, 3))
  n = bgc * draw(st.integers(0, 2))
  cout = fgc * bgc * draw(st.integers(1, 3))
  sizes_in = [draw(st.integers(0, 9)) for _ in range(nd)]
  kernel = [draw(st.integers(1, 5)) for _ in range(nd)]
  strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
  rhs_dil = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(nd))
  lhs_dil = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(nd))
  if input_dilated:
    strides = (1,) * nd
    lhs_dil = tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(nd))
    assume(max(lhs_dil, default=1) > 1)
  if any(d > 1 for d in lhs_dil) or draw(st.booleans()):
    padding = tuple((draw(st.integers(-2, 3)), draw(st.integers(-2, 3))) for _ in range(nd))
  else:
    padding = draw(st.sampled_from(["SAME", "SAME_LOWER", "VALID"]))
  dtype = draw(st.sampled_from(dtypes))
  lhs_sizes = dict(N=n, C=cin_g * fgc, **dict(zip(spatial, sizes_in)))
  rhs_sizes = dict(O=cout, I=cin_g, **dict(zip(spatial, kernel)))
  rng = np.random.default_rng(draw(st.integers(0, 2**31)))
  lhs = random_array(rng, tuple(lhs_sizes[c] for c in lhs_spec), dtype)
  rhs = random_array(rng, tuple(rhs_sizes[c] for c in rhs_spec), dtype)
  kwargs = dict(
    window_strides=strides,
    padding=padding,
    lhs_dilation=lhs_dil,
    rhs_dilation=rhs_dil,
    dimension_numbers=(lhs_spec, rhs_spec, out_spec),
    feature_group_count=fgc,
    batch_group_count=bgc,
    precision=lax.Precision.HIGHEST,
  )
  return lhs, rhs, kwargs


def _lax(lhs, rhs, kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return without_input_dilation(lambda x, w: lax.conv_general_dilated(x, w, **kwargs))(lhs, rhs)


def _prepadded_reference(lhs, rhs, kwargs):
  """lax on an input dilated and padded beforehand by `lax.pad`, then a VALID convolution.

  An independent route to the same result: XLA's CPU convolution mishandles some negative paddings
  (tests/test_regressions.py), where this form stays exact.
  """
  conv = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  return without_input_dilation(conv, every=True)(lhs, rhs)


def _check(algorithm, lhs, rhs, kwargs):
  try:
    ref = _lax(lhs, rhs, kwargs)
  except Exception as e:  # lax rejects: jaxconv must reject the same way, before computing
    event(f"lax rejects: {type(e).__name__}")
    with pytest.raises(type(e)):
      jaxconv.conv_general_dilated(lhs, rhs, **kwargs, algorithm=algorithm)
    return
  try:
    jaxconv.plan(lhs, rhs, **kwargs, algorithm=algorithm)
  except NotImplementedError:
    event(f"{algorithm} cannot")
    assume(False)
  event("compared with lax")
  out = jaxconv.conv_general_dilated(lhs, rhs, **kwargs, algorithm=algorithm)
  assert out.shape == ref.shape and out.dtype == ref.dtype
  dtype = np.dtype(ref.dtype)
  if not jnp.issubdtype(dtype, jnp.inexact):
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    return
  tol = TOLERANCE[dtype] * (10 if algorithm.startswith("winograd") else 1)
  if rel_err(out, ref) > tol:
    event("lax disagrees with the pre-padded reference")
    assert rel_err(out, _prepadded_reference(lhs, rhs, kwargs)) <= tol


@given(conv_calls())
def test_im2col_matches_lax(call):
  _check("im2col", *call)


@given(conv_calls(dtypes=FLOATS, ranks=(1, 2, 3)))
def test_winograd_matches_lax(call):
  _check("winograd4", *call)


@given(conv_calls())
def test_direct_matches_lax(call):
  _check("direct", *call)


@given(conv_calls(ranks=(1, 2, 3), input_dilated=True))
def test_col2im_matches_lax(call):
  _check("col2im", *call)


@given(conv_calls())
def test_auto_matches_lax(call):
  _check("auto", *call)


@given(conv_calls(dtypes=FLOATS, ranks=(1, 2, 3)))
def test_wgrad_matches_lax_kernel_gradient(call):
  # The kernel gradient in the Winograd domain of every forward layer Winograd can run.
  from jaxconv._wgrad import kernel_gradient

  lhs, rhs, kwargs = call
  try:
    ref_y = jax.eval_shape(lambda w: lax.conv_general_dilated(lhs, w, **kwargs), rhs)
  except Exception:  # lax rejects the layer: nothing to differentiate
    assume(False)
  try:
    g = jaxconv.plan(lhs, rhs, **kwargs, algorithm="winograd4").geometry
  except NotImplementedError:
    event("winograd cannot")
    assume(False)
  assume(max(g.lhs_dilation, default=1) == 1)
  event("compared with lax")
  rng = np.random.default_rng(0)
  dy = random_array(rng, ref_y.shape, ref_y.dtype)
  (want,) = jax.vjp(lambda w: lax.conv_general_dilated(lhs, w, **kwargs), rhs)[1](dy)
  got = jax.jit(lambda x, d: kernel_gradient(x, d, g, (4,) * g.ndim))(lhs, dy)
  assert got.shape == want.shape
  dtype = np.dtype(want.dtype)
  tol = TOLERANCE[dtype] * 10 if dtype.itemsize >= 4 else TOLERANCE[dtype] * 40
  assert rel_err(got.astype(want.dtype), want) <= tol


def _gradients(conv, lhs, rhs, dy):
  return jax.vjp(conv, lhs, rhs)[1](dy)


def _lax_gradients(conv, lhs, rhs, dy):
  # A strided layer's input gradient is an input-dilated convolution (see `without_input_dilation`).
  return without_input_dilation(lambda x, w, d: _gradients(conv, x, w, d))(lhs, rhs, dy)


@given(conv_calls(dtypes=(np.float32, np.float64)))
def test_auto_gradients_match_lax(call):
  # Input and kernel gradients of every layer lax accepts, against lax's (its transposes: strided
  # layers' input gradients by sub-pixel phases, kernel gradients in the Winograd domain, ...).
  lhs, rhs, kwargs = call
  try:
    want_y = _lax(lhs, rhs, kwargs)
  except Exception:
    assume(False)
  event("compared with lax")
  dy = random_array(np.random.default_rng(1), want_y.shape, want_y.dtype)
  got = _gradients(
    lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="auto"), lhs, rhs, dy
  )
  want = _lax_gradients(lambda x, w: lax.conv_general_dilated(x, w, **kwargs), lhs, rhs, dy)
  tol = 10 * TOLERANCE[np.dtype(want_y.dtype)]
  for i, (name, g, ref) in enumerate(zip(("input", "kernel"), got, want)):
    assert g.shape == ref.shape and g.dtype == ref.dtype, name
    if rel_err(g, ref) > tol:  # lax's own gradient can be wrong on negative paddings (above)
      event("lax disagrees with the pre-padded reference")
      pre = _lax_gradients(lambda x, w: _prepadded_reference(x, w, kwargs), lhs, rhs, dy)
      assert rel_err(g, pre[i]) <= tol, name


@st.composite
def conv_transpose_calls(draw):
  """A random lax.conv_transpose call: (lhs, rhs, kwargs), mostly valid."""
  nd = draw(st.sampled_from([1, 2, 3]))
  spatial = SPATIAL_CHARS[:nd]
  lhs_spec = "".join(draw(st.permutations("NC" + spatial)))
  rhs_spec = "".join(draw(st.permutations("OI" + spatial)))
  out_spec = "".join(draw(st.permutations("NC" + spatial)))
  transpose_kernel = draw(st.booleans())
  cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 3))
  sizes = dict(N=draw(st.integers(1, 2)), C=cin, **{c: draw(st.integers(1, 6)) for c in spatial})
  kernel = dict(
    O=cin if transpose_kernel else cout,
    I=cout if transpose_kernel else cin,
    **{c: draw(st.integers(1, 5)) for c in spatial},
  )
  if draw(st.booleans()):
    padding = tuple((draw(st.integers(-1, 4)), draw(st.integers(-1, 4))) for _ in range(nd))
  else:
    padding = draw(st.sampled_from(["SAME", "VALID"]))
  dtype = draw(st.sampled_from([np.float32, np.float64]))
  rng = np.random.default_rng(draw(st.integers(0, 2**31)))
  lhs = random_array(rng, tuple(sizes[c] for c in lhs_spec), dtype)
  rhs = random_array(rng, tuple(kernel[c] for c in rhs_spec), dtype)
  kwargs = dict(
    strides=tuple(draw(st.integers(1, 3)) for _ in range(nd)),
    padding=padding,
    rhs_dilation=tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(nd)),
    dimension_numbers=(lhs_spec, rhs_spec, out_spec),
    transpose_kernel=transpose_kernel,
    precision=lax.Precision.HIGHEST,
    use_consistent_padding=draw(st.booleans()),
  )
  return lhs, rhs, kwargs


@given(conv_transpose_calls())
def test_conv_transpose_matches_lax(call):
  lhs, rhs, kwargs = call
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      ref = without_input_dilation(lambda x, w: lax.conv_transpose(x, w, **kwargs))(lhs, rhs)
  except Exception as e:
    event(f"lax rejects: {type(e).__name__}")
    with pytest.raises(type(e)):
      jaxconv.conv_transpose(lhs, rhs, **kwargs)
    return
  event("compared with lax")
  out = jaxconv.conv_transpose(lhs, rhs, **kwargs)
  assert out.shape == ref.shape and out.dtype == ref.dtype
  assert rel_err(out, ref) <= 10 * TOLERANCE[np.dtype(ref.dtype)]
