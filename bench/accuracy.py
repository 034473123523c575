"""Normwise relative error of each algorithm against a float64 reference.

Random normal input and kernel, 3x3 SAME convolutions with C input and output channels. Every
algorithm sees the same (rounded) inputs, so the figure is the algorithm's own error, next to direct
convolution's (lax at HIGHEST). Writes the markdown table printed here to --out.

  python bench/accuracy.py --out docs/accuracy.md
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv

jax.config.update("jax_enable_x64", True)

NHWC = ("NHWC", "HWIO", "NHWC")
ALGORITHMS = ("lax", "im2col", "winograd2", "winograd4", "winograd6")


def relative_errors(
  channels: int, dtype, preferred, size: int, batch: int, kernel: int, seed: int
) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, size, size, channels)).astype(dtype)
  w = rng.standard_normal((kernel, kernel, channels, channels)).astype(dtype)
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC, precision="highest")
  exact = np.asarray(
    lax.conv_general_dilated(np.asarray(x, np.float64), np.asarray(w, np.float64), **kw)
  )
  kw["preferred_element_type"] = preferred
  out = {}
  for algorithm in ALGORITHMS:
    y = np.asarray(jaxconv.conv_general_dilated(x, w, **kw, algorithm=algorithm), np.float64)
    out[algorithm] = float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--channels", default="64,512")
  parser.add_argument("--size", type=int, default=16)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  lines = [
    f"Normwise relative error against float64, 3x3 SAME, {args.batch}x{args.size}x{args.size}xC "
    f"-> C, random normal data, median of {args.seeds} seeds "
    f"(jax {jax.__version__}, {jax.devices()[0].device_kind}).",
    "",
    "| dtype | C | "
    + " | ".join(ALGORITHMS)
    + " | "
    + " | ".join(f"{a} / lax" for a in ALGORITHMS[2:])
    + " |",
    "|---" * (2 + len(ALGORITHMS) + len(ALGORITHMS) - 2) + "|",
  ]
  # bfloat16 results are rounded to bfloat16, which hides the algorithm's error; the float32-output
  # row (preferred_element_type) shows it.
  configs = [
    ("float32", np.float32, None),
    ("bfloat16", jnp.bfloat16, None),
    ("bfloat16 -> float32", jnp.bfloat16, np.float32),
  ]
  for label, dtype, preferred in configs:
    for c in map(int, args.channels.split(",")):
      errs = [
        relative_errors(c, dtype, preferred, args.size, args.batch, 3, s) for s in range(args.seeds)
      ]
      med = {a: float(np.median([e[a] for e in errs])) for a in ALGORITHMS}
      cells = [f"{med[a]:.2e}" for a in ALGORITHMS]
      ratios = [f"{med[a] / med['lax']:.2f}" for a in ALGORITHMS[2:]]
      lines.append(f"| {label} | {c} | " + " | ".join(cells + ratios) + " |")
      print(lines[-1], flush=True)
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
