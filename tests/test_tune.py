"""The autotuner: measuring, deciding, switching it on, `tune(fn)`; and lowering for CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _cache, _select, _tune, _wgrad
from jaxconv._autodiff import kernel_gradient_geometry
from jaxconv._geometry import normalize

DN = ("NHWC", "HWIO", "NHWC")
# Large enough to be measured (above `_select.TINY_FLOPS`), small enough to compile quickly.
X = jax.ShapeDtypeStruct((2, 16, 16, 32), np.float32)
W = jax.ShapeDtypeStruct((3, 3, 32, 32), np.float32)
KW = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN)
FAKE = {"lax": 1.0, "im2col": 0.99, "winograd2": 0.5, "winograd4": 0.4, "winograd6": 3.0}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
  # A fresh cache directory per test, and a short budget: the choice logic is what is tested.
  monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("JAXCONV_TUNE_BUDGET", "0.3")
  yield
  jaxconv.set_nonfinite("fast")


def _geometry(**kw):
  return normalize(X, W, **{**KW, **kw})


class FakeTimer:
  """Deterministic: each candidate takes FAKE seconds; the calls are recorded, not run."""

  def __init__(self, times=FAKE):
    self.times, self.calls = times, []

  def __call__(self, label, call):
    del call
    self.calls.append(label)
    return self.times.get(label, 3 * self.times["lax"])  # candidates of other geometries: slow


@pytest.fixture(scope="module")
def measured():
  """One real measurement's compiled candidates and errors, with fake times."""
  timer = FakeTimer()
  entry = _tune.measure(_geometry(), timer=timer, store=False)
  return entry, timer.calls


def test_measure_times_every_candidate_interleaved_and_prunes(measured):
  entry, calls = measured
  assert set(entry["times"]) == set(FAKE)
  assert entry["times"] == FAKE  # medians of the fake rounds
  assert entry["rounds"] == _tune.MAX_ROUNDS  # fake rounds take no time: the round cap ends it
  # Round one times all five in registry order; then lax in every round (each decision is a ratio
  # to its median), and of the others those within PRUNE x the fastest first time, until
  # MIN_ROUNDS; then those within CONTEND x the fastest median.
  assert calls[:5] == ["lax", "im2col", "winograd2", "winograd4", "winograd6"]
  assert calls[5:9] == ["lax", "im2col", "winograd2", "winograd4"]
  assert calls.count("winograd6") == 1
  assert calls.count("im2col") == _tune.MIN_ROUNDS
  assert calls.count("lax") == calls.count("winograd2") == _tune.MAX_ROUNDS
  n = _tune.MIN_ROUNDS
  assert len(calls) == 5 + 4 * (n - 1) + 3 * (_tune.MAX_ROUNDS - n)
  # Errors are real: each candidate ran once against lax.
  assert entry["errors"]["lax"] == 0.0
  assert 0 < entry["errors"]["winograd4"] < 1e-5
  assert entry["compile_s"] > 0 and entry["tuned_s"] >= entry["compile_s"]


def test_measure_keeps_timing_the_contenders_and_lax():
  # After MIN_ROUNDS only lax and candidates within CONTEND of the fastest median are timed.
  times = {"lax": 0.7, "im2col": 0.6, "winograd2": 0.45, "winograd4": 0.4, "winograd6": 3.0}
  timer = FakeTimer(times)
  entry = _tune.measure(_geometry(), timer=timer, store=False)
  assert entry["times"] == times
  n = _tune.MIN_ROUNDS
  assert timer.calls.count("winograd6") == 1  # PRUNE, after round one
  assert timer.calls.count("im2col") == n  # CONTEND: 0.6 > 1.25 x 0.4
  assert timer.calls.count("lax") == timer.calls.count("winograd2") == _tune.MAX_ROUNDS
  assert len(timer.calls) == 5 + (n - 1) * 4 + (_tune.MAX_ROUNDS - n) * 3


