"""Differential-testing helpers shared by the test modules."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
