"""Winograd against lax.conv_general_dilated at HIGHEST, and against float64 for accuracy."""

from __future__ import annotations

import dataclasses
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from tests.util import HIGHEST, check_against_lax, random_array, rel_err, rng_for

NHWC = ("NHWC", "HWIO", "NHWC")
LAYOUTS = [("NCHW", "OIHW", "NCHW"), NHWC, ("NCHW", "HWIO", "NHWC"), ("HWNC", "IOHW", "CNHW")]
PADDINGS = ["SAME", "SAME_LOWER", "VALID", ((1, 2), (0, -1)), ((-1, 0), (3, 1))]


def _shape(spec, sizes):
  return tuple(sizes[c] for c in spec)


def _run(algorithm, lhs_shape, rhs_shape, tol=1e-4, dtype=np.float32, **kwargs):
  rng = rng_for(f"{algorithm}{lhs_shape}{rhs_shape}{kwargs}")
  lhs, rhs = random_array(rng, lhs_shape, dtype), random_array(rng, rhs_shape, dtype)
  return check_against_lax(lhs, rhs, algorithm, tol=tol, **kwargs)


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4", "winograd6"])
@pytest.mark.parametrize("layout_index,padding", list(enumerate(PADDINGS)), ids=str)
def test_tiles_layouts_paddings(algorithm, layout_index, padding):
  layout = LAYOUTS[layout_index % len(LAYOUTS)]
  _run(
    algorithm,
    _shape(layout[0], dict(N=2, C=5, H=11, W=13)),
    _shape(layout[1], dict(O=6, I=5, H=3, W=3)),
    window_strides=(1, 1),
    padding=padding,
    dimension_numbers=layout,
  )


@pytest.mark.parametrize(
  "kh,kw", [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (1, 7), (7, 1), (3, 5), (2, 1)], ids=str
)
@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_kernel_sizes(kh, kw, algorithm):
  _run(
    algorithm,
    (2, 13, 12, 3),
    (kh, kw, 3, 4),
    window_strides=(1, 1),
    padding="SAME",
    dimension_numbers=NHWC,
  )


@pytest.mark.parametrize(
  "strides,rhs_dil,lhs_dil,padding",
  [
    ((2, 2), (1, 1), (1, 1), "SAME"),
    ((3, 2), (1, 1), (1, 1), "VALID"),
    ((1, 1), (2, 2), (1, 1), "SAME"),
    ((1, 1), (3, 2), (1, 1), ((2, 1), (0, 3))),
    ((2, 1), (1, 2), (2, 1), ((2, -1), (0, 3))),
    ((1, 1), (1, 1), (2, 2), ((1, 1), (2, 0))),
  ],
  ids=str,
)
@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_strides_and_dilations(strides, rhs_dil, lhs_dil, padding, algorithm):
  _run(
    algorithm,
    (2, 12, 13, 4),
    (5, 3, 4, 5),
    window_strides=strides,
    padding=padding,
    rhs_dilation=rhs_dil,
    lhs_dilation=lhs_dil,
    dimension_numbers=NHWC,
  )


@pytest.mark.parametrize(
  "rhs_shape,strides,rhs_dil",
  [((1, 3, 4, 5), (2, 1), (1, 1)), ((3, 1, 4, 5), (1, 3), (1, 1)), ((3, 3, 4, 5), (1, 1), (5, 1))],
  ids=str,
)
def test_one_phase_that_is_not_the_whole_input(rhs_shape, strides, rhs_dil):
  # A stride along an axis whose kernel has one tap, or a dilation with one output, leaves a
  # single phase that still reads every s-th (d-th) input position.
  _run(
    "winograd4",
    (2, 11, 10, 4),
    rhs_shape,
    window_strides=strides,
    padding="VALID",
    rhs_dilation=rhs_dil,
    dimension_numbers=NHWC,
  )