def test_confirm_measures_again_and_keeps_each_candidates_least_median():
  # A slowdown that spans the first measurement (winograd4 at 3x its time) is undone by the second,
  # and one that spans the second (lax's) by the first: each candidate keeps its lesser median.
  g = _geometry()
  with _tune.recording() as measured:
    _tune.measure(g, timer=FakeTimer({**FAKE, "winograd4": 1.2}))
  assert measured == [g]
  first = _tune.lookup(g)
  assert _tune.decide(g, first, list(FAKE))[0] == "winograd2"
  timer = FakeTimer({**FAKE, "lax": 3.0})
  _tune.confirm(measured, timer=timer)
  assert timer.calls and _tune.passes() == _tune.PASSES == 2
  entry = _tune.lookup(g)
  assert entry["times"] == FAKE
  assert entry["rounds"] == 2 * first["rounds"] and entry["tuned_s"] > first["tuned_s"]
  assert _tune.decide(g, entry, list(FAKE))[0] == "winograd4"


def test_a_kernel_gradient_sharing_work_with_its_forward_is_timed_with_it(monkeypatch):
  # With host memory kept, wgrad4 takes the transformed input F(4,3)'s forward makes. Alone, lax
  # wins both (Winograd within the margin); in one program, the pair is 1.5x faster.
  monkeypatch.setattr(_wgrad, "host_memory_kept", lambda: True)
  fwd = _geometry()
  gk = kernel_gradient_geometry(fwd)
  assert _wgrad.WGRAD.shares_with(gk, (4, 4)) == (fwd, "winograd4")
  alone = {"lax": 1.0, "winograd4": 1.01, "wgrad4": 1.01}
  _tune.measure(fwd, timer=FakeTimer(alone))
  timer = FakeTimer({**alone, "alone with the forward": 3.0, "paired with the forward": 2.0})
  entry = _tune.measure(gk, timer=timer)
  want = {"label": "wgrad4", "forward": "winograd4", "gain": 1.5, "instead_of": ["lax", "lax"]}
  assert entry["paired"] == want
  assert timer.calls.count("paired with the forward") >= _tune.MIN_ROUNDS
  label, reason = _tune.decide(gk, entry, list(entry["times"]))
  assert label == "wgrad4" and "1.50x faster together than lax and lax" in reason
  fwd_entry = _tune.lookup(fwd)
  label, reason = _tune.decide(fwd, fwd_entry, list(fwd_entry["times"]))
  assert label == "winograd4" and "kernel gradient by wgrad4" in reason
  assert _tune.decide(fwd, fwd_entry, ["im2col"])[0] == "lax"  # Winograd not allowed
  assert _tune.decide(fwd, fwd_entry, list(fwd_entry["times"]), paired=False)[0] == "lax"
  # Measured again, no faster together: nothing paired, and the forward is decided alone again.
  timer = FakeTimer({**alone, "alone with the forward": 3.0, "paired with the forward": 3.1})
  assert "paired" not in _tune.measure(gk, timer=timer)
  assert _tune.decide(fwd, fwd_entry, list(fwd_entry["times"]))[0] == "lax"
  # Without host memory kept the kernel gradient runs in blocks and shares nothing.
  monkeypatch.setattr(_wgrad, "host_memory_kept", lambda: False)
  assert _wgrad.WGRAD.shares_with(gk, (4, 4)) is None
  timer = FakeTimer({**alone, "alone with the forward": 3.0, "paired with the forward": 2.0})
  assert "paired" not in _tune.measure(gk, timer=timer)
  assert not [c for c in timer.calls if "forward" in c]


def test_one_pass_confirms_nothing(monkeypatch):
  monkeypatch.setenv("JAXCONV_TUNE_PASSES", "1")
  timer = FakeTimer()
  _tune.confirm([_geometry()], timer=timer)
  assert timer.calls == [] and _tune.lookup(_geometry()) is None


def _decide(entry, times=None, errors=None, allowed=tuple(FAKE)):
  e = {**entry, "times": {**entry["times"], **(times or {})}}
  e["errors"] = {**entry["errors"], **(errors or {})}
  return _tune.decide(_geometry(), e, allowed)


