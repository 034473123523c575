"""The autotuner: `auto` measured on the user's own hardware.

For one geometry the tuner measures every candidate the registry offers (lax, and each algorithm and
variant that can run it) on random normal data of the geometry's shapes and dtypes, on the default
device:

1. every candidate is compiled ahead (on CPU in a small thread pool, as XLA compiles release the
   GIL; elsewhere one at a time, see `_compile_workers`), after the convolutions a candidate hands
   back to `auto` (`Algorithm.nested`) have been measured, so that it runs as it will;
2. each runs once, and its normwise relative difference from lax's result is recorded (the
   decision drops a candidate whose difference exceeds its algorithm's documented tolerance);
   where one does, every result is compared with lax in float64 instead, since lax's float32 sums
   round too (`_errors`), and a candidate may then be off by lax's own error plus its tolerance;
3. interleaved rounds time each candidate in turn (one call to warm it, then calls filling
   `ROUND_S`: `_default_timer`), for at least `MIN_ROUNDS` rounds, then while another round fits in
   the time budget (`budget()`, default 2 s of timing per geometry, after its compiles), up to
   `MAX_ROUNDS`; lax is timed in every round, and of the others, after the first round a candidate
   more than `PRUNE` times slower than the fastest is not timed again, and after `MIN_ROUNDS` one
   whose median is more than `CONTEND` times the fastest median, so that the rounds left go to the
   candidates the decision is between;
4. the medians, errors and costs go to the on-disk cache (`jaxconv._cache`);
5. `tune`, an `autotune()` block and `jaxconv tune` measure every geometry they met once more
   after all of them (`confirm`, `PASSES`), and each candidate keeps the lesser of its medians: a
   slowdown of the shared machine that spans one measurement is unlikely to span both;
6. a layer's kernel gradient whose candidates share work with its forward's
   (`Algorithm.shares_with`: a Winograd-domain kernel gradient needs the transformed input of
   the forward by the same tile) is measured once more with the forward, measured before it: the
   two as `auto` would choose them alone, and the sharing pair, each a program computing both
   (`_pairing`). Alone, each may be slower than lax; together, XLA makes the shared array once.

The decision (`decide`) reads a cached entry: the fastest admissible candidate (of those within
`TIE` of it, the first in registry order, so the more accurate), provided it beats lax by
`MARGIN`, so that noise does not flip choices; otherwise lax. A pair measured faster together by
`MARGIN` (in three rounds of four) decides the forward and the kernel gradient instead, the
forward also where it runs without its gradient. Admissible: its error is within
tolerance, and with `set_nonfinite("exact")` only exact algorithms count.

Tuning is off by default, and `auto` then uses cached measurements where it has them and its
heuristic elsewhere. It is turned on by `set_autotune(True)`, the `autotune()` context manager or
decorator, or ``JAXCONV_AUTOTUNE=1``; then the first trace of an unseen geometry measures it. The
setting is a jit-cache-sensitive JAX user context, so a function jitted outside `autotune()` is
traced again inside it; and when a block or `tune` has measured something new, the context's
generation advances, so functions traced earlier on the heuristic are traced again on their next
call and pick the measurements up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _cache
from jaxconv._geometry import ConvGeometry
from jaxconv._host_memory import host_memory_kept
from jaxconv._lax import LAX
from jaxconv._registry import REGISTRY

__all__ = [
  "MARGIN",
  "TuneTable",
  "Tuned",
  "admissible",
  "autotune",
  "autotune_enabled",
  "budget",
  "decide",
  "lookup",
  "measure",
  "rel_error",
  "set_autotune",
  "tune",
  "variant_of",
]

MARGIN = 1.04  # a candidate must beat lax by 4% to replace it
TIE = 1.02  # candidates this close to the fastest count as equally fast
# Many short rounds: on a shared machine a burst of noise then hits one round of every candidate,
# not all the rounds of one (measured: with few 20 ms rounds a candidate's median moved 2-3x
# between runs of the same geometry). A single call of a 20 ms convolution varied 18-37 ms between
# rounds (ResNet-50's 7x7x512 layer, lax): with the three rounds a budget shared with the compiles
# left, its median came out 1.5-2.7x too slow and `auto` ran the layer's input gradient by an
# algorithm slower than lax; hence a budget for timing alone, spent on the contenders.
MIN_ROUNDS = 3
MAX_ROUNDS = 60
ROUND_S = 0.005  # seconds of calls per candidate and round: short rounds, many of them
PRUNE = 3.0  # after the first round, candidates (not lax) this much slower than the fastest stop
CONTEND = 1.25  # after MIN_ROUNDS, candidates (not lax) this much over the fastest median stop
# XLA:CPU gives each run of a program its temporaries as one fresh allocation; above glibc's 32 MiB
# mmap limit, as a model's training step's are, every page of it faults in again on every run (a
# ResNet-50 14x14x256 layer's step: 38.9 MB, 9,600 faults and 10-13 ms more per run). A candidate
# measured alone keeps its smaller temporaries in the heap, so on CPU `decide` charges each one its
# temporaries at the rate of writes to fresh memory (`jaxconv bench` measures it: 6.3 GB/s here).
# Measured on bench/train_model.py's models, tuned with and without the charge, interleaved: the
# ResNet's step 1.24x lax with it and 1.20x without, the U-Net's 3.52x and 3.61x. A process that
# keeps its temporaries in the heap (`keep_host_memory`) does not pay it and is not charged.
FRESH_BYTES_RATE = 6e9
_DEFAULT_BUDGET_S = 2.0
# Measurements `tune` and `jaxconv tune` take of each geometry, a whole batch apart (`confirm`).
PASSES = 2

Timer = Callable[[str, Callable[[], Any]], float]
"""(candidate label, a call) -> seconds per call: how one round times one candidate."""


def budget() -> float:
  """Seconds the tuner may time one geometry for, compiles aside (``JAXCONV_TUNE_BUDGET``)."""
  return float(os.environ.get("JAXCONV_TUNE_BUDGET", _DEFAULT_BUDGET_S))


def passes() -> int:
  """Measurements of each geometry `tune` takes, a batch apart (``JAXCONV_TUNE_PASSES``)."""
  return max(1, int(os.environ.get("JAXCONV_TUNE_PASSES", PASSES)))


# The switch. -----------------------------------------------------------------------------------

_env_on = os.environ.get("JAXCONV_AUTOTUNE", "").strip().lower() in ("1", "true", "yes", "on")
# (enabled, generation[, tune token]): part of every jit cache key.
_state = jax.make_user_context((_env_on, 0))
_generation_lock = threading.Lock()
_tokens = itertools.count(1)
_measurements = 0  # geometries measured by this process (for "did this block measure anything")


def autotune_enabled() -> bool:
  """True when an unseen geometry is measured at its first trace."""
  return bool(_state.value[0])


def _advance() -> None:
  """Makes functions traced before new measurements trace again (they may now choose better)."""
  with _generation_lock:
    enabled, generation = _state.get_global()[:2]
    _state.set_global((enabled, generation + 1))


def set_autotune(enabled: bool) -> bool:
  """Turns measuring unseen geometries at trace time on or off; returns the previous setting.

  The default is off, or on when the environment variable ``JAXCONV_AUTOTUNE`` is 1. Inside an
  `autotune()` block the block's setting wins.

  Example:
    >>> import jaxconv
    >>> old = jaxconv.set_autotune(False)
    >>> jaxconv.set_autotune(old)
    False
  """
  if not isinstance(enabled, bool):
    raise TypeError(f"`enabled` must be a bool, got {enabled!r}.")
  with _generation_lock:
    old, generation = _state.get_global()[:2]
    _state.set_global((enabled, generation + 1))
  return bool(old)


@contextlib.contextmanager
def autotune(enabled: bool = True) -> Iterator[None]:
  """Measures unseen geometries traced inside the block (a context manager and a decorator).

  Functions jitted outside the block are traced again inside it. At the end of the block each
  geometry it measured is measured again (`confirm`), and functions traced earlier are traced
  again on their next call, so they pick the measurements up.

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> with jaxconv.autotune():
    ...   y = jaxconv.conv_general_dilated(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)),
    ...                                    (1, 1), "VALID", dimension_numbers=dn)
    >>> y.shape
    (1, 2, 2, 1)
  """
  before = _measurements
  with recording() as measured, _state((bool(enabled), *_state.value[1:])):
    yield
  confirm(measured)
  if _measurements != before:
    _advance()


# Measuring. ------------------------------------------------------------------------------------


def _device() -> jax.Device:
  return jax.devices()[0]


def _store() -> _cache.Store:
  device = _device()
  return _cache.store(device.platform, device.device_kind)


def lookup(g: ConvGeometry) -> dict | None:
  """The cached measurement of `g` on the default device, or None."""
  return _store().get(g.key())


def _random(shape: Sequence[int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
  dtype = np.dtype(dtype)
  if dtype == np.bool_:
    return rng.random(shape) < 0.5
  if np.issubdtype(dtype, np.integer):
    return rng.integers(-3, 4, shape).astype(dtype)
  x = rng.standard_normal(shape)
  if np.issubdtype(dtype, np.complexfloating):
    x = x + 1j * rng.standard_normal(shape)
  return x.astype(dtype)


def rel_error(y: Any, ref: np.ndarray) -> float:
  """Normwise relative error ``||y - ref|| / ||ref||`` in double precision.

  Example:
    >>> rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    0.0
  """
  y = np.asarray(y, dtype=np.complex128 if np.iscomplexobj(ref) else np.float64)
  ref = np.asarray(ref, dtype=y.dtype)
  den = np.linalg.norm(ref.ravel())
  num = np.linalg.norm((y - ref).ravel())
  if den == 0:
    return 0.0 if num == 0 else float("inf")
  return float(num / den)


def _default_timer(label: str, call: Callable[[], Any]) -> float:
  """Seconds per call, warm: one call waited for and not counted, then as many as fill `ROUND_S`
  (at least one), dispatched back to back.

  The first call after another candidate's runs cold, on caches, thread pools and clock speeds
  that candidate left: lax's convolution of a 32x8x8x128 input by a 3x3x128x256 kernel at stride
  2 took 1.5-1.6 ms per call back to back and 5.8-7.3 ms as the first call of a round. Timing that
  call alone for the candidates slower than `ROUND_S`, and the warm ones after it for the faster,
  made lax's median up to 4x too slow: in five of eight measurements of that geometry `auto`
  picked a candidate 1.2-1.5x slower than lax (bench/tune_repeat.py).
  Waiting for each short call would add the host's round trip to every one: on a GPU about 0.2 ms,
  more than some whole convolutions take there, which buries the differences between candidates.
  """
  del label
  start = time.perf_counter()
  jax.block_until_ready(call())
  n = max(1, int(ROUND_S / max(time.perf_counter() - start, 1e-6)))
  start = time.perf_counter()
  for _ in range(n):
    out = call()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / n


def _compile_workers(platform: str, n: int) -> int:
  """Candidates compiled at once: a few on CPU, one elsewhere.

  XLA compiles release the GIL, so on CPU a small pool saves wall time. XLA's GPU compiler picks
  each convolution's and GEMM's kernel by timing the choices on the device, where concurrent
  compiles would time each other's. (On an H200, tuning with four at once, XLA warned that its
  timings had "sub-optimal accuracy" and the tuner timed cuDNN's ResNet-50 56x56x64 convolution at
  1.75 ms, which `jaxconv bench`, compiling one at a time, timed at 0.09 ms.)
  """
  return min(4, n) if platform == "cpu" else 1


def candidates(g: ConvGeometry) -> list[tuple[str, Any, Any]]:
  """(label, algorithm, variant) of everything that can compute `g`, lax first."""
  out = []
  for a in REGISTRY:
    if a.cannot(g) is None:
      out.extend((a.label(v), a, v) for v in a.variants(g))
  return out


def _labelled(g: ConvGeometry) -> dict[str, tuple[Any, Any]]:
  """The algorithm and variant behind each candidate label for `g` (as `candidates` names them)."""
  return {label: (a, v) for label, a, v in candidates(g)}


def variant_of(g: ConvGeometry, label: str) -> tuple[Any, Any]:
  """The algorithm and variant behind a candidate's label for `g`.

  Not `forced(label)`: a variant's label need not be a name `algorithm=` takes (Winograd's tiles
  on a 1x1 kernel are "winograd1").
  """
  return _labelled(g)[label]


def _as_it_runs(g: ConvGeometry, run: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`run(x, w)` as `auto` will run it: on the reversed kernel where `g` has one."""
  if not g.reversed_kernel:
    return run
  spatial = g.dimension_numbers.rhs_spec[2:]
  return lambda x, w: run(x, lax.rev(w, spatial))


