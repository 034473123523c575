"""PyTorch beside lax and jaxconv on the same layers, interleaved in one process.

PyTorch is never a dependency of jaxconv: install it next to jaxconv in a separate environment,
for example

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch -e .
    /tmp/torchvenv/bin/python bench/pytorch.py --shapes resnet,seed

Each layer of the shape table with symmetric padding (1-D, 2-D or 3-D) runs as
`torch.nn.functional.conv1d/2d/3d` on channels-last tensors beside `lax.conv_general_dilated` and
jaxconv's `auto` (which uses the tuning cache, see docs/tuning.md), with as many threads as the
process may use. ``--train`` times a training step of each layer instead: the forward and both
gradients (``jax.vjp`` and its pullback; PyTorch's autograd ``backward``). PyTorch's OpenMP
threads are told to sleep when idle (``OMP_WAIT_POLICY=PASSIVE``) so they leave the cores to XLA.
Every function is warmed up, then timed in interleaved rounds (each call repeated for at least
`--min-round-s`); the table gives medians, and each ratio as the median of the per-round
ratios with their quartiles in brackets (`jaxconv._timing.round_ratios`).
"""

from __future__ import annotations

import argparse
import os
import sys

# PyTorch's OpenMP threads otherwise spin for a while after each call, taking the cores XLA's
# threads need next (measured: jaxconv's seed layer 26 ms beside spinning threads, 3-5 ms alone).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import numpy as np

import jaxconv
from jaxconv import _bench
from jaxconv import _host_memory as host_memory
from jaxconv._cache import available_cores
from jaxconv._shapes import select
from jaxconv._timing import interleaved_call_rounds, ratio_text

HIGHEST = jax.lax.Precision.HIGHEST


def _torch_padding(shape) -> int | None:
  """The symmetric padding PyTorch takes for this layer, or None."""
  kernel = [shape.rhs[i] for i, c in enumerate(shape.layout[1]) if c not in "IO"]
  if shape.padding == "VALID":
    return 0
  if shape.padding == "SAME":
    same = len(set(kernel)) == 1 and kernel[0] % 2 and max(shape.strides) == 1
    return kernel[0] // 2 if same else None
  pads = {p for pair in shape.padding for p in pair}
  return pads.pop() if len(pads) == 1 else None


def _channels_first(a: np.ndarray, torch):
  """A channels-last numpy array as PyTorch's channels-first tensor in channels-last memory."""
  t = torch.from_numpy(np.ascontiguousarray(a)).movedim(-1, 1)
  formats = {4: torch.channels_last, 5: torch.channels_last_3d}
  return t.contiguous(memory_format=formats[t.ndim]) if t.ndim in formats else t.contiguous()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="resnet,seed", help="shape names or tags")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--min-round-s", type=float, default=0.05)
  parser.add_argument("--train", action="store_true", help="forward and both gradients")
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  host_memory.apply_option(args)
  try:
    import torch
  except ImportError:
    print("PyTorch is not installed in this environment (see the module docstring)")
    return 0
  threads = available_cores()
  torch.set_num_threads(threads)
  print(
    f"torch {torch.__version__} ({threads} threads), jax {jax.__version__}, jaxconv "
    f"{jaxconv.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
    f"host memory {host_memory.state()}, "
    f"{'training step (forward and both gradients)' if args.train else 'forward'}"
  )
  gemm, (bandwidth, _) = _bench.measure_gemm(), _bench.measure_bandwidth()
  print(
    f"machine: float32 GEMM {gemm / 1e9:.0f} GFLOP/s, memory {bandwidth / 1e9:.1f} GB/s in place; "
    "auto's rates count the direct convolution's FLOPs and input + output bytes"
  )
  header = ["shape", "torch ms", "lax ms", "auto ms", "auto x lax", "auto x torch", "auto picks"]
  header += ["auto GFLOP/s", "auto GB/s"]
  print("  ".join(f"{h:>17}" for h in header))
  for shape in select(args.shapes.split(","), dtype="float32"):
    pad = _torch_padding(shape)
    nd = len(shape.lhs) - 2
    if shape.layout[0] != ("NWC", "NHWC", "NDHWC")[nd - 1] or pad is None:
      continue
    x, k = shape.arrays()
    kw = dict(**shape.kwargs(), precision=HIGHEST)
    xt = _channels_first(x, torch)
    # (*K, I, O) -> (O, I, *K), in the same memory format as the input.
    wt = _channels_first(np.moveaxis(k, (-1, -2), (0, -1)), torch)
    conv = getattr(torch.nn.functional, f"conv{nd}d")
    ct_np = (
      np.random.default_rng(1)
      .standard_normal(
        jax.eval_shape(lambda a, b, kw=kw: jax.lax.conv_general_dilated(a, b, **kw), x, k).shape
      )
      .astype(x.dtype)
    )
    ctt = _channels_first(ct_np, torch)

    def run_torch(xt=xt, wt=wt, shape=shape, pad=pad, conv=conv, ctt=ctt):
      if not args.train:
        with torch.inference_mode():
          return conv(xt, wt, stride=shape.strides, padding=pad, groups=shape.groups)
      a, b = xt.detach().requires_grad_(), wt.detach().requires_grad_()
      y = conv(a, b, stride=shape.strides, padding=pad, groups=shape.groups)
      y.backward(ctt)
      return y.detach()

    xj, kj, ctj = jax.device_put(x), jax.device_put(k), jax.device_put(ct_np)

    def step(conv_fn):
      if not args.train:
        return jax.jit(lambda a, b, g: conv_fn(a, b))
      return jax.jit(lambda a, b, g: jax.vjp(conv_fn, a, b)[1](g))

    lax_fn = step(lambda a, b, kw=kw: jax.lax.conv_general_dilated(a, b, **kw))
    auto_fn = step(lambda a, b, kw=kw: jaxconv.conv_general_dilated(a, b, **kw))
    plan = jaxconv.plan(xj, kj, **kw)
    ref = np.asarray(jax.lax.conv_general_dilated(xj, kj, **kw))
    got = run_torch().movedim(1, -1).numpy()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 1e-4, (shape.name, err)
    calls = {
      "torch": run_torch,
      "lax": lambda f=lax_fn, a=xj, b=kj, c=ctj: jax.block_until_ready(f(a, b, c)),
      "auto": lambda f=auto_fn, a=xj, b=kj, c=ctj: jax.block_until_ready(f(a, b, c)),
    }
    for c in calls.values():
      c()
    rounds = interleaved_call_rounds(calls, rounds=args.rounds, min_round_s=args.min_round_s)
    t = {name: float(np.median(r)) for name, r in rounds.items()}
    row = [
      shape.name,
      f"{t['torch'] * 1e3:.2f}",
      f"{t['lax'] * 1e3:.2f}",
      f"{t['auto'] * 1e3:.2f}",
      ratio_text(rounds["lax"], rounds["auto"]),
      ratio_text(rounds["torch"], rounds["auto"]),
      plan.label,
      f"{plan.flops * (3 if args.train else 1) / t['auto'] / 1e9:.1f}",
      f"{(x.nbytes + ct_np.nbytes) / t['auto'] / 1e9:.1f}",
    ]
    print("  ".join(f"{c:>17}" for c in row))
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
