"""The kernel gradient of a Winograd layer, computed in the Winograd domain.

A layer that runs F(m, r) forward computes ``Y = AT [U * V] A`` per tile, with ``U = G g GT`` the
transformed kernel and ``V = BT d B`` the transformed input tile, summed over input channels: for
each of the ``n^d`` transformed positions ``xi``, ``M[xi] = V[xi] @ U[xi]`` (tiles x C times
C x O). Its kernel gradient follows by the chain rule through the same stages, backwards:

    dM = A dY AT               (the output-gradient tiles, through the transposed output transform)
    dU[xi] = V[xi]^T @ dM[xi]  (one GEMM per position, summing over examples and tiles)
    dg = GT dU G               (one small transform back)

so it costs what the forward costs: the input transform, one output-sized transform and
``n^d`` GEMMs, where lax computes the kernel gradient as a convolution whose "kernel" is the whole
output gradient. It is F(r, m) run backwards, in the words of Lavin and Gray. The output-gradient
tiles do not overlap (a tile's m outputs are its own), so ``dM`` reads each ``dY`` value once, by
the same strided views the forward's input transform uses.

Strided and dilated layers split as the forward does (`jaxconv._winograd`): the kernel gradient of
a stride-s axis is the phases' gradients ``dg[p::s]``, each the gradient of a stride-1 problem on
``x[p::s]``; a dilated kernel's gradient sums its sub-grids' gradients. The transformed input is
recomputed from the layer's input, not kept from the forward pass (see docs/memory.md); in a
training step compiled as one program XLA computes it once for both where both take it whole
(`_with_forward_input`), and the tuner then times the two together (`Wgrad.shares_with`). A large
``dU`` is made a block of rows of positions at a time, each adding ``GT[:, block] dU[block]``.

As a registry algorithm it takes the kernel-gradient geometry that `jaxconv._autodiff` states
(input and output gradient as lhs and rhs, the kernel as the result) and rebuilds the forward layer
from it.

Reference: A. Lavin and S. Gray, "Fast algorithms for convolutional neural networks" (CVPR 2016),
section 4 (the gradient computations).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._algorithm import Algorithm
from jaxconv._autodiff import _swap01
from jaxconv._geometry import ConvGeometry, grouped_input, normalize
from jaxconv._host_memory import host_memory_kept
from jaxconv._loops import sum_blocks
from jaxconv._winograd import (
  AUTO_TILES,
  KERNEL_RATE,
  SPLIT_ABOVE_BYTES,
  STREAM_RATE,
  TILES,
  WINOGRAD,
  _bytes_per_example,
  _combine,
  _kernel_exceeds_output,
  _pad,
  _phases,
  _plan,
  _position_blocks,
  _sum_position_rows,
  kernel_matrix,
  transform_input,
  work_dtype,
)

__all__ = ["WGRAD", "kernel_gradient"]

# Transformed input and output gradient are made and consumed in blocks of at most this many bytes.
# Measured (ResNet-50 layers, batch 8, F(4,3), 2 cores, Intel Xeon, interleaved with lax): blocks of
# up to 16 MB against 8 MB ran 56x56x64 in 13.0 against 15.7 ms (two blocks against four),
# 28x28x128 6.2 against 6.8 ms and 14x14x256 5.7 against 6.9 ms (one block against two), with
# host memory kept; 12.8 / 15.8, 7.5 / 8.5 and 5.1 / 6.1 ms without. 32 MB lost at 56x56x64
# without kept memory (22.6 ms in one piece).
BLOCK_BYTES = 16 << 20

# `auto`'s model: the forward's three terms (`jaxconv._winograd`), with the rate of these GEMMs,
# whose sum runs over all examples and tiles. Fitted to ResNet-50's stride-1 3x3 layers at batch 8
# (F(2,3) and F(4,3), 2 cores): within 0.8-1.7x of the measured 3.3-14.9 ms, right tile for 3 of 4.
GEMM_RATE = 300e9


def _seconds(g: ConvGeometry, m: int) -> float:
  """Predicted seconds of `kernel_gradient` of the forward layer `g` with tiles of `m`."""
  itemsize = np.dtype(work_dtype(g)).itemsize
  cin, groups = g.group_in_features, g.feature_group_count * g.batch_group_count
  rate = GEMM_RATE * min(1.0, cin / 32, g.out_features / groups / 32)
  read = (
    g.out_batch
    * itemsize
    * (
      math.prod(g.padded_spatial) * g.batch_group_count * g.in_features
      + math.prod(g.out_spatial) * g.out_features
    )
  )
  total = read / STREAM_RATE
  axes = [
    _phases(k, o, s, d) for k, o, s, d in zip(g.kernel, g.out_spatial, g.strides, g.rhs_dilation)
  ]
  for combo in itertools.product(*axes):
    _, w_sl, y_sl = zip(*combo)
    rs = [len(range(k)[sl]) for k, sl in zip(g.kernel, w_sl)]
    out = [len(range(o)[sl]) for o, sl in zip(g.out_spatial, y_sl)]
    ms, _, tiles = _plan(out, [m] * g.ndim, rs)
    n_pos = math.prod(mm + r - 1 for mm, r in zip(ms, rs))
    rows = g.out_batch * math.prod(tiles)
    data = itemsize * n_pos * rows * (g.batch_group_count * g.in_features + g.out_features)
    kernel = itemsize * n_pos * cin * g.out_features
    total += (
      2 * n_pos * rows * cin * g.out_features / rate + data / STREAM_RATE + kernel / KERNEL_RATE
    )
  return total


def forward_of(g: ConvGeometry) -> ConvGeometry | None:
  """The forward layer whose kernel gradient `g` is, or None when `g` is not that shape."""
  if max(g.lhs_dilation, default=1) > 1 or g.ndim == 0:
    return None
  lhs_spec, rhs_spec, out_spec = g.dimension_numbers
  # _autodiff._transpose_rhs: lhs = x (batch and feature swapped), rhs = the output gradient,
  # window strides = the layer's kernel dilation, kernel dilation = its strides.
  kernel = g.out_spatial
  padding = []
  for n, o, k, s, d, (lo, _) in zip(
    g.in_spatial, g.kernel, kernel, g.rhs_dilation, g.strides, g.padding
  ):
    padding.append((lo, (o - 1) * s + (k - 1) * d + 1 - n - lo))
  fwd_rhs = list(g.out_shape)  # the kernel's shape in its own layout
  try:
    return normalize(
      jax.ShapeDtypeStruct(g.lhs_shape, g.dtype),
      jax.ShapeDtypeStruct(tuple(fwd_rhs), g.dtype),
      g.rhs_dilation,
      padding,
      None,
      g.strides,
      lax.ConvDimensionNumbers(_swap01(lhs_spec), _swap01(out_spec), _swap01(rhs_spec)),
      g.batch_group_count,
      g.feature_group_count,
      g.precision,
      g.preferred_element_type,
    )
  except (TypeError, ValueError):
    return None


class Wgrad(Algorithm):
  """A Winograd layer's kernel gradient, in the Winograd domain."""

  name = "wgrad"
  exact = False

  def forced(self) -> dict:
    return {"wgrad": None, **{f"wgrad{m}": m for m in TILES}}

  def cannot(self, g: ConvGeometry) -> str | None:
    fwd = forward_of(g)
    if fwd is None or tuple(fwd.out_shape) != tuple(g.rhs_shape):
      return "it computes kernel gradients of layers, and this convolution is not one"
    why = WINOGRAD.cannot(fwd)
    if why is not None:
      return f"the forward layer cannot run Winograd: {why}"
    if _kernel_exceeds_output(fwd):
      # Any convolution is some layer's kernel gradient; a forward one is that of a layer with a
      # kernel larger than its output, whose wide tiles took seconds to compile and ran 5-40x
      # slower than lax (ResNet-50's 7x7x512 forward: 62-115 ms against 12 ms; its 14x14x512
      # stride-2 one 229-475 ms against 11-17 ms).
      return (
        f"it computes kernel gradients of layers whose kernel is no larger than their output, "
        f"and this one would be a {fwd.kernel} kernel's over a {fwd.out_spatial} output"
      )
    return None

  def variants(self, g: ConvGeometry) -> tuple[tuple[int, ...], ...]:
    return WINOGRAD.variants(forward_of(g))

  def resolve(self, g: ConvGeometry, hint: object) -> tuple[int, ...]:
    fwd = forward_of(g)
    if hint is None:
      hint = min(AUTO_TILES, key=lambda m: _seconds(fwd, m))
    return WINOGRAD.resolve(fwd, hint)

  def predict(self, g: ConvGeometry, variant) -> float | None:
    fwd = forward_of(g)
    if fwd.ndim == 1 or max(fwd.rhs_dilation) > 1 or max(variant) not in AUTO_TILES:
      return None
    return _seconds(fwd, max(variant))

  def why_not_predicted(self, g: ConvGeometry) -> str:
    fwd = forward_of(g)
    if math.prod(fwd.kernel) == 1:
      return "wgrad: a 1x1 layer's kernel gradient has no tile that saves products"
    if fwd.ndim == 1:
      return "wgrad: 1-D tiles save 2x, not 4x, and 1-D Winograd measured slower than lax"
    return "wgrad: a dilated layer's kernel gradient (sub-grid sums) was not measured to pay"

  def explain(self, g: ConvGeometry, variant) -> str:
    return f"the kernel gradient of {WINOGRAD.explain(forward_of(g), variant)}, transformed"

  def shares_with(self, g: ConvGeometry, variant) -> tuple[ConvGeometry, str] | None:
    # The forward by the same tile makes the same transformed input in one piece where this does
    # (`_with_forward_input`); not from a reversed kernel, whose transforms run reversed.
    fwd = forward_of(g)
    if fwd.reversed_kernel or not _with_forward_input(fwd, variant):
      return None
    return fwd, WINOGRAD.label(variant)

  def tolerance(self, g: ConvGeometry, variant) -> float:
    return WINOGRAD.tolerance(forward_of(g), variant)

  def describe(self, g: ConvGeometry, variant) -> dict:
    return WINOGRAD.describe(forward_of(g), variant)

  def label(self, variant) -> str:
    return "wgrad" if variant is None else f"wgrad{max(variant)}"

  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant) -> jax.Array:
    return kernel_gradient(lhs, rhs, forward_of(g), variant).astype(g.out_dtype)


