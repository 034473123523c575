"""`refine`: each convolution's algorithm chosen by timing the whole function it runs in.

`tune` measures every convolution alone. In a whole program XLA:CPU runs independent operations at
the same time (a residual block's projection beside its main branch), and a convolution shares
the cores and caches with them, so the candidate fastest alone is not always the fastest in place.
Measured on bench/train_model.py's ResNet for 32x32 images, with YNNPACK's fusions off, on a
2-core AMD EPYC: its 32x32x32 -> 32 layers' forward, F(4,3) at 6.06 ms against lax's 9.97 in a
training step of the layer alone, made the whole step 1.05x slower than lax did, and its three
1x1 stride-2 projections, each faster than lax alone, made it 1.06x slower together.

`refine(fn, *args)`:

1. tunes `fn` (`tune`), so that every convolution in it has a measurement;
2. for each distinct convolution `auto` runs in it, takes as alternatives lax and the fastest
   other admissible candidate whose time alone is within `WITHIN` of the chosen one's;
3. compiles `fn` as chosen, and once per alternative with that one change, as many at a time as
   `tune` compiles at once (two on a 2-core CPU), and frees each batch once it is timed;
4. times each such program against the chosen one in `ROUNDS` interleaved rounds of one call each
   (after one uncounted call: the first after another program runs cold, `jaxconv._timing`),
   and keeps the changes that made `fn` at least `GAIN` faster (the median of the per-round
   ratios, `_timing.round_ratios`) and faster in three rounds of four (their first quartile);
5. when it keeps more than one, times them all together against the chosen program and the best
   single change, and keeps them all only if together they are the fastest, else the best one;
6. writes each kept choice to its geometry's cache entry (``in_context``), which `auto` follows
   from then on in every function, until the geometry is measured again.

Train in a fresh process after refining, which finds the choices in the cache: in the process
that refined, the same compiled step has run slower afterwards, with no more page faults and the
same threads (bench/train_model.py's U-Net, YNNPACK off: 70 ms -> 150 ms when every trial program
was alive at once, 79 ms -> 102 ms with two at a time; lax's ResNet step 208 ms -> 498 ms). Timed
again around a refine of the U-Net's step, two trial programs at a time, lax's U-Net step went
from 281.8 ms to 290.0 ms under default flags and from 267.1 ms to 289.7 ms with YNNPACK off
(1.03x and 1.08x slower); neither `tune` nor 80 compiles of convolution gradients slowed lax's
ResNet step (docs/benchmarks-epyc/refine-aftereffect.txt). The cause of the larger slowdowns is
not known.

One change at a time, against the same program: a handful of convolutions out of dozens seldom
interact, and the combination is timed before it is kept. Every program compiled is `fn` itself,
so the arguments must be arrays (as for a call of a jitted `fn`); `fn` runs about
``2 * ROUNDS + 1`` times per alternative.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxconv import _timing, _tune
from jaxconv._geometry import ConvGeometry

__all__ = ["GAIN", "ROUNDS", "WITHIN", "refine"]

ROUNDS = 7  # interleaved rounds per comparison: one timed call of each program per round
GAIN = 1.02  # a change must make the whole function 2% faster to be kept
WITHIN = 1.5  # alternatives: lax, and the fastest other candidate within 1.5x of the choice alone


def _alternatives(local: ConvGeometry, chosen: str) -> list[str]:
  """What to try in place of `chosen` for a convolution computing `local` on one device."""
  entry = _tune.lookup(local)
  if entry is None:
    return []
  times, ok, _ = _tune.admissible(local, entry, list(entry["times"]))
  alternatives = [] if chosen == "lax" else ["lax"]
  others = sorted((t, label) for t, label in ok if label != chosen)
  if others and others[0][0] <= WITHIN * times.get(chosen, times["lax"]):
    alternatives.append(others[0][1])
  return alternatives


def _lowered(fn: Callable[..., Any], args: tuple, trial: dict[ConvGeometry, str]) -> Any:
  """`fn` lowered with `trial`'s choices in place of `auto`'s, measuring nothing."""
  token = _tune._trial.set(trial)
  try:
    # A fresh context value: jitted functions inside `fn` trace again, with the trial's choices.
    with _tune._state((False, _tune._state.value[1], f"refine-{next(_tune._tokens)}")):
      return jax.jit(fn).lower(*args)
  finally:
    _tune._trial.reset(token)


def _compiled(fn: Callable[..., Any], args: tuple, trials: list[dict]) -> list[Callable[[], Any]]:
  """A blocking call of `fn` compiled with each trial's choices, each called once (warm)."""
  lowered = [_lowered(fn, args, t) for t in trials]
  workers = _tune._compile_workers(_tune._device().platform, len(lowered))
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    programs = list(pool.map(lambda low: low.compile(), lowered))
  calls = [functools.partial(lambda p: jax.block_until_ready(p(*args)), p) for p in programs]
  for call in calls:
    call()
  return calls


