"""Which algorithm runs, and why.

`choose` is the single place where an algorithm is picked: `plan` reports its answer and the entry
point runs it, so what `plan` says is what runs. A forced algorithm that cannot handle a geometry
raises NotImplementedError naming the reason and the algorithms that can.

The `auto` rule, in order:

1. Nothing to compute (empty result or no input features), a 0-D convolution or a 1x1 kernel
   (each a plain matrix product): lax.
2. im2col for an ungrouped convolution whose GEMM is small on both sides: inner dimension (kernel
   taps x input features) at most `IM2COL_MAX_INNER` and at most `IM2COL_MAX_OUT` output
   features. There (an RGB stem such as the seed example, 3 -> 16) XLA's CPU convolution runs far
   below its GEMM rate while one gathered GEMM does not; with 64 outputs (VGG's first layer) lax
   is faster again.
3. Winograd when it applies (2-D, floating point, kernel 2..7 wide, no kernel dilation, stride 1
   unless grouped) and its predicted time beats lax's by `WINOGRAD_MIN_GAIN`; the tile
   size m is the one with the lowest predicted time among `AUTO_TILES`. Depthwise and grouped
   layers, where XLA's CPU convolution is slowest, qualify even when strided.
4. Otherwise lax.

The predictions are a three-term cost model whose rates were measured with `jaxconv bench` on the
reference CPU (docs/benchmarks.md): GEMM work at `GEMM_RATE`, the transforms' memory traffic at
`STREAM_RATE`, and lax's direct convolution at `LAX_RATE`.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np

from jaxconv._geometry import ConvGeometry
from jaxconv._transforms import default_points
from jaxconv._winograd import BLOCKED_SUM_TILES, SUM_BLOCK, winograd_support, work_dtype

__all__ = ["ALGORITHMS", "Plan", "check_algorithm", "choose", "set_nonfinite"]

WINOGRAD_TILES = (2, 4, 6)
# F(6, 3) measured no faster than F(4, 3) on any ResNet layer and is 4x less accurate (see
# docs/accuracy.md), so `auto` and plain "winograd" choose between m = 2 and m = 4.
AUTO_TILES = (2, 4)
ALGORITHMS = ("auto", "lax", "im2col", "winograd", *(f"winograd{m}" for m in WINOGRAD_TILES))
MAX_WINOGRAD_KERNEL = 7

IM2COL_MAX_INNER = 64
IM2COL_MAX_OUT = 32
WINOGRAD_MIN_GAIN = 1.1
# Measured rates (float32, 2 cores), fitted to the ResNet-50 3x3 layers (docs/benchmarks.md).
LAX_RATE = 190e9  # direct-convolution FLOP/s of XLA's CPU convolution on wide layers
LAX_FULL_RATE_FEATURES = 128  # input features per group from which lax reaches LAX_RATE
LAX_MIN_SHARE = 0.3  # ungrouped layers with few features still reach this share of LAX_RATE
GEMM_RATE = 154e9  # FLOP/s of the batched GEMMs of the multiplication stage
GEMM_FULL_RATE_FEATURES = 32  # channel-sum length from which those GEMMs reach GEMM_RATE
STREAM_RATE = 8.5e9  # bytes/s of transformed input and product through the transforms
KERNEL_RATE = 4.2e9  # bytes/s of transformed kernel (written fresh on every call)
BLOCKED_SUM_COST = 2.0  # GEMM time factor of channel sums split into blocks (for accuracy)


NONFINITE_MODES = ("fast", "exact")
_nonfinite = "fast"


def set_nonfinite(mode: str) -> str:
  """Chooses how `auto` treats NaN and infinity; returns the previous mode.

  No algorithm loses a non-finite value: every output lax makes NaN or +-inf is non-finite in
  jaxconv too. im2col computes the same products as lax and propagates them identically. Winograd
  mixes a whole tile in its transforms, so one non-finite input makes every output of the tiles
  that hold it non-finite (up to (m + r - 1) / m times more outputs per axis than lax), and where
  lax gives +-inf it may give NaN (inf - inf in a transform).

  * ``"fast"`` (default): `auto` may pick Winograd.
  * ``"exact"``: `auto` never picks Winograd, so non-finite values propagate exactly as in lax.

  Explicitly requested algorithms are unaffected. Like every `auto` input, the mode is read when a
  function is traced.

  Example:
    >>> import jaxconv
    >>> old = jaxconv.set_nonfinite("exact")
    >>> _ = jaxconv.set_nonfinite(old)
  """
  global _nonfinite
  if mode not in NONFINITE_MODES:
    raise ValueError(f"`mode` must be one of {NONFINITE_MODES}, got {mode!r}.")
  old, _nonfinite = _nonfinite, mode
  return old


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `jaxconv.conv_general_dilated` will do for one set of arguments.

  Attributes:
    algorithm: the algorithm that runs: "lax", "im2col" or "winograd".
    reason: one sentence on why.
    out_shape: the result's shape.
    out_dtype: the result's dtype.
    flops: floating-point operations of the direct convolution (2 per multiply-add).
    tile: for Winograd, the output tile size m per spatial axis; otherwise None.
    points: for Winograd, the finite interpolation points per spatial axis; otherwise None.
    geometry: the normalised description every algorithm consumes.
  """

  algorithm: str
  reason: str
  out_shape: tuple[int, ...]
  out_dtype: np.dtype
  flops: int
  tile: tuple[int, ...] | None
  points: tuple[tuple[Fraction, ...], ...] | None
  geometry: ConvGeometry