def test_decide_takes_the_fastest_that_beats_lax_by_the_margin(measured):
  entry, _ = measured
  label, reason = _decide(entry)
  assert label == "winograd4" and reason.startswith("measured 2.50x faster than lax")
  # Within the margin of lax: lax stays, so noise cannot flip the choice.
  near = {"winograd2": 0.98, "winograd4": 0.97, "winograd6": 0.99}
  assert _decide(entry, near)[0] == "lax"
  assert _decide(entry, {**near, "winograd4": 1 / _tune.MARGIN - 1e-3})[0] == "winograd4"
  # A tie goes to the more accurate candidate (registry order: smaller tiles first).
  assert _decide(entry, {"winograd2": 0.404, "winograd6": 0.4})[0] == "winograd2"
  assert _decide(entry, {"im2col": 0.401})[0] == "im2col"


def test_decide_charges_temporaries_on_cpu(measured):
  entry, _ = measured
  assert entry["backend"] == "cpu" and entry["temp_bytes"]["winograd4"] > 0
  # Temporaries worth 0.7 s at the fresh-memory rate make winograd4 (0.4 s) slower than lax (1 s).
  heavy = {
    **entry,
    "temp_bytes": {**entry["temp_bytes"], "winograd4": 0.7 * _tune.FRESH_BYTES_RATE},
  }
  label, _ = _decide(heavy)
  assert label == "winograd2", label
  assert _decide({**heavy, "backend": "gpu"})[0] == "winograd4"  # device allocators reuse memory


def test_decide_does_not_charge_temporaries_kept_in_the_heap(measured, monkeypatch):
  entry, _ = measured
  heavy = {
    **entry,
    "temp_bytes": {**entry["temp_bytes"], "winograd4": 0.7 * _tune.FRESH_BYTES_RATE},
  }
  monkeypatch.setattr(_tune, "host_memory_kept", lambda: True)
  assert _decide(heavy)[0] == "winograd4"


def test_decide_drops_candidates_beyond_their_tolerance(measured):
  entry, _ = measured
  label, reason = _decide(entry, errors={"winograd4": 1e-2})
  assert label == "winograd2" and "dropped for accuracy: winograd4" in reason
  label, reason = _decide(entry, errors={"winograd2": 1e-2, "winograd4": 1e-2, "im2col": 1.0})
  assert label == "lax" and "within" in reason


def test_measure_checks_against_float64_where_a_candidate_differs_from_lax(monkeypatch):
  # Only where some candidate is further from lax than its tolerance (here forced: im2col's is
  # negative): lax may be the one that rounds, so every error is taken against float64 instead.
  entry = _tune.measure(_geometry(), timer=FakeTimer(), store=False)
  assert entry["reference"] == "lax" and entry["errors"]["lax"] == 0.0
  monkeypatch.setattr(type(jaxconv._im2col.IM2COL), "tolerance", lambda self, g, v: -1.0)
  entry = _tune.measure(_geometry(), timer=FakeTimer(), store=False)
  assert entry["reference"] == "float64"
  errors = entry["errors"]
  assert 0 < errors["lax"] < 1e-6 and 0 < errors["im2col"] < 1e-6
  assert errors["winograd2"] < errors["winograd4"] < errors["winograd6"] < 1e-5
  # Against float64, a candidate may be off by lax's own error plus its tolerance.
  assert _tune.decide(_geometry(), entry, ["im2col"])[0] == "lax"  # no tolerance left
  monkeypatch.undo()
  tol = jaxconv._im2col.IM2COL.tolerance(_geometry(), None)
  e = {**entry, "times": {**FAKE, "im2col": 0.5}, "errors": {**errors, "lax": 3 * tol}}
  assert _tune.decide(_geometry(), {**e, "errors": {**e["errors"], "im2col": 3.9 * tol}},
                      ["im2col"])[0] == "im2col"  # fmt: skip
  label, reason = _tune.decide(
    _geometry(), {**e, "errors": {**e["errors"], "im2col": 4.1 * tol}}, ["im2col"]
  )
  assert label == "lax" and "dropped for accuracy: im2col" in reason


