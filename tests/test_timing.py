"""Side-by-side timing: the per-round times and the paired ratios the benchmarks report."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv._timing import (
  interleaved_call_rounds,
  interleaved_medians,
  interleaved_rounds,
  round_ratios,
)


def test_round_ratios_cancel_a_slow_spell_that_the_ratio_of_medians_does_not():
  # The machine halves its speed from the middle of round 3 on: lax (timed first) ran fast in that
  # round, the algorithm slow. Every round but that one says 2x.
  lax = [10.0, 10.0, 10.0, 20.0, 20.0]
  alg = [5.0, 5.0, 10.0, 10.0, 10.0]
  assert np.median(lax) / np.median(alg) == 1.0
  assert round_ratios(lax, alg) == (2.0, 2.0, 2.0)


def test_round_ratios_quartiles():
  lo, mid, hi = round_ratios([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
  assert (lo, mid, hi) == pytest.approx((1.75, 2.5, 3.25))
  assert round_ratios([3.0], [2.0]) == (1.5, 1.5, 1.5)


@pytest.mark.parametrize("other", [[1.0], []])
def test_round_ratios_needs_as_many_rounds(other):
  with pytest.raises(ValueError, match="as many rounds"):
    round_ratios([1.0, 2.0] if other else [], other)


def test_interleaved_rounds_and_their_medians():
  fns, args = [jnp.sin, jnp.cos, jnp.tanh], [jnp.ones(16)]
  rounds = interleaved_rounds(fns, args, rounds=4, min_round_s=0.001)
  assert len(rounds) == 3 and all(len(r) == 4 and min(r) > 0 for r in rounds)
  medians = interleaved_medians(fns, args, rounds=3, min_round_s=0.001)
  assert len(medians) == 3 and min(medians) > 0


@pytest.mark.parametrize("warm", [True, False])
def test_interleaved_call_rounds_call_each_in_turn(warm):
  order: list[str] = []
  calls = {name: (lambda name=name: order.append(name)) for name in "ab"}
  rounds = interleaved_call_rounds(calls, rounds=3, min_round_s=0.0, warm=warm)
  assert {k: len(v) for k, v in rounds.items()} == {"a": 3, "b": 3}
  # min_round_s = 0: one timed call per round, in turn, each after an uncounted one if warm
  assert order == (["a", "a", "b", "b"] if warm else ["a", "b"]) * 3


@pytest.mark.parametrize("warm", [True, False])
def test_interleaved_rounds_leave_out_each_rounds_first_call(warm):
  # `after` leaves the machine "cold": the next call of `sensitive` then takes 0.25 s more, far
  # beyond a warm call's time even on a busy machine.
  cold = [False]

  def chill(x):
    cold[0] = True

  def wait(x):
    if cold[0]:
      time.sleep(0.25)
    cold[0] = False

  def after(x):
    jax.debug.callback(chill, x)
    return x + 1

  def sensitive(x):
    jax.debug.callback(wait, x)
    return x * 2

  rounds = interleaved_rounds(
    [after, sensitive], [jnp.ones(4)], rounds=3, min_round_s=0.0, warm=warm
  )
  if warm:
    assert max(rounds[1]) < 0.25
  else:
    assert min(rounds[1]) >= 0.25
