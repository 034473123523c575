"""im2col against lax.conv_general_dilated at HIGHEST, over grids that cover what lax accepts."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv._im2col import im2col_indices
from tests.util import HIGHEST, check_against_lax, random_array, rel_err, rng_for

LAYOUTS_2D = [
  ("NCHW", "OIHW", "NCHW"),
  ("NHWC", "HWIO", "NHWC"),
  ("NCHW", "HWIO", "NHWC"),
  ("HWNC", "IOHW", "CNHW"),
]
PADDINGS = ["VALID", "SAME", "SAME_LOWER", ((0, 0), (0, 0)), ((1, 2), (2, 0)), ((-1, 2), (0, -2))]


def _shape(spec: str, sizes: dict[str, int]) -> tuple[int, ...]:
  return tuple(sizes[c] for c in spec)


def _grid_2d():
  # JAX's own testConvGeneralDilated grid, covered pairwise: every stride x padding x rhs
  # dilation, with layouts and lhs dilations cycling through the cases.
  for i, (strides, padding, rhs_dil) in enumerate(
    itertools.product([(1, 1), (1, 2), (2, 1)], PADDINGS, [(1, 1), (2, 1)])
  ):
    lhs_dil = [(1, 1), (2, 3), (1, 2)][i % 3] if not isinstance(padding, str) else (1, 1)
    yield pytest.param(
      LAYOUTS_2D[i % len(LAYOUTS_2D)],
      strides,
      padding,
      lhs_dil,
      rhs_dil,
      id=f"s{strides}-p{padding}-ld{lhs_dil}-rd{rhs_dil}-{LAYOUTS_2D[i % 4][0]}",
    )


@pytest.mark.parametrize("layout,strides,padding,lhs_dil,rhs_dil", list(_grid_2d()))
def test_2d_grid(layout, strides, padding, lhs_dil, rhs_dil):
  rng = rng_for(f"{layout}{strides}{padding}{lhs_dil}{rhs_dil}")
  lhs = random_array(rng, _shape(layout[0], dict(N=2, C=3, H=9, W=10)), np.float32)
  rhs = random_array(rng, _shape(layout[1], dict(O=4, I=3, H=4, W=3)), np.float32)
  check_against_lax(
    lhs,
    rhs,
    "im2col",
    window_strides=strides,
    padding=padding,
    lhs_dilation=lhs_dil,
    rhs_dilation=rhs_dil,
    dimension_numbers=layout,
  )


SPATIAL_CASES = [
  # (lhs_shape, rhs_shape, layout, strides, padding, lhs_dil, rhs_dil)
  ((3, 5), (4, 5), ("NC", "OI", "NC"), (), "VALID", None, None),
  ((3, 5), (3, 4), ("CN", "IO", "NC"), (), (), None, None),
  ((2, 3, 17), (4, 3, 5), ("NCW", "OIW", "NCW"), (2,), "SAME", None, None),
  ((2, 17, 3), (5, 3, 4), ("NWC", "WIO", "NWC"), (3,), ((2, -1),), (2,), (2,)),
  ((2, 11, 2), (1, 2, 3), ("NWC", "WIO", "NWC"), (1,), "VALID", None, None),
  ((2, 7, 6, 5, 2), (3, 2, 3, 2, 3), ("NDHWC", "DHWIO", "NDHWC"), (1, 2, 1), "SAME", None, None),
  (
    (1, 2, 6, 7, 5),
    (3, 2, 2, 3, 2),
    ("NCDHW", "OIDHW", "NCDHW"),
    (2, 1, 1),
    ((1, 0), (0, 2), (-1, 1)),
    (1, 2, 1),
    (2, 1, 2),
  ),
  ((2, 3, 9, 9), (4, 3, 1, 7), ("NCHW", "OIHW", "NCHW"), (1, 1), "SAME", None, None),
  ((2, 3, 9, 9), (4, 3, 7, 1), ("NCHW", "OIHW", "NCHW"), (1, 1), "SAME", None, None),
  ((2, 3, 9, 9), (4, 3, 1, 1), ("NCHW", "OIHW", "NCHW"), (2, 2), "VALID", None, None),
  ((2, 3, 4, 4), (4, 3, 5, 5), ("NCHW", "OIHW", "NCHW"), (1, 1), "SAME", None, None),
]


@pytest.mark.parametrize(
  "lhs_shape,rhs_shape,layout,strides,padding,lhs_dil,rhs_dil",
  SPATIAL_CASES,
  ids=[f"{c[2][0]}-{c[0]}-{c[1]}-{c[4]}" for c in SPATIAL_CASES],
)
def test_spatial_ranks(lhs_shape, rhs_shape, layout, strides, padding, lhs_dil, rhs_dil):
  rng = rng_for(f"{lhs_shape}{rhs_shape}{layout}{padding}")
  check_against_lax(
    random_array(rng, lhs_shape, np.float32),
    random_array(rng, rhs_shape, np.float32),
    "im2col",
    window_strides=strides,
    padding=padding,
    lhs_dilation=lhs_dil,
    rhs_dilation=rhs_dil,
    dimension_numbers=layout,
  )


GROUP_CASES = [
  # (N, C, O, feature_group_count, batch_group_count, layout)
  (2, 6, 4, 2, 1, LAYOUTS_2D[0]),
  (2, 6, 9, 3, 1, LAYOUTS_2D[1]),
  (2, 4, 4, 4, 1, LAYOUTS_2D[1]),  # depthwise
  (2, 4, 8, 4, 1, LAYOUTS_2D[2]),  # depthwise, channel multiplier 2
  (4, 3, 4, 1, 2, LAYOUTS_2D[0]),
  (6, 3, 6, 1, 3, LAYOUTS_2D[1]),
  (6, 2, 3, 1, 3, LAYOUTS_2D[3]),
]


@pytest.mark.parametrize("n,c,o,fgc,bgc,layout", GROUP_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 1), ((1, 0), (2, -1)))])
def test_groups(n, c, o, fgc, bgc, layout, strides, padding):
  rng = rng_for(f"{n}{c}{o}{fgc}{bgc}{layout}{strides}")
  lhs = random_array(rng, _shape(layout[0], dict(N=n, C=c, H=7, W=8)), np.float32)
  rhs = random_array(rng, _shape(layout[1], dict(O=o, I=c // fgc, H=3, W=2)), np.float32)
  check_against_lax(
    lhs,
    rhs,
    "im2col",
    window_strides=strides,
    padding=padding,
    dimension_numbers=layout,
    feature_group_count=fgc,
    batch_group_count=bgc,
  )


DTYPES = [
  np.float16,
  jnp.bfloat16,
  np.float32,
  np.float64,
  np.complex64,
  np.complex128,
  np.int8,
  np.int16,
  np.int32,
  np.int64,
  np.uint8,
  np.uint32,
  np.bool_,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dtypes(dtype):
  rng = rng_for(f"dtype{np.dtype(dtype).name}")
  lhs = random_array(rng, (2, 7, 6, 4), dtype)
  rhs = random_array(rng, (3, 2, 2, 6), dtype)
  check_against_lax(
    lhs,
    rhs,
    "im2col",
    window_strides=(2, 1),
    padding="SAME",
    dimension_numbers=LAYOUTS_2D[1],
    feature_group_count=2,
  )


@pytest.mark.parametrize(
  "dtype,preferred",
  [
    (np.float32, np.float64),
    (jnp.bfloat16, np.float32),
    (np.float16, np.float32),
    (np.int8, np.int32),
    (np.int16, np.int64),
    (np.float32, np.float32),
  ],
  ids=lambda d: np.dtype(d).name,
)
def test_preferred_element_type(dtype, preferred):
  rng = rng_for(f"pet{np.dtype(dtype).name}{np.dtype(preferred).name}")
  lhs, rhs = random_array(rng, (2, 3, 8, 8), dtype), random_array(rng, (4, 3, 3, 3), dtype)
  tol = 1e-5 if np.dtype(preferred).itemsize >= 4 else None
  check_against_lax(
    lhs,
    rhs,
    "im2col",
    tol=tol,
    window_strides=(1, 1),
    padding="SAME",
    preferred_element_type=preferred,
  )


@pytest.mark.parametrize(
  "precision",
  [None, "highest", HIGHEST, (HIGHEST, HIGHEST), lax.Precision.DEFAULT, "fastest"],
  ids=str,
)
def test_precision_forms(precision):
  rng = rng_for("precision")
  lhs, rhs = (
    random_array(rng, (2, 3, 8, 8), np.float32),
    random_array(rng, (4, 3, 3, 3), np.float32),
  )
  check_against_lax(lhs, rhs, "im2col", window_strides=(1, 1), padding="SAME", precision=precision)


ZERO_CASES = [
  ((0, 3, 5, 5), (4, 3, 3, 3), "SAME"),  # no examples
  ((2, 0, 5, 5), (4, 0, 3, 3), "SAME"),  # no input features: all zeros
  ((2, 3, 5, 5), (0, 3, 3, 3), "SAME"),  # no output features
  ((2, 3, 0, 5), (4, 3, 3, 3), "SAME"),  # empty spatial dimension
  ((2, 3, 5, 5), (4, 3, 3, 3), ((-2, -1), (0, 0))),  # output cropped to zero rows
  ((1, 1, 1, 1), (1, 1, 1, 1), "VALID"),  # everything size one
]


@pytest.mark.parametrize("lhs_shape,rhs_shape,padding", ZERO_CASES, ids=str)
def test_zero_and_unit_sizes(lhs_shape, rhs_shape, padding):
  rng = rng_for(f"zero{lhs_shape}{rhs_shape}")
  lhs, rhs = random_array(rng, lhs_shape, np.float32), random_array(rng, rhs_shape, np.float32)
  ref = lax.conv_general_dilated(lhs, rhs, (1, 1), padding, precision=HIGHEST)
  out = jaxconv.conv_general_dilated(lhs, rhs, (1, 1), padding, algorithm="im2col")
  assert out.shape == ref.shape and out.dtype == ref.dtype
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [4096, 40_000], ids=["row-blocks", "example-chunks"])
def test_patch_budget_chunks_the_work(budget):
  rng = rng_for(f"budget{budget}")
  lhs, rhs = (
    random_array(rng, (5, 9, 9, 4), np.float32),
    random_array(rng, (3, 3, 4, 6), np.float32),
  )
  old = jaxconv.set_patch_budget(budget)
  try:
    check_against_lax(
      lhs,
      rhs,
      "im2col",
      window_strides=(1, 1),
      padding="SAME",
      dimension_numbers=LAYOUTS_2D[1],
    )
    hlo = (
      jax.jit(
        lambda x, w: jaxconv.conv_general_dilated(
          x, w, (1, 1), "SAME", dimension_numbers=LAYOUTS_2D[1], algorithm="im2col"
        )
      )
      .lower(lhs, rhs)
      .as_text()
    )
    assert "while" in hlo  # the work is looped over chunks, not materialised at once
  finally:
    jaxconv.set_patch_budget(old)


def test_patch_budget_rejects_nonpositive():
  with pytest.raises(ValueError, match="nbytes"):
    jaxconv.set_patch_budget(0)


def test_indices_are_cached_and_read_only():
  a = im2col_indices((6, 7), (4, 5), (3, 3), (1, 1), (1, 1))
  b = im2col_indices((6, 7), (4, 5), (3, 3), (1, 1), (1, 1))
  assert a is b and not a.flags.writeable
  assert a.shape == (20, 9)
  # Output (1, 2), tap (2, 1) reads padded position (3, 3).
  assert a[1 * 5 + 2, 2 * 3 + 1] == 3 * 7 + 3


def test_jit_vmap_grad():
  rng = rng_for("transforms")
  dn = LAYOUTS_2D[1]
  x, w = random_array(rng, (3, 2, 8, 8, 3), np.float32), random_array(rng, (3, 3, 3, 4), np.float32)

  def ours(x, w):
    return jaxconv.conv_general_dilated(
      x, w, (2, 1), "SAME", dimension_numbers=dn, precision=HIGHEST, algorithm="im2col"
    )

  def ref(x, w):
    return lax.conv_general_dilated(x, w, (2, 1), "SAME", dimension_numbers=dn, precision=HIGHEST)

  assert rel_err(jax.jit(jax.vmap(ours, (0, None)))(x, w), jax.vmap(ref, (0, None))(x, w)) < 1e-5
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x[0], w)))
  g_ours = jax.grad(loss(ours), argnums=(0, 1))(x, w)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(x, w)
  for a, b in zip(g_ours, g_ref):
    assert rel_err(a, b) < 1e-5


def test_seed_example():
  """The blog post's example: a batch of 8 150x150 RGB images, its 3x3 edge kernel, 3 -> 16."""
  rng = rng_for("seed")
  images = rng.random((8, 150, 150, 3)).astype(np.float32)
  kernel = np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]], np.float32)
  kernel = np.tile(kernel[..., None, None], (1, 1, 3, 16))
  dn = ("NHWC", "HWIO", "NHWC")
  ref = lax.conv_general_dilated(
    images, kernel, (1, 1), "VALID", dimension_numbers=dn, precision=HIGHEST
  )
  out = jaxconv.conv_general_dilated(images, kernel, (1, 1), "VALID", dimension_numbers=dn)
  assert jaxconv.plan(images, kernel, (1, 1), "VALID", dimension_numbers=dn).algorithm == "im2col"
  assert out.shape == (8, 148, 148, 16)
  assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("runs", [True, False], ids=["contiguous-runs", "per-tap"])