def _cannot(g: ConvGeometry, algorithm: str) -> str | None:
  """Why `algorithm` cannot run `g`, or None when it can."""
  if algorithm.startswith("winograd"):
    why = winograd_support(g)
    if why is None and max(g.kernel) > MAX_WINOGRAD_KERNEL:
      why = (
        f"kernel size {g.kernel} exceeds {MAX_WINOGRAD_KERNEL} on some axis, where its tiles "
        "lose too much floating-point accuracy"
      )
    return why
  return None


def _winograd_seconds(g: ConvGeometry, m: int) -> float:
  """Predicted seconds of Winograd F(m, r) on `g` (stride 1, no dilation)."""
  ms = [m if k > 1 else 1 for k in g.kernel]
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


def _winograd_tile(g: ConvGeometry) -> int:
  return min(AUTO_TILES, key=lambda m: _winograd_seconds(g, m))


def _lax_seconds(g: ConvGeometry) -> float:
  """Predicted seconds of XLA's CPU convolution.

  `LAX_RATE` from `LAX_FULL_RATE_FEATURES` input features per group on, and roughly in proportion
  below (measured: 102 GFLOP/s at 64 features, 164-196 at 128-512); ungrouped layers never drop
  below `LAX_MIN_SHARE` of it (59 GFLOP/s on VGG's RGB layer), grouped ones do (depthwise 3x3:
  0.6-0.7 GFLOP/s).
  """
  share = min(1.0, g.group_in_features / LAX_FULL_RATE_FEATURES)
  if g.feature_group_count == 1 and g.batch_group_count == 1:
    share = max(share, LAX_MIN_SHARE)
  return g.flops / (LAX_RATE * share)


def _auto(g: ConvGeometry) -> tuple[str, int | None, str]:
  if g.is_empty:
    return "lax", None, "the result is empty or all zeros; there is nothing to compute"
  if g.ndim == 0:
    return "lax", None, "a 0-D convolution is a single matrix product that lax already emits"
  if math.prod(g.kernel) == 1:
    return "lax", None, "a 1x1 kernel is a plain matrix product, which lax emits as such"
  inner = math.prod(g.kernel) * g.group_in_features
  ungrouped = g.feature_group_count == 1 and g.batch_group_count == 1
  if ungrouped and inner <= IM2COL_MAX_INNER and g.out_features <= IM2COL_MAX_OUT:
    return (
      "im2col",
      None,
      (
        f"a GEMM of inner dimension K*C = {inner} <= {IM2COL_MAX_INNER} and {g.out_features} <= "
        f"{IM2COL_MAX_OUT} outputs: XLA's convolution is slow on so few features, one gathered "
        "GEMM is not"
      ),
    )
  why_not = _cannot(g, "winograd")
  if why_not is None and _nonfinite == "exact":
    why_not = "non-finite values must propagate exactly as in lax (set_nonfinite('exact'))"
  if why_not is None and g.ndim == 1:
    why_not = "1-D Winograd saves 2x, not 4x, and measured slower than lax (0.79x, 8x4096x256)"
  if why_not is None and max(g.rhs_dilation) > 1:
    why_not = "dilated Winograd (interleaved sub-grid convolutions) does not pay on this CPU"
  if why_not is None and max(g.strides) > 1 and ungrouped:
    why_not = "strided Winograd (a sum of phase convolutions) does not pay on wide layers"
  if why_not is None:
    m = _winograd_tile(g)
    # A strided convolution is a sum of prod(strides) phase convolutions of the output's size.
    gain = _lax_seconds(g) / (_winograd_seconds(g, m) * math.prod(g.strides))
    if gain >= WINOGRAD_MIN_GAIN:
      return (
        "winograd",
        m,
        (
          f"Winograd F({m}, {g.kernel}) is predicted {gain:.1f}x faster than lax (cost model: "
          "GEMM work, transform traffic)"
        ),
      )
    why_not = f"Winograd's best tile (m={m}) is predicted only {gain:.2f}x faster than lax"
  return "lax", None, f"im2col would not pay here and {why_not}"


def check_algorithm(algorithm: object) -> None:
  """Raises TypeError or ValueError unless `algorithm` is one of `ALGORITHMS`."""
  if not isinstance(algorithm, str):
    raise TypeError(f"`algorithm` must be a string, one of {ALGORITHMS}, got {algorithm!r}.")
  if algorithm not in ALGORITHMS:
    raise ValueError(f"`algorithm` must be one of {ALGORITHMS}, got {algorithm!r}.")


def choose(g: ConvGeometry, algorithm: str) -> Plan:
  """Picks the algorithm for `g`.

  Args:
    g: the normalised convolution.
    algorithm: one of `ALGORITHMS`.

  Returns:
    The plan.

  Raises:
    TypeError: if `algorithm` is not a string.
    ValueError: if `algorithm` is not a known name.
    NotImplementedError: if a forced algorithm cannot compute `g`.
  """
  check_algorithm(algorithm)
  if algorithm == "auto":
    name, m, reason = _auto(g)
  else:
    why_not = _cannot(g, algorithm)
    if why_not is not None:
      able = [a for a in ALGORITHMS[1:] if _cannot(g, a) is None]
      raise NotImplementedError(
        f"algorithm={algorithm!r} cannot compute this convolution: {why_not}. "
        f"Algorithms that can: {', '.join(able)}."
      )
    name, m, reason = algorithm, None, "requested by the caller"
    if algorithm.startswith("winograd"):
      name = "winograd"
      m = int(algorithm[len("winograd") :] or 0) or _winograd_tile(g)
  tile = points = None
  if name == "winograd":
    tile = tuple(m if k > 1 else 1 for k in g.kernel)
    points = tuple(default_points(mm, k) if k > 1 else () for mm, k in zip(tile, g.kernel))
  return Plan(
    algorithm=name,
    reason=reason,
    out_shape=g.out_shape,
    out_dtype=g.out_dtype,
    flops=g.flops,
    tile=tile,
    points=points,
    geometry=g,
  )
