"""NaN and infinity: nothing lost by any algorithm; im2col identical to lax; `exact` mode."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax import lax

import jaxconv
from tests.util import random_array, rng_for

KW = dict(
  window_strides=(1, 1),
  padding="SAME",
  dimension_numbers=("NHWC", "HWIO", "NHWC"),
  precision="highest",
)


def _poisoned():
  rng = rng_for("nonfinite")
  x = random_array(rng, (2, 14, 13, 4), np.float32)
  w = random_array(rng, (3, 3, 4, 5), np.float32)
  x[0, 5, 7, 1], x[1, 12, 3, 0], x[1, 2, 11, 2], x[0, 0, 0, 3] = np.nan, np.inf, -np.inf, np.inf
  return x, w


@pytest.mark.parametrize("algorithm", ["im2col", "winograd2", "winograd4", "winograd6", "auto"])
def test_no_nonfinite_value_is_lost(algorithm):
  x, w = _poisoned()
  ref = np.asarray(lax.conv_general_dilated(x, w, **KW))
  out = np.asarray(jaxconv.conv_general_dilated(x, w, **KW, algorithm=algorithm))
  assert (~np.isfinite(ref)).sum() > 0
  assert not np.any(~np.isfinite(ref) & np.isfinite(out))
  finite = np.isfinite(ref) & np.isfinite(out)
  np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-3, atol=1e-3)


def test_im2col_propagates_exactly_like_lax():
  x, w = _poisoned()
  ref = np.asarray(lax.conv_general_dilated(x, w, **KW))
  out = np.asarray(jaxconv.conv_general_dilated(x, w, **KW, algorithm="im2col"))
  for kind in (np.isnan, np.isposinf, np.isneginf):
    np.testing.assert_array_equal(kind(out), kind(ref))


def test_winograd_spreads_within_its_tiles():
  x, w = _poisoned()
  ref = np.asarray(lax.conv_general_dilated(x, w, **KW))
  out = np.asarray(jaxconv.conv_general_dilated(x, w, **KW, algorithm="winograd4"))
  extra = np.isfinite(ref) & ~np.isfinite(out)
  assert extra.any()  # documented: a tile is all or nothing
  # ...but never beyond the 4x4 output tiles whose 6x6 input tiles hold a non-finite value.
  bad_in = (~np.isfinite(np.pad(x, ((0, 0), (1, 3), (1, 4), (0, 0))))).any(-1)
  for n, i, j in zip(*np.nonzero(extra.any(-1))):
    ti, tj = i // 4 * 4, j // 4 * 4
    assert bad_in[n, ti : ti + 6, tj : tj + 6].any()


def test_exact_mode_keeps_auto_off_winograd():
  x = jax.ShapeDtypeStruct((8, 28, 28, 128), np.float32)
  k = jax.ShapeDtypeStruct((3, 3, 128, 128), np.float32)
  assert jaxconv.plan(x, k, **KW).algorithm == "winograd"
  old = jaxconv.set_nonfinite("exact")
  try:
    p = jaxconv.plan(x, k, **KW)
    assert p.algorithm == "lax" and "non-finite" in p.reason
  finally:
    jaxconv.set_nonfinite(old)
  with pytest.raises(ValueError, match="mode"):
    jaxconv.set_nonfinite("sometimes")