@pytest.mark.parametrize(
  "strides,padding,rhs_dil,fgc",
  [
    ((1, 1), "SAME", (1, 1), 1),
    ((2, 3), ((2, 1), (-1, 2)), (2, 1), 1),
    ((1, 2), "VALID", (1, 1), 3),
  ],
  ids=str,
)
def test_both_gather_forms(runs, strides, padding, rhs_dil, fgc, monkeypatch):
  from jaxconv import _im2col
  from jaxconv._geometry import normalize

  monkeypatch.setattr(_im2col, "RUN_MAX_FEATURES", 10**6 if runs else 0)
  rng = rng_for(f"forms{strides}{padding}{rhs_dil}{fgc}")
  x, w = (
    random_array(rng, (2, 9, 11, 6), np.float32),
    random_array(rng, (3, 4, 6 // fgc, 6), np.float32),
  )
  kw = dict(
    window_strides=strides,
    padding=padding,
    rhs_dilation=rhs_dil,
    dimension_numbers=LAYOUTS_2D[1],
    feature_group_count=fgc,
    precision=HIGHEST,
  )
  g = normalize(x, w, **kw)
  out = jax.jit(lambda x, w: _im2col.im2col(x, w, g))(x, w)
  assert rel_err(out, lax.conv_general_dilated(x, w, **kw)) < 1e-5
