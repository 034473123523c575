"""Space to depth (a strided convolution as a stride-1 convolution of its phases) against lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxconv
from tests.test_subpixel import _kwargs, check_case, check_gradients

# (name, lhs shape, rhs shape, keyword arguments): strided convolutions of every kind.
CASES = [
  ("4x4-stride2", (2, 9, 8, 3), (4, 4, 3, 5),
   dict(window_strides=(2, 2), padding=((1, 1), (1, 2)))),
  ("3x3-stride2-same", (2, 7, 8, 4), (3, 3, 4, 6), dict(window_strides=(2, 2), padding="SAME")),
  ("patchify", (2, 8, 12, 3), (4, 4, 3, 8), dict(window_strides=(4, 4), padding="VALID")),
  ("kernel-shorter-than-stride", (2, 9, 10, 3), (1, 2, 3, 4),
   dict(window_strides=(3, 3), padding=((0, 1), (2, 0)))),
  ("one-axis-strided-other-dilated", (2, 9, 11, 3), (3, 3, 3, 4),
   dict(window_strides=(2, 1), padding=((1, 1), (2, 2)), rhs_dilation=(1, 2))),
  ("uneven-strides", (1, 11, 10, 2), (5, 3, 2, 3), dict(window_strides=(3, 2), padding="SAME")),
  ("negative-padding", (1, 10, 9, 2), (3, 3, 2, 3),
   dict(window_strides=(2, 2), padding=((-1, 2), (1, -2)))),
  ("groups-nchw", (2, 4, 9, 8), (6, 2, 3, 3),
   dict(window_strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"))),
  ("depthwise", (2, 8, 8, 3), (3, 3, 1, 6),
   dict(window_strides=(2, 2), padding=((1, 0), (0, 1)), feature_group_count=3)),
  ("1d", (2, 17, 4), (4, 4, 3), dict(window_strides=(2,), padding=((1, 2),),
                                      dimension_numbers=("NWC", "WIO", "NWC"))),
  ("3d-ncdhw", (2, 3, 6, 5, 7), (4, 3, 2, 3, 3),
   dict(window_strides=(2, 1, 2), padding=((1, 0), (1, 1), (0, 1)),
        dimension_numbers=("NCDHW", "OIDHW", "NCDHW"))),
]  # fmt: skip
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "lhs_shape", "rhs_shape", "kwargs"), CASES, ids=IDS)
def test_spacetodepth_matches_lax(name, lhs_shape, rhs_shape, kwargs, dtype):
  check_case("spacetodepth", name, lhs_shape, rhs_shape, kwargs, dtype)


def test_spacetodepth_gradients_match_lax():
  kwargs = dict(window_strides=(2, 3), padding=((1, 1), (1, 0)))
  check_gradients("spacetodepth", "spacetodepth-grad", (4, 3, 3, 4), kwargs)


def test_spacetodepth_declines_what_it_cannot_split():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  call = lambda **kw: jaxconv.conv_general_dilated(
    x,
    w,
    **_kwargs(dict(window_strides=(2, 2), padding=((1, 1), (1, 1))) | kw),
    algorithm="spacetodepth",
  )
  with pytest.raises(NotImplementedError, match=r"strides \(1, 1\).*Algorithms that can:"):
    call(window_strides=(1, 1))
  with pytest.raises(NotImplementedError, match="input dilation"):
    call(lhs_dilation=(2, 2))
  with pytest.raises(NotImplementedError, match=r"stride \(2\) and a kernel dilation \(2\)"):
    call(rhs_dilation=(2, 1))
  with pytest.raises(NotImplementedError, match="batch_group_count=2"):
    call(batch_group_count=2)


def test_spacetodepth_and_its_derivatives_lower_for_cuda():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((4, 4, 2, 8))
  kwargs = _kwargs(dict(window_strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=2))
  f = lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="spacetodepth")
  grad = jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))
  for fn in (f, grad):
    text = jax.jit(fn).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert "func.func public @main" in text