def test_auto_uses_a_cached_measurement_and_respects_exact_nonfinite(measured):
  entry, _ = measured
  g = _geometry()
  _tune._store().put(g.key(), {**entry, "times": {**FAKE, "im2col": 0.9}})
  p = jaxconv.plan(X, W, **KW)
  assert (p.label, p.tile) == ("winograd4", (4, 4)) and p.reason.startswith("measured")
  jaxconv.set_nonfinite("exact")
  p = jaxconv.plan(X, W, **KW)
  assert p.algorithm == "im2col" and "non-finite" in p.reason
  # Another precision is another geometry: not measured, so predicted.
  assert jaxconv.plan(X, W, **KW, precision="highest").reason.startswith("predicted")
  # The same precision spelled another way is the same one.
  for same in ("default", lax.Precision.DEFAULT, ("default", "fastest")):
    assert jaxconv.plan(X, W, **KW, precision=same).reason.startswith("measured"), same
  assert _geometry(precision="highest").key() == _geometry(precision=lax.Precision.HIGHEST).key()


def test_autotune_block_measures_at_trace_time_inside_jit_vmap_and_grad():
  traces = []

  def f(x, w):
    traces.append(1)
    y = jaxconv.conv_general_dilated(x, w, **KW)
    return jnp.sum(y**2)

  fn = jax.jit(jax.vmap(jax.grad(f, argnums=1), in_axes=(0, None)))
  x = jnp.ones((3, *X.shape), np.float32)
  w = jnp.ones(W.shape, np.float32)
  fn(x, w)  # traced on the heuristic
  before = jaxconv.cache_info()["autotune"].measured
  with jaxconv.autotune():
    fn(x, w)  # traced again: the block is part of jit's cache key
  assert len(traces) == 2
  assert jaxconv.cache_info()["autotune"].measured > before  # the forward, and its kernel grad
  # vmap traces the function once, unbatched: that is the geometry measured.
  assert _tune.lookup(_geometry()) is not None
  fn(x, w)  # the block measured something: traced once more, now on the measurements
  fn(x, w)
  assert len(traces) == 3


def test_set_autotune_and_the_decorator():
  assert jaxconv.set_autotune(True) is False
  try:
    assert _tune.autotune_enabled()
    with jaxconv.autotune(False):
      assert not _tune.autotune_enabled()
  finally:
    assert jaxconv.set_autotune(False) is True

  @jaxconv.autotune()
  def inside():
    return _tune.autotune_enabled()

  assert inside() and not _tune.autotune_enabled()
  with pytest.raises(TypeError, match="enabled"):
    jaxconv.set_autotune("yes")


