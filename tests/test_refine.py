"""`refine`: choices kept by timing the whole function (deterministic times where it decides)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import _refine, _tune
from tests.test_tune import KW, FakeTimer, W, X


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("JAXCONV_TUNE_BUDGET", "0.3")
  monkeypatch.setenv("JAXCONV_TUNE_PASSES", "1")
  monkeypatch.setattr(_tune, "_default_timer", FakeTimer())


def _loss(x, w):
  return jnp.sum(jaxconv.conv_general_dilated(x, w, **KW) ** 2)


GRAD = jax.jit(jax.grad(_loss, argnums=(0, 1)))
ARGS = (
  jnp.asarray(np.random.default_rng(0).standard_normal(X.shape), np.float32),
  jnp.asarray(np.random.default_rng(1).standard_normal(W.shape), np.float32),
)


class _Program:
  """A stand-in for a compiled trial: remembers its choices, runs nothing."""

  def __init__(self, trial):
    self.trial = trial


def _quartiles(gain):
  """A speedup's quartiles: `gain` itself for each, where it is a number."""
  return gain if isinstance(gain, tuple) else (gain,) * 3


def _fake_timing(monkeypatch, gain_of):
  """Trials are not compiled; each one's speedup over the chosen program is gain_of(trial)."""
  compiled = []
  monkeypatch.setattr(
    _refine,
    "_compiled",
    lambda fn, args, trials: compiled.extend(trials) or list(map(_Program, trials)),
  )
  monkeypatch.setattr(
    _refine,
    "_speedups",
    lambda base, others: {k: _quartiles(gain_of(c.trial)) for k, c in others.items()},
  )
  return compiled


def _rows():
  """The forward, input gradient and kernel gradient of GRAD, tuned."""
  table = jaxconv.tune(GRAD, *ARGS)
  assert [t.algorithm for t in table] == ["winograd4", "lax", "winograd4"]
  fwd, wgrad, dgrad = (t.geometry for t in table)  # in trace order
  return fwd, dgrad, wgrad


def test_refine_keeps_the_changes_that_speed_up_the_whole_function(monkeypatch):
  fwd, dgrad, wgrad = _rows()
  gains = {(fwd, "winograd2"): 1.05, (dgrad, "lax"): 1.03}
  compiled = _fake_timing(
    monkeypatch, lambda trial: float(np.prod([gains.get(p, 0.97) for p in trial.items()]))
  )
  table = jaxconv.refine(GRAD, *ARGS)
  # The chosen program, then one change at a time, in trace order: lax and the runner-up alone
  # (winograd2, within WITHIN of winograd4) for the two Winograd convolutions; for the kernel
  # gradient on lax, im2col (0.99 against lax's 1.0 alone; the rest are 3x slower). Then the two
  # kept changes together, and the better one again beside them.
  assert compiled[0] == {}
  assert compiled[1:6] == [
    {fwd: "lax"},
    {fwd: "winograd2"},
    {wgrad: "im2col"},
    {dgrad: "lax"},
    {dgrad: "winograd2"},
  ]
  assert compiled[6:] == [{fwd: "winograd2", dgrad: "lax"}, {fwd: "winograd2"}]
  assert [t.algorithm for t in table] == ["winograd2", "lax", "lax"]  # trace order
  assert "measured in a whole function" in table[0].reason and "1.05x" in table[0].reason
  assert table.summary.startswith("refine: tried 5 alternatives for 3 convolutions, kept 2")
  assert "1.08x as fast as tuned" in str(table)
  assert _tune.lookup(fwd)["in_context"] == {
    "label": "winograd2",
    "gain": 1.05,
    "instead_of": "winograd4",
  }
  # auto follows the kept choices from now on, in any function.
  assert jaxconv.plan(*ARGS, **KW).label == "winograd2"


def test_refine_keeps_only_the_best_change_when_together_they_are_slower(monkeypatch):
  fwd, dgrad, _ = _rows()
  gains = {(fwd, "winograd2"): 1.05, (dgrad, "lax"): 1.03}
  _fake_timing(monkeypatch, lambda t: 1.0 if len(t) > 1 else gains.get(next(iter(t.items())), 0.9))
  table = jaxconv.refine(GRAD, *ARGS)
  assert [t.algorithm for t in table] == ["winograd2", "lax", "winograd4"]
  assert "kept 1;" in table.summary and "1.05x as fast" in table.summary
  assert "in_context" not in _tune.lookup(dgrad)


def test_refine_keeps_nothing_below_the_gain_and_measuring_again_forgets(monkeypatch):
  fwd, _, _ = _rows()
  # 1% faster at the median; then 10% faster at the median, but slower in one round of four.
  _fake_timing(monkeypatch, lambda trial: 1.01)
  table = jaxconv.refine(GRAD, *ARGS)
  assert "kept 0" in table.summary
  _fake_timing(monkeypatch, lambda trial: (0.99, 1.1, 1.2))
  table = jaxconv.refine(GRAD, *ARGS)
  assert [t.algorithm for t in table] == ["winograd4", "lax", "winograd4"]
  assert "kept 0" in table.summary
  _fake_timing(monkeypatch, lambda trial: 1.1 if trial == {fwd: "lax"} else 1.0)
  assert jaxconv.refine(GRAD, *ARGS)[0].algorithm == "lax"
  _tune.measure(fwd)  # a new measurement replaces the entry, and what refine kept with it
  assert jaxconv.plan(*ARGS, **KW).label == "winograd4"


def test_refine_compiles_and_times_the_function_itself():
  table = jaxconv.refine(GRAD, *ARGS)
  assert len(table) == 3 and table.summary.startswith("refine: tried 5 alternatives")
  for t in table:
    kept = _tune.lookup(t.geometry).get("in_context")
    assert kept is None or (t.algorithm == kept["label"] and kept["gain"] >= _refine.GAIN)
  # Whatever it kept, the gradients are lax's.
  want = jax.grad(lambda x, w: jnp.sum(jax.lax.conv_general_dilated(x, w, **KW) ** 2), (0, 1))
  for got, ref in zip(GRAD(*ARGS), want(*ARGS)):
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-3)
