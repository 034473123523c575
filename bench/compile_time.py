"""Compile time per layer: each jaxconv algorithm against lax.

What a user waits for on every new shape: tracing, lowering and XLA compilation of one jitted
convolution. Each measurement starts from empty caches (`jax.clear_caches()`, which also empties
XLA's in-memory executable cache), so nothing is reused from a previous layer or algorithm; the
algorithms are measured in interleaved rounds and the best of `--repeats` is kept. The first
compilation in a process pays one-off start-up costs, so one throw-away layer is compiled first.

  python bench/compile_time.py --out docs/compile_time.md      # ResNet-50's 3x3 layers
  python bench/compile_time.py --shapes vgg --algorithms auto,winograd4
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxconv._bench import conv_fn
from jaxconv._shapes import Shape, by_name, select

ALGORITHMS = ("lax", "auto", "im2col", "winograd2", "winograd4")


def compile_seconds(shape: Shape, algorithm: str, x, k) -> tuple[float, float]:
  """(trace and lower, XLA compile) seconds of one cold compilation."""
  jax.clear_caches()
  start = time.perf_counter()
  lowered = jax.jit(conv_fn(shape, algorithm)).lower(x, k)
  mid = time.perf_counter()
  lowered.compile()
  return mid - start, time.perf_counter() - mid


def run(shapes: list[Shape], algorithms: list[str], repeats: int) -> dict[str, dict[str, tuple]]:
  """Best-of-`repeats` (lower, compile) seconds per layer and algorithm."""
  warm = by_name("tiny")
  for algorithm in algorithms:
    compile_seconds(warm, algorithm, *warm.arrays())
  results: dict[str, dict[str, tuple]] = {}
  for shape in shapes:
    x, k = shape.arrays()
    best = {a: (np.inf, np.inf) for a in algorithms}
    for _ in range(repeats):
      for a in algorithms:
        t = compile_seconds(shape, a, x, k)
        if sum(t) < sum(best[a]):
          best[a] = t
    results[shape.name] = best
    print(
      f"{shape.name:24s} " + "  ".join(f"{a} {sum(t):.3f}" for a, t in best.items()), flush=True
    )
  return results


def table(results: dict[str, dict[str, tuple]], algorithms: list[str]) -> str:
  head = "| layer | " + " | ".join(algorithms) + " |"
  lines = [head, "|---" * (len(algorithms) + 1) + "|"]
  for name, row in results.items():
    lines.append(f"| {name} | " + " | ".join(f"{sum(row[a]):.3f}" for a in algorithms) + " |")
  means = {a: float(np.mean([sum(r[a]) for r in results.values()])) for a in algorithms}
  lines.append("| **mean** | " + " | ".join(f"**{means[a]:.3f}**" for a in algorithms) + " |")
  if "lax" in algorithms:
    lines.append(
      "| mean / lax's | " + " | ".join(f"{means[a] / means['lax']:.1f}x" for a in algorithms) + " |"
    )
  lower = {a: float(np.mean([r[a][0] for r in results.values()])) for a in algorithms}
  lines += [
    "",
    "Seconds per layer (trace + lower + XLA compile). Of the mean, tracing and lowering take: "
    + ", ".join(f"{a} {lower[a]:.3f} s" for a in algorithms)
    + ".",
  ]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default="resnet", help="comma-separated shape names or tags")
  p.add_argument("--dtype", default="float32", help="only layers of this dtype ('' for all)")
  p.add_argument("--algorithms", default=",".join(ALGORITHMS))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", help="also write the markdown table here")
  args = p.parse_args(argv)
  shapes = [s for s in select(args.shapes.split(",")) if not args.dtype or s.dtype == args.dtype]
  algorithms = args.algorithms.split(",")
  text = table(run(shapes, algorithms, args.repeats), algorithms)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"# Compile time\n\n{text}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