@pytest.mark.parametrize(
  "n,c,o,fgc,bgc",
  [(2, 6, 4, 2, 1), (2, 4, 4, 4, 1), (2, 4, 8, 4, 1), (4, 3, 4, 1, 2), (6, 2, 6, 1, 3)],
  ids=str,
)
def test_groups(n, c, o, fgc, bgc):
  _run(
    "winograd4",
    (n, 9, 10, c),
    (3, 3, c // fgc, o),
    window_strides=(1, 1),
    padding="SAME",
    dimension_numbers=NHWC,
    feature_group_count=fgc,
    batch_group_count=bgc,
  )


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4", "winograd6"])
@pytest.mark.parametrize(
  "strides,padding", [((1,), "SAME"), ((2,), ((3, 1),)), ((1,), "VALID")], ids=str
)
def test_1d(algorithm, strides, padding):
  _run(algorithm, (2, 4, 37), (5, 4, 3), window_strides=strides, padding=padding)
  _run(
    algorithm,
    (2, 37, 4),
    (5, 4, 5),
    window_strides=strides,
    padding=padding,
    dimension_numbers=("NWC", "WIO", "NWC"),
  )


@pytest.mark.parametrize(
  "dtype",
  [np.float16, jnp.bfloat16, np.float32, np.float64, np.complex64],
  ids=lambda d: np.dtype(d).name,
)
def test_dtypes(dtype):
  tol = {np.dtype(np.float64): 1e-12}.get(np.dtype(dtype))
  _run(
    "winograd4",
    (2, 10, 9, 4),
    (3, 3, 4, 5),
    tol=tol,
    dtype=dtype,
    window_strides=(1, 1),
    padding="SAME",
    dimension_numbers=NHWC,
  )


@pytest.mark.parametrize("preferred", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_preferred_element_type(preferred):
  _run(
    "winograd4",
    (2, 10, 9, 4),
    (3, 3, 4, 5),
    dtype=jnp.bfloat16,
    tol=3e-2,
    window_strides=(1, 1),
    padding="SAME",
    dimension_numbers=NHWC,
    preferred_element_type=preferred,
  )


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
@pytest.mark.parametrize(
  "strides,padding,rhs_dil,groups",
  [
    ((1, 1, 1), "SAME", (1, 1, 1), 1),
    ((2, 1, 2), ((1, 0), (2, 1), (0, 1)), (1, 1, 1), 2),
    ((1, 1, 1), "VALID", (1, 2, 1), 1),
  ],
  ids=["same", "strided-grouped", "dilated"],
)
def test_3d(algorithm, strides, padding, rhs_dil, groups):
  _run(
    algorithm,
    (2, 7, 9, 8, 4),
    (3, 3, 3, 4 // groups, 6),
    window_strides=strides,
    padding=padding,
    rhs_dilation=rhs_dil,
    feature_group_count=groups,
    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
  )


@pytest.mark.parametrize(
  "lhs_shape,rhs_shape,kwargs,why",
  [
    ((1, 2, 4, 4, 4, 4), (2, 2, 3, 3, 3, 3), {}, "4-D"),
    ((1, 2, 6, 6), (2, 2, 3, 3), {"rhs_dilation": (2, 1), "window_strides": (2, 1)}, "stride"),
    ((1, 2, 12, 12), (2, 2, 9, 9), {}, "kernel size"),
    ((1, 2, 6, 6), (2, 2, 3, 3), {"dtype": np.int32}, "int32"),
  ],
  ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_cases_raise(lhs_shape, rhs_shape, kwargs, why):
  kwargs = dict(kwargs)
  dtype = kwargs.pop("dtype", np.float32)
  nd = len(lhs_shape) - 2
  kwargs.setdefault("window_strides", (1,) * nd)
  x, w = np.ones(lhs_shape, dtype), np.ones(rhs_shape, dtype)
  with pytest.raises(NotImplementedError, match=f"{why}.*Algorithms that can: lax, im2col"):
    jaxconv.conv_general_dilated(x, w, padding="VALID", **kwargs, algorithm="winograd")


def test_plan_reports_tile_and_points():
  x = jax.ShapeDtypeStruct((8, 56, 56, 64), np.float32)
  k = jax.ShapeDtypeStruct((1, 3, 64, 64), np.float32)
  p = jaxconv.plan(x, k, (1, 1), "SAME", dimension_numbers=NHWC, algorithm="winograd4")
  assert p.algorithm == "winograd" and p.tile == (1, 4)
  assert p.points[0] == () and len(p.points[1]) == 4 + 3 - 2


def test_jit_vmap_grad():
  rng = rng_for("winograd-transforms")
  x, w = random_array(rng, (3, 2, 9, 9, 3), np.float32), random_array(rng, (3, 3, 3, 4), np.float32)

  def conv(algorithm):
    return lambda x, w: jaxconv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC, precision=HIGHEST, algorithm=algorithm
    )

  ours, ref = conv("winograd4"), conv("lax")
  assert rel_err(jax.jit(jax.vmap(ours, (0, None)))(x, w), jax.vmap(ref, (0, None))(x, w)) < 1e-5
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x[0], w)))
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    assert rel_err(a, b) < 1e-5


