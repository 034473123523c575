"""Layers' training steps compiled with and without XLA:CPU's concurrency-optimized scheduler.

XLA:CPU's default scheduler runs independent operations side by side, such as a layer's forward and
its two gradients, and keeps the temporaries of all of them alive. This script compiles each
layer's training step (`jaxconv bench --train`'s ``(x, k, dy) -> (y, dx, dk)``), with lax and with
`auto`, twice from the same lowering: once as it is and once with the compiler option
``xla_cpu_enable_concurrency_optimized_scheduler=False``, which runs them one after another. All
four programs are timed in the same interleaved rounds, so the effect of the scheduler on each
step is a paired ratio, free of the noise between processes that the ``XLA_FLAGS`` form of the
same setting suffers from.

Run from the repository root with jaxconv importable (``pip install -e .`` or ``PYTHONPATH=.``),
after ``jaxconv tune --train`` of the same layers (`auto` otherwise runs its heuristic choices).

Usage:
  python bench/scheduler.py [--shapes NAMES] [--rounds 9] [--keep-host-memory]
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from jaxconv import _host_memory as host_memory
from jaxconv._bench import conv_fn, what_ran
from jaxconv._shapes import select
from jaxconv._timing import interleaved_call_rounds, ratio_text

# ResNet-50's 3x3 layers at batch 8, as `jaxconv bench --train` times them in docs/benchmarks.md.
LAYERS = (
  "resnet50-56x64,resnet50-28x128,resnet50-14x256,resnet50-7x512,"
  "resnet50-56x128-s2,resnet50-28x256-s2,resnet50-14x512-s2"
)
SEQUENTIAL = {"xla_cpu_enable_concurrency_optimized_scheduler": False}


def main(argv: list[str] | None = None) -> int:
  args = layer_arguments(__doc__, argv)

  print(f"jax {jax.__version__}; {host_memory.state()}; medians in ms, then paired speedups")
  for shape in select(args.shapes.split(",")):
    x, k = shape.arrays()
    operands = (x, k, conv_fn(shape, "lax")(x, k))
    programs = {}
    for algorithm in ("lax", "auto"):
      lowered = jax.jit(conv_fn(shape, algorithm, train=True)).lower(*operands)
      programs[algorithm] = lowered.compile()
      programs[f"{algorithm} sequential"] = lowered.compile(compiler_options=SEQUENTIAL)
    calls = {name: blocking(program, operands) for name, program in programs.items()}
    for call in calls.values():
      call()  # warm up
    times = interleaved_call_rounds(calls, rounds=args.rounds, min_round_s=args.min_round_s)
    picks = what_ran(conv_fn(shape, "auto", train=True), *operands)
    print(
      f"{shape.name} ({picks}): "
      + ", ".join(f"{name} {np.median(t) * 1e3:.2f}" for name, t in times.items())
    )
    print(
      f"  auto x lax {ratio_text(times['lax'], times['auto'])}; "
      f"sequential x default: auto {ratio_text(times['auto'], times['auto sequential'])}, "
      f"lax {ratio_text(times['lax'], times['lax sequential'])}",
      flush=True,
    )
  return 0


def layer_arguments(doc: str, argv: list[str] | None) -> argparse.Namespace:
  """The options of the scripts that time layers' steps (shapes, rounds, host memory), applied."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--shapes", default=LAYERS, help="shape names or tags (bench --list)")
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--min-round-s", type=float, default=0.1)
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  host_memory.apply_option(args)
  return args


def blocking(program, operands):
  """A call of the compiled `program` on `operands` that waits for its results."""
  return lambda: jax.block_until_ready(program(*operands))


if __name__ == "__main__":
  sys.exit(main())