def test_environment_variable_turns_it_on():
  code = "import jaxconv._tune as t; print(t.autotune_enabled())"
  env = {**os.environ, "JAXCONV_AUTOTUNE": "1"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert out.stdout.strip() == "True", out.stderr


def test_tune_collects_forward_and_backward_convolutions(monkeypatch):
  # Deterministic times: winograd4 wins, so the forward runs jaxconv's primitive, whose transposes
  # (the gradients) are jaxconv convolutions again. (A forward on lax keeps lax's own gradients.)
  monkeypatch.setattr(_tune, "_default_timer", FakeTimer())

  def loss(x, w):
    return jnp.sum(jaxconv.conv_general_dilated(x, w, **KW) ** 2)

  x, w = jnp.ones(X.shape, np.float32), jnp.ones(W.shape, np.float32)
  table = jaxconv.tune(jax.jit(jax.grad(loss, argnums=(0, 1))), x, w)
  forward = normalize(x, w, **KW)
  assert table[0].geometry == forward and table[0].requested == "auto"
  assert len(table) == 3  # the forward, the input gradient and the kernel gradient
  assert kernel_gradient_geometry(forward) in [t.geometry for t in table]
  assert all(t.times is not None and "lax" in t.times for t in table)
  for t in table:
    assert t.algorithm in t.times and t.speedup > 0
  text = str(table)
  assert text.splitlines()[0].startswith("convolution") and "32 -> 32" in text
  # Each geometry was measured twice (`confirm`), a batch apart, and the table shows the result.
  assert jaxconv.cache_info()["autotune"].measured == 3 * _tune.PASSES
  assert all(_tune.lookup(t.geometry)["rounds"] == _tune.PASSES * _tune.MAX_ROUNDS for t in table)
  # A second tune finds everything cached (nothing measured again) and still lists it all.
  before = jaxconv.cache_info()["autotune"].measured
  again = jaxconv.tune(jax.jit(jax.grad(loss, argnums=(0, 1))), x, w)
  assert [t.geometry for t in again] == [t.geometry for t in table]
  assert jaxconv.cache_info()["autotune"].measured == before


def test_tune_finds_convolutions_inside_use_blocks():
  def model(x, w):
    with jaxconv.use("auto"):
      return lax.conv_general_dilated(x, w, **KW)

  table = jaxconv.tune(model, jnp.ones(X.shape, np.float32), jnp.ones(W.shape, np.float32))
  assert len(table) == 1 and table[0].times is not None


def test_tiny_convolutions_and_patch_copies_stay_exact():
  # The patches of a 3x14x10x5 input of ones with a 2x2 window must be exactly one.
  x = jnp.ones((3, 14, 10, 5))
  with jaxconv.use("auto"):
    patches = lax.conv_general_dilated_patches(x, (2, 2), (1, 1), "VALID")
  np.testing.assert_array_equal(np.asarray(patches), 1.0)
  p = jaxconv.plan(
    jax.ShapeDtypeStruct((16, 5, 64, 64), np.float32),
    jax.ShapeDtypeStruct((20, 1, 2, 2), np.float32),
    (1, 1),
    "VALID",
    feature_group_count=5,
  )
  assert p.geometry.flops >= _select.TINY_FLOPS and p.algorithm != "winograd"
  assert "patch extraction" in p.reason


def test_without_a_measurement_other_backends_run_lax(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  p = jaxconv.plan(
    jax.ShapeDtypeStruct((8, 28, 28, 128), np.float32),
    jax.ShapeDtypeStruct((3, 3, 128, 128), np.float32),
    **KW,
  )
  assert p.algorithm == "lax" and "no measurement on gpu" in p.reason


# Every algorithm, its gradients and a tuned `auto` lower for CUDA on a CPU-only machine. ---------


def _lower_cuda(f, *args):
  return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("algorithm", [a for a in jaxconv.ALGORITHMS if a != "auto"])
@pytest.mark.parametrize("case", ["3x3", "strided-grouped", "dilated-1d", "transposed-depthwise"])
def test_every_algorithm_and_gradient_lowers_for_cuda(algorithm, case):
  if case == "3x3":
    x, w, kw = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8)), dict(KW)
  elif case == "strided-grouped":
    x, w = jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 2, 8))
    kw = dict(KW, window_strides=(2, 2), feature_group_count=2)
  elif case == "transposed-depthwise":
    x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 1, 4))
    kw = dict(KW, padding=((1, 1), (1, 1)), lhs_dilation=(2, 2), feature_group_count=4)
  else:
    x, w = jnp.ones((2, 12, 4)), jnp.ones((3, 4, 4))
    kw = dict(
      window_strides=(1,),
      padding="SAME",
      rhs_dilation=(2,),
      dimension_numbers=("NWC", "WIO", "NWC"),
    )
  f = lambda x, w: jaxconv.conv_general_dilated(x, w, **kw, algorithm=algorithm)
  try:
    text = _lower_cuda(f, x, w)
  except NotImplementedError:
    pytest.skip(f"{algorithm} cannot run {case}")
  assert "func.func public @main" in text
  grad = jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))
  assert "func.func public @main" in _lower_cuda(grad, x, w)
  hessian_vector = jax.jvp(lambda x: grad(x, w)[0], (x,), (x,))
  assert hessian_vector[0].shape == x.shape


