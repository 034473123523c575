"""The Winograd-domain kernel gradient against lax, on the kernel-gradient geometries lax states."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

import jaxconv
from jaxconv import _tune, _wgrad
from tests.test_direct import _lax_vjp_convs, lax_call
from tests.util import HIGHEST, check_against_lax, rng_for

# (name, lhs shape, rhs shape, forward keyword arguments): forward layers Winograd can run.
CASES = [
  ("3x3-same", (2, 9, 10, 4), (3, 3, 4, 6), dict(window_strides=(1, 1), padding="SAME")),
  ("strided-grouped-nchw", (2, 4, 9, 10), (6, 2, 3, 3),
   dict(window_strides=(2, 1), padding=((1, 1), (0, 2)), feature_group_count=2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"))),
  ("dilated", (2, 11, 9, 3), (3, 2, 3, 4),
   dict(window_strides=(1, 1), padding="VALID", rhs_dilation=(2, 1))),
  ("1d", (3, 20, 4), (5, 4, 6),
   dict(window_strides=(1,), padding="SAME", dimension_numbers=("NWC", "WIO", "NWC"))),
  ("3d", (2, 6, 7, 8, 4), (3, 3, 3, 4, 5),
   dict(window_strides=(1, 1, 1), padding="SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
]  # fmt: skip
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "lhs_shape", "rhs_shape", "kwargs"), CASES, ids=IDS)
def test_wgrad_computes_lax_kernel_gradients(name, lhs_shape, rhs_shape, kwargs, dtype, m):
  rng = rng_for(name)
  x = rng.standard_normal(lhs_shape).astype(dtype)
  w = rng.standard_normal(rhs_shape).astype(dtype)
  kwargs = dict(kwargs, precision=HIGHEST)
  if len(lhs_shape) == 4 and "dimension_numbers" not in kwargs:
    kwargs["dimension_numbers"] = ("NHWC", "HWIO", "NHWC")
  ran = 0
  for i, (la, ra, p) in enumerate(_lax_vjp_convs(x, w, kwargs)):
    r = rng_for(f"{name}-{i}")
    a, b = r.standard_normal(la.shape).astype(dtype), r.standard_normal(ra.shape).astype(dtype)
    call = lax_call(p)
    try:
      jaxconv.plan(a, b, **call, algorithm=f"wgrad{m}")
    except NotImplementedError:
      continue
    check_against_lax(a, b, f"wgrad{m}", tol=1e-4 if dtype == "float32" else 1e-10, **call)
    ran += 1
  assert ran == 1  # exactly the kernel gradient


def test_wgrad_declines_a_layer_whose_dual_winograd_cannot_run():
  # Any convolution is the kernel gradient of some layer; here that layer's kernel is 9x9.
  x, w = jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 4))
  with pytest.raises(
    NotImplementedError, match=r"forward layer cannot run Winograd: kernel size .9, 9."
  ):
    jaxconv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), algorithm="wgrad"
    )


def test_wgrad_declines_a_forward_convolution():
  # A forward layer is the kernel gradient of one whose kernel (7x7) is larger than its output
  # (3x3): wide tiles, seconds to compile, many times slower than lax; not a candidate.
  x, w = jnp.ones((2, 7, 7, 8)), jnp.ones((3, 3, 8, 8))
  with pytest.raises(NotImplementedError, match=r"a \(7, 7\) kernel's over a \(3, 3\) output"):
    jaxconv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), algorithm="wgrad"
    )


def test_auto_runs_a_3d_kernel_gradient_in_the_winograd_domain():
  x, w = jnp.ones((2, 16, 32, 32, 32)), jnp.ones((3, 3, 3, 32, 32))  # the benchmark's layer
  kwargs = dict(padding="SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=HIGHEST)
  loss = lambda w: jaxconv.conv_general_dilated(x, w, (1, 1, 1), **kwargs).sum()
  with _tune.planned() as seen:
    jax.jit(jax.grad(loss)).lower(w)
  assert [p.algorithm for p in seen] == ["winograd", "wgrad"], [p.reason for p in seen]
  assert _wgrad.forward_of(seen[1].geometry).kernel == (3, 3, 3)


@pytest.mark.parametrize("budget", [1 << 10, 40 << 10])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1)])
def test_wgrad_in_blocks_of_examples_and_tile_rows(monkeypatch, budget, strides):
  # A small budget sums one example at a time in blocks of tile rows (zero-padded at the end);
  # a larger one, blocks of examples.
  monkeypatch.setattr(_wgrad, "BLOCK_BYTES", budget)
  rng = rng_for(f"blocks-{budget}-{strides}")
  x = jnp.asarray(rng.standard_normal((4, 13, 11, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)), jnp.float32)
  call = dict(
    window_strides=strides,
    padding="SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=HIGHEST,
  )
  g = jaxconv.plan(x, w, **call, algorithm="lax").geometry
  y, pullback = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, **call), w)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  (want,) = pullback(dy)
  got = jax.jit(lambda x, dy: _wgrad.kernel_gradient(x, dy, g, (4, 4)))(x, dy)
  err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  assert err < 1e-5, err


@pytest.mark.parametrize("kept", [False, True])
def test_wgrad_takes_the_forward_transformed_input_whole_where_host_memory_is_kept(
  monkeypatch, kept
):
  # Data over BLOCK_BYTES but within the forward's one-piece bound: in blocks of examples where
  # fresh buffers cost page faults, in one piece where host memory is kept, so that a step
  # compiled as one program computes the transformed input once for the forward and the kernel
  # gradient (XLA merges the two identical computations).
  from jaxconv import _winograd

  monkeypatch.setattr(_wgrad, "BLOCK_BYTES", 1 << 10)
  monkeypatch.setattr(_wgrad, "host_memory_kept", lambda: kept)
  rng = rng_for("shared-input")
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((4, 8, 8, 5)), jnp.float32)
  call = dict(
    window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=HIGHEST,
  )  # fmt: skip
  g = jaxconv.plan(x, w, **call, algorithm="lax").geometry
  wgrad = lambda x, dy: _wgrad.kernel_gradient(x, dy, g, (4, 4))
  loops = [p for p in ("scan", "while") if p in str(jax.make_jaxpr(wgrad)(x, dy))]
  assert bool(loops) is not kept, loops
  (want,) = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, **call), w)[1](dy)
  err = float(jnp.linalg.norm(jax.jit(wgrad)(x, dy) - want) / jnp.linalg.norm(want))
  assert err < 1e-5, err

  def step(x, w, dy):
    return _winograd.winograd(x, w, g, (4, 4)), wgrad(x, dy)

  text = jax.jit(step).trace(x, w, dy).lower(lowering_platforms=("cuda",)).as_text()
  assert "func.func public @main" in text
  # The forward's transformed input, (36 positions, 4 examples x 4 tiles, 3 channels), feeds the
  # forward's GEMMs, and the kernel gradient's too when kept (otherwise its loop makes its own).
  hlo = jax.jit(step).lower(x, w, dy).compile().as_text()
  lines = hlo[hlo.index("\nENTRY") :].splitlines()
  (made,) = [line.split()[0] for line in lines if " = f32[36,16,3]" in line and "fusion(" in line]
  readers = [line for line in lines if f"{made}," in line or f"{made})" in line]
  assert len(readers) == (2 if kept else 1), readers


@pytest.mark.parametrize(
  ("lhs_shape", "rhs_shape", "dn", "groups", "tiles"),
  [
    ((3, 9, 10, 8), (3, 3, 8, 6), ("NHWC", "HWIO", "NHWC"), 1, (4, 4)),
    ((3, 8, 9, 6), (3, 3, 3, 4), ("NHWC", "HWIO", "NHWC"), 2, (2, 2)),
    ((2, 6, 5, 7, 4), (3, 2, 3, 4, 4), ("NDHWC", "DHWIO", "NDHWC"), 1, (2, 2, 2)),
  ],
  ids=str,
)
def test_wgrad_in_blocks_of_positions(monkeypatch, lhs_shape, rhs_shape, dn, groups, tiles):
  # Where the transformed data exceed a block, a transformed kernel gradient over U_BLOCK_BYTES
  # is made a block of first-axis positions at a time (here one row of positions per block),
  # each adding its share in a loop.
  from jaxconv import _winograd

  monkeypatch.setattr(_winograd, "U_BLOCK_BYTES", 1 << 8)
  rng = rng_for(f"position-blocks-{lhs_shape}")
  x = jnp.asarray(rng.standard_normal(lhs_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(rhs_shape), jnp.float32)
  nd = x.ndim - 2
  call = dict(window_strides=(1,) * nd, padding="SAME", dimension_numbers=dn, precision=HIGHEST,
              feature_group_count=groups)  # fmt: skip
  g = jaxconv.plan(x, w, **call, algorithm="lax").geometry
  y, pullback = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, **call), w)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  (want,) = pullback(dy)
  fn = lambda x, dy: _wgrad.kernel_gradient(x, dy, g, tiles)
  assert "cond" not in str(jax.make_jaxpr(fn)(x, dy))  # the data fit one block: no split
  monkeypatch.setattr(_wgrad, "BLOCK_BYTES", 1 << 12)
  fn = lambda x, dy: _wgrad.kernel_gradient(x, dy, g, tiles)  # traced afresh
  assert "cond" in str(jax.make_jaxpr(fn)(x, dy))  # a branch per block
  got = jax.jit(fn)(x, dy)
  err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  assert err < 1e-5, err


@pytest.mark.parametrize(("name", "lhs_shape", "rhs_shape", "kwargs"), CASES, ids=IDS)
def test_wgrad_and_its_derivatives_lower_for_cuda(name, lhs_shape, rhs_shape, kwargs):
  kwargs = dict(kwargs, precision=HIGHEST)
  if len(lhs_shape) == 4 and "dimension_numbers" not in kwargs:
    kwargs["dimension_numbers"] = ("NHWC", "HWIO", "NHWC")
  x, w = jnp.ones(lhs_shape, jnp.float32), jnp.ones(rhs_shape, jnp.float32)
  lowered = 0
  for la, ra, p in _lax_vjp_convs(x, w, kwargs):
    call = lax_call(p)
    try:
      jaxconv.plan(la, ra, **call, algorithm="wgrad4")
    except NotImplementedError:
      continue
    f = functools.partial(jaxconv.conv_general_dilated, **call, algorithm="wgrad4")
    a, b = jnp.ones(la.shape, la.dtype), jnp.ones(ra.shape, ra.dtype)
    grad = jax.grad(lambda a, b, f=f: jnp.sum(f(a, b) ** 2), argnums=(0, 1))
    for fn in (f, grad):
      text = jax.jit(fn).trace(a, b).lower(lowering_platforms=("cuda",)).as_text()
      assert "func.func public @main" in text
    lowered += 1
  assert lowered == 1
