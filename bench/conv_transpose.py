"""Transposed convolution: `jaxconv.conv_transpose` beside `lax.conv_transpose` and PyTorch.

Decoder-style layers (stride 2, SAME, 3x3 and 4x4 kernels, channels-last), timed interleaved in
one process: the forward, or with ``--train`` the forward and both gradients. PyTorch
(`torch.nn.functional.conv_transpose2d`, channels-last, padding chosen to give the same output
size) runs beside them when it is installed; it is never a dependency of jaxconv. Times are
medians over the rounds; each ratio is the median of the per-round ratios, with their quartiles
in brackets (`jaxconv._timing.round_ratios`):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch -e .
    /tmp/torchvenv/bin/python bench/conv_transpose.py [--train] [--also col2im,subpixel] [--gemm]

``--gemm`` (forward only) also times the product `col2im` is built on, alone: the undilated input
as a (N * H * W, C) matrix times a (C, k * k * O) one, in JAX and in PyTorch. Every transposed
convolution that multiplies no inserted zero does those products, so the JAX GEMM's time is what a
GEMM-based forward cannot go below, and PyTorch's whole transposed convolution is timed beside it.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle PyTorch threads leave XLA the cores

import jax
import numpy as np

import jaxconv
from jaxconv import _host_memory as host_memory
from jaxconv import _tune
from jaxconv._cache import available_cores
from jaxconv._timing import interleaved_call_rounds, ratio_text

HIGHEST = jax.lax.Precision.HIGHEST
DN = ("NHWC", "HWIO", "NHWC")
# (name, batch, input size, input features, output features, kernel)
LAYERS = [
  ("decoder-28x128-k3", 8, 28, 128, 64, 3),
  ("decoder-28x128-k4", 8, 28, 128, 64, 4),
  ("decoder-56x64-k4", 8, 56, 64, 32, 4),
  ("decoder-14x256-k3", 8, 14, 256, 128, 3),
]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--min-round-s", type=float, default=0.05)
  parser.add_argument("--train", action="store_true", help="forward and both gradients")
  parser.add_argument(
    "--also", default="", help="comma-separated algorithms timed forced, beside auto (col2im,...)"
  )
  parser.add_argument(
    "--gemm", action="store_true", help="also time col2im's GEMM alone (forward only)"
  )
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  if args.gemm and args.train:
    parser.error("--gemm times the forward's GEMM: leave out --train")
  host_memory.apply_option(args)
  try:
    import torch

    torch.set_num_threads(available_cores())
  except ImportError:
    torch = None
  print(
    f"jax {jax.__version__}, jaxconv {jaxconv.__version__}, "
    f"torch {torch.__version__ if torch else 'not installed'}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
    f"host memory {host_memory.state()}, "
    f"{'training step' if args.train else 'forward'}"
  )
  args.also = [a for a in args.also.split(",") if a]
  header = ["layer", "torch ms", "lax ms", "jaxconv ms", "x lax", "x torch", "auto runs"]
  header += [f"{a} {unit}" for a in args.also for unit in ("ms", "x lax")]
  if args.gemm:
    header += ["GEMM ms", "torch GEMM ms"]
  print("  ".join(f"{h:>17}" for h in header))
  rng = np.random.default_rng(0)
  for layer in LAYERS:
    row = _row(layer, args, torch, rng)
    print("  ".join(f"{v:>17}" for v in row))
    sys.stdout.flush()
  return 0


def _row(layer, args, torch, rng) -> list[str]:
  """One layer's timings, as table cells."""
  name, n, hw, c, o, k = layer
  x = rng.standard_normal((n, hw, hw, c)).astype(np.float32)
  w = (rng.standard_normal((k, k, c, o)) / np.sqrt(k * k * c)).astype(np.float32)
  y_shape = (n, 2 * hw, 2 * hw, o)
  ct = rng.standard_normal(y_shape).astype(np.float32)
  kw = dict(strides=(2, 2), padding="SAME", dimension_numbers=DN, precision=HIGHEST)

  def step(fn):
    if not args.train:
      return jax.jit(lambda a, b, g: fn(a, b))
    return jax.jit(lambda a, b, g: jax.vjp(fn, a, b)[1](g))

  fns = {
    "lax": step(lambda a, b: jax.lax.conv_transpose(a, b, **kw)),
    "jaxconv": step(lambda a, b: jaxconv.conv_transpose(a, b, **kw)),
  }
  for alg in args.also:
    fns[alg] = step(lambda a, b, alg=alg: jaxconv.conv_transpose(a, b, **kw, algorithm=alg))
  xj, wj, cj = (jax.device_put(v) for v in (x, w, ct))
  runs = _phases(fns["jaxconv"], xj, wj, cj)  # before the first call, which caches the trace
  ref = jax.lax.conv_transpose(xj, wj, **kw)
  got = jaxconv.conv_transpose(xj, wj, **kw)
  assert ref.shape == y_shape and np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
  calls = {f: (lambda fn=fn: jax.block_until_ready(fn(xj, wj, cj))) for f, fn in fns.items()}
  if torch is not None:
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(2, 3, 0, 1)))  # (C, O, k, k)
    wt = wt.contiguous(memory_format=torch.channels_last)
    ctt = torch.from_numpy(ct).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    extra = 1 if k % 2 else 0  # output_padding that makes the output 2 * hw, as SAME does

    def run_torch(xt=xt, wt=wt, ctt=ctt, extra=extra):
      conv = torch.nn.functional.conv_transpose2d
      if not args.train:
        with torch.inference_mode():
          return conv(xt, wt, stride=2, padding=1, output_padding=extra)
      a, b = xt.detach().requires_grad_(), wt.detach().requires_grad_()
      out = conv(a, b, stride=2, padding=1, output_padding=extra)
      out.backward(ctt)
      return out

    assert tuple(run_torch().permute(0, 2, 3, 1).shape) == y_shape
    calls["torch"] = run_torch
  if args.gemm:  # col2im's product alone: (N * H * W, C) @ (C, k * k * O)
    a = rng.standard_normal((n * hw * hw, c)).astype(np.float32)
    b = rng.standard_normal((c, k * k * o)).astype(np.float32)
    aj, bj = jax.device_put(a), jax.device_put(b)
    gemm = jax.jit(lambda p, q: jax.numpy.dot(p, q, precision=HIGHEST))
    calls["gemm"] = lambda: jax.block_until_ready(gemm(aj, bj))
    if torch is not None:
      at, bt = torch.from_numpy(a), torch.from_numpy(b)
      calls["torch gemm"] = lambda: torch.mm(at, bt)
  for call in calls.values():
    call()
  rounds = interleaved_call_rounds(calls, rounds=args.rounds, min_round_s=args.min_round_s)
  t = {f: float(np.median(r)) for f, r in rounds.items()}
  torch_ms = f"{t['torch'] * 1e3:.2f}" if "torch" in t else "-"
  vs_torch = ratio_text(rounds["torch"], rounds["jaxconv"]) if "torch" in t else "-"
  row = [name, torch_ms, f"{t['lax'] * 1e3:.2f}", f"{t['jaxconv'] * 1e3:.2f}"]
  row += [ratio_text(rounds["lax"], rounds["jaxconv"]), vs_torch, runs]
  for alg in args.also:
    row += [f"{t[alg] * 1e3:.2f}", ratio_text(rounds["lax"], rounds[alg])]
  if args.gemm:
    row += [f"{t[f] * 1e3:.2f}" if f in t else "-" for f in ("gemm", "torch gemm")]
  return row


def _phases(step, x, w, ct) -> str:
  """What auto runs in the timed step: the forward and, with --train, the gradients."""
  with _tune.planned() as seen:
    step.trace(x, w, ct).lower()
  return "+".join(dict.fromkeys(p.label for p in seen))


if __name__ == "__main__":
  sys.exit(main())