def test_tuned_auto_lowers_for_cuda(measured):
  entry, _ = measured
  g = _geometry()
  _tune._store().put(g.key(), entry)
  f = lambda x, w: jaxconv.conv_general_dilated(x, w, **KW)
  assert jaxconv.plan(X, W, **KW).label == "winograd4"
  assert "func.func public @main" in _lower_cuda(
    f, jnp.ones(X.shape, np.float32), jnp.ones(W.shape, np.float32)
  )
  grad = jax.grad(lambda x, w: jnp.sum(f(x, w)), argnums=(0, 1))
  assert "func.func public @main" in _lower_cuda(
    grad, jnp.ones(X.shape, np.float32), jnp.ones(W.shape, np.float32)
  )


def test_cache_info_reports_the_autotune_store():
  info = jaxconv.cache_info()["autotune"]
  assert isinstance(info, _cache.TuneCacheInfo)
  assert info.path.startswith(os.environ["JAXCONV_CACHE_DIR"]) and info.writable


def test_cli_tune_fills_shows_and_clears_the_cache(capsys, monkeypatch):
  from jaxconv._cli import main

  monkeypatch.setattr(_tune, "_default_timer", FakeTimer())
  assert main(["tune", "--shapes", "seed,tiny"]) == 0
  out = capsys.readouterr().out
  assert "seed" in out and "tuned in" in out and "winograd4" in out
  assert "not measured" in out  # the tiny layer runs lax whatever is measured
  assert "per geometry min" in out
  assert main(["tune", "--shapes", "seed"]) == 0
  assert "cached" in capsys.readouterr().out
  assert main(["tune", "--show"]) == 0
  out = capsys.readouterr().out
  assert "this device and setup" in out and "fastest winograd4 2.50x lax" in out
  assert main(["tune", "--clear"]) == 0
  assert "removed 1 cache file" in capsys.readouterr().out
  assert not _cache.files()


def test_cli_tune_train_measures_the_gradients_convolutions_too(capsys, monkeypatch):
  from jaxconv._cli import main

  monkeypatch.setattr(_tune, "_default_timer", FakeTimer())
  assert main(["tune", "--train", "--shapes", "seed"]) == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed")]
  assert [line.split("  ")[0] for line in lines] == [
    "seed",
    "seed kernel gradient",
    "seed input gradient",
  ]
  assert all("tuned in" in line for line in lines), lines
  assert main(["tune", "--clear"]) == 0


def test_kernel_gradient_shapes_are_not_measured_on_winograd_tiles():
  # A kernel with more taps than the output has positions (a kernel gradient's shape): plain
  # Winograd's tiles would be as wide as the kernel, so the tuner does not time them (`wgrad`,
  # the kernel gradient of a 3x3 layer, is timed instead), and `wgrad` is no candidate for a
  # forward convolution; forcing Winograd still computes it.
  x, w = jnp.ones((2, 9, 9, 4)), jax.random.normal(jax.random.key(0), (7, 7, 4, 4))
  g = normalize(x, w, (1, 1), "VALID", dimension_numbers=DN)
  labels = [label for label, _, _ in _tune.candidates(g)]
  assert labels == ["lax", "im2col", "wgrad2", "wgrad4", "wgrad6"], labels
  x = jax.random.normal(jax.random.key(1), x.shape)
  got = jaxconv.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN,
                                     algorithm="winograd2")  # fmt: skip
  want = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN, precision="highest")
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
  # A forward layer shaped like ResNet-50's 7x7x512 one keeps its Winograd tiles.
  fwd = normalize(jnp.ones((2, 7, 7, 8)), jnp.ones((3, 3, 8, 8)), **KW)
  assert [label for label, _, _ in _tune.candidates(fwd)] == [
    "lax",
    "im2col",
    "winograd2",
    "winograd4",
    "winograd6",
  ]


