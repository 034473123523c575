"""Differential-testing helpers shared by the test modules."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

import jaxconv

HIGHEST = lax.Precision.HIGHEST

# Normwise relative error allowed against lax at HIGHEST, per dtype.
TOLERANCE = {
  np.dtype(np.float64): 1e-12,
  np.dtype(np.complex128): 1e-12,
  np.dtype(np.float32): 1e-5,
  np.dtype(np.complex64): 1e-5,
  np.dtype(np.float16): 5e-3,
  np.dtype(jnp.bfloat16): 3e-2,
}


def random_array(rng: np.random.Generator, shape, dtype) -> np.ndarray:
  """Fresh random data of any dtype: normal for floats, small integers, random booleans."""
  dtype = np.dtype(dtype)
  if dtype == np.bool_:
    return rng.random(shape) < 0.5
  if np.issubdtype(dtype, np.integer):
    lo = 0 if np.issubdtype(dtype, np.unsignedinteger) else -2
    return rng.integers(lo, 3, shape).astype(dtype)
  if np.issubdtype(dtype, np.complexfloating):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
  return rng.standard_normal(shape).astype(dtype)


def rng_for(name: str) -> np.random.Generator:
  return np.random.default_rng(zlib.crc32(name.encode()))


def rel_err(y, ref) -> float:
  y = np.asarray(y, np.complex128 if np.iscomplexobj(y) else np.float64)
  ref = np.asarray(ref, y.dtype)
  denom = np.linalg.norm(ref)
  diff = np.linalg.norm(y - ref)
  return float(diff / denom) if denom else float(diff)


def _prepad(lhs, rhs, *, padding, lhs_dilation, dimension_numbers, **params):
  """One convolution with its input dilation and padding applied by `lax.pad` first."""
  config = [(0, 0, 0)] * lhs.ndim
  for d, ((lo, hi), a) in enumerate(zip(padding, lhs_dilation)):
    config[dimension_numbers.lhs_spec[2 + d]] = (lo, hi, a - 1)
  padded = lax.pad(lhs, jnp.zeros((), lhs.dtype), config)
  no_padding = ((0, 0),) * len(padding)
  return lax.conv_general_dilated_p.bind(
    padded, rhs, padding=no_padding, lhs_dilation=(1,) * len(padding),
    dimension_numbers=dimension_numbers, **params,
  )  # fmt: skip


def _evaluate(jaxpr: jex_core.Jaxpr, consts, *args, every: bool = False):
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    dilated = every or max(eqn.params.get("lhs_dilation", ()), default=1) > 1
    if eqn.primitive is lax.conv_general_dilated_p and dilated:
      outvals = [_prepad(*invals, **eqn.params)]
    elif eqn.primitive.name in ("pjit", "jit"):  # convolutions nested in a jitted function
      inner = eqn.params["jaxpr"]
      outvals = _evaluate(inner.jaxpr, inner.consts, *invals, every=every)
    else:
      outvals = eqn.primitive.bind(*invals, **eqn.params)
      outvals = outvals if eqn.primitive.multiple_results else [outvals]
    env.update(zip(eqn.outvars, outvals))
  return [read(v) for v in jaxpr.outvars]


def without_input_dilation(fn, every: bool = False):
  """`fn` (lax calls) evaluated with every input-dilated convolution pre-dilated by `lax.pad`.

  jaxlib 0.10.2's XLA:CPU aborts the process on some input-dilated convolutions (a failed check in
  its algebraic simplifier: tests/test_regressions.py), which lax.conv_transpose and the input
  gradients of strided layers are. Tracing raises lax's own errors for invalid arguments; the
  convolutions then run as VALID ones of an input dilated and padded beforehand, the same sums.
  With `every`, all convolutions do: XLA:CPU's own is wrong on some negative paddings.
  """

  def run(*args):
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _evaluate(closed.jaxpr, closed.consts, *args, every=every)
    return jax.tree.unflatten(jax.tree.structure(shape), [jax.block_until_ready(o) for o in out])

  return run


def check_against_lax(lhs, rhs, algorithm: str, tol: float | None = None, **kwargs):
  """Runs jaxconv with `algorithm` and lax at HIGHEST; asserts shape, dtype and error."""
  kwargs.setdefault("precision", HIGHEST)
  ref = lax.conv_general_dilated(lhs, rhs, **kwargs)
  out = jaxconv.conv_general_dilated(lhs, rhs, **kwargs, algorithm=algorithm)
  assert out.shape == ref.shape, (out.shape, ref.shape)
  assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
  dtype = np.dtype(ref.dtype)
  if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    return 0.0
  err = rel_err(out, ref)
  tol = TOLERANCE[dtype] if tol is None else tol
  assert err <= tol, f"normwise relative error {err:.3g} > {tol:.3g}"
  return err


def jit_conv(**static):
  """A jitted jaxconv call with everything but the arrays fixed (compiled once per shape)."""
  return jax.jit(lambda x, w: jaxconv.conv_general_dilated(x, w, **static))
