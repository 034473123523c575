"""The lax-compatible entry points: `conv_general_dilated`, `ConvGeneralDilated` and `plan`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike, DTypeLike

from jaxconv import _geometry, _transforms, _tune
from jaxconv._autodiff import _explicit_axes
from jaxconv._autodiff import conv as _conv_with_rules
from jaxconv._cache import TuneCacheInfo
from jaxconv._geometry import ConvGeometry, normalize, renormalize
from jaxconv._im2col import im2col_indices
from jaxconv._lax import LAX
from jaxconv._registry import by_name
from jaxconv._select import Plan, check_algorithm, choose, measurable

__all__ = ["ConvGeneralDilated", "cache_info", "conv_general_dilated", "conv_transpose", "plan"]


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _run(
  lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, algorithm: str, tile: tuple[int, ...] | None
) -> jax.Array:
  return by_name(algorithm).run(lhs, rhs, g, tile)


def cache_info() -> dict[str, functools._CacheInfo | TuneCacheInfo]:
  """jaxconv's caches: the trace-time LRUs (hits, misses, bounds) and the autotuner's cache.

  The trace-time caches are bounded and thread-safe. ``"autotune"`` describes the measurements
  of the default device: the file, its entries, this process's hits, misses and measurements, and
  whether the directory is writable.

  Example:
    >>> import jaxconv
    >>> sorted(jaxconv.cache_info())
    ['autotune', 'geometry', 'im2col_indices', 'winograd_matrices']
  """
  return {
    "autotune": _tune._store().info(),
    "geometry": _geometry._normalize_cached.cache_info(),
    "im2col_indices": im2col_indices.cache_info(),
    "winograd_matrices": _transforms._floating.cache_info(),
  }


# The lax algorithm as the entry point runs it (tests replace it to check nothing runs).
_run_lax = LAX.run


def plan(
  lhs: ArrayLike,
  rhs: ArrayLike,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: DTypeLike | None = None,
  out_sharding: Any = None,
  *,
  algorithm: str = "auto",
) -> Plan:
  """Says what `conv_general_dilated` would do with these arguments, computing nothing.

  Arrays may be `jax.ShapeDtypeStruct`s: only shapes and dtypes are read. The one exception is
  autotuning (`jaxconv.set_autotune`, `jaxconv.autotune`): while it is on, `auto` measures an unseen
  geometry here as `conv_general_dilated` would, so that what `plan` says is what runs.

  Returns:
    A `Plan`: the algorithm that will run, why, and the static facts (output shape and dtype,
    direct-convolution FLOPs, the normalised geometry).

  Raises:
    The same errors as `conv_general_dilated`.

  Example:
    >>> import jax, jaxconv
    >>> x = jax.ShapeDtypeStruct((8, 150, 150, 3), "float32")
    >>> k = jax.ShapeDtypeStruct((3, 3, 3, 16), "float32")
    >>> p = jaxconv.plan(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> p.algorithm, p.out_shape
    ('im2col', (8, 148, 148, 16))
  """
  del out_sharding  # does not change what is computed
  g = normalize(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
  )
  return choose(g, algorithm)


def conv_general_dilated(
  lhs: ArrayLike,
  rhs: ArrayLike,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: DTypeLike | None = None,
  out_sharding: Any = None,
  *,
  algorithm: str = "auto",
) -> jax.Array:
  """General n-dimensional convolution: a drop-in for `jax.lax.conv_general_dilated`.

  Takes the same arguments, with the same defaults and meaning, and returns the same shape and
  dtype; invalid arguments raise the same exception types, before anything is computed.

  Args:
    lhs: input, rank n + 2.
    rhs: kernel, rank n + 2.
    window_strides: n positive integers.
    padding: 'SAME', 'SAME_LOWER', 'VALID', or n (low, high) integer pairs (may be negative).
    lhs_dilation: n positive integers (transposed convolution), or None.
    rhs_dilation: n positive integers (atrous convolution), or None.
    dimension_numbers: None, a `lax.ConvDimensionNumbers`, or (lhs, rhs, out) layout strings such
      as ("NHWC", "HWIO", "NHWC").
    feature_group_count: feature groups (grouped and depthwise convolution).
    batch_group_count: batch groups (as in the kernel gradient of a grouped convolution).
    precision: as in lax: None, a `lax.Precision`, a string, or a pair.
    preferred_element_type: accumulation and result dtype, or None.
    out_sharding: output sharding (a `NamedSharding` or `PartitionSpec`), or None.
    algorithm: "auto" (see `plan`), "lax", "im2col", "direct", "subpixel", "col2im",
      "pixelshuffle", "spacetodepth", "wgrad" (tile size chosen), "wgrad2", "wgrad4", "wgrad6",
      "winograd" (tile size chosen), or "winograd2", "winograd4", "winograd6" (output tile size m
      forced).

  Returns:
    The convolution, as `jax.lax.conv_general_dilated` returns it.

  Raises:
    TypeError: malformed arguments (as lax), or a non-string `algorithm`.
    ValueError: arguments that break a convolution shape rule (as lax), or an unknown `algorithm`.
    NotImplementedError: a forced `algorithm` that cannot compute this convolution.

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv
    >>> kx, kk = jax.random.split(jax.random.key(0))
    >>> x = jax.random.normal(kx, (2, 16, 16, 3))
    >>> k = jax.random.normal(kk, (3, 3, 3, 8))
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> y = jaxconv.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn,
    ...                                  algorithm="im2col")
    >>> ref = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn,
    ...                                    precision="highest")
    >>> y.shape, bool(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref) < 1e-5)
    ((2, 16, 16, 8), True)
  """
  return _convolve(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
    out_sharding,
    algorithm=algorithm,
  )


def _convolve(
  lhs: ArrayLike,
  rhs: ArrayLike,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: DTypeLike | None = None,
  out_sharding: Any = None,
  *,
  algorithm: str = "auto",
  reversed_kernel: bool = False,
) -> jax.Array:
  """`conv_general_dilated` with the hint `ConvGeometry.reversed_kernel` set as given."""
  check_algorithm(algorithm)
  g = normalize(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
  )
  if reversed_kernel:
    g = dataclasses.replace(g, reversed_kernel=True)
  p = choose(g, algorithm, local=_per_device(lhs, rhs, g) if algorithm == "auto" else None)
  plain = algorithm != "auto" or out_sharding is not None or not measurable(g)
  if p.algorithm == "lax" and plain:
    return _run_lax(lhs, rhs, p.geometry, None, out_sharding=out_sharding)
  # `auto` on lax still binds jaxconv's primitive, so that the gradients are chosen afresh: a
  # strided layer's input gradient, say, runs by sub-pixel decomposition, not on lax's zeros.
  # One primitive with jaxconv's own jvp, transpose and batching rules, which runs `_run`.
  out = _conv_with_rules(lhs, rhs, p.geometry, p.algorithm, p.tile, out_sharding)
  # lax's transpose rules pass their operand's sharding, which outside any mesh has an empty one.
  if out_sharding is not None and not getattr(getattr(out_sharding, "mesh", None), "empty", False):
    out = jax.sharding.reshard(out, out_sharding)
  return out


class _RankMismatch(ValueError, AssertionError):
  """Operands of different ranks (lax: an AssertionError from `conv_transpose`)."""


def _transpose_padding(k: int, s: int, padding: Any) -> tuple[int, int]:
  """lax's padding of one axis of a transposed convolution (Keras' Conv2DTranspose convention)."""
  if padding == "SAME":
    total = k + s - 2
    before = k - 1 if s > k - 1 else -(-total // 2)
  elif padding == "VALID":
    total = k + s - 2 + max(k - s, 0)
    before = k - 1
  else:  # the forward convolution's explicit (low, high) padding
    before, total = k - padding[0] - 1, 2 * k - 2 - padding[0] - padding[1]
  return before, total - before


def conv_transpose(
  lhs: ArrayLike,
  rhs: ArrayLike,
  strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  transpose_kernel: bool = False,
  precision: Any = None,
  preferred_element_type: DTypeLike | None = None,
  use_consistent_padding: bool = False,
  *,
  algorithm: str = "auto",
) -> jax.Array:
  """Transposed convolution: a drop-in for `jax.lax.conv_transpose`.

  The same arguments, defaults and result as lax: an input dilated by `strides`, padded as lax
  pads it, convolved with the kernel (flipped, with input and output features swapped, when
  `transpose_kernel`). It runs through `conv_general_dilated`, so `auto` computes it by sub-pixel
  decomposition: ``prod(strides)`` stride-1 convolutions of the undilated input with the kernel's
  phases, each on the algorithm the registry picks, interleaved (no products with the inserted
  zeros).

  Args:
    lhs: input, rank n + 2.
    rhs: kernel, rank n + 2.
    strides: n positive integers: the fractional stride (the input dilation).
    padding: 'SAME', 'VALID', or n (low, high) integer pairs, as in `jax.lax.conv_transpose`.
    rhs_dilation: n positive integers (atrous), or None.
    dimension_numbers: None (lax's defaults for the rank), or layouts as in lax.
    transpose_kernel: flip the kernel's spatial axes and swap its feature axes (TensorFlow's
      convention), as in lax.
    precision: as in lax.
    preferred_element_type: accumulation and result dtype, or None.
    use_consistent_padding: as in lax: explicit pairs are the forward convolution's padding.
    algorithm: as in `conv_general_dilated`.

  Returns:
    The transposed convolution, as `jax.lax.conv_transpose` returns it.

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv
    >>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    >>> k = jax.random.normal(jax.random.key(1), (3, 3, 16, 8))
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> y = jaxconv.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=dn)
    >>> ref = jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=dn,
    ...                              precision="highest")
    >>> y.shape, bool(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref) < 1e-5)
    ((2, 16, 16, 8), True)
  """
  lhs_shape, rhs_shape = np.shape(lhs), np.shape(rhs)
  if len(lhs_shape) != len(rhs_shape) or len(lhs_shape) < 2:
    raise _RankMismatch(
      f"conv_transpose: `lhs` and `rhs` must have the same rank >= 2, got shapes "
      f"{lhs_shape} and {rhs_shape}."
    )
  nd = len(lhs_shape) - 2
  if dimension_numbers is None:
    defaults = {0: ("NC", "IO", "NC"), 1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC")}
    defaults[3] = ("NHWDC", "HWDIO", "NHWDC")  # lax's own spelling
    if nd not in defaults:
      raise ValueError("No 4+ dimensional dimension_number defaults.")
    dimension_numbers = defaults[nd]
  dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  kernel = [rhs_shape[d] for d in dn.rhs_spec[2:]]
  rhs_dilation = (1,) * nd if rhs_dilation is None else tuple(rhs_dilation)
  if use_consistent_padding or padding in ("SAME", "VALID"):
    per_axis = [padding] * len(strides) if isinstance(padding, str) else list(padding)
    pads = [
      _transpose_padding((k - 1) * d + 1 if k else 0, s, p)
      for k, d, s, p in zip(kernel, rhs_dilation, strides, per_axis)
    ]
  else:
    pads = padding
  if transpose_kernel:
    rhs = jnp.flip(rhs, dn.rhs_spec[2:])
    rhs = jnp.swapaxes(rhs, dn.rhs_spec[0], dn.rhs_spec[1])
  return _convolve(
    lhs,
    rhs,
    (1,) * nd,
    pads,
    strides,
    rhs_dilation,
    dn,
    1,
    1,
    precision,
    preferred_element_type,
    algorithm=algorithm,
    reversed_kernel=transpose_kernel,
  )


def _per_device(lhs: Any, rhs: Any, g: ConvGeometry) -> ConvGeometry | None:
  """What one device computes, for operands sharded explicitly (in their types); else None."""
  if not any(_explicit_axes(x) for x in (lhs, rhs)):
    return None
  structs = []
  for x in (lhs, rhs):
    aval = jax.typeof(x)
    shape = aval.sharding.shard_shape(aval.shape) if _explicit_axes(aval) else aval.shape
    structs.append(jax.ShapeDtypeStruct(shape, aval.dtype))
  try:
    return renormalize(g, *structs)
  except (TypeError, ValueError):  # features split across devices: no convolution of its own
    return None


@dataclasses.dataclass(frozen=True)
class ConvGeneralDilated:
  """`conv_general_dilated` with the algorithm fixed: an immutable, hashable callable.

  Flax linen's `nn.Conv(conv_general_dilated_cls=...)` instantiates it with no arguments; nnx's
  `nnx.Conv(conv_general_dilated=...)` accepts an instance.

  Attributes:
    algorithm: as in `conv_general_dilated`.

  Example:
    >>> import jax.numpy as jnp, jaxconv
    >>> conv = jaxconv.ConvGeneralDilated(algorithm="im2col")
    >>> conv(jnp.ones((1, 1, 5)), jnp.ones((1, 1, 3)), (1,), "VALID").tolist()
    [[[3.0, 3.0, 3.0]]]
  """

  algorithm: str = "auto"

  def __post_init__(self):
    check_algorithm(self.algorithm)  # a typo fails at construction, not at the first call

  def __call__(
    self,
    lhs: ArrayLike,
    rhs: ArrayLike,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: Any = None,
  ) -> jax.Array:
    return conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      batch_group_count,
      precision,
      preferred_element_type,
      out_sharding,
      algorithm=self.algorithm,
    )
