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

Where PyTorch is importable (it is never a dependency of jaxconv), the same two models also run in
PyTorch (eager, float32, channels-last activations and weights, as many threads as the process may
use, `OMP_WAIT_POLICY=PASSIVE` as in bench/pytorch.py; where JAX runs on a GPU, on that GPU, with
TF32 off as precision HIGHEST has it and cuDNN's benchmark mode on), from the same initial
parameters and batches: batch norm from batch statistics, the same loss, the same update
(v = 0.9 v + g; p = p - 0.01 v). Its three losses are checked against lax's, and its step
(forward, autograd backward, update) is timed in the same interleaved rounds as the two JAX steps
(`interleaved_call_rounds`); ``torch ms`` is its median and ``x torch`` is torch ms / jaxconv ms
(above 1: jaxconv is faster). Without PyTorch these columns are skipped. Every time is a median over
the rounds; every ratio is the median of the per-round ratios, with their quartiles in brackets
(`jaxconv._timing.round_ratios`).

With ``--centre-taps`` every 3x3 convolution kernel (not the transposed convolutions') is cut to
its centre tap before anything runs, in all three backends: the same steps with 1x1 convolutions
of the same strides and widths, so what remains is what a step costs besides its 3x3 convolutions
(normalisation, activations, the loss, the update, the projections).

With ``--refine`` each model's jaxconv step is refined first (`jaxconv.refine`, which tunes it,
then times the whole step with each convolution's alternatives and keeps in the tuning cache the
changes that made it faster), and the steps are then timed in a fresh process.

  python bench/train_model.py [--models resnet,unet] [--rounds 7] [--tune] [--refine]
                              [--centre-taps]
  /tmp/torchvenv/bin/python bench/train_model.py  # with PyTorch installed next to jaxconv
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

# Before PyTorch is imported: its OpenMP threads otherwise spin after each call, taking the cores
# XLA's threads need next (see bench/pytorch.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv
from jaxconv import _host_memory as host_memory
from jaxconv._cache import available_cores
from jaxconv._timing import interleaved_call_rounds, interleaved_rounds, ratio_text

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # never a dependency of jaxconv: the PyTorch columns are skipped
  torch = F = None

DN = ("NHWC", "HWIO", "NHWC")
UP = ("u1", "u2")  # the U-Net's transposed convolutions' kernels
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


def centre_taps(params):
  """`params` with every 3x3 convolution kernel but the transposed ones cut to its centre tap."""

  def cut(path, p):
    up = getattr(path[-1], "key", None) in UP
    return p[1:2, 1:2] if p.ndim == 4 and p.shape[:2] == (3, 3) and not up else p

  return jax.tree_util.tree_map_with_path(cut, params)


def _step(loss, backend):
  conv, transpose = BACKENDS[backend]

  def step(params, velocity, batch):
    value, grads = jax.value_and_grad(loss)(params, batch, conv, transpose)
    velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - 0.01 * v, params, velocity)
    return params, velocity, value

  return step


# The same models in PyTorch (NCHW tensors in channels-last memory). ----------------------------


def _torch_device() -> str:
  """PyTorch's device: the GPU where JAX runs on one (and PyTorch sees it), else the CPU."""
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_nchw(a) -> torch.Tensor:
  """An NHWC array as an NCHW float32 tensor in channels-last memory."""
  t = torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2)
  return t.to(_torch_device()).contiguous(memory_format=torch.channels_last)


def _torch_kernel(w, transposed: bool = False) -> torch.Tensor:
  """An HWIO kernel as conv2d's OIHW weight, or as conv_transpose2d's for `_torch_up`."""
  w = np.array(w, np.float32)
  # lax.conv_transpose (transpose_kernel=False) correlates the dilated input with w itself;
  # conv_transpose2d correlates it with its (I, O, kH, kW) weight flipped in H and W.
  w = w[::-1, ::-1].transpose(2, 3, 0, 1) if transposed else w.transpose(3, 2, 0, 1)
  t = torch.from_numpy(np.ascontiguousarray(w)).to(_torch_device())
  return t.contiguous(memory_format=torch.channels_last)


def _torch_params(params) -> dict:
  """The JAX parameters as leaf tensors that require grad, in the same tree."""

  def leaf(path, p):
    if p.ndim != 4:
      t = torch.from_numpy(np.array(p, np.float32)).to(_torch_device())
    else:
      t = _torch_kernel(p, transposed=getattr(path[-1], "key", None) in UP)
    return t.requires_grad_()

  return jax.tree_util.tree_map_with_path(leaf, params)


def _torch_conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
  return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)  # odd kernels: `_conv`'s pads