# Accuracy against a float64 reference: error of F(m, 3) over direct convolution's error, both in
# float32. Bounds from docs/accuracy.md (measured at C = 64 and 512), with margin.
ACCURACY_BOUNDS = {2: 1.5, 4: 5.0, 6: 10.0}


@pytest.mark.parametrize("channels,size", [(64, 16), (512, 8)], ids=["C64", "C512"])
@pytest.mark.parametrize("m", sorted(ACCURACY_BOUNDS))
def test_accuracy_against_float64(m, channels, size):
  rng = rng_for(f"accuracy{m}{channels}")
  x = rng.standard_normal((2, size, size, channels))
  w = rng.standard_normal((3, 3, channels, channels))
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC, precision=HIGHEST)
  exact = lax.conv_general_dilated(x, w, **kw)  # float64
  x32, w32 = x.astype(np.float32), w.astype(np.float32)
  direct = rel_err(lax.conv_general_dilated(x32, w32, **kw), exact)
  ours = rel_err(jaxconv.conv_general_dilated(x32, w32, **kw, algorithm=f"winograd{m}"), exact)
  assert ours <= ACCURACY_BOUNDS[m] * direct, (ours, direct, ours / direct)


def test_auto_uses_winograd_on_wide_3x3_layers():
  x = jax.ShapeDtypeStruct((8, 28, 28, 128), np.float32)
  k = jax.ShapeDtypeStruct((3, 3, 128, 128), np.float32)
  p = jaxconv.plan(x, k, (1, 1), "SAME", dimension_numbers=NHWC)
  assert p.algorithm == "winograd" and p.tile is not None, p.reason
  strided = jaxconv.plan(x, k, (2, 2), "SAME", dimension_numbers=NHWC)
  assert strided.algorithm == "lax" and "strided" in strided.reason


def test_every_tile_runs_in_every_spatial_case():
  # A small exhaustive sweep: tile sizes x output sizes around multiples of m (cropping paths).
  for m, size in itertools.product((2, 4, 6), (3, 4, 5, 7, 8, 9)):
    _run(
      f"winograd{m}",
      (1, size, size + 1, 2),
      (3, 3, 2, 2),
      window_strides=(1, 1),
      padding="SAME",
      dimension_numbers=NHWC,
    )


@pytest.mark.parametrize(
  "lhs_shape,rhs_shape,strides",
  [
    ((1, 30, 29, 4), (3, 3, 4, 6), (1, 1)),
    ((3, 17, 31, 3), (5, 2, 3, 4), (2, 1)),
    ((1, 40, 5), (3, 5, 7), (1,)),
  ],
  ids=str,
)
def test_blocks_of_examples_and_tile_rows(lhs_shape, rhs_shape, strides, monkeypatch):
  from jaxconv import _winograd
  from jaxconv._geometry import normalize

  monkeypatch.setattr(_winograd, "SPLIT_ABOVE_BYTES", 1 << 14)  # forces both kinds of blocks
  monkeypatch.setattr(_winograd, "CHUNK_BYTES", 1 << 14)
  rng = rng_for(f"blocks{lhs_shape}")
  x, w = random_array(rng, lhs_shape, np.float32), random_array(rng, rhs_shape, np.float32)
  dn = NHWC if len(lhs_shape) == 4 else ("NWC", "WIO", "NWC")
  kw = dict(window_strides=strides, padding="SAME", dimension_numbers=dn, precision=HIGHEST)
  g = normalize(x, w, **kw)
  out = jax.jit(lambda x, w: _winograd.winograd(x, w, g, (4,) * g.ndim))(x, w)
  assert rel_err(out, lax.conv_general_dilated(x, w, **kw)) < 1e-5


