"""Normwise relative error of each algorithm against a float64 reference.

Random normal input and kernel, SAME convolutions with C input and output channels: 3x3 (``--case
2d``), 3x3x3 (``3d``) or a depthwise k x k layer (``depthwise``, ``--kernel``). Every algorithm
that can run the case sees the same (rounded) inputs, so the figure is the algorithm's own error,
next to direct convolution's (lax at HIGHEST). Writes the markdown table printed here to --out.

  python bench/accuracy.py --out /tmp/accuracy-2d.md
  python bench/accuracy.py --case 3d --channels 32,128 --size 12
  python bench/accuracy.py --case depthwise --kernel 7 --channels 96
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

CANDIDATES = ("lax", "im2col", "direct", "winograd2", "winograd4", "winograd6")


def _problem(case: str, channels: int, size: int, batch: int, kernel: int):
  """Input shape, kernel shape and keyword arguments of one accuracy case."""
  if case == "3d":
    kw = dict(window_strides=(1,) * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return (batch, size // 2, size, size, channels), (3, 3, 3, channels, channels), kw
  kw = dict(window_strides=(1, 1), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if case == "depthwise":
    kw["feature_group_count"] = channels
    return (batch, size, size, channels), (kernel, kernel, 1, channels), kw
  return (batch, size, size, channels), (kernel, kernel, channels, channels), kw


def algorithms(case: str, size: int = 8, kernel: int = 3) -> tuple[str, ...]:
  """The candidates that can run `case` (jaxconv's registry decides)."""
  lhs, rhs, kw = _problem(case, 8, size, 1, kernel)
  able = []
  for a in CANDIDATES:
    try:
      jaxconv.plan(jnp.zeros(lhs), jnp.zeros(rhs), padding="SAME", **kw, algorithm=a)
    except NotImplementedError:
      continue
    able.append(a)
  return tuple(able)


def relative_errors(
  case: str, channels: int, dtype, preferred, size: int, batch: int, kernel: int, seed: int
) -> dict:
  rng = np.random.default_rng(seed)
  lhs, rhs, kw = _problem(case, channels, size, batch, kernel)
  x = rng.standard_normal(lhs).astype(dtype)
  w = rng.standard_normal(rhs).astype(dtype)
  kw = dict(kw, padding="SAME", precision="highest")
  exact = np.asarray(
    lax.conv_general_dilated(np.asarray(x, np.float64), np.asarray(w, np.float64), **kw)
  )
  kw["preferred_element_type"] = preferred
  out = {}
  for algorithm in algorithms(case, size, kernel):
    y = np.asarray(jaxconv.conv_general_dilated(x, w, **kw, algorithm=algorithm), np.float64)
    out[algorithm] = float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", choices=("2d", "3d", "depthwise"), default="2d")
  parser.add_argument("--kernel", type=int, default=3, help="kernel size (2d, depthwise)")
  parser.add_argument("--channels", default="64,512")
  parser.add_argument("--size", type=int, default=16)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  names = algorithms(args.case, args.size, args.kernel)
  lhs, rhs, _ = _problem(args.case, 0, args.size, args.batch, args.kernel)
  layer = "x".join(map(str, lhs[:-1])) + "xC, kernel " + "x".join(map(str, rhs[:-2]))
  layer += ", depthwise" if args.case == "depthwise" else " -> C"
  lines = [
    f"Normwise relative error against float64, SAME, {layer}, random normal data, median of "
    f"{args.seeds} seeds (jax {jax.__version__}, {jax.devices()[0].device_kind}).",
    "",
    "| dtype | C | "
    + " | ".join(names)
    + " | "
    + " | ".join(f"{a} / lax" for a in names[1:])
    + " |",
    "|---" * (2 + 2 * len(names) - 1) + "|",
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
        relative_errors(args.case, c, dtype, preferred, args.size, args.batch, args.kernel, s)
        for s in range(args.seeds)
      ]
      med = {a: float(np.median([e[a] for e in errs])) for a in names}
      cells = [f"{med[a]:.2e}" for a in names]
      ratios = [f"{med[a] / med['lax']:.2f}" for a in names[1:]]
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