def _torch_norm(x: torch.Tensor, p: dict) -> torch.Tensor:
  # Batch statistics (biased variance), no running statistics: `_norm`.
  return F.batch_norm(x, None, None, p["scale"], p["bias"], training=True, eps=1e-5)


def _torch_up(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
  """`lax.conv_transpose(h, w, (2, 2), "SAME")` for a 3x3 kernel (w from `_torch_kernel`).

  lax pads the 2x-dilated input by (2, 1) (its SAME rule: ceil((k + s - 2) / 2) before); with
  padding 0, conv_transpose2d pads it by (k - 1, k - 1) = (2, 2), so drop the last row and column.
  """
  n, m = 2 * h.shape[2], 2 * h.shape[3]
  return F.conv_transpose2d(h, w, stride=2)[:, :, :n, :m]


def resnet_torch_loss(params: dict, batch: tuple) -> torch.Tensor:
  x, labels = batch
  h = F.relu(_torch_norm(_torch_conv(x, params["stem"]), params["stem_bn"]))
  for block, (_, stride) in zip(params["blocks"], STAGES):
    y = F.relu(_torch_norm(_torch_conv(h, block["w1"], stride), block["bn1"]))
    y = _torch_norm(_torch_conv(y, block["w2"]), block["bn2"])
    skip = _torch_conv(h, block["proj"], stride) if "proj" in block else h
    h = F.relu(y + skip)
  return F.cross_entropy(h.mean((2, 3)) @ params["head"], labels)


def unet_torch_loss(params: dict, batch: tuple) -> torch.Tensor:
  x, target = batch
  e1 = F.relu(_torch_conv(x, params["e1"]))
  e2 = F.relu(_torch_conv(e1, params["e2"], 2))
  e3 = F.relu(_torch_conv(e2, params["e3"], 2))
  d2 = F.relu(_torch_up(e3, params["u2"]))
  d2 = F.relu(_torch_conv(torch.cat([d2, e2], 1), params["d2"]))
  d1 = F.relu(_torch_up(d2, params["u1"]))
  d1 = F.relu(_torch_conv(torch.cat([d1, e1], 1), params["d1"]))
  return F.mse_loss(_torch_conv(d1, params["out"]), target)


TORCH_LOSSES = {"resnet": resnet_torch_loss, "unet": unet_torch_loss}


def _torch_batch(name: str, batch) -> tuple:
  x, y = batch
  if name == "resnet":
    y = torch.from_numpy(np.array(y, np.int64)).to(_torch_device())
  else:
    y = _torch_nchw(y)
  return _torch_nchw(x), y


def _torch_step(name: str, params, batch):
  """A callable running one training step in place from `params`; it returns the loss."""
  loss, leaves = TORCH_LOSSES[name], jax.tree.leaves(params)
  velocity = [torch.zeros_like(p) for p in leaves]

  def step() -> torch.Tensor:
    for p in leaves:
      p.grad = None
    value = loss(params, batch)
    value.backward()
    with torch.no_grad():
      for p, v in zip(leaves, velocity):
        v.mul_(0.9).add_(p.grad)
        p.sub_(v, alpha=0.01)
    if value.is_cuda:  # timed as the JAX steps are: until the step's work is done
      torch.cuda.synchronize()
    return value.detach()

  return step


def _check_up() -> float:
  """The largest difference between `_torch_up` and lax.conv_transpose on random data."""
  x, w = jax.random.normal(jax.random.key(2), (2, 16, 16, 128)), unet_init(jax.random.key(3))["u2"]
  ref = lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=DN, precision=HIGHEST)
  got = _torch_up(_torch_nchw(x), _torch_kernel(w, transposed=True)).permute(0, 2, 3, 1)
  err = float(np.abs(got.cpu().numpy() - np.asarray(ref)).max())
  assert err < 1e-4 * float(np.abs(ref).max()), err
  return err


def _model(name: str, centre: bool) -> tuple:
  """A model's loss, initial parameters (3x3 kernels cut to their centre taps if `centre`), zero
  velocity and batch."""
  init, loss, make_batch = MODELS[name]
  params = init(jax.random.key(0))
  if centre:
    params = centre_taps(params)
  return loss, params, jax.tree.map(jnp.zeros_like, params), make_batch(jax.random.key(1))