WGRAD = Wgrad()


def _stride1(
  x: jax.Array,
  dy: jax.Array,
  rs: Sequence[int],
  ms: Sequence[int],
  g: ConvGeometry,
  split: bool,
  limit: int,
) -> jax.Array:
  """`_tiles` summed over blocks of tile rows when the transformed data exceeds `limit` bytes.

  A block reads its rows of output gradient and the input rows they need (r - 1 more); the
  gradient is padded with zero rows to whole blocks, which add nothing to the sum.
  """
  out = dy.shape[1:-1]
  ms, _, tiles = _plan(out, ms, rs)
  n_pos = math.prod(m + r - 1 for m, r in zip(ms, rs))
  itemsize = np.dtype(x.dtype).itemsize
  nbytes = n_pos * x.shape[0] * math.prod(tiles) * (x.shape[1] * x.shape[-1] + dy.shape[-1])
  if split:
    nbytes //= _row_blocks(ms, rs, g.group_in_features, dy.shape[-1], itemsize)
  blocks = min(tiles[0], -(-nbytes * itemsize // limit))
  if blocks <= 1:
    return _tiles(x, dy, rs, ms, g, split)
  per = -(-tiles[0] // blocks) * ms[0]  # output rows per block
  blocks = -(-out[0] // per)
  rows = blocks * per
  dy = jnp.pad(dy, [(0, 0), (0, rows - out[0])] + [(0, 0)] * (dy.ndim - 2))
  x = x[:, :, : rows + rs[0] - 1]
  x = jnp.pad(x, [(0, 0), (0, 0), (0, rows + rs[0] - 1 - x.shape[2])] + [(0, 0)] * (x.ndim - 3))

  def body(i: jax.Array, acc: jax.Array) -> jax.Array:
    xs = lax.dynamic_slice_in_dim(x, i * per, per + rs[0] - 1, axis=2)
    dys = lax.dynamic_slice_in_dim(dy, i * per, per, axis=1)
    return acc + _tiles(xs, dys, rs, ms, g, split)

  part = jax.eval_shape(
    lambda a, b: _tiles(a, b, rs, ms, g, split), x[:, :, : per + rs[0] - 1], dy[:, :per]
  )
  return lax.fori_loop(0, blocks, body, jnp.zeros(part.shape, part.dtype))


def _with_forward_input(g: ConvGeometry, m: Sequence[int]) -> bool:
  """Whether to compute the kernel gradient of the layer `g` in one piece, as its forward does.

  A Winograd forward makes its transformed input in one piece when its transformed data fit
  `SPLIT_ABOVE_BYTES` and its transformed kernel one block of positions (`_tiles`). The
  kernel gradient then needs the very same array, and in a training step compiled as one program
  XLA computes it once for both, if the kernel gradient too takes it whole, not in blocks of
  examples. That saves the input transform and its pass over the input, but leaves the kernel
  gradient's fresh buffers larger than BLOCK_BYTES, which a process that does not keep its host
  memory (`jaxconv.keep_host_memory`) faults in again on every run. Measured (ResNet-50's
  56x56x64 layer, batch 8, F(4,3), 28.9 MB, Intel Xeon, interleaved with lax; docs/benchmarks.md,
  "The forward's transformed input shared with the kernel gradient"): with host memory kept, the
  training step ran 3.04x and 3.18x lax in one piece against 2.77x and 2.60x in two blocks (a
  forward by F(4,3), input gradient by lax, kernel gradient by F(4,3), YNNPACK off: 1.17x against
  0.99x); without, 1.90x and 1.89x against 2.58x and 2.51x, and the kernel gradient alone 26.7 ms
  against 13.6.
  """
  wdt = work_dtype(g)
  nbytes = g.out_batch * _bytes_per_example(g, m, wdt)
  rows = _row_blocks(m, g.kernel, g.group_in_features, g.out_features, np.dtype(wdt).itemsize)
  return host_memory_kept() and nbytes <= SPLIT_ABOVE_BYTES and rows == 1


def _row_blocks(ms: Sequence[int], rs: Sequence[int], cin: int, cout: int, itemsize: int) -> int:
  """How many blocks of first-axis positions `_tiles` makes the transformed gradient in."""
  ns = [m + r - 1 if r > 1 else 1 for m, r in zip(ms, rs)]
  return _position_blocks(math.prod(ns) * cin * cout * itemsize, ns[0])


def _tiles(
  x: jax.Array, dy: jax.Array, rs: Sequence[int], ms: Sequence[int], g: ConvGeometry, split: bool
):
  """Kernel gradient of a VALID stride-1 Winograd problem (`jaxconv._winograd._tiles`).

  Args:
    x: (E, B, *L, C) input, at least ``out + r - 1`` long per axis.
    dy: (E, *out, O) output gradient, output features group-major.
    rs: kernel size per axis.
    ms: tile output size per axis.
    g: the forward geometry (groups, precision).
    split: whether a transformed gradient over U_BLOCK_BYTES is made in blocks of positions.

  Returns:
    (*rs, I, G, B, O') kernel gradient.
  """
  out = dy.shape[1:-1]
  ms, mats, tiles = _plan(out, ms, rs)
  # The output gradient padded to whole tiles; row a of A^T's transpose weighs output i of every
  # tile, the strided view dy[i::m].
  dy = jnp.pad(dy, [(0, 0)] + [(0, k * m - o) for k, m, o in zip(tiles, ms, out)] + [(0, 0)])
  gk = kernel_matrix(mats)
  n_ex, n_tiles = x.shape[0], math.prod(tiles)
  fgc, bgc, cin = g.feature_group_count, g.batch_group_count, g.group_in_features

  def stages(mats_b, gkb: np.ndarray, x: jax.Array, dy: jax.Array) -> jax.Array:
    # The kernel gradient's share of the positions that the rows of `gkb` name.
    v = transform_input(x, ms, mats_b, tiles, g)  # (positions, E, B, *tiles, C)
    t = dy  # dM = A dY AT, one axis at a time
    for d, (m, k, (at, _, _)) in enumerate(zip(ms, tiles, mats_b)):
      axis = 2 * d + 1
      views = [lax.slice_in_dim(t, i, i + (k - 1) * m + 1, m, axis=axis) for i in range(m)]
      t = _combine(at.T, views, axis=d)
    n_b = gkb.shape[0]
    if fgc == 1 and bgc == 1:  # dU[xi] = V[xi]^T dM[xi], examples and tiles summed
      du = lax.dot_general(
        v.reshape(n_b, n_ex * n_tiles, cin),
        t.reshape(n_b, n_ex * n_tiles, -1),
        (((1,), (1,)), ((0,), (0,))),
        precision=g.precision,
        preferred_element_type=g.preferred_element_type,
      )
    else:
      du = jnp.einsum(
        "nebtgc,netgbo->ncgbo",
        v.reshape(n_b, n_ex, bgc, n_tiles, fgc, cin),
        t.reshape(n_b, n_ex, n_tiles, fgc, bgc, -1),
        precision=g.precision,
        preferred_element_type=g.preferred_element_type,
      )
    # dg = GT dU G: the transpose of the forward's kernel transform, one small GEMM.
    gt = jnp.asarray(gkb.T, du.dtype)
    return jnp.dot(gt, du.reshape(n_b, -1), precision=lax.Precision.HIGHEST)

  # A transformed kernel gradient larger than U_BLOCK_BYTES is made a block of whole rows of
  # positions (along the first axis) at a time, as the forward makes its transformed kernel
  # (`jaxconv._winograd._tiles`): each block transforms its input rows and its output-gradient
  # rows and adds its share ``GT[:, block] dU[block]`` to the gradient.
  n_pb = _row_blocks(ms, rs, cin, dy.shape[-1], np.dtype(dy.dtype).itemsize) if split else 1
  if n_pb == 1:
    dg = stages(mats, gk, x, dy)
  else:
    dg = _sum_position_rows(stages, mats, gk, n_pb, x, dy)
  return dg.reshape(*rs, cin, fgc, bgc, -1)


def kernel_gradient(x: jax.Array, dy: jax.Array, g: ConvGeometry, m: Sequence[int]) -> jax.Array:
  """The gradient with respect to the kernel of the Winograd layer `g`, in the Winograd domain.

  Args:
    x: the layer's input, in its layout.
    dy: the gradient of its output, in the output's layout.
    g: the forward layer's geometry; `WINOGRAD.cannot(g)` must be None.
    m: output tile size per spatial axis.

  Returns:
    The kernel gradient in the kernel's layout, in the work dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxconv._geometry import normalize
    >>> x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 4))
    >>> g = normalize(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> jnp.round(kernel_gradient(x, jnp.ones((1, 4, 4, 4)), g, (4, 4))[0, 0, 0], 4).tolist()
    [16.0, 16.0, 16.0, 16.0]
  """
  wdt = work_dtype(g)
  if math.prod(x.shape) == 0 or math.prod(dy.shape) == 0:
    return jnp.zeros(g.rhs_shape, wdt)
  fgc, bgc = g.feature_group_count, g.batch_group_count
  x = grouped_input(x, g, wdt)
  dy = jnp.transpose(dy, np.argsort(g.channels_last_to_out)).astype(wdt)  # (E, *out, O)
  out = g.out_spatial
  axes = [_phases(k, o, s, d) for k, o, s, d in zip(g.kernel, out, g.strides, g.rhs_dilation)]
  shape = (*g.kernel, g.group_in_features, fgc, bgc, g.out_features // (fgc * bgc))

  def block(xb: jax.Array, dyb: jax.Array) -> jax.Array:
    xb = _pad(xb, g.pad_config)
    dw = None
    for combo in itertools.product(*axes):
      x_sl, w_sl, y_sl = zip(*combo)
      rs = [len(range(k)[sl]) for k, sl in zip(g.kernel, w_sl)]
      xs, dys = xb[(slice(None), slice(None), *x_sl)], dyb[(slice(None), *y_sl)]
      part = _stride1(xs, dys, rs, m, g, split, limit)
      if all(sl == slice(None) for sl in w_sl) and dw is not None:  # dilation phases add up
        dw = dw + part
      else:  # stride phases: each fills its own kernel taps
        dw = jnp.zeros(shape, part.dtype) if dw is None else dw
        dw = dw.at[w_sl].add(part)
    return dw

  # Examples are summed in equal blocks whose transformed data stays within BLOCK_BYTES (one
  # example at a time, in blocks of tile rows, when a single one exceeds it). Where the data
  # exceed one block, a large dU is also split into blocks of positions (`_tiles`), each holding
  # its share of the data: at batch 32 that took the 7x7x512 step's temporaries from 75.6 to
  # 54.7 MB. Where they fit, the split would save no memory and cost time (its partial sums: the
  # 7x7x512 kernel gradient at batch 8 ran 0.89-0.92x as fast split).
  n_ex, per_example = g.out_batch, _bytes_per_example(g, m, wdt)
  if _with_forward_input(g, m):
    split, blocks, limit = False, 1, SPLIT_ABOVE_BYTES
  else:
    limit = BLOCK_BYTES
    split = n_ex * per_example > BLOCK_BYTES
    if split:
      per_example //= _row_blocks(
        m, g.kernel, g.group_in_features, g.out_features, np.dtype(wdt).itemsize
      )
    blocks = next(
      k
      for k in range(1, n_ex + 1)
      if (n_ex % k == 0 and n_ex // k * per_example <= BLOCK_BYTES) or k == n_ex
    )
  dw = sum_blocks(block, (x, dy), blocks)
  dw = dw.reshape(*g.kernel, g.group_in_features, g.out_features)
  return jnp.transpose(dw, np.argsort(g.rhs_to_channels_last))
