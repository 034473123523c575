"""Pixel shuffle (phases stacked as one stride-1 convolution, then depth to space) against lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxconv
from jaxconv._geometry import normalize
from jaxconv._pixelshuffle import _plan
from tests.test_col2im import CASES as COL2IM_CASES
from tests.test_subpixel import CASES as SUBPIXEL_CASES
from tests.test_subpixel import NHWC, _kwargs, check_case, check_gradients

# Every input-dilated case the sub-pixel tests run, the col2im tests' undilated-kernel ones, and
# the transposed convolutions whose phases sit at different offsets.
CASES = SUBPIXEL_CASES + [
  c for c in COL2IM_CASES
  if c not in SUBPIXEL_CASES and max(c[3].get("rhs_dilation", (1,))) == 1
] + [
  ("4x4-same-shifted", (2, 5, 4, 3), (4, 4, 3, 4),
   dict(padding=((2, 2), (2, 2)), lhs_dilation=(2, 2))),
  ("5x5-stride3", (1, 4, 5, 2), (5, 5, 2, 3), dict(padding=((3, 2), (4, 4)), lhs_dilation=(3, 3))),
  ("kernel-shorter-than-dilation", (2, 4, 4, 2), (2, 1, 2, 3),
   dict(padding=((1, 2), (0, 0)), lhs_dilation=(3, 4))),
]  # fmt: skip
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "lhs_shape", "rhs_shape", "kwargs"), CASES, ids=IDS)
def test_pixelshuffle_matches_lax(name, lhs_shape, rhs_shape, kwargs, dtype):
  check_case("pixelshuffle", name, lhs_shape, rhs_shape, kwargs, dtype)


@pytest.mark.parametrize(
  ("k", "padding", "window"),
  [(4, (2, 2), 2), (3, (2, 1), 2), (4, (1, 2), 2), (5, (2, 2), 3), (2, (1, 1), 1), (1, (0, 0), 1)],
)
def test_window_is_the_longest_phase_where_a_shift_is_cheaper(k, padding, window):
  """Stride 2: the stacked window has no more taps than the longest phase, for 28 outputs."""
  g = normalize(
    jnp.zeros((1, 14, 3)), jnp.zeros((k, 3, 4)), (1,), (padding,), (2,), None, ("NHC", "HIO", "NHC")
  )
  (_, window_taps, _, rows), stacked = _plan(g)[0][0], _plan(g)[1]
  assert window_taps == window == stacked.kernel[0]
  assert rows - -(-g.out_spatial[0] // 2) <= 1  # at most one output more per phase


def test_pixelshuffle_gradients_match_lax():
  kwargs = dict(padding=((2, 2), (1, 2)), lhs_dilation=(2, 2))
  check_gradients("pixelshuffle", "pixelshuffle-grad", (4, 4, 3, 4), kwargs)


def test_pixelshuffle_declines_what_it_cannot_stack():
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  with pytest.raises(NotImplementedError, match=r"has none.*Algorithms that can:"):
    jaxconv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC, algorithm="pixelshuffle"
    )
  with pytest.raises(NotImplementedError, match=r"input dilation .2. with a stride .2."):
    jaxconv.conv_general_dilated(
      x, w, (2, 2), ((1, 1), (1, 1)), (2, 2), dimension_numbers=NHWC, algorithm="pixelshuffle"
    )


def test_pixelshuffle_and_its_derivatives_lower_for_cuda():
  x, w = jnp.ones((2, 7, 7, 4)), jnp.ones((4, 4, 2, 8))
  kwargs = _kwargs(dict(padding=((2, 2), (2, 2)), lhs_dilation=(2, 2), feature_group_count=2))
  f = lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="pixelshuffle")
  grad = jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))
  for fn in (f, grad):
    text = jax.jit(fn).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert "func.func public @main" in text
