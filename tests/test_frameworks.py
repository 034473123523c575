"""A ResNet basic block in Flax linen, Flax nnx, Haiku and Equinox: jaxconv gives lax's results.

The block is conv3x3(stride 2)-BN-ReLU-conv3x3-BN plus a 1x1 stride-2 projection with BN on the
skip path, batch norm in training mode. Linen and nnx take jaxconv through their hook; Haiku and
Equinox, which have none, run inside `jaxconv.use`. Outputs and every parameter gradient must match
the same model on lax to a normwise relative error of 1e-5 (float32).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from tests.util import HIGHEST, rel_err, rng_for

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
hk = pytest.importorskip("haiku")
eqx = pytest.importorskip("equinox")

ALGORITHMS = ["auto", "im2col", "winograd4"]
TOL = 1e-5
CIN, COUT, SIZE, BATCH = 4, 8, 8, 4


def _data(channels_last: bool = True):
  rng = rng_for("resnet-block")
  x = rng.standard_normal((BATCH, SIZE, SIZE, CIN)).astype(np.float32)
  ct = rng.standard_normal((BATCH, SIZE // 2, SIZE // 2, COUT)).astype(np.float32)
  if not channels_last:
    x, ct = x.transpose(0, 3, 1, 2), ct.transpose(0, 3, 1, 2)
  return jnp.asarray(x), jnp.asarray(ct)


def _assert_close(got, want):
  leaves_got, leaves_want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(leaves_got) == len(leaves_want) > 0
  for a, b in zip(leaves_got, leaves_want):
    assert a.shape == b.shape and a.dtype == b.dtype
    err = rel_err(a, b)
    assert err <= TOL, f"normwise relative error {err:.3g} > {TOL}"


# Flax linen. -----------------------------------------------------------------------------------


class LinenBlock(nn.Module):
  features: int
  strides: int
  conv_cls: object = None  # None: lax

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(
      nn.Conv, use_bias=False, precision=HIGHEST, conv_general_dilated_cls=self.conv_cls
    )
    norm = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9)
    y = nn.relu(norm()(conv(self.features, (3, 3), strides=self.strides)(x)))
    y = norm()(conv(self.features, (3, 3))(y))
    skip = norm()(conv(self.features, (1, 1), strides=self.strides)(x))
    return nn.relu(y + skip)


def _linen(conv_cls):
  x, ct = _data()
  model = LinenBlock(COUT, 2, conv_cls)
  variables = LinenBlock(COUT, 2).init(jax.random.key(0), x)

  def loss(params):
    y, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"]
    )
    return jnp.sum(y * ct), y

  (_, y), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return y, grads


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_linen_block(algorithm):
  _assert_close(
    _linen(functools.partial(jaxconv.ConvGeneralDilated, algorithm=algorithm)), _linen(None)
  )


def test_linen_default_class_and_helper():
  ref = _linen(None)
  _assert_close(_linen(jaxconv.ConvGeneralDilated), ref)  # instantiated with no arguments

  x, _ = _data()
  helper = jaxconv.flax.Conv(COUT, (3, 3), algorithm="im2col", precision=HIGHEST)
  plain = nn.Conv(COUT, (3, 3), precision=HIGHEST)
  params = plain.init(jax.random.key(1), x)
  _assert_close(helper.apply(params, x), plain.apply(params, x))


# Flax nnx. -------------------------------------------------------------------------------------


class NnxBlock(nnx.Module):
  def __init__(self, cin, cout, strides, conv, rngs, **conv_kwargs):
    kw = dict(use_bias=False, precision=HIGHEST, rngs=rngs, **conv_kwargs)
    if conv is not None:
      kw["conv_general_dilated"] = conv
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=strides, **kw)
    self.norm1 = nnx.BatchNorm(cout, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), **kw)
    self.norm2 = nnx.BatchNorm(cout, rngs=rngs)
    self.proj = nnx.Conv(cin, cout, (1, 1), strides=strides, **kw)
    self.norm3 = nnx.BatchNorm(cout, rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return nnx.relu(y + self.norm3(self.proj(x)))


def _nnx(conv, **conv_kwargs):
  x, ct = _data()
  model = NnxBlock(CIN, COUT, 2, conv, nnx.Rngs(0), **conv_kwargs)

  def loss(model):
    y = model(x)
    return jnp.sum(y * ct), y

  (_, y), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
  return y, grads


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nnx_block(algorithm):
  _assert_close(_nnx(jaxconv.ConvGeneralDilated(algorithm)), _nnx(None))


def test_nnx_function_hook_with_preferred_element_type():
  # nnx passes `out_sharding` (always) and `preferred_element_type` (when set) as keywords.
  ref = _nnx(None, preferred_element_type=jnp.float32)
  _assert_close(_nnx(jaxconv.conv_general_dilated, preferred_element_type=jnp.float32), ref)
  x, _ = _data()
  layer = jaxconv.flax.NnxConv(CIN, COUT, (3, 3), algorithm="im2col", rngs=nnx.Rngs(2))
  plain = nnx.Conv(CIN, COUT, (3, 3), precision=HIGHEST, rngs=nnx.Rngs(2))
  _assert_close(layer(x), plain(x))


# Haiku (no hook: `jaxconv.use`). ---------------------------------------------------------------


def _haiku_block(x):
  conv = lambda c, k, s=1: functools.partial(
    hk.Conv2D(c, k, stride=s, with_bias=False, padding="SAME"), precision=HIGHEST
  )
  norm = lambda: functools.partial(
    hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.9), is_training=True
  )
  y = jax.nn.relu(norm()(conv(COUT, 3, 2)(x)))
  y = norm()(conv(COUT, 3)(y))
  return jax.nn.relu(y + norm()(conv(COUT, 1, 2)(x)))


def _haiku():
  x, ct = _data()
  f = hk.transform_with_state(_haiku_block)
  params, state = f.init(jax.random.key(0), x)

  def loss(params):
    y, _ = f.apply(params, state, None, x)
    return jnp.sum(y * ct), y

  (_, y), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return y, grads


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_haiku_block(algorithm):
  ref = _haiku()
  with jaxconv.use(algorithm):
    got = _haiku()
    names = {e.primitive.name for e in jax.make_jaxpr(lambda x: _haiku())(0).eqns}
  if algorithm != "auto":  # these layers are tiny: `auto` runs them on lax
    assert "jaxconv_conv" in names
  _assert_close(got, ref)


# Equinox (no hook: `jaxconv.use`; vmapped over the batch). -------------------------------------


class EqxBlock(eqx.Module):
  conv1: eqx.nn.Conv2d
  norm1: eqx.nn.BatchNorm
  conv2: eqx.nn.Conv2d
  norm2: eqx.nn.BatchNorm
  proj: eqx.nn.Conv2d
  norm3: eqx.nn.BatchNorm

  def __init__(self, key):
    k1, k2, k3 = jax.random.split(key, 3)
    norm = lambda: eqx.nn.BatchNorm(COUT, axis_name="batch", mode="batch", dtype=jnp.float32)
    conv = functools.partial(eqx.nn.Conv2d, use_bias=False, dtype=jnp.float32)
    self.conv1 = conv(CIN, COUT, 3, stride=2, padding=1, key=k1)
    self.norm1 = norm()
    self.conv2 = conv(COUT, COUT, 3, padding=1, key=k2)
    self.norm2 = norm()
    self.proj = conv(CIN, COUT, 1, stride=2, key=k3)
    self.norm3 = norm()

  def __call__(self, x, state):
    y, state = self.norm1(self.conv1(x), state)
    y, state = self.norm2(self.conv2(jax.nn.relu(y)), state)
    skip, state = self.norm3(self.proj(x), state)
    return jax.nn.relu(y + skip), state


def _equinox():
  x, ct = _data(channels_last=False)
  model, state = eqx.nn.make_with_state(EqxBlock)(jax.random.key(0))

  def loss(model):
    y, _ = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    return jnp.sum(y * ct), y

  (_, y), grads = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))(model)
  return y, grads


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_equinox_block(algorithm):
  ref = _equinox()
  with jaxconv.use(algorithm):
    got = _equinox()
  _assert_close(got, ref)


# Flax ConvTranspose (no hook: `jaxconv.use`). --------------------------------------------------


@pytest.mark.parametrize("algorithm", ["auto", "im2col"])
def test_linen_conv_transpose(algorithm):
  x, _ = _data()
  layer = nn.ConvTranspose(COUT, (3, 3), strides=(2, 2), precision=HIGHEST)
  params = layer.init(jax.random.key(0), x)
  loss = lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)))
  ref = layer.apply(params, x), jax.grad(loss, (0, 1))(params, x)
  with jaxconv.use(algorithm):
    got = layer.apply(params, x), jax.grad(loss, (0, 1))(params, x)
    jaxpr = jax.make_jaxpr(layer.apply)(params, x)
  if algorithm != "auto":
    assert "jaxconv_conv" in {e.primitive.name for e in jaxpr.eqns}
  _assert_close(got, ref)
