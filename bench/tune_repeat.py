"""How repeatable the tuner is: one geometry measured several times in one process.

Each repetition runs `jaxconv._tune.measure` on the same convolution (NHWC input, HWIO kernel,
float32, precision HIGHEST) without storing it, and prints every candidate's median, the number of
rounds it was timed in, and what `auto` would pick from that measurement alone. On a quiet machine
the medians and the pick agree between repetitions; where they do not, a single measurement
decides by chance.

Run from the repository root with jaxconv importable (``pip install -e .`` or ``PYTHONPATH=.``).

Usage:
  python bench/tune_repeat.py --input 32x8x8x128 --kernel 3x3x128x256 --stride 2 [--repeats 8]
      [--padding 1] [--keep-host-memory]
"""

from __future__ import annotations

import argparse
import collections
import sys

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _host_memory as host_memory
from jaxconv import _tune
from jaxconv._geometry import normalize


def _dims(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.lower().split("x"))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", type=_dims, required=True, help="NHWC, e.g. 32x8x8x128")
  parser.add_argument("--kernel", type=_dims, required=True, help="HWIO, e.g. 3x3x128x256")
  parser.add_argument("--stride", type=int, default=1)
  parser.add_argument("--padding", type=int, default=None, help="per side (default: k // 2)")
  parser.add_argument("--repeats", type=int, default=8)
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  host_memory.apply_option(args)

  pad = args.kernel[0] // 2 if args.padding is None else args.padding
  g = normalize(
    jax.ShapeDtypeStruct(args.input, jnp.float32),
    jax.ShapeDtypeStruct(args.kernel, jnp.float32),
    (args.stride,) * (len(args.input) - 2),
    ((pad, pad),) * (len(args.input) - 2),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=lax.Precision.HIGHEST,
  )
  print(f"{g.describe()}; jax {jax.__version__}; {host_memory.state()}")
  print("median ms per candidate (rounds timed); auto's pick from this measurement alone")
  picks = collections.Counter()
  for i in range(args.repeats):
    rounds = collections.Counter()

    def timer(label, call, rounds=rounds):
      rounds[label] += 1
      return _tune._default_timer(label, call)

    entry = _tune.measure(g, timer=timer, store=False)
    pick, _ = _tune.decide(g, entry, list(entry["times"]))
    picks[pick] += 1
    cells = ", ".join(
      f"{label} {t * 1e3:.2f} ({rounds[label]})" for label, t in sorted(entry["times"].items())
    )
    print(f"{i + 1:2d}: {cells} -> {pick}", flush=True)
  print("picks:", ", ".join(f"{label} {n}" for label, n in picks.most_common()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
