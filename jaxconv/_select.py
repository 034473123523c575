"""Which algorithm runs, and why: the chooser, which reads only the registry.

`choose` is the single place where an algorithm is picked: `plan` reports its answer and the entry
point runs it, so what `plan` says is what runs. A forced algorithm that cannot handle a geometry
raises NotImplementedError naming the reason and the algorithms that can.

The `auto` rule, in order:

1. Nothing to compute (empty result or no input features) or a 0-D convolution (a plain matrix
   product): lax.
2. A tiny convolution (under `TINY_FLOPS`), where every algorithm takes microseconds: lax, which
   has the least overhead. Only exact algorithms (the same products as lax) are candidates for a
   convolution shaped like patch extraction (one input feature per group, one output per kernel
   tap, as in `lax.conv_general_dilated_patches`: a one-hot kernel, a copy that must stay exact)
   and under `set_nonfinite("exact")`.
3. A measurement of this geometry on this device (the autotuner's cache, `jaxconv._tune`;
   measured now when autotuning is on): the fastest admissible candidate if it beats lax by the
   tuner's margin, else lax. `Plan.reason` starts with "measured".
4. Without one, on a GPU or TPU: lax (the cost models below were fitted to a CPU); for a 1x1
   kernel too, which lax runs as one matrix product (measured, other forms of that product can
   run faster: jaxlib 0.10's XLA:CPU runs such a convolution on one core, see `_POINTWISE`).
5. On CPU, each candidate's predicted time (`Algorithm.predict`); the fastest runs if predicted
   at least `MIN_PREDICTED_GAIN` times faster than lax, else lax. `Plan.reason` starts with
   "predicted".
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import jax
import numpy as np

from jaxconv import _tune
from jaxconv._algorithm import Variant
from jaxconv._geometry import ConvGeometry
from jaxconv._lax import LAX
from jaxconv._registry import ALGORITHMS, REGISTRY, by_name, forced

__all__ = ["ALGORITHMS", "Plan", "check_algorithm", "choose", "set_nonfinite"]

MIN_PREDICTED_GAIN = 1.1
# Below this many FLOPs every algorithm takes microseconds: lax, exact and with the least overhead.
TINY_FLOPS = 4_000_000

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
  * ``"exact"``: `auto` only picks exact algorithms, so non-finite values propagate as in lax.

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
    algorithm: the registered algorithm that runs: "lax", "im2col" or "winograd".
    reason: one sentence on why; for `auto`, it starts with "measured" when the choice comes from a
      measurement on this device and "predicted" when it comes from the cost model.
    out_shape: the result's shape.
    out_dtype: the result's dtype.
    flops: floating-point operations of the direct convolution (2 per multiply-add).
    tile: the algorithm's variant (for Winograd, the output tile size m per spatial axis);
      otherwise None.
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

  @property
  def label(self) -> str:
    """The algorithm with its variant, as the tuner and the benchmarks name it ("winograd4")."""
    return by_name(self.algorithm).label(self.tile)


def check_algorithm(algorithm: object) -> None:
  """Raises TypeError or ValueError unless `algorithm` is one of `ALGORITHMS`."""
  if not isinstance(algorithm, str):
    raise TypeError(f"`algorithm` must be a string, one of {ALGORITHMS}, got {algorithm!r}.")
  if algorithm not in ALGORITHMS:
    raise ValueError(f"`algorithm` must be one of {ALGORITHMS}, got {algorithm!r}.")


def _plan(g: ConvGeometry, name: str, variant: Variant, reason: str) -> Plan:
  extra = {"tile": None, "points": None, **by_name(name).describe(g, variant)}
  return Plan(
    algorithm=name,
    reason=reason,
    out_shape=g.out_shape,
    out_dtype=g.out_dtype,
    flops=g.flops,
    geometry=g,
    **extra,
  )


def _resolve(g: ConvGeometry, label: str) -> tuple[str, Variant]:
  a, variant = _tune.variant_of(g, label)
  return a.name, variant


def _exact_only(g: ConvGeometry) -> str | None:
  """Why only exact algorithms may compute `g`, or None."""
  if _nonfinite == "exact":
    return "non-finite values must propagate exactly as in lax (set_nonfinite('exact'))"
  taps = math.prod(g.kernel)
  if (
    g.group_in_features == 1
    and g.feature_group_count > 1
    and g.out_features == taps * g.in_features
  ):
    return "it has the shape of patch extraction (a one-hot kernel: a copy that must stay exact)"
  return None


# A 1x1 kernel is one matrix product, which every algorithm computes with the same products;
# which form of it runs fastest is measured, never predicted. On the 2-core AMD EPYC, under default
# flags, ResNet-50's 56x56x256 -> 64 layer at batch 8 took 12.9 ms by lax, with one core busy
# (YNNPACK's convolution), and 5.1 ms as a plain dot, with both (docs/tuning.md#1x1-kernels).
_POINTWISE = (
  "predicted: a 1x1 kernel is one matrix product, lax's unless a measurement finds a faster form "
  "(tune to measure)"
)


def _settled(g: ConvGeometry) -> str | None:
  """Why `auto` runs lax on `g` whatever a measurement would say, or None."""
  if g.is_empty:
    return "the result is empty or all zeros; there is nothing to compute"
  if g.ndim == 0:
    return "a 0-D convolution is a single matrix product that lax emits"
  if g.flops < TINY_FLOPS:
    return (
      f"it is tiny ({g.flops} FLOPs): every algorithm takes microseconds, and lax has the least "
      "overhead"
    )
  return None


def measurable(g: ConvGeometry) -> bool:
  """Whether `auto` would use a measurement of `g` (the tuner skips the rest)."""
  return _settled(g) is None


def _auto(g: ConvGeometry, measure: bool, local: ConvGeometry) -> Plan:
  settled = _settled(g)
  if settled is not None:
    return _plan(g, "lax", None, settled)
  exact_only = _exact_only(g)
  able = [a for a in REGISTRY if a.cannot(g) is None and (a.exact or exact_only is None)]
  note = "" if exact_only is None else f"; only exact algorithms, since {exact_only}"

  entry = _tune.lookup(local)
  if entry is None and measure:
    entry = _tune.measure(local)
  if entry is not None:
    allowed = [a.label(v) for a in able for v in a.variants(g)]
    label, reason = _tune.decide(local, entry, allowed)
    return _plan(g, *_resolve(g, label), reason + note)

  if math.prod(g.kernel) == 1:
    return _plan(g, "lax", None, _POINTWISE)
  backend = jax.default_backend()
  if backend != "cpu":
    return _plan(
      g,
      "lax",
      None,
      f"predicted: no measurement on {backend}, where jaxconv's cost models "
      "(fitted to a CPU) do not apply; tune to measure",
    )
  lax_s = LAX.predict(g, None)
  best: tuple[float, str, Variant] | None = None
  why_not = []
  for a in able:
    if a is LAX:
      continue
    predicted = [(s, v) for v in a.variants(g) if (s := a.predict(g, v)) is not None]
    if not predicted:
      why_not.append(a.why_not_predicted(g))
      continue
    s, v = min(predicted, key=lambda p: p[0])
    if best is None or s < best[0]:
      best = (s, a.name, v)
  if best is not None and lax_s / best[0] >= MIN_PREDICTED_GAIN:
    s, name, v = best
    return _plan(
      g, name, v, f"predicted {lax_s / s:.1f}x faster than lax: {by_name(name).explain(g, v)}{note}"
    )
  if best is not None:
    why_not.append(
      f"the best alternative, {by_name(best[1]).label(best[2])}, is predicted only "
      f"{lax_s / best[0]:.2f}x faster than lax"
    )
  excluded = [a.name for a in REGISTRY if a not in able and a.cannot(g) is None]
  if excluded:
    why_not.append(f"{', '.join(excluded)} excluded since {exact_only}")
  return _plan(g, "lax", None, "predicted: " + "; ".join(why_not or ["nothing else can run it"]))


def _forced(g: ConvGeometry, algorithm: str) -> Plan:
  a, hint = forced(algorithm)
  why_not = a.cannot(g)
  if why_not is not None:
    able = [n for n in ALGORITHMS[1:] if forced(n)[0].cannot(g) is None]
    raise NotImplementedError(
      f"algorithm={algorithm!r} cannot compute this convolution: {why_not}. "
      f"Algorithms that can: {', '.join(able)}."
    )
  return _plan(g, a.name, a.resolve(g, hint), "requested by the caller")


def choose(
  g: ConvGeometry,
  algorithm: str,
  *,
  measure: bool | None = None,
  local: ConvGeometry | None = None,
) -> Plan:
  """Picks the algorithm for `g`.

  Args:
    g: the normalised convolution.
    algorithm: one of `ALGORITHMS`.
    measure: for "auto", measure an unseen geometry now (None: when autotuning is on).
    local: for "auto" on sharded operands, what one device computes: that is what is measured.

  Returns:
    The plan.

  Raises:
    TypeError: if `algorithm` is not a string.
    ValueError: if `algorithm` is not a known name.
    NotImplementedError: if a forced algorithm cannot compute `g`.
  """
  check_algorithm(algorithm)
  if algorithm == "auto":
    plan = _auto(g, _tune.autotune_enabled() if measure is None else measure, local or g)
  else:
    plan = _forced(g, algorithm)
  _tune.collect(g, algorithm, plan, local)
  return plan
