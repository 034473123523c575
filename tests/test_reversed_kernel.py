"""The `ConvGeometry.reversed_kernel` hint: set where a kernel is a reversal, and never a change."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _api, _autodiff
from jaxconv._geometry import normalize
from jaxconv._tune import candidates

from .util import HIGHEST, TOLERANCE, random_array, rel_err, rng_for

# (name, lhs shape, rhs shape, keyword arguments); every kernel is given as a reversed array.
CASES = [
  ("nhwc-same", (2, 9, 8, 16), (3, 3, 16, 8), dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))),
  ("nhwc-hwoi", (2, 9, 8, 16), (3, 3, 8, 16), dict(dimension_numbers=("NHWC", "HWOI", "NHWC"))),
  ("nchw", (2, 16, 9, 8), (8, 16, 3, 3), dict(dimension_numbers=("NCHW", "OIHW", "NCHW"))),
  ("strided", (2, 11, 10, 8), (3, 3, 8, 8), dict(window_strides=(2, 2))),
  ("kernel-dilated", (2, 11, 10, 8), (3, 3, 8, 8), dict(rhs_dilation=(2, 1))),
  (
    "input-dilated",
    (2, 6, 5, 16),
    (3, 3, 16, 8),
    dict(lhs_dilation=(2, 2), padding=((2, 2), (1, 2))),
  ),
  (
    "4x4-input-dilated",
    (2, 6, 5, 8),
    (4, 4, 8, 8),
    dict(lhs_dilation=(2, 2), padding=((2, 2),) * 2),
  ),
  ("grouped", (2, 9, 8, 16), (3, 3, 4, 8), dict(feature_group_count=4)),
  ("1-d", (2, 13, 8), (5, 8, 4), dict(dimension_numbers=("NWC", "WIO", "NWC"))),
  ("3-d", (1, 6, 5, 7, 4), (3, 2, 3, 4, 4), dict(dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
]


def _args(lhs_shape, rhs_shape, kwargs):
  kwargs = dict(kwargs)
  nd = len(lhs_shape) - 2
  kwargs.setdefault("window_strides", (1,) * nd)
  kwargs.setdefault("padding", "SAME")
  kwargs.setdefault("dimension_numbers", ("NHWC", "HWIO", "NHWC") if nd == 2 else None)
  return kwargs


@pytest.mark.parametrize("name,lhs_shape,rhs_shape,kwargs", CASES, ids=[c[0] for c in CASES])
def test_every_candidate_computes_a_reversed_kernel_as_lax_does(name, lhs_shape, rhs_shape, kwargs):
  rng = rng_for(name)
  kwargs = _args(lhs_shape, rhs_shape, kwargs)
  x = random_array(rng, lhs_shape, np.float32)
  v = random_array(rng, rhs_shape, np.float32)
  g = normalize(x, v, **kwargs)
  spatial = g.dimension_numbers.rhs_spec[2:]
  flagged = dataclasses.replace(g, reversed_kernel=True)
  assert flagged.key() == g.key() + " reversed_kernel"
  ref = lax.conv_general_dilated(x, lax.rev(v, spatial), **kwargs, precision=HIGHEST)
  cands = candidates(dataclasses.replace(g, precision=HIGHEST))
  assert len(cands) > 1
  for label, a, variant in cands:

    def run(x, v, geometry, a=a, variant=variant):
      return _api._run(x, lax.rev(v, spatial), geometry, a.name, variant)

    plain = jax.jit(run, static_argnums=2)(x, v, dataclasses.replace(g, precision=HIGHEST))
    y = jax.jit(run, static_argnums=2)(x, v, dataclasses.replace(flagged, precision=HIGHEST))
    assert y.shape == ref.shape and y.dtype == ref.dtype, label
    tol = max(TOLERANCE[np.dtype(np.float32)], a.tolerance(g, variant))
    # The hint changes how the kernel is read (and so the order of some sums), not the result.
    assert rel_err(y, plain) <= tol, (label, rel_err(y, plain))
    if rel_err(plain, ref) <= tol:  # (the tuner rejects a candidate less accurate than that)
      assert rel_err(y, ref) <= tol, (label, rel_err(y, ref))


def _recording(monkeypatch):
  """Records (out_shape, reversed_kernel) of every convolution the transposes run."""
  seen = []
  through = _autodiff._jaxconv

  def record(lhs, rhs, **kwargs):
    static = {k: v for k, v in kwargs.items() if k not in ("out_sharding", "reversed_kernel")}
    seen.append((normalize(lhs, rhs, **static).out_shape, kwargs.get("reversed_kernel", False)))
    return through(lhs, rhs, **kwargs)

  monkeypatch.setattr(_autodiff, "_jaxconv", record)
  return seen


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_input_gradients_carry_the_hint_and_kernel_gradients_do_not(monkeypatch, strides):
  seen = _recording(monkeypatch)
  x, w = np.zeros((2, 8, 8, 3), np.float32), np.zeros((3, 3, 3, 4), np.float32)

  def loss(x, w):
    y = jaxconv.conv_general_dilated(
      x, w, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), algorithm="im2col"
    )
    return (y**2).sum()

  jax.eval_shape(jax.grad(loss, argnums=(0, 1)), x, w)
  assert sorted(seen) == [((2, 8, 8, 3), True), ((3, 3, 3, 4), False)]


def test_the_input_gradient_of_a_reversed_kernel_convolution_drops_the_hint(monkeypatch):
  seen = _recording(monkeypatch)
  ct, x = np.ones((2, 8, 8, 4), np.float32), np.zeros((2, 8, 8, 3), np.float32)
  w = np.zeros((3, 3, 3, 4), np.float32)
  g = dataclasses.replace(
    normalize(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
    reversed_kernel=True,
  )
  jax.eval_shape(
    lambda ct, w: _autodiff._transpose_lhs(ct, x, w, geometry=g, algorithm="auto", tile=None),
    ct,
    w,
  )
  assert seen == [((2, 8, 8, 3), False)]  # rev(rev(w)) is no reversal


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_conv_transpose_hints_a_transposed_kernel(monkeypatch, transpose_kernel):
  hints = []
  through = _api._convolve

  def record(*args, reversed_kernel=False, **kwargs):
    hints.append(reversed_kernel)
    return through(*args, reversed_kernel=reversed_kernel, **kwargs)

  monkeypatch.setattr(_api, "_convolve", record)
  x, w = np.zeros((2, 5, 5, 8), np.float32), np.zeros((3, 3, 8, 8), np.float32)
  jax.eval_shape(
    lambda x, w: jaxconv.conv_transpose(x, w, (2, 2), "SAME", transpose_kernel=transpose_kernel),
    x,
    w,
  )
  assert hints == [transpose_kernel]
