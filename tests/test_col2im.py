"""col2im (one GEMM of the undilated input, then an overlap-add) against lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from tests.test_subpixel import CASES as SUBPIXEL_CASES
from tests.test_subpixel import _kwargs, check_case, check_gradients
from tests.util import check_against_lax, rng_for

# The sub-pixel tests' input-dilated cases that have no window stride or batch groups, and more.
CASES = [
  c for c in SUBPIXEL_CASES
  if set(c[3].get("window_strides", (1,))) == {1} and "batch_group_count" not in c[3]
] + [
  ("one-axis", (2, 7, 9, 3), (3, 3, 3, 4), dict(padding=((1, 1), (0, 1)), lhs_dilation=(3, 1))),
  ("kernel-dilated", (2, 5, 6, 3), (3, 2, 3, 4),
   dict(padding=((2, 3), (1, 2)), lhs_dilation=(2, 2), rhs_dilation=(2, 3))),
  ("negative-padding-beyond-the-input", (1, 3, 3, 2), (2, 2, 2, 3),
   dict(padding=((-6, 1), (5, -4)), lhs_dilation=(2, 3))),
  ("depthwise", (2, 5, 4, 3), (3, 3, 1, 6),
   dict(padding=((1, 1), (2, 2)), lhs_dilation=(2, 2), feature_group_count=3)),
]  # fmt: skip
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "lhs_shape", "rhs_shape", "kwargs"), CASES, ids=IDS)
def test_col2im_matches_lax(name, lhs_shape, rhs_shape, kwargs, dtype):
  check_case("col2im", name, lhs_shape, rhs_shape, kwargs, dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "complex64", "int32", "bool"])
def test_col2im_keeps_lax_dtypes(dtype):
  rng = rng_for(f"col2im-{dtype}")
  x = rng.standard_normal((2, 5, 4, 3))
  w = rng.standard_normal((3, 3, 3, 4))
  if dtype == "complex64":
    x, w = x + 1j * rng.standard_normal(x.shape), w + 1j * rng.standard_normal(w.shape)
  elif dtype in ("int32", "bool"):
    x, w = np.round(x * 2), np.round(w * 2)
  x, w = jnp.asarray(x).astype(dtype), jnp.asarray(w).astype(dtype)
  check_against_lax(x, w, "col2im", **_kwargs(dict(padding=((2, 1), (1, 2)), lhs_dilation=(2, 2))))


def test_col2im_works_in_blocks_of_examples():
  rng = rng_for("col2im-blocks")
  x, w = rng.standard_normal((5, 6, 6, 3)), rng.standard_normal((3, 3, 3, 4))
  kwargs = _kwargs(dict(padding=((1, 2), (1, 2)), lhs_dilation=(2, 2)))
  # One example's products: 36 positions x 9 taps x 4 outputs x 8 bytes = 10 KiB; 2 per block.
  old = jaxconv.set_patch_budget(25_000)
  try:
    check_against_lax(x, w, "col2im", **kwargs)
  finally:
    jaxconv.set_patch_budget(old)


def test_col2im_gradients_match_lax():
  kwargs = dict(padding=((2, 1), (1, 2)), lhs_dilation=(2, 2), rhs_dilation=(1, 2))
  check_gradients("col2im", "col2im-grad", (4, 3, 3, 4), kwargs)


def test_col2im_declines_what_it_cannot_fold():
  x, w = jnp.ones((2, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  call = lambda **kw: jaxconv.conv_general_dilated(
    x, w, **{**_kwargs(dict(padding="SAME")), **kw}, algorithm="col2im"
  )
  with pytest.raises(NotImplementedError, match=r"has no input dilation.*Algorithms that can:"):
    call()
  with pytest.raises(NotImplementedError, match=r"window stride 1.*strides \(2, 2\)"):
    call(window_strides=(2, 2), lhs_dilation=(2, 2), padding=((1, 1), (1, 1)))
  with pytest.raises(NotImplementedError, match="batch_group_count=2"):
    call(lhs_dilation=(2, 2), batch_group_count=2, padding=((1, 1), (1, 1)))


def test_col2im_and_its_derivatives_lower_for_cuda():
  x, w = jnp.ones((2, 7, 7, 4)), jnp.ones((3, 3, 4, 8))
  kwargs = _kwargs(dict(padding=((2, 2), (2, 2)), lhs_dilation=(2, 2), feature_group_count=2))
  w = jnp.ones((3, 3, 2, 8))
  f = lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="col2im")
  grad = jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))
  for fn in (f, grad):
    text = jax.jit(fn).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert "func.func public @main" in text