@pytest.mark.parametrize(
  "lhs_shape,rhs_shape,dn",
  [
    ((2, 9, 10, 8), (3, 3, 12, 8), ("NHWC", "HWOI", "NHWC")),
    ((2, 12, 8), (5, 6, 8), ("NWC", "WOI", "NWC")),
    ((1, 6, 5, 7, 4), (3, 2, 3, 4, 4), ("NDHWC", "DHWOI", "NDHWC")),
  ],
  ids=str,
)
@pytest.mark.parametrize("u_block_bytes", [None, 1 << 10])
def test_input_features_innermost_kernels_as_left_operands(lhs_shape, rhs_shape, dn, u_block_bytes,
                                                           monkeypatch):  # fmt: skip
  from jaxconv import _winograd
  from jaxconv._geometry import normalize

  if u_block_bytes:  # the transformed kernel in blocks of positions
    monkeypatch.setattr(_winograd, "U_BLOCK_BYTES", u_block_bytes)
  rng = rng_for(f"features-minor{lhs_shape}")
  x, w = random_array(rng, lhs_shape, np.float32), random_array(rng, rhs_shape, np.float32)
  kw = dict(window_strides=(1,) * (x.ndim - 2), padding="SAME", dimension_numbers=dn,
            precision=HIGHEST)  # fmt: skip
  g = normalize(x, w, **kw)
  assert _winograd._features_minor(g, (4,) * g.ndim)
  out = jax.jit(lambda x, w: _winograd.winograd(x, w, g, (4,) * g.ndim))(x, w)
  assert rel_err(out, lax.conv_general_dilated(x, w, **kw)) < 1e-5


@pytest.mark.parametrize("form", ["rows", "channels"])
@pytest.mark.parametrize(
  "lhs_shape,rhs_shape,dn,tile,extra",
  [
    ((2, 9, 10, 8), (3, 3, 8, 12), NHWC, 4, {}),
    ((2, 9, 10, 8), (3, 3, 8, 12), NHWC, 4, {"padding": ((2, 0), (1, 3)), "lhs_dilation": (2, 1)}),
    ((2, 8, 11, 9), (12, 8, 3, 3), ("NCHW", "OIHW", "NCHW"), 2, {}),
    ((2, 12, 8), (5, 8, 6), ("NWC", "WIO", "NWC"), 4, {}),
    ((1, 6, 5, 7, 4), (3, 2, 3, 4, 4), ("NDHWC", "DHWIO", "NDHWC"), 2, {}),
  ],
  ids=str,
)
def test_transformed_kernel_in_blocks_of_positions(lhs_shape, rhs_shape, dn, tile, extra, form,
                                                   monkeypatch, request):  # fmt: skip
  # A transformed kernel over U_BLOCK_BYTES is made and multiplied a block of first-axis
  # positions at a time (here one row of positions per block), in both GEMM forms, each block
  # padding (and dilating) the input itself and adding its share of the output tiles in a loop;
  # the forward and both gradients agree.
  from jaxconv import _api, _winograd
  from jaxconv._geometry import normalize

  monkeypatch.setattr(_winograd, "U_BLOCK_BYTES", 1 << 10)
  monkeypatch.setattr(_winograd, "GEMM_FORM", form)
  _api._run.clear_cache()  # traced afresh with the small budget; none of it kept afterwards
  request.addfinalizer(_api._run.clear_cache)
  rng = rng_for(f"position-blocks{lhs_shape}{form}")
  x, w = random_array(rng, lhs_shape, np.float32), random_array(rng, rhs_shape, np.float32)
  kw = dict(window_strides=(1,) * (x.ndim - 2), padding="SAME", dimension_numbers=dn,
            precision=HIGHEST) | extra  # fmt: skip
  g = normalize(x, w, **kw)
  tiles = (tile,) * g.ndim
  jaxpr = str(jax.make_jaxpr(lambda x, w: _winograd.winograd(x, w, g, tiles))(x, w))
  assert ("scan" in jaxpr or "while" in jaxpr) and "cond" in jaxpr  # a loop, a branch per block
  ours = lambda x, w: jaxconv.conv_general_dilated(x, w, **kw, algorithm=f"winograd{tile}")
  theirs = lambda x, w: lax.conv_general_dilated(x, w, **kw)
  y, vjp = jax.vjp(jax.jit(ours), x, w)
  y_ref, vjp_ref = jax.vjp(theirs, x, w)
  ct = random_array(rng, y_ref.shape, np.float32)
  assert rel_err(y, y_ref) < 1e-5
  for got, want in zip(vjp(ct), vjp_ref(ct)):
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("m,r", [(2, 3), (4, 3), (6, 3), (2, 5), (4, 5), (2, 7)])
def test_reversed_taps_permute_the_points(m, r):
  # The default points are closed under a -> 1/a, so a reversed kernel's transform is the kernel's
  # own with its positions permuted, and the permuted input and output transforms compute the
  # correlation with the reversed kernel.
  from jaxconv import _winograd

  mats = [_winograd._matrices(m, r)]
  gk = _winograd.kernel_matrix(mats)
  perm = _winograd._reversal(gk)
  assert perm is not None and np.array_equal(gk[:, ::-1], gk[perm])
  [(at, gm, bt)], gk2 = _winograd._reversed_taps(mats, gk)
  assert gk2 is gk
  rng = np.random.default_rng(m * 10 + r)
  d, k = rng.standard_normal(m + r - 1), rng.standard_normal(r)
  want = np.correlate(d, k[::-1], mode="valid")
  np.testing.assert_allclose(at @ ((gm @ k) * (bt @ d)), want, rtol=1e-9, atol=1e-9)


