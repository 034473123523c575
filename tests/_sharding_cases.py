"""Multi-device cases, run by `tests/test_sharding.py` in a process with 8 virtual CPU devices.

XLA's host device count is fixed when JAX initialises, so these cases need a fresh process started
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``; run directly (or collected by a plain
test run) with fewer devices, they skip. Each case compiles through JAX's own SPMD partitioner:
batch-sharded inputs must give batch-sharded outputs equal to lax's, with no all-gather in the
compiled program (so no device ever holds the whole batch of activations), for meshes whose axes
are Auto (sharding propagated by XLA) and Explicit (sharding in the types).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxconv
from tests.util import HIGHEST, rel_err, rng_for

DEVICES = 8
DN = ("NHWC", "HWIO", "NHWC")
ALGORITHMS = ["im2col", "winograd4", "auto"]
MODES = {"auto-axes": AxisType.Auto, "explicit-axes": AxisType.Explicit}

pytestmark = pytest.mark.skipif(
  jax.device_count() < DEVICES, reason=f"needs {DEVICES} devices (see tests/test_sharding.py)"
)


def _mesh(mode: str) -> jax.sharding.Mesh:
  return jax.make_mesh((DEVICES,), ("data",), axis_types=(MODES[mode],))


def _all_gathers(compiled_text: str) -> int:
  return compiled_text.count("all-gather")


def _operands():
  rng = rng_for("sharding")
  x = rng.standard_normal((2 * DEVICES, 12, 12, 8)).astype(np.float32)
  w = (rng.standard_normal((3, 3, 8, 16)) / 8).astype(np.float32)
  return x, w


def _conv(algorithm, **kwargs):
  return lambda x, w: jaxconv.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=DN, precision=HIGHEST, algorithm=algorithm, **kwargs
  )


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_batch_sharded_forward(algorithm, mode):
  x_host, w_host = _operands()
  ref = lax.conv_general_dilated(
    x_host, w_host, (1, 1), "SAME", dimension_numbers=DN, precision=HIGHEST
  )
  mesh = _mesh(mode)
  with jax.set_mesh(mesh):
    x = jax.device_put(x_host, NamedSharding(mesh, P("data")))
    w = jax.device_put(w_host, NamedSharding(mesh, P()))
    f = jax.jit(_conv(algorithm))
    y = f(x, w)
    compiled = f.lower(x, w).compile().as_text()
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), y.ndim)
  assert _all_gathers(compiled) == 0
  assert rel_err(y, ref) <= 1e-5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("spec", [P("data"), P(None, None, None, "data"), P()])
def test_out_sharding_is_honoured(algorithm, spec):
  x_host, w_host = _operands()
  mesh = _mesh("explicit-axes")
  with jax.set_mesh(mesh):
    x = jax.device_put(x_host, NamedSharding(mesh, P("data")))
    w = jax.device_put(w_host, NamedSharding(mesh, P()))
    ref = jax.jit(_conv("lax", out_sharding=spec))(x, w)
    for out_sharding in (spec, NamedSharding(mesh, spec)):
      y = jax.jit(_conv(algorithm, out_sharding=out_sharding))(x, w)
      assert y.sharding.is_equivalent_to(NamedSharding(mesh, spec), y.ndim)
      assert jax.typeof(y).sharding.spec == jax.typeof(ref).sharding.spec
      assert rel_err(y, ref) <= 1e-5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_out_sharding_on_auto_axes_is_rejected_as_lax_rejects_it(algorithm):
  # `out_sharding` names Explicit mesh axes; lax refuses Auto ones, and so does jaxconv.
  x_host, w_host = _operands()
  mesh = _mesh("auto-axes")
  spec = NamedSharding(mesh, P("data"))
  with jax.set_mesh(mesh):
    with pytest.raises(ValueError):
      jax.jit(_conv("lax", out_sharding=spec))(x_host, w_host)
    with pytest.raises(ValueError):
      jax.jit(_conv(algorithm, out_sharding=spec))(x_host, w_host)


def _loss(params, x, algorithm):
  conv = lambda x, w, s: jaxconv.conv_general_dilated(
    x, w, (s, s), "SAME", dimension_numbers=DN, precision=HIGHEST, algorithm=algorithm
  )
  y = jax.nn.relu(conv(x, params["w1"], 1))
  y = jax.nn.relu(conv(y, params["w2"], 2))
  return jnp.mean(conv(y, params["w3"], 1) ** 2)


def _train_step(params, x, algorithm):
  loss, grads = jax.value_and_grad(_loss)(params, x, algorithm)
  return loss, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_data_parallel_training_step(algorithm, mode):
  rng = rng_for("data-parallel")
  x_host = rng.standard_normal((2 * DEVICES, 12, 12, 3)).astype(np.float32)
  params_host = {
    "w1": (rng.standard_normal((3, 3, 3, 16)) / 5).astype(np.float32),
    "w2": (rng.standard_normal((3, 3, 16, 16)) / 12).astype(np.float32),
    "w3": (rng.standard_normal((3, 3, 16, 8)) / 12).astype(np.float32),
  }
  ref = jax.jit(_train_step, static_argnums=2)(params_host, x_host, "lax")
  mesh = _mesh(mode)
  with jax.set_mesh(mesh):
    x = jax.device_put(x_host, NamedSharding(mesh, P("data")))
    params = jax.device_put(params_host, NamedSharding(mesh, P()))
    step = jax.jit(_train_step, static_argnums=2)
    loss, new_params = step(params, x, algorithm)
    compiled = step.lower(params, x, algorithm).compile().as_text()
  # Replicated parameters stay replicated: the gradients are all-reduced, never gathered.
  assert _all_gathers(compiled) == 0 and "all-reduce" in compiled
  for p in jax.tree.leaves(new_params):
    assert p.sharding.is_fully_replicated
  assert rel_err(loss, ref[0]) <= 1e-5
  for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref[1])):
    assert rel_err(got, want) <= 1e-5


def test_tuning_under_explicit_sharding_measures_what_one_device_computes(tmp_path, monkeypatch):
  from jaxconv import _tune
  from jaxconv._geometry import normalize

  monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("JAXCONV_TUNE_BUDGET", "0.2")
  rng = rng_for("tune-sharded")
  x_host = rng.standard_normal((8 * DEVICES, 16, 16, 16)).astype(np.float32)
  w_host = (rng.standard_normal((3, 3, 16, 32)) / 12).astype(np.float32)
  mesh = _mesh("explicit-axes")
  with jax.set_mesh(mesh), jaxconv.autotune():
    x = jax.device_put(x_host, NamedSharding(mesh, P("data")))
    w = jax.device_put(w_host, NamedSharding(mesh, P()))
    y = jax.jit(_conv("auto"))(x, w)
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN, precision=HIGHEST)
  assert _tune.lookup(normalize(x_host[:8], w_host, **kw)) is not None  # one device's share
  assert _tune.lookup(normalize(x_host, w_host, **kw)) is None
  ref = lax.conv_general_dilated(x_host, w_host, **kw)
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), y.ndim)
  assert rel_err(y, ref) <= 1e-5