def _refine_then_rerun(args: argparse.Namespace, argv: list[str]) -> int:
  """Refines each model's jaxconv step, then times them all in a fresh process.

  In the process that refined, compiled steps have run slower afterwards (see `jaxconv.refine`),
  so the timing runs in a new one, which finds the choices in the tuning cache.
  """
  for name in args.models.split(","):
    loss, params, velocity, batch = _model(name, args.centre_taps)
    start = time.perf_counter()
    table = jaxconv.refine(_step(loss, "jaxconv"), params, velocity, batch)
    for row in table:
      if row.reason.startswith("measured in a whole function"):
        print(f"  {name}: {row.geometry.describe()}: {row.algorithm}, {row.reason}")
    print(f"  {name}: {table.summary}, in {time.perf_counter() - start:.0f} s")
  sys.stdout.flush()
  rest = [a for a in argv if a not in ("--refine", "--tune")]
  return subprocess.run([sys.executable, __file__, *rest], check=False).returncode


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet,unet")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument(
    "--tune", action="store_true", help="measure the jaxconv step's convolutions first (cached)"
  )
  parser.add_argument(
    "--refine",
    action="store_true",
    help="then time the step with each convolution's alternatives (jaxconv.refine; cached)",
  )
  parser.add_argument(
    "--centre-taps",
    action="store_true",
    help="cut every 3x3 kernel (not the transposed convolutions') to its centre tap",
  )
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  host_memory.apply_option(args)
  print(
    f"jax {jax.__version__}, jaxconv {jaxconv.__version__}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
    f"host memory {host_memory.state()}, "
    "one SGD-momentum step per call"
    + (", 3x3 kernels cut to their centre taps" if args.centre_taps else "")
  )
  if torch is None:
    print("PyTorch is not installed in this environment: its columns are skipped")
    print(
      f"{'model':>8}  {'lax ms':>9}  {'jaxconv ms':>10}  {'x lax (IQR)':>18}  "
      "losses (lax | jaxconv)"
    )
  else:
    threads = available_cores()
    torch.set_num_threads(threads)
    where = f"{threads} threads"
    if _torch_device() == "cuda":
      # float32 as lax's precision HIGHEST computes it: no TF32 in convolutions or matmuls.
      torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
      torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest kernels, as XLA autotunes
      where = torch.cuda.get_device_name()
    print(
      f"torch {torch.__version__} ({where}, eager, channels-last); "
      f"transposed convolution vs lax: max abs difference {_check_up():.1e}"
    )
    print(
      f"{'model':>8}  {'lax ms':>9}  {'jaxconv ms':>10}  {'torch ms':>9}  {'x lax (IQR)':>18}  "
      f"{'x torch (IQR)':>18}  losses (lax | jaxconv | torch)"
    )
  if args.refine:
    return _refine_then_rerun(args, sys.argv[1:] if argv is None else argv)
  for name in args.models.split(","):
    loss, params, velocity, batch = _model(name, args.centre_taps)
    steps = {b: _step(loss, b) for b in BACKENDS}
    if args.tune:  # fills the tuning cache; later runs reuse it
      table = jaxconv.tune(steps["jaxconv"], params, velocity, batch)
      chosen = collections.Counter(row.algorithm for row in table)
      print(f"  {name}: {len(table)} convolutions tuned, running {dict(chosen)}")
    compiled = {b: jax.jit(s).lower(params, velocity, batch).compile() for b, s in steps.items()}
    losses = {}
    for b, run in compiled.items():
      p, v, seen = params, velocity, []
      for _ in range(3):
        p, v, value = run(p, v, batch)
        seen.append(float(value))
      losses[b] = seen
    if torch is not None:
      torch_step = _torch_step(name, _torch_params(params), _torch_batch(name, batch))
      losses["torch"] = [float(torch_step()) for _ in range(3)]
    agree = all(np.allclose(losses["lax"], seen, rtol=1e-3) for seen in losses.values())
    text = " ".join("|".join(f"{s:.4f}" for s in row) for row in zip(*losses.values()))
    if torch is None:
      rounds = interleaved_rounds(
        list(steps.values()), [params, velocity, batch], rounds=args.rounds
      )
      t = dict(zip(steps, rounds))
    else:  # all three in the same rounds; the JAX steps block on their outputs
      calls = {
        b: lambda c=c, a=(params, velocity, batch): jax.block_until_ready(c(*a))
        for b, c in compiled.items()
      }
      t = interleaved_call_rounds({**calls, "torch": torch_step}, rounds=args.rounds)
    ms = {b: f"{np.median(r) * 1e3:.1f}" for b, r in t.items()}
    cols = [f"{ms['lax']:>9}", f"{ms['jaxconv']:>10}"] + ([f"{ms['torch']:>9}"] if torch else [])
    for base in ["lax", "torch"] if torch else ["lax"]:
      cols.append(f"{ratio_text(t[base], t['jaxconv']):>18}")
    print(f"{name:>8}  " + "  ".join(cols) + f"  {text}")
    if not agree:
      print(f"  losses differ beyond 1e-3: {losses}")
      return 1
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