def test_reversed_taps_without_symmetric_points_reverse_the_kernel_matrix():
  # Points not closed under inversion (2 without 1/2): G's columns are reversed instead.
  from jaxconv import _winograd
  from jaxconv._transforms import winograd_matrices

  mats = [winograd_matrices(4, 3, [0, 1, -1, 2, -2])]
  gk = _winograd.kernel_matrix(mats)
  assert _winograd._reversal(gk) is None
  got_mats, got_gk = _winograd._reversed_taps(mats, gk)
  assert np.array_equal(got_gk, gk[:, ::-1]) and got_mats[0][2] is mats[0][2]


@pytest.mark.parametrize("tile", [2, 4])
def test_forward_and_input_gradient_transform_the_kernel_once(tile):
  # A forward and the input gradient of the same HWIO kernel (its taps reversed, features
  # swapped) make one identical transformed kernel, which XLA computes once for both.
  from jaxconv import _winograd
  from jaxconv._geometry import normalize

  rng = rng_for(f"kernel-once{tile}")
  x, ct = random_array(rng, (2, 9, 9, 16), np.float32), random_array(rng, (2, 9, 9, 8), np.float32)
  w = random_array(rng, (3, 3, 16, 8), np.float32)
  kw = dict(window_strides=(1, 1), padding="SAME", precision=HIGHEST)
  g = normalize(x, w, dimension_numbers=NHWC, **kw)
  dn_t = ("NHWC", "HWOI", "NHWC")  # the input gradient's view of the same kernel
  g_t = dataclasses.replace(normalize(ct, w, dimension_numbers=dn_t, **kw), reversed_kernel=True)
  tiles = (tile, tile)
  both = jax.jit(
    lambda x, ct, w: (
      _winograd.winograd(x, w, g, tiles),
      _winograd.winograd(ct, lax.rev(w, (0, 1)), g_t, tiles),
    )
  )
  hlo = both.lower(x, ct, w).compile().as_text()
  n_pos = (tile + 2) ** 2
  assert len(re.findall(rf"= f32\[{n_pos},{16 * 8}\]\S* dot\(", hlo)) == 1
  y, dx = both(x, ct, w)
  assert rel_err(y, lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kw)) < 1e-5
  want = lax.conv_general_dilated(ct, lax.rev(w, (0, 1)), dimension_numbers=dn_t, **kw)
  assert rel_err(dx, want) < 1e-5


def test_blocks_at_the_real_thresholds_read_and_write_in_place():
  # 1x200x200x64: 46 MB of transformed data, so three blocks of 17 tile rows (68 output rows);
  # the last starts at row 132, overlapping its predecessor. Then 40 examples of 28x28x64 (36 MB):
  # three blocks of 14 examples, the last starting at example 26.
  from jaxconv import _winograd

  rng = rng_for("real-blocks")
  for lhs_shape in [(1, 200, 200, 64), (40, 28, 28, 64)]:
    x = random_array(rng, lhs_shape, np.float32)
    w = random_array(rng, (3, 3, 64, 64), np.float32) / 24
    total = (
      _winograd._bytes_per_example(
        jaxconv.plan(x, w, (1, 1), "SAME", dimension_numbers=NHWC).geometry, (4, 4), np.float32
      )
      * lhs_shape[0]
    )
    assert total > _winograd.SPLIT_ABOVE_BYTES
    check_against_lax(
      x, w, "winograd4", window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC
    )
