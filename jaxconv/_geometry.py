"""One immutable description of a convolution, built once from lax-style arguments.

Every entry point (`conv_general_dilated`, `plan`, the algorithms) consumes a `ConvGeometry` and
never re-parses user arguments. `normalize` validates in the order `jax.lax.conv_general_dilated`
does and raises the same exception types (ValueError for shape rules, TypeError for malformed
arguments), with messages naming the argument and its value. As a last line of defence it asks lax
itself for the result's shape and dtype (`jax.eval_shape`, no computation), so a call lax rejects
is rejected here too and a call lax accepts gets exactly lax's output shape and dtype.

The geometry is stored in a canonical, layout-free form: batch, feature and spatial sizes in the
order of the kernel's spatial dimensions (the order in which `window_strides` and `padding` are
given). Algorithms work channels-last, `(N, *spatial, C)` for the input, `(*kernel, I, O)` for the
kernel and `(N, *spatial, O)` for the output; the permutations to and from the user's layout live
here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import operator
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src.lax import lax as lax_internal

__all__ = [
  "ConvGeometry",
  "PaddingError",
  "RankError",
  "derive",
  "grouped_input",
  "grouped_operands",
  "normalize",
  "renormalize",
]


# Two cases where lax raises an unusual exception type. Ours subclass both the conventional type and
# lax's, so `except` clauses written for lax keep working.
class PaddingError(ValueError, RuntimeError):
  """An unknown padding string (lax: RuntimeError from `lax.padtype_to_pads`)."""


class RankError(TypeError, IndexError):
  """An input of rank < 2, with no room for batch and feature dimensions (lax: IndexError)."""


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
  """The static facts of one convolution, in canonical order.

  Attributes:
    batch: input batch size N.
    in_features: input feature count C.
    in_spatial: input spatial sizes, in kernel spatial order.
    out_features: output feature count O.
    kernel: kernel spatial sizes.
    strides: window strides.
    padding: explicit `(low, high)` pairs (possibly negative), after resolving strings.
    lhs_dilation: input dilation (transposed convolution).
    rhs_dilation: kernel dilation (atrous convolution).
    feature_group_count: number of feature groups G (C = G * I).
    batch_group_count: number of batch groups B (N = B * N_out).
    dimension_numbers: lax's canonical `ConvDimensionNumbers`.
    dtype: the common input dtype.
    out_dtype: the result dtype, as lax computes it.
    precision: the `precision` argument, made hashable.
    preferred_element_type: the `preferred_element_type` argument, canonicalised.
    out_shape: the result's shape in the user's output layout.
    reversed_kernel: a hint, not part of the convolution's meaning: the kernel is the reversal
      (`lax.rev` of every spatial axis) of another array, as an input gradient's kernel is and
      `conv_transpose(transpose_kernel=True)`'s. XLA:CPU runs a reversal fused into a kernel
      transposition element by element (3x3x512x512: 7.7 ms against 0.9 ms for the
      transposition alone), so algorithms that transpose the kernel reverse it once more, which
      XLA cancels, and read its taps in reverse order; the autotuner times such geometries on a
      reversed kernel, as they run.
  """

  batch: int
  in_features: int
  in_spatial: tuple[int, ...]
  out_features: int
  kernel: tuple[int, ...]
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  feature_group_count: int
  batch_group_count: int
  dimension_numbers: lax.ConvDimensionNumbers
  dtype: np.dtype
  out_dtype: np.dtype
  precision: Any
  preferred_element_type: np.dtype | None
  out_shape: tuple[int, ...]
  reversed_kernel: bool = False

  # Derived facts. ----------------------------------------------------------------------------

  @property
  def ndim(self) -> int:
    """Number of spatial dimensions."""
    return len(self.in_spatial)

  @property
  def out_spatial(self) -> tuple[int, ...]:
    """Output spatial sizes, in kernel spatial order."""
    return tuple(self.out_shape[d] for d in self.dimension_numbers.out_spec[2:])

  @property
  def out_batch(self) -> int:
    return self.batch // self.batch_group_count

  @property
  def group_in_features(self) -> int:
    """Input features seen by one output feature (the kernel's I dimension)."""
    return self.in_features // self.feature_group_count

  @property
  def dilated_kernel(self) -> tuple[int, ...]:
    return tuple((k - 1) * d + 1 if k else 0 for k, d in zip(self.kernel, self.rhs_dilation))

  @property
  def padded_spatial(self) -> tuple[int, ...]:
    """Input spatial sizes after lhs dilation and padding: the grid the windows slide over."""
    return tuple(
      ((s - 1) * ld + 1 if s else 0) + lo + hi
      for s, ld, (lo, hi) in zip(self.in_spatial, self.lhs_dilation, self.padding)
    )

  @property
  def flops(self) -> int:
    """Real multiply-adds x 2 of the direct convolution (complex counts 4 real products)."""
    macs = math.prod(self.out_shape) * math.prod(self.kernel) * self.group_in_features
    scale = 4 if np.issubdtype(self.dtype, np.complexfloating) else 1
    return 2 * macs * scale

  @property
  def is_empty(self) -> bool:
    """True when the result has no elements or every output is an empty sum (zeros).

    An output sums over the input features and over the input points its window covers: with no
    features, or an input axis of size 0 (padding alone can give such an axis outputs), it is 0.
    """
    return math.prod(self.out_shape) == 0 or self.group_in_features == 0 or 0 in self.in_spatial

  @property
  def pad_config(self) -> tuple[tuple[int, int, int], ...]:
    """`lax.pad` configuration of the spatial axes: (low, high, interior) with lhs dilation."""
    return tuple((lo, hi, ld - 1) for (lo, hi), ld in zip(self.padding, self.lhs_dilation))

  @property
  def lhs_shape(self) -> tuple[int, ...]:
    """The input's shape in the user's layout."""
    return self._in_layout(
      self.dimension_numbers.lhs_spec, self.batch, self.in_features, self.in_spatial
    )

  @property
  def rhs_shape(self) -> tuple[int, ...]:
    """The kernel's shape in the user's layout."""
    return self._in_layout(
      self.dimension_numbers.rhs_spec, self.out_features, self.group_in_features, self.kernel
    )

  @staticmethod
  def _in_layout(spec, first: int, second: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
    shape = [0] * len(spec)
    for axis, size in zip(spec, (first, second, *spatial)):
      shape[axis] = size
    return tuple(shape)

  def key(self) -> str:
    """A canonical string of everything that determines the computation (the tuner's cache key)."""
    dn = self.dimension_numbers
    pet = None if self.preferred_element_type is None else self.preferred_element_type.name
    return (
      f"lhs={_dims(self.lhs_shape)} rhs={_dims(self.rhs_shape)} dtype={self.dtype.name} "
      f"layout={_dims(dn.lhs_spec)},{_dims(dn.rhs_spec)},{_dims(dn.out_spec)} "
      f"strides={_dims(self.strides)} padding={_pairs(self.padding)} "
      f"lhs_dilation={_dims(self.lhs_dilation)} rhs_dilation={_dims(self.rhs_dilation)} "
      f"groups={self.feature_group_count},{self.batch_group_count} "
      f"precision={_precision_name(self.precision)} preferred={pet}"
      + (" reversed_kernel" if self.reversed_kernel else "")
    )

  def describe(self) -> str:
    """A short human-readable summary, as tables print it."""
    n, c = self.batch, self.in_features
    text = f"{'x'.join(map(str, (n, *self.in_spatial, c)))} -> {self.out_features}"
    text += f", {_dims(self.kernel)}"
    if max(self.strides, default=1) > 1:
      text += f" /{_dims(self.strides)}"
    if max(self.lhs_dilation, default=1) > 1:
      text += f" lhs-dil {_dims(self.lhs_dilation)}"
    if max(self.rhs_dilation, default=1) > 1:
      text += f" dil {_dims(self.rhs_dilation)}"
    groups = max(self.feature_group_count, self.batch_group_count)
    if groups > 1:
      kind = "feature" if self.feature_group_count > 1 else "batch"
      text += f", {groups} {kind} groups"
    return f"{text}, {self.dtype.name}"

  # Layout permutations. ----------------------------------------------------------------------

  @property
  def lhs_to_channels_last(self) -> tuple[int, ...]:
    spec = self.dimension_numbers.lhs_spec
    return (spec[0], *spec[2:], spec[1])

  @property
  def rhs_to_channels_last(self) -> tuple[int, ...]:
    spec = self.dimension_numbers.rhs_spec
    return (*spec[2:], spec[1], spec[0])

  @property
  def channels_last_to_out(self) -> tuple[int, ...]:
    """Permutation taking a `(N, *spatial, O)` array to the user's output layout."""
    spec = self.dimension_numbers.out_spec
    perm = [0] * len(spec)
    perm[spec[0]] = 0
    perm[spec[1]] = self.ndim + 1
    for i, axis in enumerate(spec[2:]):
      perm[axis] = i + 1
    return tuple(perm)


def _dims(values: Sequence[int]) -> str:
  return "x".join(map(str, values)) or "-"


def _pairs(pads: Sequence[tuple[int, int]]) -> str:
  return ",".join(f"{lo}:{hi}" for lo, hi in pads) or "-"


def _precision_name(precision: Any) -> str:
  """One name per computation: "highest" and `Precision.HIGHEST` alike, None and DEFAULT alike."""
  canonical = lax_internal.canonicalize_precision(precision)
  if canonical is None:
    return "default"
  if isinstance(canonical, tuple):
    names = {str(getattr(p, "name", p)).lower() for p in canonical}
    return (
      "/".join(str(getattr(p, "name", p)).lower() for p in canonical)
      if len(names) > 1
      else (names.pop())
    )
  return str(getattr(canonical, "name", canonical)).lower()  # a dot algorithm preset


def grouped_operands(
  lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, dtype: Any
) -> tuple[jax.Array, jax.Array]:
  """The operands as every algorithm consumes them, channels-last and split into groups.

  Returns:
    ``x`` of shape ``(N / B, B, *spatial, C)`` (lax splits the batch group-major) and ``w`` of
    shape ``(*kernel, I, G, B, O / (G * B))``; one of G and B is 1, so output features stay
    group-major.
  """
  fgc, bgc = g.feature_group_count, g.batch_group_count
  w = jnp.transpose(rhs, g.rhs_to_channels_last).astype(dtype)
  w = w.reshape(*g.kernel, g.group_in_features, fgc, bgc, g.out_features // (fgc * bgc))
  return grouped_input(lhs, g, dtype), w


def grouped_input(lhs: jax.Array, g: ConvGeometry, dtype: Any) -> jax.Array:
  """The input of `grouped_operands` alone: ``(N / B, B, *spatial, C)``."""
  x = jnp.transpose(lhs, g.lhs_to_channels_last).astype(dtype)
  return x.reshape(g.batch_group_count, g.out_batch, *g.in_spatial, g.in_features).swapaxes(0, 1)


def _int_tuple(name: str, value: Any, ndim: int) -> tuple[int, ...]:
  if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
    raise TypeError(
      f"conv_general_dilated `{name}` must be a sequence of {ndim} integers, got {value!r}."
    )
  try:
    out = tuple(operator.index(v) for v in value)
  except TypeError as e:
    raise TypeError(
      f"conv_general_dilated `{name}` must be a sequence of integers, got {value!r}."
    ) from e
  if len(out) != ndim:
    raise ValueError(
      f"conv_general_dilated `{name}` must have one entry per spatial dimension ({ndim}), "
      f"got {len(out)}: {value!r}."
    )
  return out


def _group_count(name: str, value: Any) -> int:
  # lax only uses these in integer arithmetic, so it accepts integral floats such as 2.0.
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"conv_general_dilated `{name}` must be an integer, got {value!r}.")
  if value != int(value):
    raise TypeError(f"conv_general_dilated `{name}` must be an integer, got {value!r}.")
  if value <= 0:
    raise ValueError(f"conv_general_dilated `{name}` must be a positive integer, got {value!r}.")
  return int(value)


def _hashable_precision(precision: Any) -> Any:
  if isinstance(precision, list):
    return tuple(precision)
  return precision


def _shape_of(name: str, x: Any) -> tuple[tuple[int, ...], np.dtype]:
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  if shape is None or dtype is None:
    raise TypeError(
      f"conv_general_dilated `{name}` must be an array with a shape and dtype, got "
      f"{type(x).__name__}."
    )
  return tuple(shape), np.dtype(dtype)


def normalize(
  lhs: Any,
  rhs: Any,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Any = None,
) -> ConvGeometry:
  """Validates `jax.lax.conv_general_dilated` arguments into a `ConvGeometry`.

  Args:
    lhs: the input array (only its shape and dtype are read).
    rhs: the kernel array (only its shape and dtype are read).
    window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      batch_group_count, precision, preferred_element_type: as in `jax.lax.conv_general_dilated`.

  Returns:
    The validated, immutable description.

  Raises:
    TypeError: for malformed arguments (as lax).
    ValueError: for shapes that break a convolution rule (as lax).

  Example:
    >>> import jax.numpy as jnp
    >>> g = normalize(jnp.zeros((8, 32, 32, 3)), jnp.zeros((3, 3, 3, 16)), (1, 1), "SAME",
    ...               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> g.out_shape, g.padding
    ((8, 32, 32, 16), ((1, 1), (1, 1)))
  """
  lhs_shape, lhs_dtype = _shape_of("lhs", lhs)
  rhs_shape, rhs_dtype = _shape_of("rhs", rhs)
  padding_arg, dimension_numbers_arg = padding, dimension_numbers
  if isinstance(padding, list):
    padding = tuple(tuple(p) if isinstance(p, list) else p for p in padding)
  elif isinstance(padding, np.ndarray):
    padding = tuple(map(tuple, padding.tolist()))
  if isinstance(dimension_numbers, list):
    dimension_numbers = tuple(dimension_numbers)
  key = (
    lhs_shape,
    lhs_dtype,
    rhs_shape,
    rhs_dtype,
    _freeze(window_strides),
    padding,
    _freeze(lhs_dilation),
    _freeze(rhs_dilation),
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    _hashable_precision(precision),
    preferred_element_type,
  )
  try:
    try:
      hash(key)
    except TypeError:
      return _normalize(*key)
    return _normalize_cached(*key)
  except (TypeError, ValueError, IndexError, RuntimeError) as e:
    if getattr(e, "_from_lax", False):
      raise
    # One of jaxconv's own checks: lead with lax's wording for the same call, so code matching
    # lax's messages keeps matching, then jaxconv's, which names the argument and value.
    said = _lax_wording(
      lhs_shape,
      lhs_dtype,
      rhs_shape,
      rhs_dtype,
      window_strides,
      padding_arg,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers_arg,
      feature_group_count,
      batch_group_count,
      precision,
      preferred_element_type,
    )
    if said is None or said in str(e):
      raise
    raise type(e)(f"{said} (jaxconv: {e})") from None


# Bound at import: `jaxconv.use` patches `lax.conv_general_dilated` later, never this.
_LAX_CONV = lax.conv_general_dilated
_VERIFIER = "Cannot lower jaxpr with verifier errors:"


@contextlib.contextmanager
def _lax_speaks() -> Iterator[None]:
  """Marks the errors lax itself raises inside the block: they propagate unchanged."""
  try:
    yield
  except Exception as e:
    e._from_lax = True
    raise


def _lax_wording(lhs_shape, lhs_dtype, rhs_shape, rhs_dtype, *args) -> str | None:
  """What lax says of the same call, traced and lowered (never run); None if it accepts it.

  Some rules lax only checks when XLA verifies the lowered program; of those messages the
  verifier's own sentence is kept, without the source locations.
  """
  structs = (jax.ShapeDtypeStruct(lhs_shape, lhs_dtype), jax.ShapeDtypeStruct(rhs_shape, rhs_dtype))
  fn = lambda lhs, rhs: _LAX_CONV(lhs, rhs, *args)
  try:
    with warnings.catch_warnings():  # lax divides by a zero stride before it rejects it
      warnings.simplefilter("ignore")
      jax.jit(fn).trace(*structs).lower()
  except Exception as e:
    text = str(e)
  else:
    return None
  if text.startswith(_VERIFIER):
    lines = [line.strip() for line in text[len(_VERIFIER) :].splitlines() if line.strip()]
    text = lines[0] if lines else text
  return text


def _freeze(value: Any) -> Any:
  if isinstance(value, (list, np.ndarray)):
    return tuple(np.asarray(value).tolist())
  return value


def _normalize(
  lhs_shape,
  lhs_dtype,
  rhs_shape,
  rhs_dtype,
  window_strides,
  padding,
  lhs_dilation,
  rhs_dilation,
  dimension_numbers,
  feature_group_count,
  batch_group_count,
  precision,
  preferred_element_type,
) -> ConvGeometry:
  if len(lhs_shape) < 2:
    raise RankError(
      f"conv_general_dilated `lhs` must have rank >= 2 (batch and feature), got shape {lhs_shape}."
    )
  # lax's own parser names the offending element of `dimension_numbers` precisely.
  with _lax_speaks():
    dnums = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  ndim = len(lhs_shape) - 2
  strides = _int_tuple("window_strides", window_strides, ndim)
  if any(s <= 0 for s in strides):
    raise ValueError(
      f"conv_general_dilated `window_strides` must be positive, got {tuple(strides)}."
    )
  lhs_dil = (1,) * ndim if lhs_dilation is None else _int_tuple("lhs_dilation", lhs_dilation, ndim)
  rhs_dil = (1,) * ndim if rhs_dilation is None else _int_tuple("rhs_dilation", rhs_dilation, ndim)
  for name, dil in (("lhs_dilation", lhs_dil), ("rhs_dilation", rhs_dil)):
    if any(d <= 0 for d in dil):
      # lax raises TypeError("All dilations must be positive").
      raise TypeError(f"conv_general_dilated `{name}` must be positive, got {dil}.")
  fgc = _group_count("feature_group_count", feature_group_count)
  bgc = _group_count("batch_group_count", batch_group_count)

  in_spatial = tuple(lhs_shape[d] for d in dnums.lhs_spec[2:])
  kernel = tuple(rhs_shape[d] for d in dnums.rhs_spec[2:])
  if any(k == 0 for k in kernel):
    # XLA's verifier rejects an empty window when lax lowers it, as a ValueError.
    raise ValueError(
      f"conv_general_dilated: every spatial dimension of `rhs` must be positive, got kernel "
      f"size {kernel} (rhs shape {rhs_shape})."
    )
  if isinstance(padding, str):
    if any(d != 1 for d in lhs_dil):
      raise ValueError(
        f"conv_general_dilated: string `padding` ({padding!r}) is not implemented for "
        f"transposed convolution (`lhs_dilation`={lhs_dil}); give explicit (low, high) pairs "
        "or use jaxconv.conv_transpose."
      )
    if padding.upper() not in ("SAME", "SAME_LOWER", "VALID"):
      raise PaddingError(
        f"conv_general_dilated `padding` must be 'SAME', 'SAME_LOWER', 'VALID' or a sequence "
        f"of (low, high) pairs, got {padding!r}."
      )
    dilated = [(k - 1) * d + 1 if k else 0 for k, d in zip(kernel, rhs_dil)]
    pads = tuple(tuple(p) for p in lax.padtype_to_pads(in_spatial, dilated, strides, padding))
  else:
    try:
      pads = tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding)
    except (ValueError, TypeError) as e:
      raise ValueError(
        "conv_general_dilated `padding` must be a string or a sequence of (low, high) integer "
        f"pairs, got {padding!r}."
      ) from e
    if len(pads) != ndim:
      raise TypeError(
        f"conv_general_dilated `padding` must have one (low, high) pair per spatial dimension "
        f"({ndim}), got {len(pads)}: {padding!r}."
      )
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)

  if lhs_dtype != rhs_dtype:
    raise TypeError(
      "conv_general_dilated requires `lhs` and `rhs` to have the same dtype, got "
      f"{lhs_dtype} and {rhs_dtype}."
    )
  in_features = lhs_shape[dnums.lhs_spec[1]]
  if in_features % fgc:
    raise ValueError(
      f"conv_general_dilated `feature_group_count` (={fgc}) must divide the lhs feature "
      f"dimension (={in_features})."
    )
  rhs_in = rhs_shape[dnums.rhs_spec[1]]
  if in_features // fgc != rhs_in:
    raise ValueError(
      f"conv_general_dilated: lhs features (={in_features}) divided by `feature_group_count` "
      f"(={fgc}) must equal the rhs input feature dimension (={rhs_in})."
    )
  out_features = rhs_shape[dnums.rhs_spec[0]]
  for name, count in (("feature_group_count", fgc), ("batch_group_count", bgc)):
    if out_features % count:
      raise ValueError(
        f"conv_general_dilated: the rhs output feature dimension (={out_features}) must be a "
        f"multiple of `{name}` (={count})."
      )
  batch = lhs_shape[dnums.lhs_spec[0]]
  if bgc > 1 and batch % bgc:
    raise ValueError(
      f"conv_general_dilated `batch_group_count` (={bgc}) must divide the lhs batch dimension "
      f"(={batch})."
    )
  if bgc > 1 and fgc > 1:
    raise ValueError(
      "conv_general_dilated: at most one of `batch_group_count` and `feature_group_count` may "
      f"be > 1, got {bgc} and {fgc}."
    )
  for d, (s, ld, (lo, hi)) in enumerate(zip(in_spatial, lhs_dil, pads)):
    if ((s - 1) * ld + 1 if s else 0) + lo + hi < 0:
      raise ValueError(
        f"conv_general_dilated: negative `padding` {pads[d]} is larger than spatial dimension "
        f"{d} of lhs (size {s}, lhs_dilation {ld})."
      )

  # lax has the last word on shape and dtype (and on `precision`/`preferred_element_type`).
  with _lax_speaks():
    out = jax.eval_shape(
      functools.partial(
        _LAX_CONV,
        window_strides=strides,
        padding=pads,
        lhs_dilation=lhs_dil,
        rhs_dilation=rhs_dil,
        dimension_numbers=dnums,
        feature_group_count=fgc,
        batch_group_count=bgc,
        precision=precision,
        preferred_element_type=preferred_element_type,
      ),
      jax.ShapeDtypeStruct(lhs_shape, lhs_dtype),
      jax.ShapeDtypeStruct(rhs_shape, rhs_dtype),
    )
  return ConvGeometry(
    batch=batch,
    in_features=in_features,
    in_spatial=in_spatial,
    out_features=out_features,
    kernel=kernel,
    strides=strides,
    padding=pads,
    lhs_dilation=lhs_dil,
    rhs_dilation=rhs_dil,
    feature_group_count=fgc,
    batch_group_count=bgc,
    dimension_numbers=dnums,
    dtype=lhs_dtype,
    out_dtype=np.dtype(out.dtype),
    precision=precision,
    preferred_element_type=(
      None if preferred_element_type is None else np.dtype(preferred_element_type)
    ),
    out_shape=tuple(out.shape),
  )


