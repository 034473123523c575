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

The pipeline, for a block of examples at a time (see `SPLIT_ABOVE_BYTES`; every GEMM has
all the block's tiles as rows):

1. Dilate and pad the input (`lax.pad`).
2. Reduce strides and kernel dilation to stride-1 problems. A stride-``s`` convolution is the sum of
   ``s`` stride-1 convolutions of the input's and the kernel's phases (``x[p::s]`` with
   ``w[p::s]``); a kernel dilated by ``d`` acts on ``d`` interleaved sub-grids of the input
   (``x[p::d]`` gives the outputs ``y[p::d]``). Per axis; 2-D problems take the product of both
   axes' phases.
3. For each stride-1 problem: tile the input into overlapping ``n``-wide tiles with stride ``m``.
   Position ``(i, j)`` of every tile is one strided view of the padded input, ``x[i::m, j::m]``,
   so the ``n^2`` views are static slices whose offsets follow from the geometry alone; XLA fuses
   them into the input transform, and the tiles are never gathered into a buffer of their own (on
   CPU a gather moves data several times slower than these fused slices). Transform them with
   ``BT`` (sums with constant coefficients), transform the kernel with ``G`` (one small GEMM),
   run the ``n^2`` GEMMs over channels, transform back with ``AT``, interleave the ``m x m``
   outputs of each tile and crop to the exact output. A large transformed kernel is made in
   blocks of rows of positions, ``Y = sum_i AT[:, i] (M[i] A)`` (see `U_BLOCK_BYTES`).

Axes whose (phase) kernel has size 1 need no transform and use ``m = 1``-wide tiles of their own.

References: S. Winograd, "Arithmetic complexity of computations" (1980); A. Lavin and S. Gray, "Fast
algorithms for convolutional neural networks" (CVPR 2016); B. Barabasz et al., "Error analysis and
improving the accuracy of Winograd convolution for deep neural networks" (ACM TOMS 2020).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._algorithm import Algorithm, eps
from jaxconv._geometry import ConvGeometry, grouped_input, grouped_operands
from jaxconv._loops import map_blocks
from jaxconv._transforms import default_points, winograd_matrices

__all__ = [
  "WINOGRAD",
  "kernel_matrix",
  "transform_input",
  "transform_output",
  "winograd",
  "winograd_support",
  "work_dtype",
]

# Transformed input and product up to SPLIT_ABOVE_BYTES are computed in one piece, where XLA runs
# the GEMMs on all cores; above it, in blocks of CHUNK_BYTES, a loop whose fresh buffers stay small
# (each large fresh buffer costs a page fault per 4 KiB). Measured (docs/benchmarks.md): ResNet's
# 56x56x64 layer (29 MB) ran 6.1-6.3 ms in one piece against 8.5 ms in 16 MB blocks; VGG's
# 224x224x64 layer (58 MB) 19.1 ms in 16 MB blocks against 35.0 ms in one piece.
SPLIT_ABOVE_BYTES = 32 << 20
CHUNK_BYTES = 16 << 20
# Channel sums longer than SUM_BLOCK are split into blocks and the partial GEMM results added, for
# the tile sizes whose float32 error bound needs it: a GEMM accumulates sequentially, and the
# transformed values amplify that rounding. Measured at C = 512 (docs/accuracy.md): F(2,3) 1.77x
# direct convolution's error unblocked, 0.94x blocked (bound 1.5x); F(6,3) 15.5x and 8.9x (bound
# 10x); F(4,3) 3.7x unblocked is within its bound (5x) and keeps the faster single GEMM.
SUM_BLOCK = 128
# A transformed kernel above this size is made and used a block of transformed positions at a
# time, each block's GEMMs over all output features, so the working set stays small (a large fresh
# buffer costs a page fault per 4 KiB on CPU). Measured (ResNet-50's 7x7x512 layer, batch 8,
# F(4,3), a 37.7 MB transformed kernel, Intel Xeon): four blocks of 9 positions ran 1.51x lax with
# host memory kept and 1.83x without, against 1.02x and 1.35x for four blocks of 128 output
# features (whose GEMMs are too narrow to keep both cores busy) and 1.38x and 0.76x in one piece.
# The blocks are whole rows of positions, each transforming its own input rows and adding its
# share of the output (`_tiles`): that layer's training step at batch 32 (the kernel gradient's
# dU split the same way, `jaxconv._wgrad`) held 39.9 MB of XLA temporaries against 94.4 MB for
# blocks that shared a whole transformed input and product, and ran 0.99-1.06x as fast
# (docs/benchmarks.md, "Blocks of position rows"). Its six rows of positions then ran in three
# blocks of 12.6 MB; two of 18.9 MB made its training step at batch 8 1.38-1.61x lax with host
# memory kept against 1.25-1.32x (six blocks: 1.13-1.16x), 1.32-1.37x without against 1.27-1.33x
# (one piece: 0.83-0.88x), with the step's peak memory at batch 32 1.17x lax's against 1.15x
# (docs/benchmarks.md, "Two blocks of a deep layer's transformed kernel").
U_BLOCK_BYTES = 20 << 20
BLOCKED_SUM_TILES = (2, 6)


def winograd_support(g: ConvGeometry) -> str | None:
  """Why the Winograd algorithm cannot compute `g`, or None when it can."""
  if g.ndim not in (1, 2, 3):
    return f"it is implemented for 1-D, 2-D and 3-D convolutions, not {g.ndim}-D"
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


def _combine(mat: np.ndarray, terms: Sequence[jax.Array], axis: int) -> jax.Array:
  """Stacks ``sum_i mat[a, i] * terms[i]`` over rows ``a`` as a new axis at `axis`.

  The coefficients are constants: zeros are skipped and +-1 need no multiply, so each row is one
  fused elementwise sum.
  """
  rows = []
  for coeffs in mat:
    acc = None
    for c, x in zip(coeffs, terms):
      if c == 0:
        continue
      term = x if c == 1 else -x if c == -1 else x * jnp.asarray(c, x.dtype)
      acc = term if acc is None else acc + term
    rows.append(jnp.zeros_like(terms[0]) if acc is None else acc)
  return jnp.stack(rows, axis=axis)


def _matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  if r == 1:  # nothing to save along this axis: plain tiles of m
    return np.eye(m), np.ones((m, 1)), np.eye(m)
  return winograd_matrices(m, r)


def _stride1(
  x: jax.Array,
  w: jax.Array,
  out: Sequence[int],
  ms: Sequence[int],
  g: ConvGeometry,
  flipped: bool = False,
  features_minor: bool = False,
  pad: Sequence[tuple[int, int, int]] | None = None,
) -> jax.Array:
  """`_tiles` on blocks of tile rows when the examples' transformed data is too large.

  A block of rows reads its rows of tiles plus the r - 1 rows they overlap by, so large images
  (a batch of one 224x224 picture, say) keep a cache-sized working set as well. `pad`, when
  given, is padding of the spatial axes still to apply to `x` (`lax.pad`'s form).
  """
  nd = len(out)
  m0, r0 = (ms[0], w.shape[0]) if w.shape[0] > 1 else (1, 1)
  rows = -(-out[0] // m0)
  ms_eff = [m if r > 1 else 1 for m, r in zip(ms, w.shape[:nd])]
  row_bytes = (
    math.prod(m + r - 1 for m, r in zip(ms_eff, w.shape[:nd]))
    * x.shape[0]
    * x.shape[1]
    * math.prod(-(-o // m) for o, m in zip(out[1:], ms_eff[1:]))
    * (x.shape[-1] + g.out_features)
    * np.dtype(x.dtype).itemsize
  )
  n_blocks = min(rows, _blocks(row_bytes * rows))
  if n_blocks == 1:
    return _tiles(x, w, out, ms, g, flipped, features_minor, pad)
  x = _pad(x, pad)
  per = -(-rows // n_blocks) * m0  # output rows per block
  span = per + r0 - 1  # the input rows they read
  short = out[0] + r0 - 1 - x.shape[2]  # dynamic slices must stay in bounds
  if short > 0:
    x = jnp.pad(x, [(0, 0)] * 2 + [(0, short)] + [(0, 0)] * nd)

  def rows_block(i: jax.Array, y: jax.Array) -> jax.Array:
    # In place, like `map_blocks`: the last block starts earlier and overlaps its predecessor.
    start = jnp.minimum(i * per, out[0] - per)
    xs = lax.dynamic_slice_in_dim(x, start, span, axis=2)
    return lax.dynamic_update_slice_in_dim(
      y, _tiles(xs, w, [per, *out[1:]], ms, g, flipped, features_minor), start, 1
    )

  part = jax.eval_shape(
    lambda xs: _tiles(xs, w, [per, *out[1:]], ms, g, flipped, features_minor), x[:, :, :span]
  )
  y = jnp.zeros((x.shape[0], out[0], *part.shape[2:]), part.dtype)
  return lax.fori_loop(0, -(-out[0] // per), rows_block, y)


def _plan(
  out: Sequence[int], ms: Sequence[int], rs: Sequence[int]
) -> tuple[list[int], list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[int]]:
  """Tile sizes (m = 1 where the kernel axis has size 1), transforms and tile counts per axis."""
  ms = [m if r > 1 else 1 for m, r in zip(ms, rs)]
  return ms, [_matrices(m, r) for m, r in zip(ms, rs)], [-(-o // m) for o, m in zip(out, ms)]


def kernel_matrix(mats: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
  """``G`` of every axis as one Kronecker product: (n^d, r^d), so ``U = kron(G) @ g`` flat."""
  gk = np.ones((1, 1))
  for _, gm, _ in mats:
    gk = np.kron(gk, gm)
  return gk


def transform_input(
  x: jax.Array,
  ms: Sequence[int],
  mats: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
  tiles: Sequence[int],
  g: ConvGeometry,
) -> jax.Array:
  """The transformed input tiles ``BT d B`` of a VALID stride-1 problem (see `_plan`).

  Args:
    x: (E, B, *L, C) input, at least ``tiles * m + r - 1`` long per axis (longer is cropped).
    mats: the transforms per axis; a ``BT`` may hold some of its rows only (those positions).

  Returns:
    (positions, E, B, *tiles, C), the positions of every axis' ``BT`` rows, row-major.
  """
  nd = len(ms)
  ns = [bt.shape[0] for _, _, bt in mats]
  need = [t * m + bt.shape[1] - m for t, m, (_, _, bt) in zip(tiles, ms, mats)]
  # Pad the end (or crop) to a whole number of tiles.
  x = x[(slice(None), slice(None), *(slice(0, n) for n in need))]
  x = jnp.pad(x, [(0, 0)] * 2 + [(0, n - s) for n, s in zip(need, x.shape[2:])] + [(0, 0)])
  # One axis at a time. Along axis d, position i of every tile is the strided view x[i::m]
  # (static offsets, fused into the sums: the tiles are never gathered).
  v = x  # (n_0..n_{d-1}, E, B, T_0..T_{d-1}, L_d.., C) after axis d-1
  for d, (m, t, (_, _, bt)) in enumerate(zip(ms, tiles, mats)):
    axis = 2 * d + 2
    views = [lax.slice_in_dim(v, i, i + (t - 1) * m + 1, m, axis=axis) for i in range(bt.shape[1])]
    v = _combine(bt, views, axis=d)
  chex.assert_shape(v, (*ns, x.shape[0], g.batch_group_count, *tiles, g.in_features))
  return v.reshape(math.prod(ns), *v.shape[nd:])


def _tiles(
  x: jax.Array,
  w: jax.Array,
  out: Sequence[int],
  ms: Sequence[int],
  g: ConvGeometry,
  flipped: bool = False,
  features_minor: bool = False,
  pad: Sequence[tuple[int, int, int]] | None = None,
) -> jax.Array:
  """VALID stride-1 correlation of a block of examples by Winograd.

  Args:
    x: (E, B, *L, C) input: E examples of B batch groups, at least `out + r - 1` long per axis.
    w: (*r, I, G, B, O') kernel, or (*r, O, I) where `features_minor` (ungrouped only).
    out: output length per axis.
    ms: tile output size per axis.
    g: the geometry (groups, precision).
    flipped: whether `w` holds the kernel's taps in reverse order along every axis.
    features_minor: whether `w` is (*r, O, I); the GEMMs then take the transformed kernel as
      their left operand (see `winograd`).

  Returns:
    (E, *out, O) output.
  """
  nd = len(out)
  ms, mats, tiles = _plan(out, ms, w.shape[:nd])
  gk = kernel_matrix(mats)
  if flipped:
    mats, gk = _reversed_taps(mats, gk)
  n_ex = x.shape[0]
  n_pos, taps = gk.shape
  n_tiles = math.prod(tiles)
  bgc, fgc = g.batch_group_count, g.feature_group_count
  cin_g = g.group_in_features

  # The multiplication stage: n^d GEMMs over channels, examples and tiles as rows.
  acc = g.preferred_element_type
  blocked = max(ms) in BLOCKED_SUM_TILES and cin_g > SUM_BLOCK and cin_g % SUM_BLOCK == 0

  n_rows = n_ex * n_tiles
  ungrouped = bgc == 1 and fgc == 1
  # Which GEMM form XLA:CPU's YNNPACK takes (it claims a dot only when the left operand's
  # contracting dimension is its last): see `_channels_major`.
  major = ungrouped and _channels_major(n_rows, cin_g, w.shape[-1], blocked, GEMM_FORM)
  if features_minor:
    major = False

  def multiply(gkb: np.ndarray, v: jax.Array, w: jax.Array) -> jax.Array:
    # Kernel transform G w G^T for the positions in `gkb` (one small GEMM with the Kronecker
    # product over the axes), then their GEMMs with the transformed input `v` of the same
    # positions. -> (positions, E * tiles, G * B * O').
    n_b = gkb.shape[0]
    u = jnp.dot(jnp.asarray(gkb, w.dtype), w.reshape(taps, -1), precision=lax.Precision.HIGHEST)
    u = u.reshape(n_b, *w.shape[nd:])
    if features_minor:  # (n^d, O, C) x (n^d, rows, C) -> (n^d, O, rows)
      prod = lax.dot_general(
        u,
        v.reshape(n_b, n_rows, cin_g),
        (((2,), (2,)), ((0,), (0,))),
        precision=g.precision,
        preferred_element_type=acc,
      )
      return jnp.swapaxes(prod, 1, 2)
    if not ungrouped:  # (n^d, E, B, *tiles, C), split by groups in the einsum
      y = jnp.einsum(
        "nebtgc,ncgbo->netgbo",
        v.reshape(n_b, n_ex, bgc, n_tiles, fgc, cin_g),
        u,
        precision=g.precision,
        preferred_element_type=acc,
      )
      return y.reshape(n_b, n_ex * n_tiles, -1)
    rows = v.reshape(n_b, n_rows, cin_g)
    if major:  # (n^d, C, rows): the channel axis before the rows
      rows = jnp.swapaxes(rows, 1, 2)
    if blocked:
      nb = cin_g // SUM_BLOCK
      if major:  # (n^d, nb, block, rows) x (n^d, nb, block, O)
        lhs, dims = rows.reshape(n_b, nb, SUM_BLOCK, n_rows), (((2,), (2,)), ((0, 1), (0, 1)))
      else:
        lhs, dims = rows.reshape(n_b, n_rows, nb, SUM_BLOCK), (((3,), (2,)), ((0, 2), (0, 1)))
      part = lax.dot_general(
        lhs,
        u.reshape(n_b, nb, SUM_BLOCK, -1),
        dims,
        precision=g.precision,
        preferred_element_type=acc,
      )
      # XLA:CPU fuses this sum into YNNPACK's dot (an optimization barrier here is expanded
      # before fusion: the compiled programs were identical with and without one).
      return part.sum(axis=1)
    return lax.dot_general(
      rows,
      u.reshape(n_b, cin_g, -1),
      (((1 if major else 2,), (1,)), ((0,), (0,))),
      precision=g.precision,
      preferred_element_type=acc,
    )

  def stages(mats_b, gkb: np.ndarray, x: jax.Array, w: jax.Array) -> jax.Array:
    v = transform_input(x, ms, mats_b, tiles, g)  # (positions, E, B, *tiles, C)
    prod = multiply(gkb, v, w).reshape(gkb.shape[0], n_ex, *tiles, g.out_features)
    return _output_tiles(prod, mats_b)

  # A transformed kernel larger than U_BLOCK_BYTES is made and used a block of positions at a time.
  out_g = w.shape[nd] if features_minor else w.shape[-1]
  n_pb = _position_blocks(n_pos * cin_g * out_g * w.dtype.itemsize, mats[0][2].shape[0])
  # Not with blocked sums: split, XLA sums them less accurately (F(6,3) at C = 512: 11.4x
  # direct convolution's error, against 9.0x in one piece).
  if n_pb == 1 or not ungrouped or blocked:
    return _interleave_tiles(stages(mats, gk, _pad(x, pad), w), ms, out)
  # Blocks of whole rows of positions along the first axis. The output transform is linear in
  # the positions, ``Y = sum_i AT[:, i] (M[i] A)``, so each block transforms its input rows
  # (rows of BT), its kernels (rows of G) and its products (columns of AT) and adds its share
  # of the output tiles: neither the transformed input nor the products exist whole. Each block
  # pads the input itself, so the loop reads the input as it came, and the loop's operands are
  # flat: XLA:CPU copied a reshaped kernel before the loop (9.4 MB at 7x7x512).

  def block(mats_b, gkb: np.ndarray, xf: jax.Array, wf: jax.Array) -> jax.Array:
    return stages(mats_b, gkb, _pad(xf.reshape(x.shape), pad), wf.reshape(w.shape))

  y = _sum_position_rows(block, mats, gk, n_pb, x.reshape(n_ex, -1), w.reshape(taps, -1))
  return _interleave_tiles(y, ms, out)


def _sum_position_rows(
  fn: Callable[..., jax.Array],
  mats: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
  gk: np.ndarray,
  blocks: int,
  *operands: jax.Array,
) -> jax.Array:
  """The sum over `blocks` equal blocks of the first axis' positions of ``fn(mats_b, gk_b, *ops)``.

  ``mats_b`` holds the block's rows of the first axis' ``BT`` and columns of its ``AT``, ``gk_b``
  the block's rows of the kernel matrix. A loop runs the blocks one after another, a `lax.switch`
  branch per block keeping its transforms' coefficients constants, so XLA neither holds two
  blocks' buffers at once nor schedules a block's work ahead of the loop.
  """
  (at0, gm0, bt0), n_rows = mats[0], mats[0][2].shape[0]
  per = n_rows // blocks
  span = gk.shape[0] // n_rows * per  # positions per block

  def branch(b: int) -> Callable[..., jax.Array]:
    rows = slice(b * per, (b + 1) * per)
    mats_b = [(at0[:, rows], gm0, bt0[rows]), *mats[1:]]
    return functools.partial(fn, mats_b, gk[b * span : (b + 1) * span])

  branches = [branch(b) for b in range(blocks)]
  part = jax.eval_shape(branches[0], *operands)
  return lax.fori_loop(
    0,
    blocks,
    lambda b, acc: acc + lax.switch(b, branches, *operands),
    jnp.zeros(part.shape, part.dtype),
  )


def _reversal(gm: np.ndarray) -> np.ndarray | None:
  """``perm`` with ``G J = G[perm]`` (``J`` reverses the taps), or None when there is none.

  Row ``i`` of ``G`` evaluates the kernel polynomial at point ``a_i``; the reversed kernel's
  polynomial is ``t^(r-1) g(1/t)``, so where the points are closed under ``a -> 1/a`` (0 and
  infinity swap) and the rows' scales match, reversing the taps permutes the rows.
  """
  rows = {tuple(row): i for i, row in enumerate(gm)}
  perm = [rows.get(tuple(row)) for row in gm[:, ::-1]]
  if None in perm or sorted(perm) != list(range(len(perm))):
    return None
  return np.asarray(perm)


def _reversed_taps(
  mats: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], gk: np.ndarray
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
  """The transforms and kernel matrix for a kernel given with its taps reversed on every axis.

  Reversing every axis reverses the row-major tap order, so ``G``'s columns can be reversed.
  Where the points are closed under inversion (`_reversal`: the default points are), the
  reversed kernel's transform is the kernel's own with its positions permuted, ``G J g =
  P G g``, and ``AT [(P u) * (BT d)] = (AT P) [u * (P^T BT d)]``: the input and output
  transforms take the permutation instead, at no cost, and the transformed kernel is the one a
  forward pass makes of the same kernel. A training step's forward and input gradient then
  compute one identical product of ``G`` and the kernel, which XLA computes once.
  """
  perms = [_reversal(gm) for _, gm, _ in mats]
  if any(p is None for p in perms):
    return list(mats), gk[:, ::-1]
  inv = [np.argsort(p) for p in perms]
  return [(at[:, q], gm, bt[q]) for (at, gm, bt), q in zip(mats, inv)], gk


def _output_tiles(
  prod: jax.Array, mats: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> jax.Array:
  """The output tiles ``AT M A`` of the products `prod`, one axis at a time.

  Args:
    prod: (positions, E, *tiles, O) products of the multiplication stage (see `_plan`), for the
      positions that the columns of every ``AT`` in `mats` name.

  Returns:
    (*m, E, *tiles, O).
  """
  ns = [at.shape[1] for at, _, _ in mats]
  y = prod.reshape(*ns, *prod.shape[1:])
  for d, (at, _, _) in enumerate(mats):
    y = _combine(at, [lax.index_in_dim(y, a, d, keepdims=False) for a in range(ns[d])], axis=d)
  return y


def _interleave_tiles(y: jax.Array, ms: Sequence[int], out: Sequence[int]) -> jax.Array:
  """The ``m^d`` outputs of every tile, (*m, E, *tiles, O), interleaved and cropped to `out`."""
  nd = len(ms)
  n_ex, tiles, features = y.shape[nd], y.shape[nd + 1 : -1], y.shape[-1]
  perm = [nd] + [p for d in range(nd) for p in (nd + 1 + d, d)] + [2 * nd + 1]
  y = y.transpose(perm).reshape(n_ex, *(t * m for t, m in zip(tiles, ms)), features)
  return y[(slice(None), *(slice(0, o) for o in out))]


def transform_output(
  prod: jax.Array,
  ms: Sequence[int],
  mats: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
  out: Sequence[int],
) -> jax.Array:
  """The output tiles ``AT M A`` of the products `prod`, interleaved and cropped to `out`.

  Args:
    prod: (n^d, E, *tiles, O) products of the multiplication stage (see `_plan`).

  Returns:
    (E, *out, O).
  """
  return _interleave_tiles(_output_tiles(prod, mats), ms, out)


GEMM_FORM = "auto"  # "rows" | "channels" | "auto": which form the ungrouped GEMMs take


def _channels_major(rows: int, cin: int, cout: int, blocked: bool, form: str) -> bool:
  """Whether the multiplication stage's left operand is laid out channels first, (n^d, C, rows).

  XLA:CPU (jaxlib 0.10) hands a dot to YNNPACK only when the left operand's contracting dimension
  is its last, so the rows-major form (n^d, rows, C) goes to YNNPACK and the channels-major form
  to XLA's own Eigen GEMM. Measured on the GEMMs alone (36 positions, 2 cores), Eigen is faster
  where YNNPACK is weak: a channel sum that is not a multiple of 8, where YNNPACK copies padded
  rows for every block (C = 3: 0.89 against 4.03 ms), and a matrix small enough that YNNPACK makes
  one task of it and runs the positions on one core. Elsewhere YNNPACK is as fast or up to 1.9x
  faster (36x32x512x512), and blocked channel sums stay with it: Eigen sums them less accurately
  (F(6,3) at C = 512: 11.4x direct convolution's error against 9.0x).

  Within a whole Winograd forward (jaxlib 0.10.2) XLA folds the swap of axes back into the dot:
  at 28x28x128 both forms compiled to the same rows-major dot, which YNNPACK ran on one core
  (docs/benchmarks.md, "YNNPACK's batched GEMMs on one core").
  """
  if form != "auto":
    return form == "channels"
  if blocked:
    return False
  one_task = (rows + cout) * min(cin, 1024) < 65536 and rows * cout < 65536
  return cin % 8 != 0 or one_task


def _blocks(nbytes: int) -> int:
  """How many blocks to compute `nbytes` of transformed data in."""
  return 1 if nbytes <= SPLIT_ABOVE_BYTES else -(-nbytes // CHUNK_BYTES)


def _pad(x: jax.Array, pad: Sequence[tuple[int, int, int]] | None) -> jax.Array:
  """`x`, (E, B, *S, C), padded along its spatial axes by `pad` (`lax.pad`'s form; None: none)."""
  if pad is None:
    return x
  return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (0, 0, 0), *pad, (0, 0, 0)])


def _position_blocks(u_bytes: int, n_rows: int) -> int:
  """The fewest equal blocks of the first axis' `n_rows` positions that bring the transformed
  kernel under budget (one row each at most)."""
  return next(
    (k for k in range(1, n_rows) if n_rows % k == 0 and u_bytes // k <= U_BLOCK_BYTES), n_rows
  )


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
  wdt = work_dtype(g)
  out = g.out_spatial
  axes = [_phases(k, o, s, d) for k, o, s, d in zip(g.kernel, out, g.strides, g.rhs_dilation)]
  # A reversed kernel (`ConvGeometry.reversed_kernel`) of a one-phase problem is reversed once
  # more, which XLA cancels, and the transforms account for the reversal (`_reversed_taps`).
  flipped = g.reversed_kernel and all(len(a) == 1 for a in axes)
  combos = list(itertools.product(*axes))
  whole = all(sl == slice(None) for combo in combos for part in combo for sl in part)
  rhs_spec = g.dimension_numbers.rhs_spec
  if flipped:
    rhs = lax.rev(rhs, rhs_spec[2:])
  features_minor = _features_minor(g, m)
  if features_minor:  # (*K, O, I): the input features stay innermost, as they arrive
    x = grouped_input(lhs, g, wdt)
    w = jnp.transpose(rhs, (*rhs_spec[2:], *rhs_spec[:2])).astype(wdt)
  else:
    x, w = grouped_operands(lhs, rhs, g, wdt)  # (N/B, B, *S, C), (*K, I, G, B, O')

  def block(xb: jax.Array) -> jax.Array:
    # xb: (E, B, *S, C), a block of examples, computed together so every GEMM has E * tiles rows.
    if whole:  # the problem is its own one stride-1 phase: padded where it is read
      return _stride1(xb, w, out, m, g, flipped, features_minor, g.pad_config)
    xb = _pad(xb, g.pad_config)
    y = None
    for combo in combos:
      x_sl, w_sl, y_sl = zip(*combo)
      sub_out = [len(range(o)[sl]) for o, sl in zip(out, y_sl)]
      xs = xb[(slice(None), slice(None), *x_sl)]
      part = _stride1(xs, w[w_sl], sub_out, m, g, flipped, features_minor)
      if all(sl == slice(None) for sl in y_sl):  # stride phases: outputs add up
        y = part if y is None else y + part
      else:  # dilation phases: each adds into its own interleaved sub-grid
        y = jnp.zeros((xb.shape[0], *out, g.out_features), part.dtype) if y is None else y
        y = y.at[(slice(None), *y_sl)].add(part)
    return y

  # Examples are processed in blocks whose transformed data stays small.
  n_blocks = min(g.out_batch, _blocks(_bytes_per_example(g, m, wdt) * g.out_batch))
  y = map_blocks(block, x, -(-g.out_batch // n_blocks))
  chex.assert_shape(y, (g.out_batch, *out, g.out_features))
  return jnp.transpose(y, g.channels_last_to_out).astype(g.out_dtype)


def _features_minor(g: ConvGeometry, m: Sequence[int]) -> bool:
  """Whether the GEMMs take the transformed kernel as their left operand, (n^d, O, C).

  A kernel whose input features are innermost, (*K, O, I) in memory, arrives so as an input
  gradient's of a channels-last (HWIO) kernel. Its transformed kernel is then (n^d, O, C) without
  moving the features, where the rows-major form needs (n^d, C, O): a transposition that XLA:CPU
  runs at a fraction of the memory bandwidth (3x3x512x512: 5.2-5.9 ms against a GEMM of 14 ms).
  The GEMMs (n^d, O, C) x (n^d, rows, C) ran as fast as the rows-major form, and faster with
  YNNPACK off (36x32x512x512: 17.5 against 18.1 ms; 8.7 against 19.5 ms). Not for blocked channel
  sums, which keep their accuracy in the rows-major form.
  """
  ndim = len(g.dimension_numbers.rhs_spec)
  o, i = g.dimension_numbers.rhs_spec[:2]
  ungrouped = g.feature_group_count == 1 and g.batch_group_count == 1
  cin = g.group_in_features
  blocked = max(m, default=1) in BLOCKED_SUM_TILES and cin > SUM_BLOCK and cin % SUM_BLOCK == 0
  return FEATURES_MINOR and ungrouped and not blocked and (o, i) == (ndim - 2, ndim - 1)


FEATURES_MINOR = True  # whether `_features_minor` kernels use the (n^d, O, C) form


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


TILES = (2, 4, 6)
# F(6, 3) measured no faster than F(4, 3) on any ResNet layer and is 4x less accurate (see
# docs/accuracy.md), so `auto` and plain "winograd" choose between m = 2 and m = 4.
AUTO_TILES = (2, 4)
MAX_KERNEL = 7

# `auto`'s model: three terms whose rates were measured with `jaxconv bench` on the reference CPU
# (float32, 2 cores), fitted to the ResNet-50 3x3 layers (docs/benchmarks.md).
GEMM_RATE = 154e9  # FLOP/s of the batched GEMMs of the multiplication stage
GEMM_FULL_RATE_FEATURES = 32  # channel-sum length from which those GEMMs reach GEMM_RATE
STREAM_RATE = 8.5e9  # bytes/s of transformed input and product through the transforms
KERNEL_RATE = 4.2e9  # bytes/s of transformed kernel (written fresh on every call)
BLOCKED_SUM_COST = 2.0  # GEMM time factor of channel sums split into blocks (for accuracy)


def _kernel_exceeds_output(g: ConvGeometry) -> bool:
  """Whether the kernel has more taps than the output has positions (a kernel gradient's shape)."""
  return math.prod(g.kernel) > math.prod(g.out_spatial)


def _tile(g: ConvGeometry, m: int) -> tuple[int, ...]:
  return tuple(m if k > 1 else 1 for k in g.kernel)


def _seconds(g: ConvGeometry, m: int) -> float:
  """Predicted seconds of one stride-1 Winograd F(m, r) problem of `g`'s output size."""
  ms = _tile(g, m)
  n_pos = math.prod(mm + k - 1 for mm, k in zip(ms, g.kernel))
  tiles = g.batch * math.prod(-(-o // mm) for o, mm in zip(g.out_spatial, ms))
  cin = g.group_in_features
  itemsize = np.dtype(work_dtype(g)).itemsize
  # Transformed input and product, plus the input read once.
  data = itemsize * (
    n_pos * tiles * (g.in_features + g.out_features)
    + math.prod(g.padded_spatial) * g.batch * g.in_features
  )
  kernel = itemsize * n_pos * cin * g.out_features  # the transformed kernel
  blocked = m in BLOCKED_SUM_TILES and cin > SUM_BLOCK and cin % SUM_BLOCK == 0
  # A GEMM whose inner dimension (the channel sum) is short runs far below the GEMM rate.
  rate = GEMM_RATE * min(1.0, cin / GEMM_FULL_RATE_FEATURES)
  gemm = 2 * n_pos * tiles * cin * g.out_features / rate * (BLOCKED_SUM_COST if blocked else 1)
  return gemm + data / STREAM_RATE + kernel / KERNEL_RATE


class Winograd(Algorithm):
  """Winograd F(m, r): tiles, exact Cook-Toom transforms, batched GEMMs over channels."""

  name = "winograd"
  exact = False  # a tile's transforms mix its values: NaN and inf spread over the tile

  def forced(self) -> dict:
    return {"winograd": None, **{f"winograd{m}": m for m in TILES}}

  def cannot(self, g: ConvGeometry) -> str | None:
    why = winograd_support(g)
    if why is None and max(g.kernel) > MAX_KERNEL:
      why = (
        f"kernel size {g.kernel} exceeds {MAX_KERNEL} on some axis, where its tiles lose too "
        "much floating-point accuracy"
      )
    return why

  def variants(self, g: ConvGeometry) -> tuple[tuple[int, ...], ...]:
    if _kernel_exceeds_output(g):
      # A kernel gradient's shape: each tile as wide as the kernel (F(m, 7) at ResNet-50's
      # 7x7x512 layer, 30-130 ms against lax's 24-29 ms), slow to compile: none worth measuring.
      return ()
    return tuple(dict.fromkeys(_tile(g, m) for m in TILES))

  def resolve(self, g: ConvGeometry, hint: object) -> tuple[int, ...]:
    if hint is None:
      hint = min(AUTO_TILES, key=lambda m: _seconds(g, m))
    return _tile(g, int(hint))

  def explain(self, g: ConvGeometry, variant: tuple[int, ...]) -> str:
    return f"Winograd F({max(variant)}, {g.kernel}) (cost model: GEMM work, transform traffic)"

  def why_not_predicted(self, g: ConvGeometry) -> str:
    if _kernel_exceeds_output(g):
      return "Winograd tiles as wide as a kernel larger than the output do not pay"
    if g.ndim == 1:
      return "1-D Winograd saves 2x, not 4x, and measured slower than lax (0.79x, 8x4096x256)"
    if max(g.rhs_dilation) > 1:
      return "dilated Winograd (interleaved sub-grid convolutions) does not pay on this CPU"
    return "strided Winograd (a sum of phase convolutions) does not pay on wide layers"

  def predict(self, g: ConvGeometry, variant: tuple[int, ...]) -> float | None:
    ungrouped = g.feature_group_count == 1 and g.batch_group_count == 1
    if g.ndim == 1 or max(g.rhs_dilation) > 1 or (max(g.strides) > 1 and ungrouped):
      return None
    if max(variant) not in AUTO_TILES:
      return None
    # A strided convolution is a sum of prod(strides) phase convolutions of the output's size.
    return _seconds(g, max(variant)) * math.prod(g.strides)

  def tolerance(self, g: ConvGeometry, variant: tuple[int, ...]) -> float:
    # The transforms' rounding grows about 2x per point of the tile width n = m + r - 1
    # (docs/accuracy.md: F(2,3), F(4,3), F(6,3) at 0.9x, 3.7x and 9x direct's float32 error).
    n = max(m + k - 1 for m, k in zip(variant, g.kernel))
    return 2.0 ** (n - 1) * eps(work_dtype(g)) + 8 * eps(g.out_dtype)

  def label(self, variant: tuple[int, ...] | None) -> str:
    return "winograd" if variant is None else f"winograd{max(variant)}"

  def describe(self, g: ConvGeometry, variant: tuple[int, ...]) -> dict:
    points = tuple(default_points(m, k) if k > 1 else () for m, k in zip(variant, g.kernel))
    return {"tile": variant, "points": points}

  def run(
    self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: tuple[int, ...]
  ) -> jax.Array:
    return winograd(lhs, rhs, g, variant)


WINOGRAD = Winograd()
