"""Whole-model training steps with lax's convolutions and with jaxconv's, interleaved.

Two small models in plain JAX, each one SGD-with-momentum step (forward, backward, update):

* ``resnet``: a ResNet for 32x32 images, a 3x3 stem and seven basic blocks at 32/64/128/256
  channels, three of them stride 2 with 1x1 projections, batch norm, batch 32, 10 classes;
* ``unet``: a small U-Net on 64x64x3 images, two stride-2 encoder convolutions and two stride-2
  transposed convolutions (3x3) in the decoder with skip connections, batch 8, an L2 loss.

The same step is compiled twice, once with `jax.lax.conv_general_dilated` / `jax.lax.conv_transpose`
and once with `jaxconv.conv_general_dilated` / `jaxconv.conv_transpose` (``auto``, which uses the
tuning cache), and both are timed in interleaved rounds (`jaxconv._timing`). Three steps from
the same start are checked to give the same losses.

  python bench/train_model.py [--models resnet,unet] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv
from jaxconv._timing import interleaved_medians

DN = ("NHWC", "HWIO", "NHWC")
HIGHEST = lax.Precision.HIGHEST
BACKENDS = {
  "lax": (lax.conv_general_dilated, lax.conv_transpose),
  "jaxconv": (jaxconv.conv_general_dilated, jaxconv.conv_transpose),
}


def _conv(conv, x, w, stride=1):
  k = w.shape[0]
  pad = ((k // 2, (k - 1) // 2),) * 2
  return conv(x, w, (stride, stride), pad, dimension_numbers=DN, precision=HIGHEST)


def _norm(x, p):
  mean = x.mean((0, 1, 2))
  var = x.var((0, 1, 2))
  return (x - mean) * lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _kernel(key, k, cin, cout):
  return jax.random.normal(key, (k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))


def _bn(c):
  return {"scale": jnp.ones(c), "bias": jnp.zeros(c)}


# ResNet for 32x32 images. --------------------------------------------------------------------

STAGES = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1))


def resnet_init(key):
  keys = iter(jax.random.split(key, 64))
  params = {"stem": _kernel(next(keys), 3, 3, 32), "stem_bn": _bn(32), "blocks": []}
  cin = 32
  for cout, stride in STAGES:
    block = {
      "w1": _kernel(next(keys), 3, cin, cout),
      "bn1": _bn(cout),
      "w2": _kernel(next(keys), 3, cout, cout),
      "bn2": _bn(cout),
    }
    if stride > 1 or cin != cout:
      block["proj"] = _kernel(next(keys), 1, cin, cout)
    params["blocks"].append(block)
    cin = cout
  params["head"] = jax.random.normal(next(keys), (cin, 10)) / np.sqrt(cin)
  return params


def resnet_loss(params, batch, conv, _):
  x, labels = batch
  h = jax.nn.relu(_norm(_conv(conv, x, params["stem"]), params["stem_bn"]))
  for block, (_, stride) in zip(params["blocks"], STAGES):
    y = jax.nn.relu(_norm(_conv(conv, h, block["w1"], stride), block["bn1"]))
    y = _norm(_conv(conv, y, block["w2"]), block["bn2"])
    skip = _conv(conv, h, block["proj"], stride) if "proj" in block else h
    h = jax.nn.relu(y + skip)
  logits = h.mean((1, 2)) @ params["head"]
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 10), -1))


def resnet_batch(key):
  kx, ky = jax.random.split(key)
  return jax.random.normal(kx, (32, 32, 32, 3)), jax.random.randint(ky, (32,), 0, 10)


# A small U-Net. --------------------------------------------------------------------------------


def unet_init(key):
  k = iter(jax.random.split(key, 16))
  return {
    "e1": _kernel(next(k), 3, 3, 32),
    "e2": _kernel(next(k), 3, 32, 64),
    "e3": _kernel(next(k), 3, 64, 128),
    "u2": _kernel(next(k), 3, 128, 64),
    "d2": _kernel(next(k), 3, 128, 64),
    "u1": _kernel(next(k), 3, 64, 32),
    "d1": _kernel(next(k), 3, 64, 32),
    "out": _kernel(next(k), 3, 32, 3),
  }


def unet_loss(params, batch, conv, transpose):
  x, target = batch
  up = lambda h, w: transpose(h, w, (2, 2), "SAME", dimension_numbers=DN, precision=HIGHEST)
  e1 = jax.nn.relu(_conv(conv, x, params["e1"]))  # 64x64x32
  e2 = jax.nn.relu(_conv(conv, e1, params["e2"], 2))  # 32x32x64
  e3 = jax.nn.relu(_conv(conv, e2, params["e3"], 2))  # 16x16x128
  d2 = jax.nn.relu(up(e3, params["u2"]))  # 32x32x64
  d2 = jax.nn.relu(_conv(conv, jnp.concatenate([d2, e2], -1), params["d2"]))
  d1 = jax.nn.relu(up(d2, params["u1"]))  # 64x64x32
  d1 = jax.nn.relu(_conv(conv, jnp.concatenate([d1, e1], -1), params["d1"]))
  return jnp.mean((_conv(conv, d1, params["out"]) - target) ** 2)


def unet_batch(key):
  kx, ky = jax.random.split(key)
  return jax.random.normal(kx, (8, 64, 64, 3)), jax.random.normal(ky, (8, 64, 64, 3))


MODELS = {
  "resnet": (resnet_init, resnet_loss, resnet_batch),
  "unet": (unet_init, unet_loss, unet_batch),
}


def _step(loss, backend):
  conv, transpose = BACKENDS[backend]

  def step(params, velocity, batch):
    value, grads = jax.value_and_grad(loss)(params, batch, conv, transpose)
    velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - 0.01 * v, params, velocity)
    return params, velocity, value

  return step


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet,unet")
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args(argv)
  print(
    f"jax {jax.__version__}, jaxconv {jaxconv.__version__}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, one SGD-momentum step per call"
  )
  print(f"{'model':>8}  {'lax ms':>9}  {'jaxconv ms':>10}  {'x lax':>6}  losses (lax | jaxconv)")
  for name in args.models.split(","):
    init, loss, make_batch = MODELS[name]
    params = init(jax.random.key(0))
    velocity = jax.tree.map(jnp.zeros_like, params)
    batch = make_batch(jax.random.key(1))
    steps = {b: _step(loss, b) for b in BACKENDS}
    losses = {}
    for b, step in steps.items():
      p, v, seen = params, velocity, []
      run = jax.jit(step)
      for _ in range(3):
        p, v, value = run(p, v, batch)
        seen.append(float(value))
      losses[b] = seen
    agree = np.allclose(losses["lax"], losses["jaxconv"], rtol=1e-3)
    t = interleaved_medians(list(steps.values()), [params, velocity, batch], rounds=args.rounds)
    text = " ".join(f"{a:.4f}|{b:.4f}" for a, b in zip(losses["lax"], losses["jaxconv"]))
    print(f"{name:>8}  {t[0] * 1e3:9.1f}  {t[1] * 1e3:10.1f}  {t[0] / t[1]:5.2f}x  {text}")
    if not agree:
      print(f"  losses differ beyond 1e-3: {losses}")
      return 1
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
