"""What each class of the ResNet's 3x3 layers costs inside its whole training step.

`bench/train_model.py`'s ResNet (32x32 images, batch 32) has eleven stride-1 3x3 convolutions
whose input and output widths are equal: two at 32 channels (32x32 pixels), three each at 64
(16x16), 128 (8x8) and 256 (4x4). For each width this script builds the same training step with
those convolutions skipped (each returns its input, plus ``0 * sum(kernel)`` so that the kernel
still has a gradient), and times every variant with lax, with jaxconv (tuned) and, where it is
installed, with PyTorch, all in the same interleaved rounds (`jaxconv._timing`). A class's cost
in place is the whole step's time less the step's without it, paired within each round (median):
its forwards, input gradients and kernel gradients as the model runs them, with the neighbouring
work, the caches and the threads as they are there. Set beside the same layers' steps timed one
by one (`bench/pytorch.py --train --shapes cifar-resnet`), it shows what a layer costs in place
that it does not cost alone.

  /tmp/torchvenv/bin/python bench/layer_costs.py [--rounds 9] [--keep-host-memory]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_model

import jaxconv
from jaxconv import _host_memory as host_memory
from jaxconv._cache import available_cores
from jaxconv._timing import interleaved_call_rounds

WIDTHS = (32, 64, 128, 256)
torch = train_model.torch


def _in_class(width: int | None, hwio: tuple, stride: int) -> bool:
  """Whether a convolution (kernel shape in HWIO order) is a stride-1 3x3 `width` -> `width` one."""
  return width is not None and tuple(hwio) == (3, 3, width, width) and stride == 1


def _skipping(conv, width: int | None):
  """`conv` except for the `width` class (`_in_class`), whose convolutions return their input."""

  def skipped(x, w, strides, padding, **kwargs):
    if _in_class(width, w.shape, max(strides)):
      return x + 0 * jnp.sum(w)
    return conv(x, w, strides, padding, **kwargs)

  return skipped


def _step(backend: str, width: int | None):
  """`train_model`'s SGD-momentum step of the ResNet, with the `width` class skipped."""
  resnet_loss = train_model.MODELS["resnet"][1]

  def loss(params, batch, conv, transpose):
    return resnet_loss(params, batch, _skipping(conv, width), transpose)

  return train_model._step(loss, backend)


def _torch_calls(params, batch) -> dict:
  """PyTorch's step per variant; its convolution is `train_model._torch_conv`, skipped likewise."""
  conv, skip = train_model._torch_conv, {"width": None}

  def skipped(x, w, stride=1):
    o, i, kh, kw = w.shape  # OIHW
    if _in_class(skip["width"], (kh, kw, i, o), stride):
      return x + 0 * w.sum()
    return conv(x, w, stride)

  train_model._torch_conv = skipped  # looked up by `resnet_torch_loss` at every call
  calls = {}
  for width in (None, *WIDTHS):
    step = train_model._torch_step(
      "resnet", train_model._torch_params(params), train_model._torch_batch("resnet", batch)
    )

    def run(step=step, width=width):
      skip["width"] = width
      return step()

    calls[(width, "torch")] = run
  return calls


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=9)
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  host_memory.apply_option(args)
  init, _, make_batch = train_model.MODELS["resnet"]
  params, batch = init(jax.random.key(0)), make_batch(jax.random.key(1))
  velocity = jax.tree.map(jnp.zeros_like, params)
  backends = ["lax", "jaxconv"] + (["torch"] if torch is not None else [])
  calls = {}
  for width in (None, *WIDTHS):
    for backend in ("lax", "jaxconv"):
      step = _step(backend, width)
      if backend == "jaxconv":
        jaxconv.tune(step, params, velocity, batch)
      run = jax.jit(step).lower(params, velocity, batch).compile()
      calls[(width, backend)] = lambda run=run: jax.block_until_ready(run(params, velocity, batch))
  if torch is not None:
    torch.set_num_threads(available_cores())
    calls.update(_torch_calls(params, batch))
  for call in calls.values():
    call()
  t = interleaved_call_rounds(calls, rounds=args.rounds)
  print(
    f"jax {jax.__version__}, jaxconv {jaxconv.__version__}, "
    f"torch {torch.__version__ if torch is not None else 'not installed'}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, host memory {host_memory.state()}"
  )
  print("ResNet step, ms (medians), with one class of stride-1 3x3 layers skipped:")
  print(f"{'skipped':>16}" + "".join(f"{b:>10}" for b in backends))
  for width in (None, *WIDTHS):
    name = "none" if width is None else f"{width} channels"
    print(f"{name:>16}" + "".join(f"{np.median(t[(width, b)]) * 1e3:10.1f}" for b in backends))
  print("each class's cost in place, ms (whole step less the step without it, paired per round):")
  for width in WIDTHS:
    diffs = [np.median(np.subtract(t[(None, b)], t[(width, b)])) * 1e3 for b in backends]
    print(f"{f'{width} channels':>16}" + "".join(f"{d:10.1f}" for d in diffs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
