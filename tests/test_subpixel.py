"""Sub-pixel decomposition and `jaxconv.conv_transpose` against lax."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _tune
from tests.util import HIGHEST, check_against_lax, rel_err, rng_for

NHWC = ("NHWC", "HWIO", "NHWC")

# (name, lhs shape, rhs shape, keyword arguments): input-dilated convolutions of every kind.
CASES = [
  ("stride2-3x3", (2, 6, 7, 4), (3, 3, 4, 5), dict(padding=((1, 2), (2, 1)), lhs_dilation=(2, 2))),
  ("uneven-4x4", (2, 5, 6, 3), (4, 4, 3, 2), dict(padding=((2, 2), (3, 0)), lhs_dilation=(2, 3))),
  ("one-axis-strided-other", (2, 7, 9, 3), (3, 3, 3, 4),
   dict(window_strides=(1, 2), padding=((1, 1), (0, 1)), lhs_dilation=(3, 1),
        rhs_dilation=(1, 2))),
  ("negative-padding", (1, 6, 6, 2), (3, 3, 2, 3),
   dict(padding=((-1, 2), (1, -1)), lhs_dilation=(2, 2))),
  ("phases-no-tap-reaches", (2, 4, 4, 2), (1, 2, 2, 3),
   dict(padding=((0, 0), (1, 1)), lhs_dilation=(3, 3))),
  ("groups-nchw", (2, 4, 5, 5), (6, 2, 3, 3),
   dict(padding=((2, 2), (2, 2)), lhs_dilation=(2, 2), feature_group_count=2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"))),
  ("batch-groups", (4, 5, 5, 3), (3, 3, 3, 4),
   dict(padding=((1, 1), (1, 1)), lhs_dilation=(2, 2), batch_group_count=2)),
  ("1d", (2, 9, 4), (5, 4, 3), dict(window_strides=(1,), padding=((3, 4),), lhs_dilation=(4,),
                                     dimension_numbers=("NWC", "WIO", "NWC"))),
  ("3d", (2, 4, 3, 5, 2), (3, 3, 2, 2, 3),
   dict(window_strides=(1, 1, 1), padding=((2, 2), (1, 1), (1, 0)), lhs_dilation=(2, 2, 1),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def _kwargs(kwargs):
  out = dict(window_strides=(1, 1), dimension_numbers=NHWC, precision=HIGHEST)
  out.update(kwargs)
  return out


def check_case(algorithm, name, lhs_shape, rhs_shape, kwargs, dtype):
  """One case by `algorithm` against lax, on fresh random normal data."""
  rng = rng_for(name)
  x = rng.standard_normal(lhs_shape).astype(dtype)
  w = rng.standard_normal(rhs_shape).astype(dtype)
  kwargs = _kwargs(kwargs)
  if "negative" in name:  # jitted XLA:CPU is unreliable here: the pre-padded lax path instead
    ref = jaxconv.conv_general_dilated(x, w, **kwargs, algorithm="lax")
    out = jaxconv.conv_general_dilated(x, w, **kwargs, algorithm=algorithm)
    assert out.shape == ref.shape and rel_err(out, ref) <= 1e-5
  else:
    check_against_lax(x, w, algorithm, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "lhs_shape", "rhs_shape", "kwargs"), CASES, ids=IDS)
def test_subpixel_matches_lax(name, lhs_shape, rhs_shape, kwargs, dtype):
  check_case("subpixel", name, lhs_shape, rhs_shape, kwargs, dtype)


def check_gradients(algorithm, name, rhs_shape, kwargs, second=True):
  """First (and second) derivatives of a float64 loss through `algorithm` against lax's."""
  rng = rng_for(name)
  x, w = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal(rhs_shape)
  kwargs = _kwargs(kwargs)
  ours = lambda x, w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm=algorithm)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  loss = lambda f: lambda x, w: jnp.sum(jnp.cos(f(x, w)))
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    assert rel_err(got, want) <= 1e-12
  if second:  # the Hessian-vector product of the loss in the input
    hvp = lambda f: jax.jvp(lambda x: jax.grad(loss(f))(x, w), (x,), (jnp.ones_like(x),))[1]
    assert rel_err(hvp(ours), hvp(ref)) <= 1e-12