_measure_lock = threading.RLock()  # one measurement at a time: two would time each other
# Where `recording` collects the geometries `measure` stores, in the order it measures them.
_recorded: contextvars.ContextVar[list | None] = contextvars.ContextVar(
  "jaxconv_tune_recorded", default=None
)


def measure(g: ConvGeometry, *, timer: Timer | None = None, store: bool = True) -> dict:
  """Measures every candidate for `g` and caches the result.

  Args:
    g: the geometry.
    timer: how a round times one candidate (tests pass a deterministic one); by default
      `_default_timer`.
    store: write the result to the cache.

  Returns:
    The cache entry: ``times`` (median seconds per call) and ``errors`` (normwise relative
    difference from lax's result, or from lax in float64 where ``reference`` is "float64"; see
    `_errors`) per candidate label, ``rounds``, ``compile_s`` and ``tuned_s``.
  """
  global _measurements
  timer = timer or _default_timer
  with _measure_lock, jax.ensure_compile_time_eval():
    start = time.perf_counter()
    device = _device()
    rng = np.random.default_rng(0)
    args = [jax.device_put(_random(s, g.dtype, rng), device) for s in (g.lhs_shape, g.rhs_shape)]
    cands = candidates(g)
    # A candidate that runs `auto` on other geometries (sub-pixel phases, a pixel shuffle's stacked
    # convolution) is timed as it will run: those are measured first (the lock is re-entrant).
    from jaxconv._select import measurable  # which reads this module

    for _, a, v in cands:
      for sub in a.nested(g, v):
        if lookup(sub) is None and measurable(sub):
          measure(sub)

    def compile_one(cand):
      _, a, v = cand
      run = _as_it_runs(g, functools.partial(a.run, g=g, variant=v))
      return jax.jit(run).lower(*args).compile()

    workers = _compile_workers(device.platform, len(cands))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      compiled = dict(zip((c[0] for c in cands), pool.map(compile_one, cands)))
    compile_s = time.perf_counter() - start
    temp_bytes = {label: _temp_bytes(f) for label, f in compiled.items()}
    outputs = {label: jax.block_until_ready(f(*args)) for label, f in compiled.items()}
    errors, reference = _errors(g, cands, args, outputs)
    del outputs
    samples: dict[str, list[float]] = {label: [] for label in compiled}
    alive = list(compiled)
    rounds, last, timing_start = 0, 0.0, time.perf_counter()
    # After MIN_ROUNDS, another round only if it fits in the budget (as long as the last one).
    while rounds < MAX_ROUNDS and (
      rounds < MIN_ROUNDS or time.perf_counter() - timing_start + last <= budget()
    ):
      round_start = time.perf_counter()
      for label in alive:
        samples[label].append(timer(label, functools.partial(compiled[label], *args)))
      rounds, last = rounds + 1, time.perf_counter() - round_start
      if rounds == 1:
        fastest = min(samples[label][0] for label in alive)
        # Not lax: every decision is a ratio to its median, which one round does not settle.
        alive = [c for c in alive if c == "lax" or samples[c][0] <= PRUNE * fastest]
      elif rounds >= MIN_ROUNDS:
        medians = {label: np.median(samples[label]) for label in alive}
        fastest = min(medians.values())
        # Not lax here: every decision is a ratio to its median.
        alive = [c for c in alive if c == "lax" or medians[c] <= CONTEND * fastest]
    entry = {
      "times": {label: float(np.median(t)) for label, t in samples.items()},
      "errors": errors,
      "reference": reference,
      "temp_bytes": temp_bytes,
      "backend": device.platform,
      "rounds": rounds,
      "compile_s": round(compile_s, 4),
      "tuned_s": round(time.perf_counter() - start, 4),
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    paired = _pairing(g, entry, cands, args, timer)
    if paired is not None:
      entry["paired"] = paired
    _measurements += 1
  if store:
    _store().put(g.key(), entry)
    if (recorded := _recorded.get()) is not None:
      recorded.append(g)
  return entry


def _pairing(
  g: ConvGeometry, entry: dict, cands: list[tuple[str, Any, Any]], args: list, timer: Timer
) -> dict | None:
  """Times the kernel gradient `g` with its forward layer where their candidates share work.

  The forward must have been measured, and `g` must be its kernel gradient as reverse mode
  states it. Of the sharing pairs, the one whose times alone add up to least is timed against
  the two choices `decide` makes alone, each pair as one program computing the forward's result
  and then the kernel gradient from the layer's input, kernel and output gradient, in interleaved
  rounds (at least `MIN_ROUNDS`, then within `budget()`).

  Returns:
    ``{"label", "forward", "gain", "instead_of"}`` where the pair was `MARGIN` faster at the
    median of the per-round ratios and faster in three rounds of four; otherwise None.
  """
  from jaxconv._autodiff import kernel_gradient_geometry  # which reads the registry

  shared = [(label, s) for label, a, v in cands if (s := a.shares_with(g, v)) is not None]
  if not shared:
    return None
  fwd = shared[0][1][0]
  fwd_entry = lookup(fwd)
  if fwd_entry is None or kernel_gradient_geometry(fwd) != g:
    return None
  fwd_labels, labels = list(fwd_entry["times"]), list(entry["times"])
  t_f = {label: t for t, label in admissible(fwd, fwd_entry, fwd_labels)[1]}
  t_k = {label: t for t, label in admissible(g, entry, labels)[1]}
  both = [(t_f[f] + t_k[k], k, f) for k, (_, f) in shared if k in t_k and f in t_f]
  if not both:
    return None
  _, label, fwd_label = min(both)
  alone = (
    decide(fwd, fwd_entry, fwd_labels, paired=False)[0],
    decide(g, entry, labels, paired=False)[0],
  )
  if alone == (fwd_label, label):
    return None  # the pair is what runs anyway
  x, dy = args
  w = jax.device_put(_random(fwd.rhs_shape, fwd.dtype, np.random.default_rng(1)), x.device)

  def program(f_label: str, k_label: str) -> Callable[[], Any]:
    (fa, fv), (ka, kv) = variant_of(fwd, f_label), variant_of(g, k_label)
    run_f = _as_it_runs(fwd, functools.partial(fa.run, g=fwd, variant=fv))
    run_k = _as_it_runs(g, functools.partial(ka.run, g=g, variant=kv))

    def step(x: jax.Array, w: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
      # The kernel gradient after the forward, as in a model's step, where the output gradient
      # comes from the forward's result: not beside it on other cores.
      y, dy = lax.optimization_barrier((run_f(x, w), dy))
      return y, run_k(x, dy)

    return functools.partial(jax.jit(step).lower(x, w, dy).compile(), x, w, dy)

  calls = {"alone": program(*alone), "paired": program(fwd_label, label)}
  samples: dict[str, list[float]] = {name: [] for name in calls}
  rounds, last, start = 0, 0.0, time.perf_counter()
  while rounds < MAX_ROUNDS and (
    rounds < MIN_ROUNDS or time.perf_counter() - start + last <= budget()
  ):
    round_start = time.perf_counter()
    for name, call in calls.items():
      samples[name].append(timer(f"{name} with the forward", call))
    rounds, last = rounds + 1, time.perf_counter() - round_start
  ratios = np.asarray(samples["alone"]) / np.asarray(samples["paired"])
  gain, first_quartile = float(np.median(ratios)), float(np.percentile(ratios, 25))
  if gain < MARGIN or first_quartile <= 1.0:
    return None
  return {"label": label, "forward": fwd_label, "gain": round(gain, 4), "instead_of": list(alone)}


def _paired_choice(g: ConvGeometry, entry: dict, allowed: Sequence[str]) -> tuple[str, str] | None:
  """What a pair measured by `_pairing` decides for `g`, a kernel gradient or its forward."""
  from jaxconv._autodiff import kernel_gradient_geometry  # which reads the registry

  pair, mine, partner = entry.get("paired"), "label", "forward"
  if pair is None:  # `g` as the forward of a measured kernel gradient
    gk = kernel_gradient_geometry(g)
    pair = (lookup(gk) or {}).get("paired") if gk is not None else None
    mine, partner = partner, mine
  if pair is None or pair[mine] not in allowed:
    return None
  return pair[mine], (
    f"measured with the layer's {'forward' if mine == 'label' else 'kernel gradient'} by "
    f"{pair[partner]}, which shares its work: {pair['gain']:.2f}x faster together than "
    f"{' and '.join(pair['instead_of'])}"
  )


@contextlib.contextmanager
def _listing(var: contextvars.ContextVar[list | None]) -> Iterator[list]:
  """A fresh list in `var` for the block: what is appended to it there."""
  items: list = []
  token = var.set(items)
  try:
    yield items
  finally:
    var.reset(token)


def recording() -> contextlib.AbstractContextManager[list[ConvGeometry]]:
  """Collects the geometries measured and stored inside the block (nested ones first)."""
  return _listing(_recorded)


def confirm(geometries: Sequence[ConvGeometry], *, timer: Timer | None = None) -> None:
  """Measures each geometry again, `passes()` - 1 times, keeping each candidate's least median.

  On a shared machine a slowdown can last seconds, longer than a geometry's rounds, and it slows
  the candidates unevenly: memory-bound transforms more than a compute-bound GEMM. In one
  process on the 2-core AMD EPYC, the kernel gradient of ResNet-50's 14x14x256 layer measured
  wgrad4 at 12.6 ms and lax at 11.8 ms (lax chosen) in one `jaxconv tune` run, and 5.8-6.6 ms
  against 9.7-10.5 ms in six measurements minutes later. Noise only adds time, so measured again
  a whole batch later, after every other geometry, a candidate keeps the lesser of its medians.
  Geometries are confirmed in the order given, nested ones before those that run them.
  """
  for _ in range(passes() - 1):
    for g in geometries:
      first = lookup(g)
      again = measure(g, timer=timer, store=False)
      if first is not None:
        labels = again["times"].keys() | first["times"].keys()
        inf = float("inf")
        again = {
          **again,
          "times": {c: min(first["times"].get(c, inf), again["times"].get(c, inf)) for c in labels},
          "rounds": first["rounds"] + again["rounds"],
          "compile_s": round(first["compile_s"] + again["compile_s"], 4),
          "tuned_s": round(first["tuned_s"] + again["tuned_s"], 4),
        }
      _store().put(g.key(), again)


def _errors(
  g: ConvGeometry, cands: list[tuple[str, Any, Any]], args: list[jax.Array], outputs: dict
) -> tuple[dict[str, float], str]:
  """Each candidate's normwise relative error, and what it was measured against.

  Against lax's result first, which costs nothing more. Where a candidate differs from it by more
  than its tolerance, lax's own rounding may be the cause: a long channel sum (a kernel gradient's
  sum over examples and positions) rounds in lax as well, and at ResNet-50's 56x56x64 kernel
  gradient lax's float32 result was 2.8e-6 from the float64 one while im2col's was 4.2e-7 and
  F(2,3)'s 4.4e-7, so both differed from lax by more than their tolerances. Then every error,
  lax's included, is measured against lax in float64 instead (`decide` allows lax's own error on
  top of the tolerance), where the dtype has a wider kind.
  """
  ref = np.asarray(outputs["lax"])
  errors = {label: rel_error(y, ref) for label, y in outputs.items()}
  over = any(errors[label] > a.tolerance(g, v) for label, a, v in cands if label != "lax")
  if not over or not jnp.issubdtype(g.dtype, jnp.inexact) or jnp.finfo(g.dtype).bits >= 64:
    return errors, "lax"
  wide = np.complex128 if jnp.issubdtype(g.dtype, jnp.complexfloating) else np.float64
  wide_g = dataclasses.replace(g, precision=lax.Precision.HIGHEST, preferred_element_type=None)
  conv = _as_it_runs(g, lambda x, w: LAX.run(x, w, wide_g, None))

  # On the device measured, unless it has no float64 convolution (a TPU): then on the host.
  device = args[0].device if args[0].device.platform in ("cpu", "gpu") else jax.devices("cpu")[0]
  with jax.enable_x64(True):
    x, w = (jax.device_put(np.asarray(a).astype(wide), device) for a in args)
    ref = np.asarray(jax.jit(conv)(x, w))
  return {label: rel_error(y, ref) for label, y in outputs.items()}, "float64"


def _temp_bytes(compiled: Any) -> int:
  """The compiled program's temporary buffers in bytes (0 where XLA does not say)."""
  try:
    return int(compiled.memory_analysis().temp_size_in_bytes)
  except (AttributeError, NotImplementedError, TypeError, ValueError):
    return 0


# `refine`'s trial choices, {geometry: label}, while it traces the function with them.
_trial: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
  "jaxconv_tune_trial", default=None
)


def admissible(
  g: ConvGeometry, entry: dict, allowed: Sequence[str]
) -> tuple[dict[str, float], list[tuple[float, str]], list[str]]:
  """The times `decide` compares, the (time, label) of each admissible candidate but lax, in
  `allowed`'s order, and a note on each dropped for accuracy."""
  times, errors = dict(entry["times"]), entry["errors"]
  # Against float64 (`_errors`), a candidate may be as far off as lax plus its tolerance.
  slack = errors["lax"] if entry.get("reference") == "float64" else 0.0
  if entry.get("backend", "cpu") == "cpu" and not host_memory_kept():
    # temporaries fault in afresh in a large program
    for label, nbytes in entry.get("temp_bytes", {}).items():
      if label in times:
        times[label] += nbytes / FRESH_BYTES_RATE
  ok, dropped = [], []
  by_label = _labelled(g)
  for label in allowed:
    if label not in times or label == "lax":
      continue
    a, variant = by_label[label]
    tol = a.tolerance(g, variant)
    if errors.get(label, float("inf")) > slack + tol:
      dropped.append(f"{label} (error {errors.get(label, float('nan')):.1e} > {slack + tol:.1e})")
    else:
      ok.append((times[label], label))
  return times, ok, dropped


def decide(
  g: ConvGeometry, entry: dict, allowed: Sequence[str], *, paired: bool = True
) -> tuple[str, str]:
  """The label to run from a measurement, and the reason; lax unless a candidate beats it.

  A choice `refine` measured in a whole function (the entry's ``in_context``) comes first, then,
  where `paired`, a pair `_pairing` measured with the layer's forward or kernel gradient.

  Args:
    g: the geometry measured.
    entry: its cache entry (`measure`).
    allowed: the candidate labels `auto` may pick (lax is always allowed).
    paired: whether to follow a measured pair.
  """
  if (trial := _trial.get()) is not None and trial.get(g) in (*allowed, "lax"):
    return trial[g], "a trial of `refine`"
  kept = entry.get("in_context")
  if kept is not None and kept["label"] in (*allowed, "lax"):
    return kept["label"], (
      f"measured in a whole function (`refine`): {kept['gain']:.2f}x faster there than "
      f"{kept['instead_of']}"
    )
  if paired and (choice := _paired_choice(g, entry, allowed)) is not None:
    return choice
  times, ok, dropped = admissible(g, entry, allowed)
  lax_t = times["lax"]
  summary = ", ".join(f"{label} {t * 1e3:.3g} ms" for label, t in sorted(times.items()))
  note = f"; dropped for accuracy: {', '.join(dropped)}" if dropped else ""
  if ok:
    # Among candidates within TIE of the fastest, the first in registry order: exact algorithms
    # before Winograd, smaller (more accurate) tiles before larger ones.
    fastest = min(t for t, _ in ok)
    best_t, best = next((t, label) for t, label in ok if t <= TIE * fastest)
    if lax_t / best_t >= MARGIN:
      return best, f"measured {lax_t / best_t:.2f}x faster than lax ({summary}){note}"
    return "lax", (
      f"measured: the fastest alternative, {best}, is within {MARGIN:.2f}x of lax ({summary}){note}"
    )
  return "lax", f"measured: no admissible alternative to lax ({summary}){note}"


# tune(fn, ...). --------------------------------------------------------------------------------

_collector: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
  "jaxconv_tune_collector", default=None
)