_normalize_cached = functools.lru_cache(maxsize=1024)(_normalize)


def derive(g: ConvGeometry, lhs_shape: Sequence[int], rhs_shape: Sequence[int], **changes: Any):
  """A convolution like `g` (same dtype) on operands of other shapes, some arguments changed.

  `changes` are `normalize`'s keyword arguments (``padding=``, ``lhs_dilation=``, ...); the
  `reversed_kernel` hint is not carried over.
  """
  args = dict(
    window_strides=g.strides,
    padding=g.padding,
    lhs_dilation=g.lhs_dilation,
    rhs_dilation=g.rhs_dilation,
    dimension_numbers=g.dimension_numbers,
    feature_group_count=g.feature_group_count,
    batch_group_count=g.batch_group_count,
    precision=g.precision,
    preferred_element_type=g.preferred_element_type,
  )
  shapes = (jax.ShapeDtypeStruct(tuple(s), g.dtype) for s in (lhs_shape, rhs_shape))
  return normalize(*shapes, **{**args, **changes})


def renormalize(
  g: ConvGeometry,
  lhs: Any,
  rhs: Any,
  feature_group_count: int | None = None,
  batch_group_count: int | None = None,
) -> ConvGeometry:
  """`g`'s convolution on operands of other shapes (and, optionally, other group counts)."""
  new = normalize(
    lhs,
    rhs,
    g.strides,
    g.padding,
    g.lhs_dilation,
    g.rhs_dilation,
    g.dimension_numbers,
    g.feature_group_count if feature_group_count is None else feature_group_count,
    g.batch_group_count if batch_group_count is None else batch_group_count,
    g.precision,
    g.preferred_element_type,
  )
  return dataclasses.replace(new, reversed_kernel=g.reversed_kernel)