def test_a_measured_variant_labelled_by_its_tile_is_decided_and_run():
  # A 1x1 output (a fully connected layer as a VALID convolution) makes `wgrad` the kernel
  # gradient of a 1x1 layer, whose tile is labelled "wgrad1": no name `algorithm=` takes, and
  # deciding on it raised KeyError.
  x = jax.random.normal(jax.random.key(0), (8, 7, 7, 64))
  w = jax.random.normal(jax.random.key(1), (7, 7, 64, 128))
  kw = dict(window_strides=(1, 1), padding="VALID", dimension_numbers=DN)
  g = normalize(x, w, **kw)
  assert "wgrad1" in [label for label, _, _ in _tune.candidates(g)]
  with jaxconv.autotune():
    p = jaxconv.plan(x, w, **kw)
    y = jaxconv.conv_general_dilated(x, w, **kw)
  assert p.reason.startswith("measured")
  for label in ("wgrad1", "im2col"):
    a, v = _tune.variant_of(g, label)
    assert a.label(v) == label
  want = lax.conv_general_dilated(x, w, **kw, precision="highest")
  assert np.linalg.norm(y - want) / np.linalg.norm(want) < 1e-5


def test_a_1x1_kernel_runs_lax_unless_measured():
  # A 1x1 kernel is one matrix product, which lax runs unless a measurement finds a faster form;
  # its layer goes through jaxconv's primitive, so its gradients are measured too.
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 64))
  w = jax.random.normal(jax.random.key(1), (1, 1, 64, 64))
  kw = dict(window_strides=(1, 1), padding="VALID", dimension_numbers=DN)
  g = normalize(x, w, **kw)
  assert _select.measurable(g)
  p = jaxconv.plan(x, w, **kw)
  assert p.algorithm == "lax" and "1x1" in p.reason and p.reason.startswith("predicted")
  assert [label for label, _, _ in _tune.candidates(g)] == ["lax", "im2col", "winograd1"]
  loss = lambda x, w: jnp.sum(jaxconv.conv_general_dilated(x, w, **kw) ** 2)
  eqns = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).eqns
  assert any(e.primitive.name == "jaxconv_conv" for e in eqns)
  with jaxconv.autotune():
    p = jaxconv.plan(x, w, **kw)
    grads = jax.grad(loss, (0, 1))(x, w)
  assert p.reason.startswith("measured")
  ref = jax.grad(
    lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, **kw, precision="highest") ** 2), (0, 1)
  )(x, w)
  for a, b in zip(grads, ref):
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5


def test_default_timer_warms_up_then_fills_the_round(monkeypatch):
  calls = []

  def call(seconds):
    calls.append(seconds)
    time.sleep(seconds)
    return jnp.zeros(())

  assert _tune._default_timer("slow", lambda: call(_tune.ROUND_S)) >= _tune.ROUND_S
  assert len(calls) == 2  # one call to warm up, not counted, and one timed
  calls.clear()
  monkeypatch.setattr(_tune, "ROUND_S", 0.05)
  per_call = _tune._default_timer("fast", lambda: call(0.005))
  assert len(calls) > 5 and 0.004 < per_call < 0.05


def test_candidates_compile_one_at_a_time_off_cpu():
  # XLA's GPU compiler times kernels on the device: concurrent compiles would time each other's.
  assert _tune._compile_workers("cpu", 9) == 4 and _tune._compile_workers("cpu", 2) == 2
  assert _tune._compile_workers("gpu", 9) == 1 and _tune._compile_workers("tpu", 9) == 1


def test_a_candidate_that_runs_auto_inside_measures_those_geometries_first():
  # A transposed convolution's sub-pixel and pixel-shuffle candidates run `auto` on their phase
  # and stacked convolutions: those are measured first, so that each is timed as it will run.
  from jaxconv._pixelshuffle import PIXELSHUFFLE

  x, w = (jax.ShapeDtypeStruct(s, np.float32) for s in ((2, 16, 16, 16), (4, 4, 16, 16)))
  g = normalize(x, w, (1, 1), [(2, 2)] * 2, (2, 2), None, DN)
  entry = _tune.measure(g, timer=FakeTimer({"lax": 1.0, "pixelshuffle": 0.5}))
  (stacked,) = PIXELSHUFFLE.nested(g, None)
  assert _tune.lookup(stacked) is not None and _tune.lookup(g) == entry
  assert {"subpixel", "col2im", "pixelshuffle"} <= set(entry["times"])
  assert _tune.decide(g, entry, list(entry["times"]))[0] == "pixelshuffle"
