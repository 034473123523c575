"""Winograd minimal filtering F(m, r): convolution with fewer multiplications.

A correlation of an ``n = m + r - 1`` long input tile ``d`` with an ``r`` long filter ``g`` gives
``m`` outputs, and Winograd (1980) showed they can be computed with ``n`` multiplications instead of
``m * r``: ``y = AT [(G g) * (BT d)]``. ``BT`` evaluates the input polynomial at ``n`` points, ``G``
evaluates the filter, the pointwise product is the product polynomial's values, and ``AT``
interpolates it back (the Cook-Toom construction, `jaxconv._transforms`). The identity is exact in
rational arithmetic; in floating point the error grows with ``n`` and depends on the points.

In 2-D the transforms apply along each axis, ``Y = AT [(G g G^T) * (BT d BT^T)] A``, and for a conv
layer the pointwise product becomes a sum over input channels: for every one of the ``n^2``
transformed positions, a GEMM ``(tiles, C) @ (C, O)``. F(4, 3) thus does 36 multiplications for 16
outputs where the direct method does 144: 4x fewer, paid for with cheap transforms.

The pipeline for one example (vmapped over the batch, in chunks that stay cache-sized):

1. Dilate and pad the input (`lax.pad`), exactly as im2col does.
2. Reduce strides and kernel dilation to stride-1 problems. A stride-``s`` convolution is the sum of
   ``s`` stride-1 convolutions of the input's and the kernel's phases (``x[p::s]`` with
   ``w[p::s]``); a kernel dilated by ``d`` acts on ``d`` interleaved sub-grids of the input
   (``x[p::d]`` gives the outputs ``y[p::d]``). Per axis; 2-D problems take the product of both
   axes' phases.
3. For each stride-1 problem: tile the input into overlapping ``n``-wide tiles with stride ``m``.
The
   ``n^2`` tile positions are ``n^2`` strided views of the padded input; transform them with ``BT``
   (sums with constant coefficients, which XLA fuses), transform the kernel with ``G``, run the
   ``n^2`` GEMMs over channels, transform back with ``AT``, interleave the ``m x m`` outputs of each
   tile and crop to the exact output.

Axes whose (phase) kernel has size 1 need no transform and use ``m = 1``-wide tiles of their own.

References: S. Winograd, "Arithmetic complexity of computations" (1980); A. Lavin and S. Gray, "Fast
algorithms for convolutional neural networks" (CVPR 2016); B. Barabasz et al., "Error analysis and
improving the accuracy of Winograd convolution for deep neural networks" (ACM TOMS 2020).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._geometry import ConvGeometry
from jaxconv._transforms import winograd_matrices

__all__ = ["winograd", "winograd_support", "work_dtype"]

# Per chunk of examples, the transformed input and product stay under this many bytes: small enough
# to stay in cache and below the allocator's mmap threshold (a fresh mmap per call costs page
# faults), large enough to keep the GEMMs efficient.
CHUNK_BYTES = 8 << 20
# Channel sums longer than this are split into blocks of this many and the partial GEMM results
# added: a GEMM accumulates sequentially, and the transformed values of larger tiles amplify that
# rounding (F(2,3) at C = 512: 1.77x direct convolution's error unblocked, 0.94x blocked).
SUM_BLOCK = 128


def winograd_support(g: ConvGeometry) -> str | None:
  """Why the Winograd algorithm cannot compute `g`, or None when it can."""
  if g.ndim not in (1, 2):
    return f"it is implemented for 1-D and 2-D convolutions, not {g.ndim}-D"
  if not jnp.issubdtype(g.dtype, jnp.inexact):
    return f"its transforms are fractional, so {g.dtype} inputs would not be exact"
  if g.preferred_element_type is not None and not (
    jnp.issubdtype(g.preferred_element_type, jnp.inexact)
  ):
    return f"its transforms are fractional; preferred_element_type={g.preferred_element_type}"
  for axis, (s, d) in enumerate(zip(g.strides, g.rhs_dilation)):
    if s > 1 and d > 1:
      return (
        f"spatial axis {axis} has both a stride ({s}) and a kernel dilation ({d}) greater than 1"
      )
  return None


def work_dtype(g: ConvGeometry) -> np.dtype:
  """The dtype transforms and GEMMs run in: float32 for half-precision inputs."""
  if g.preferred_element_type is not None:
    return np.promote_types(g.dtype, g.preferred_element_type)
  if g.dtype in (np.dtype(jnp.bfloat16), np.dtype(np.float16)):
    return np.dtype(np.float32)
  return g.dtype


def _transform(mat: np.ndarray, planes: dict, axis: int, n_out: int) -> dict:
  """Applies the small constant matrix `mat` along index position `axis` of a dict of arrays.

  `planes` maps index tuples to equally shaped arrays; the result maps tuples with `axis` running
  over `range(n_out)` to sums with constant coefficients, skipping zeros, which XLA fuses.
  """
  out = {}
  keys = sorted({k[:axis] + k[axis + 1 :] for k in planes})
  for rest in keys:
    for a in range(n_out):
      acc = None
      for i in range(mat.shape[1]):
        c = mat[a, i]
        if c == 0:
          continue
        x = planes[(*rest[:axis], i, *rest[axis:])]
        term = x if c == 1 else -x if c == -1 else x * jnp.asarray(c, x.dtype)
        acc = term if acc is None else acc + term
      out[(*rest[:axis], a, *rest[axis:])] = (
        acc if acc is not None else jnp.zeros_like(next(iter(planes.values())))
      )
  return out


def _matrices(m: int, r: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  if r == 1:  # nothing to save along this axis: plain tiles of m
    return np.eye(m), np.ones((m, 1)), np.eye(m)
  return winograd_matrices(m, r)


def _stride1(
  x: jax.Array, w: jax.Array, out: Sequence[int], ms: Sequence[int], g: ConvGeometry
) -> jax.Array:
  """VALID stride-1 correlation of one example by Winograd.

  Args:
    x: (B, *L, C) input (B batch groups), at least `out + r - 1` long per axis.
    w: (*r, I, G, B, O') kernel.
    out: output length per axis.
    ms: tile output size per axis.
    g: the geometry (groups, precision).

  Returns:
    (*out, O) output.
  """
  nd = len(out)
  rs = w.shape[:nd]
  ms = [m if r > 1 else 1 for m, r in zip(ms, rs)]
  mats = [_matrices(m, r, x.dtype) for m, r in zip(ms, rs)]
  ns = [m + r - 1 for m, r in zip(ms, rs)]
  tiles = [-(-o // m) for o, m in zip(out, ms)]
  need = [t * m + r - 1 for t, m, r in zip(tiles, ms, rs)]
  # Pad the end (or crop) to a whole number of tiles.
  x = x[(slice(None), *(slice(0, n) for n in need))]
  x = jnp.pad(x, [(0, 0)] + [(0, n - s) for n, s in zip(need, x.shape[1:])] + [(0, 0)])

  # Kernel transform G w G^T: one small GEMM with the Kronecker product over the axes.
  gk = np.ones((1, 1))
  for _, gm, _ in mats:
    gk = np.kron(gk, gm)
  n_pos, taps = gk.shape
  u = jnp.dot(
    jnp.asarray(gk, w.dtype), w.reshape(taps, -1), precision=lax.Precision.HIGHEST
  ).reshape(n_pos, *w.shape[nd:])  # (n^d, I, G, B, O')

  # Input transform BT d BT^T on all tiles at once: tile position i is a strided view.
  planes = {
    idx: x[(slice(None), *(slice(i, i + (t - 1) * m + 1, m) for i, t, m in zip(idx, tiles, ms)))]
    for idx in itertools.product(*(range(n) for n in ns))
  }
  for axis, (_, _, bt) in enumerate(mats):
    planes = _transform(bt, planes, axis, ns[axis])
  v = jnp.stack([planes[k] for k in sorted(planes)])  # (n^d, B, *tiles, C)
  n_tiles = math.prod(tiles)
  bgc, fgc = g.batch_group_count, g.feature_group_count
  cin_g = g.group_in_features
  chex.assert_shape(v, (n_pos, bgc, *tiles, g.in_features))

  # The multiplication stage: n^d GEMMs over channels.
  acc = g.preferred_element_type
  if bgc == 1 and fgc == 1 and cin_g > SUM_BLOCK and cin_g % SUM_BLOCK == 0:
    nb = cin_g // SUM_BLOCK
    part = lax.dot_general(
      v.reshape(n_pos, n_tiles, nb, SUM_BLOCK),
      u.reshape(n_pos, nb, SUM_BLOCK, -1),
      (((3,), (2,)), ((0, 2), (0, 1))),
      precision=g.precision,
      preferred_element_type=acc,
    )
    prod = part.sum(axis=1)
  elif bgc == 1 and fgc == 1:
    prod = lax.dot_general(
      v.reshape(n_pos, n_tiles, cin_g),
      u.reshape(n_pos, cin_g, -1),
      (((2,), (1,)), ((0,), (0,))),
      precision=g.precision,
      preferred_element_type=acc,
    )
  else:
    prod = jnp.einsum(
      "nbtgc,ncgbo->ntgbo",
      v.reshape(n_pos, bgc, n_tiles, fgc, cin_g),
      u,
      precision=g.precision,
      preferred_element_type=acc,
    )
  prod = prod.reshape(n_pos, *tiles, g.out_features)

  # Output transform AT M A, then interleave the m^d outputs of every tile and crop.
  planes = {idx: prod[k] for k, idx in enumerate(itertools.product(*(range(n) for n in ns)))}
  for axis, (at, _, _) in enumerate(mats):
    planes = _transform(at, planes, axis, ms[axis])
  y = jnp.stack([planes[k] for k in sorted(planes)])  # (m^d, *tiles, O)
  y = y.reshape(*ms, *tiles, g.out_features)
  perm = [p for d in range(nd) for p in (nd + d, d)] + [2 * nd]
  y = y.transpose(perm).reshape(*(t * m for t, m in zip(tiles, ms)), g.out_features)
  return y[tuple(slice(0, o) for o in out)]


def _phases(size_k: int, out: int, s: int, d: int) -> list[tuple[slice, slice, slice]]:
  """Stride-1 sub-problems of one axis: (input slice, kernel slice, output slice)."""
  if s > 1:  # polyphase: y = sum_p corr(x[p::s], w[p::s])
    return [(slice(p, None, s), slice(p, None, s), slice(None)) for p in range(min(s, size_k))]
  if d > 1:  # dilated kernel: y[p::d] = corr(x[p::d], w)
    return [(slice(p, None, d), slice(None), slice(p, None, d)) for p in range(min(d, out))]
  return [(slice(None), slice(None), slice(None))]


def winograd(lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, m: Sequence[int]) -> jax.Array:
  """Computes the convolution described by `g` by Winograd F(m, r); layouts as given.

  Args:
    lhs: input, in the user's layout.
    rhs: kernel, in the user's layout.
    g: the normalised geometry; `winograd_support(g)` must be None.
    m: output tile size per spatial axis.

  Returns:
    The convolution, in the user's output layout and lax's result dtype.
  """
  if g.is_empty:
    return jnp.zeros(g.out_shape, g.out_dtype)
  fgc, bgc = g.feature_group_count, g.batch_group_count
  wdt = work_dtype(g)
  x = jnp.transpose(lhs, g.lhs_to_channels_last).astype(wdt)
  w = jnp.transpose(rhs, g.rhs_to_channels_last).astype(wdt)
  w = w.reshape(*g.kernel, g.group_in_features, fgc, bgc, g.out_features // (fgc * bgc))
  x = x.reshape(bgc, g.out_batch, *g.in_spatial, g.in_features).swapaxes(0, 1)
  pad_config = (
    [(0, 0, 0)]
    + [(lo, hi, ld - 1) for (lo, hi), ld in zip(g.padding, g.lhs_dilation)]
    + [(0, 0, 0)]
  )
  out = g.out_spatial
  axes = [_phases(k, o, s, d) for k, o, s, d in zip(g.kernel, out, g.strides, g.rhs_dilation)]

  def one_example(xe: jax.Array) -> jax.Array:
    xe = lax.pad(xe, jnp.zeros((), xe.dtype), pad_config)  # (B, *padded, C)
    y = None
    for combo in itertools.product(*axes):
      x_sl, w_sl, y_sl = zip(*combo)
      sub_out = [len(range(o)[sl]) for o, sl in zip(out, y_sl)]
      part = _stride1(xe[(slice(None), *x_sl)], w[w_sl], sub_out, m, g)
      if all(sl == slice(None) for sl in y_sl):  # stride phases: outputs add up
        y = part if y is None else y + part
      else:  # dilation phases: each adds into its own interleaved sub-grid
        y = jnp.zeros((*out, g.out_features), part.dtype) if y is None else y
        y = y.at[y_sl].add(part)
    return y

  per_example = _bytes_per_example(g, m, wdt)
  chunk = max(1, CHUNK_BYTES // max(per_example, 1))
  if chunk >= g.out_batch:
    y = jax.vmap(one_example)(x)
  else:
    y = lax.map(one_example, x, batch_size=chunk)
  chex.assert_shape(y, (g.out_batch, *out, g.out_features))
  return jnp.transpose(y, g.channels_last_to_out).astype(g.out_dtype)


def _bytes_per_example(g: ConvGeometry, m: Sequence[int], dtype) -> int:
  """Transformed input plus product bytes of one example (for chunking)."""
  n_pos = math.prod(mm + k - 1 for mm, k in zip(m, g.kernel))
  tiles = math.prod(-(-o // mm) for o, mm in zip(g.out_spatial, m))
  return (
    n_pos
    * tiles
    * (g.in_features * g.batch_group_count + g.out_features)
    * np.dtype(dtype).itemsize
  )
