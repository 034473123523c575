"""Cases found by property-based testing, kept as explicit tests."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax import lax

import jaxconv

LHS = np.array(
  [
    [
      [0.12573022, -0.13210486, 0.64042264, 0.10490011, -0.5356694],
      [0.36159506, 1.304, 0.94708097, -0.70373523, -1.2654215],
    ],
    [
      [-0.62327445, 0.04132598, -2.3250308, -0.21879166, -1.245911],
      [-0.7322674, -0.544259, -0.31630015, 0.41163054, 1.0425134],
    ],
  ],
  np.float32,
)
RHS = np.array(
  [
    [
      [-0.12853466, 1.3664634, -0.6651947, 0.35151008],
      [0.90347016, 0.0940123, -0.7434993, -0.9217254],
    ]
  ],
  np.float32,
)


@pytest.mark.parametrize("algorithm", ["im2col", "winograd2", "winograd4", "winograd6", "auto"])
def test_negative_low_padding_1d(algorithm):
  # Padding (-1, 1) on a length-5 input with a length-4 kernel: the exact result is the VALID
  # correlation of x[1:] followed by one zero. XLA's CPU convolution (jax 0.10.2) returns a wrong
  # second output here; jaxconv computes the exact one.
  padded = np.concatenate([LHS[:, :, 1:], np.zeros((2, 2, 1), np.float32)], axis=2)
  exact = np.einsum(
    "ncok,ck->no", np.lib.stride_tricks.sliding_window_view(padded, 4, 2), RHS[0].astype(np.float64)
  )[:, None]
  via_valid = lax.conv_general_dilated(padded, RHS, (1,), "VALID", precision="highest")
  np.testing.assert_allclose(via_valid, exact, rtol=1e-5, atol=1e-5)
  out = jaxconv.conv_general_dilated(
    LHS, RHS, (1,), ((-1, 1),), precision="highest", algorithm=algorithm
  )
  np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("algorithm", ["lax", "auto"])
def test_negative_2d_padding_on_the_lax_path(layout, algorithm):
  # Padding ((-1, 1), (-1, -1)) with a 3x3 kernel: jitted XLA:CPU convolution (jax 0.10.2) gave
  # inf and values changing from run to run. jaxconv's lax path crops and pads with lax.pad first.
  rng = np.random.default_rng(7)
  x = rng.standard_normal((2, 9, 8, 5)).astype(np.float32)  # NHWC
  w = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)  # HWIO
  pre = np.pad(x[:, 1:, 1:-1], ((0, 0), (0, 1), (0, 0), (0, 0)))
  ref = lax.conv_general_dilated(
    pre, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
  )
  dn = (layout, "HWIO", layout)
  xl = x if layout == "NHWC" else x.transpose(0, 3, 1, 2)
  plan = jaxconv.plan(xl, w, (1, 1), ((-1, 1), (-1, -1)), dimension_numbers=dn, algorithm=algorithm)
  f = jax.jit(
    lambda x, w: jaxconv.conv_general_dilated(
      x,
      w,
      (1, 1),
      ((-1, 1), (-1, -1)),
      dimension_numbers=dn,
      precision="highest",
      algorithm=algorithm,
    )
  )
  out = np.asarray(f(xl, w))
  if layout == "NCHW":
    out = out.transpose(0, 2, 3, 1)
  assert plan.algorithm in ("lax", "im2col")  # an exact algorithm either way
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "algorithm", ["im2col", "winograd4", "col2im", "subpixel", "pixelshuffle", "auto"]
)
def test_empty_input_axis_with_padded_outputs(algorithm):
  # An input axis of size 0 padded to outputs (W: 0 + (0, 1); D: 0 dilated by 2, + (0, 1)): every
  # output sums over padding alone, so the result is zeros, and its kernel gradient too. im2col's
  # gather from the empty input failed to trace here.
  x = np.zeros((2, 1, 1, 0, 0), np.float32)
  w = np.full((3, 1, 1, 1, 1), 0.5, np.float32)
  kwargs = dict(
    window_strides=(1, 1, 1),
    padding=((0, 0), (0, 1), (0, 1)),
    lhs_dilation=(1, 1, 2),
    dimension_numbers=("NCHWD", "OIHWD", "NCHWD"),
    precision="highest",
  )
  want = lax.conv_general_dilated(x, w, **kwargs)
  assert want.shape == (2, 3, 1, 1, 1)
  out = jaxconv.conv_general_dilated(x, w, **kwargs, algorithm=algorithm)
  np.testing.assert_array_equal(out, want)
  dw = jax.grad(lambda w: jaxconv.conv_general_dilated(x, w, **kwargs, algorithm=algorithm).sum())
  np.testing.assert_array_equal(dw(w), np.zeros_like(w))


@pytest.mark.parametrize("padding", [((4, 2), (1, 1)), ((2, 2), (1, 1))])
@pytest.mark.parametrize("algorithm", ["lax", "im2col", "winograd2", "col2im", "subpixel", "auto"])
def test_conv_transpose_where_xla_aborts(algorithm, padding):
  # lax.conv_transpose of these calls kills the process (jax 0.10.2: XLA:CPU's algebraic
  # simplifier, "Check failed: ... Window dimensions do not match RHS shape"), so it is never
  # called here; so did jaxconv's lax path, and `auto` where it picked lax, on the second, until
  # that path applied input dilations on CPU by lax.pad. With explicit padding taken as the
  # forward's (`use_consistent_padding`) and the kernel transposed, the result is the adjoint of
  # the strided forward convolution F: entry i is <F(e_i), x>.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 1, 4, 2)).astype(np.float32)
  k = rng.standard_normal((4, 2, 1, 2)).astype(np.float32)
  dn = ("NCWH", "HIOW", "NCWH")
  strides = (3, 2)
  forward = jax.jit(
    lambda z: lax.conv_general_dilated(
      z, k, strides, padding, dimension_numbers=dn, precision="highest"
    )
  )
  out = jaxconv.conv_transpose(
    x, k, strides, padding, dimension_numbers=dn, transpose_kernel=True, precision="highest",
    use_consistent_padding=True, algorithm=algorithm,
  )  # fmt: skip
  assert forward(np.zeros(out.shape, np.float32)).shape == x.shape
  basis = np.eye(out.size, dtype=np.float32).reshape(out.size, *out.shape)
  want = np.array([np.vdot(np.asarray(forward(e), np.float64), x) for e in basis])
  np.testing.assert_allclose(np.asarray(out).ravel(), want, rtol=1e-5, atol=1e-5)
