"""PyTorch beside lax and jaxconv on the same layers, interleaved in one process.

PyTorch is never a dependency of jaxconv: install it next to jaxconv in a separate environment,
for example

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch -e .
    /tmp/torchvenv/bin/python bench/pytorch.py --shapes resnet,seed

Each layer of the shape table (2-D layers with symmetric padding) runs as
`torch.nn.functional.conv2d` on channels-last tensors under `torch.inference_mode()`, with as many
threads as the process may use, beside `lax.conv_general_dilated` and jaxconv's `auto` (which
uses the tuning cache, see docs/tuning.md). PyTorch's OpenMP threads are told to sleep when idle
(``OMP_WAIT_POLICY=PASSIVE``) so they leave the cores to XLA. Every function is warmed up, then
timed in interleaved rounds (each call repeated for at least `--min-round-s`); the table gives
medians and their ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# PyTorch's OpenMP threads otherwise spin for a while after each call, taking the cores XLA's
# threads need next (measured: jaxconv's seed layer 26 ms beside spinning threads, 3-5 ms alone).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import numpy as np

import jaxconv
from jaxconv._shapes import select

HIGHEST = jax.lax.Precision.HIGHEST


def _torch_padding(shape) -> int | None:
  """The symmetric padding PyTorch takes for this layer, or None."""
  kh, kw = (shape.rhs[shape.layout[1].index(c)] for c in "HW")
  if shape.padding == "VALID":
    return 0
  if shape.padding == "SAME":
    return kh // 2 if kh == kw and kh % 2 and max(shape.strides) == 1 else None
  pads = {p for pair in shape.padding for p in pair}
  return pads.pop() if len(pads) == 1 else None


def _timed(call, min_round_s: float) -> float:
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_round_s:
    call()
    n += 1
  return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="resnet,seed", help="shape names or tags")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--min-round-s", type=float, default=0.05)
  args = parser.parse_args(argv)
  try:
    import torch
  except ImportError:
    print("PyTorch is not installed in this environment (see the module docstring)")
    return 0
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  torch.set_num_threads(threads)
  print(
    f"torch {torch.__version__} ({threads} threads), jax {jax.__version__}, jaxconv "
    f"{jaxconv.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )
  header = ["shape", "torch ms", "lax ms", "auto ms", "auto x lax", "auto x torch", "auto picks"]
  print("  ".join(f"{h:>12}" for h in header))
  for shape in select(args.shapes.split(","), dtype="float32"):
    pad = _torch_padding(shape)
    if shape.layout[0] != "NHWC" or len(shape.lhs) != 4 or pad is None:
      continue
    x, k = shape.arrays()
    kw = dict(**shape.kwargs(), precision=HIGHEST)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    wt = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).contiguous(
      memory_format=torch.channels_last
    )

    def run_torch(xt=xt, wt=wt, shape=shape, pad=pad):
      with torch.inference_mode():
        return torch.nn.functional.conv2d(
          xt, wt, stride=shape.strides, padding=pad, groups=shape.groups
        )

    xj, kj = jax.device_put(x), jax.device_put(k)
    lax_fn = jax.jit(lambda a, b, kw=kw: jax.lax.conv_general_dilated(a, b, **kw))
    auto_fn = jax.jit(lambda a, b, kw=kw: jaxconv.conv_general_dilated(a, b, **kw))
    plan = jaxconv.plan(xj, kj, **kw)
    ref = np.asarray(lax_fn(xj, kj))
    got = run_torch().permute(0, 2, 3, 1).numpy()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 1e-4, (shape.name, err)
    calls = {
      "torch": run_torch,
      "lax": lambda f=lax_fn, a=xj, b=kj: jax.block_until_ready(f(a, b)),
      "auto": lambda f=auto_fn, a=xj, b=kj: jax.block_until_ready(f(a, b)),
    }
    for c in calls.values():
      c()
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
      for name, c in calls.items():
        times[name].append(_timed(c, args.min_round_s))
    t = {name: float(np.median(v)) for name, v in times.items()}
    row = [
      shape.name,
      f"{t['torch'] * 1e3:.2f}",
      f"{t['lax'] * 1e3:.2f}",
      f"{t['auto'] * 1e3:.2f}",
      f"{t['lax'] / t['auto']:.2f}x",
      f"{t['torch'] / t['auto']:.2f}x",
      plan.label,
    ]
    print("  ".join(f"{c:>12}" for c in row))
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
