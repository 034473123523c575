"""The `jaxconv` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
  import jax
  import numpy as np
  from jax import lax

  import jaxconv
  from jaxconv._timing import interleaved_medians

  # The seed's example: 8 images of 150x150x3, its 3x3 edge kernel tiled to 3 -> 16 channels.
  rng = np.random.default_rng(0)
  images = rng.random((8, 150, 150, 3)).astype(np.float32)
  edge = np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]], np.float32)
  kernel = np.tile(edge[..., None, None], (1, 1, 3, 16))
  dn = ("NHWC", "HWIO", "NHWC")
  kw = dict(dimension_numbers=dn, precision=lax.Precision.HIGHEST)
  p = jaxconv.plan(images, kernel, (1, 1), "VALID", dimension_numbers=dn)
  print(f"jaxconv {jaxconv.__version__}, jax {jax.__version__}, {jax.devices()[0].device_kind}")
  print(f"input {images.shape}, kernel {kernel.shape}, VALID -> {p.out_shape}")
  print(f"auto picks {p.algorithm!r}: {p.reason}")
  fns = {
    "lax": lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID", **kw),
    "im2col": lambda x, k: jaxconv.conv_general_dilated(
      x, k, (1, 1), "VALID", **kw, algorithm="im2col"
    ),
  }
  ref = np.asarray(fns["lax"](images, kernel), np.float64)
  times = interleaved_medians(list(fns.values()), [images, kernel], rounds=args.rounds)
  print(f"{'algorithm':<10}{'median ms':>12}{'speedup':>10}{'rel. error':>14}")
  for (name, fn), t in zip(fns.items(), times):
    y = np.asarray(fn(images, kernel), np.float64)
    err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    print(f"{name:<10}{t * 1e3:>12.3f}{times[0] / t:>9.2f}x{err:>14.2e}")
  return 0


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `jaxconv` console script."""
  parser = argparse.ArgumentParser(prog="jaxconv", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="the seed example: im2col against lax, side by side")
  demo.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
  demo.set_defaults(func=_demo)
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