def test_subpixel_gradients_match_lax():
  check_gradients(
    "subpixel", "subpixel-grad", (4, 3, 3, 4), dict(padding=((2, 1), (1, 2)), lhs_dilation=(2, 2)),
    second=False,
  )  # fmt: skip


def test_subpixel_declines_what_it_cannot_split():
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  with pytest.raises(NotImplementedError, match="has none"):
    jaxconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC, algorithm="subpixel")
  with pytest.raises(NotImplementedError, match=r"input dilation .2. with a stride .2."):
    jaxconv.conv_general_dilated(
      x, w, (2, 2), ((1, 1), (1, 1)), (2, 2), dimension_numbers=NHWC, algorithm="subpixel"
    )


def test_auto_decomposes_a_strided_layers_input_gradient():
  x, w = jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
  fwd = lambda x: jaxconv.conv_general_dilated(
    x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC
  )
  with _tune.planned() as seen:
    jax.jit(jax.grad(lambda x: fwd(x).sum())).lower(x)
  dilated = [p for p in seen if max(p.geometry.lhs_dilation) > 1]
  assert dilated and all(p.algorithm == "col2im" for p in dilated), [p.reason for p in seen]


# conv_transpose: lax.conv_transpose's own argument space. -------------------------------------

LAYOUTS = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}
TRANSPOSE_CASES = [
  (nd, s, k, padding, transpose_kernel, rd, consistent)
  for nd, s, k, padding, transpose_kernel, rd, consistent in itertools.product(
    (1, 2, 3), (1, 2, 3), (1, 3, 4), ("SAME", "VALID", "pairs"), (False, True), (1, 2),
    (False, True),
  )
  if nd < 3 or (s < 3 and k < 4 and rd == 1 and not consistent)
]  # fmt: skip


@pytest.mark.parametrize(
  "nd,s,k,padding,transpose_kernel,rd,consistent", TRANSPOSE_CASES, ids=lambda v: str(v)
)
def test_conv_transpose_matches_lax(nd, s, k, padding, transpose_kernel, rd, consistent):
  rng = rng_for(f"ct{nd}{s}{k}{padding}{transpose_kernel}{rd}{consistent}")
  x = rng.standard_normal((2, *(4,) * nd, 3)).astype(np.float32)
  w = rng.standard_normal((*(k,) * nd, *((4, 3) if transpose_kernel else (3, 4)))).astype(
    np.float32
  )
  pads = ((1, 0),) * nd if padding == "pairs" else padding
  kw = dict(
    strides=(s,) * nd,
    padding=pads,
    rhs_dilation=(rd,) * nd,
    transpose_kernel=transpose_kernel,
    precision=HIGHEST,
    use_consistent_padding=consistent,
  )
  if nd != 2:
    kw["dimension_numbers"] = LAYOUTS[nd]
  ref = lax.conv_transpose(x, w, **kw)
  for algorithm in ("auto", "lax", "subpixel", "col2im", "pixelshuffle"):
    try:
      out = jaxconv.conv_transpose(x, w, **kw, algorithm=algorithm)
    except NotImplementedError:
      assert s == 1 or (algorithm in ("subpixel", "pixelshuffle") and rd > 1), algorithm
      continue
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert rel_err(out, ref) <= 1e-5, algorithm


def test_conv_transpose_rejects_what_lax_rejects():
  x, w = jnp.ones((2, 4, 4, 3)), jnp.ones((3, 3, 3))
  with pytest.raises(AssertionError):
    lax.conv_transpose(x, w, (2, 2), "SAME")
  with pytest.raises((ValueError, AssertionError), match="same rank"):
    jaxconv.conv_transpose(x, w, (2, 2), "SAME")
