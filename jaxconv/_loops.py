"""A loop over blocks of rows that reads its input and writes its output in place."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["map_blocks", "sum_blocks"]


def map_blocks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, size: int) -> jax.Array:
  """``fn`` over consecutive blocks of `size` along axis 0 of `x`, concatenated along axis 0.

  `lax.map` scans over its input, which XLA copies into the loop's state: one more buffer the size
  of the input. Here each iteration reads its block with a dynamic slice of `x` (left in place)
  and writes the result into the output in place. When `size` does not divide the length, the
  last block starts earlier and overlaps its predecessor, recomputing a few rows rather than
  compiling `fn` a second time for a shorter block. `fn` must treat rows independently.

  Example:
    >>> import jax.numpy as jnp
    >>> map_blocks(lambda b: 2 * b, jnp.arange(5.0), 2).tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
  """
  n = x.shape[0]
  if size >= n:
    return fn(x)
  out = jax.eval_shape(fn, jax.ShapeDtypeStruct((size, *x.shape[1:]), x.dtype))
  # Flat rows: a reshape that keeps unit axes (a batch-group axis of 1, say) lets XLA give the loop
  # state a layout of its own, and then it copies the input all the same.
  flat = x.reshape(n, -1)

  def body(i: jax.Array, y: jax.Array) -> jax.Array:
    start = jnp.minimum(i * size, n - size)
    block = lax.dynamic_slice_in_dim(flat, start, size).reshape(size, *x.shape[1:])
    return lax.dynamic_update_slice_in_dim(y, fn(block), start, 0)

  y = jnp.zeros((n, *out.shape[1:]), out.dtype)
  return lax.fori_loop(0, -(-n // size), body, y)


def sum_blocks(fn: Callable[..., jax.Array], xs: tuple[jax.Array, ...], blocks: int) -> jax.Array:
  """The sum of ``fn`` over `blocks` equal blocks along axis 0 of every array in `xs`.

  `blocks` must divide the length; each iteration reads its blocks with dynamic slices and adds
  its result into the loop's accumulator, so only one block's intermediates are alive at a time.

  Example:
    >>> import jax.numpy as jnp
    >>> float(sum_blocks(lambda a: a.sum(), (jnp.arange(6.0),), 3))
    15.0
  """
  n = xs[0].shape[0]
  if blocks == 1:
    return fn(*xs)
  size = n // blocks
  assert size * blocks == n, (n, blocks)
  out = jax.eval_shape(fn, *(jax.ShapeDtypeStruct((size, *x.shape[1:]), x.dtype) for x in xs))

  def body(i: jax.Array, acc: jax.Array) -> jax.Array:
    return acc + fn(*(lax.dynamic_slice_in_dim(x, i * size, size) for x in xs))

  return lax.fori_loop(0, blocks, body, jnp.zeros(out.shape, out.dtype))