_planned: contextvars.ContextVar[list | None] = contextvars.ContextVar(
  "jaxconv_tune_planned", default=None
)


def collect(g: ConvGeometry, requested: str, plan: Any, local: ConvGeometry | None = None) -> None:
  """Records a convolution `choose` planned (with what one device computes), when `tune` traces,
  and inside `planned`."""
  seen = _collector.get()
  if seen is not None:
    seen.setdefault((g, requested), (plan, local))
  if (plans := _planned.get()) is not None:
    plans.append(plan)


def planned() -> contextlib.AbstractContextManager[list[Any]]:
  """Every plan `choose` makes inside the block, in order, repeats included.

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> f = lambda x, w: jaxconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    >>> with planned() as plans:
    ...   _ = jax.eval_shape(f, jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4)))
    >>> [p.algorithm for p in plans]
    ['lax']
  """
  return _listing(_planned)


@dataclasses.dataclass(frozen=True)
class Tuned:
  """One convolution `tune` found.

  Attributes:
    geometry: the normalised convolution.
    requested: the `algorithm` it was called with ("auto" unless forced).
    algorithm: what runs (a label such as "lax", "im2col" or "winograd4").
    reason: why.
    times: median seconds per candidate label, when measured; else None.
  """

  geometry: ConvGeometry
  requested: str
  algorithm: str
  reason: str
  times: dict[str, float] | None

  @property
  def speedup(self) -> float | None:
    """lax's time over the chosen candidate's, when measured."""
    if not self.times or self.algorithm not in self.times:
      return None
    return self.times["lax"] / self.times[self.algorithm]