def _speedups(
  base: Callable[[], Any], others: dict[str, Callable[[], Any]]
) -> dict[str, tuple[float, float, float]]:
  """The quartiles of each of `others`' per-round speedups over `base`, all in the same rounds."""
  rounds = _timing.interleaved_call_rounds({"": base, **others}, rounds=ROUNDS, min_round_s=0.0)
  return {name: _timing.round_ratios(rounds[""], rounds[name]) for name in others}


def refine(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> _tune.TuneTable:
  """Tunes `fn`'s convolutions, then keeps the choices that make the whole of ``fn`` faster.

  Where `tune` times each convolution alone, `refine` then times ``fn(*args, **kwargs)`` itself
  with each convolution's alternatives in turn (see the module docstring), and records in the
  tuning cache the ones that made it at least `GAIN` faster; `auto` follows them from then on.
  It takes minutes for a model's training step, and a choice kept holds for its geometry in every
  function: refine the function that matters most, then train in a new process (see the module
  docstring).

  Args:
    fn: the function, typically a training step.
    *args: its arguments, arrays (it is compiled and run).
    **kwargs: its keyword arguments, fixed while it is compiled.

  Returns:
    A `TuneTable` of `fn`'s convolutions as they now run; its ``summary`` says what changed and
    how much faster `fn` ran in the rounds that decided it.

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> f = lambda x, w: jaxconv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    >>> table = jaxconv.refine(f, jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4)))
    >>> table.summary  # a tiny convolution: nothing measured, nothing to try
    'refine: nothing to try (no measured convolution runs by auto)'
  """
  fn = functools.partial(fn, **kwargs)
  _tune.tune(fn, *args)
  seen, _ = _tune._trace(fn, args, {}, enabled=False)
  chosen = {local or g: plan.label for (g, requested), (plan, local) in seen.items()}
  # Each (geometry, alternative) once: a geometry met twice (two equal layers) is one choice.
  tries = list(
    dict.fromkeys(
      (local or g, label)
      for (g, requested), (plan, local) in seen.items()
      if requested == "auto"
      for label in _alternatives(local or g, plan.label)
    )
  )
  if not tries:
    table = _tune.table_of(seen, replan=False)
    table.summary = "refine: nothing to try (no measured convolution runs by auto)"
    return table

  (base,) = _compiled(fn, args, [{}])
  # A few programs alive at a time: with dozens of a model's training steps alive at once, the
  # same compiled step ran 2x slower in the process afterwards (a U-Net's, 70 ms -> 150 ms).
  quartiles = {}
  batch = _tune._compile_workers(_tune._device().platform, len(tries))
  for start in range(0, len(tries), batch):
    trials = [{g: label} for g, label in tries[start : start + batch]]
    calls = _compiled(fn, args, trials)
    timed = _speedups(base, {str(start + i): call for i, call in enumerate(calls)})
    quartiles.update(timed)
    del calls
  gains = {i: quartiles[str(i)][1] for i in range(len(tries))}
  # At least GAIN faster at the median, and faster in three rounds of four.
  ranked = sorted(
    ((gains[i], i) for i in gains if gains[i] >= GAIN and quartiles[str(i)][0] > 1.0),
    reverse=True,
  )
  kept = [i for _, i in ranked]
  overall = ranked[0][0] if ranked else 1.0
  if len(kept) > 1:
    together, best = _compiled(
      fn, args, [{tries[i][0]: tries[i][1] for i in kept}, dict([tries[kept[0]]])]
    )
    both = _speedups(base, {"best": best, "all": together})
    if both["all"][1] >= both["best"][1]:
      overall = both["all"][1]
    else:
      kept, overall = kept[:1], both["best"][1]
  store = _tune._store()
  for i in kept:
    g, label = tries[i]
    entry = dict(_tune.lookup(g))
    entry["in_context"] = {"label": label, "gain": round(gains[i], 4), "instead_of": chosen[g]}
    store.put(g.key(), entry)
  if kept:
    _tune._advance()
  table = _tune.table_of(seen, replan=True)
  table.summary = (
    f"refine: tried {len(tries)} alternatives for {len({g for g, _ in tries})} convolutions, "
    f"kept {len(kept)}; the function ran {overall:.2f}x as fast as tuned ({ROUNDS} rounds)"
  )
  return table