class TuneTable(list):
  """The convolutions of a function, as `tune` found them: a list of `Tuned`, printable.

  Attributes:
    summary: a line printed under the rows (`refine` says there what it changed).
  """

  summary: str = ""

  def __str__(self) -> str:
    rows = [["convolution", "algorithm", "lax ms", "chosen ms", "speedup", "candidates"]]
    for t in self:
      times = t.times or {}
      lax_ms = f"{times['lax'] * 1e3:.3f}" if "lax" in times else "-"
      chosen = times.get(t.algorithm)
      rows.append(
        [
          t.geometry.describe(),
          t.algorithm + ("" if t.requested == "auto" else " (forced)"),
          lax_ms,
          "-" if chosen is None else f"{chosen * 1e3:.3f}",
          "-" if t.speedup is None else f"{t.speedup:.2f}x",
          ", ".join(f"{k} {v * 1e3:.3g}" for k, v in sorted(times.items())) or t.reason,
        ]
      )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return text + (f"\n{self.summary}" if self.summary else "")


def tune(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> TuneTable:
  """Traces ``fn(*args, **kwargs)`` once and measures every jaxconv convolution in it.

  Convolutions reached through `jaxconv.conv_general_dilated`, `ConvGeneralDilated`, the Flax
  helpers and `jaxconv.use` blocks are found, and so are the backward convolutions when `fn`
  takes gradients of them. Unseen geometries are measured and cached; nothing is computed
  otherwise (`fn` is traced abstractly, as by `jax.eval_shape`). Functions traced before are traced
  again on their next call, with the measurements.

  Returns:
    A `TuneTable`: one `Tuned` row per distinct convolution, in the order they were traced.

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> f = lambda x, w: jaxconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    >>> table = jaxconv.tune(f, jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4)))
    >>> len(table), table[0].algorithm, table[0].reason[:10]  # too small to be worth measuring
    (1, 'lax', 'it is tiny')
  """
  seen, measured = _trace(fn, args, kwargs, enabled=True)
  confirm(measured)
  _advance()
  return table_of(seen, replan=bool(measured))


def _trace(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict, *, enabled: bool):
  """Traces ``fn(*args, **kwargs)`` abstractly with autotuning `enabled`.

  Returns:
    {(geometry, requested algorithm): (plan, geometry one device computes)} of every convolution
    planned, in trace order, and the geometries measured while tracing.
  """
  seen: dict = {}
  token = _collector.set(seen)
  try:
    # A fresh context value: jitted functions inside `fn` miss their caches and trace again.
    with recording() as measured, _state((enabled, _state.value[1], f"tune-{next(_tokens)}")):
      jax.eval_shape(functools.partial(fn, **kwargs), *args)
  finally:
    _collector.reset(token)
  return seen, measured


def table_of(seen: dict, *, replan: bool) -> TuneTable:
  """`_trace`'s convolutions as a table; `replan`: choose again (measurements changed since)."""
  from jaxconv._select import choose  # which reads this module

  table = TuneTable()
  for (g, requested), (plan, local) in seen.items():
    if replan:
      plan = choose(g, requested, measure=False, local=local)
    entry = lookup(g)
    table.append(
      Tuned(
        geometry=g,
        requested=requested,
        algorithm=plan.label,
        reason=plan.reason,
        times=None if entry is None else dict(entry["times"]),
      )
    )
  return table
