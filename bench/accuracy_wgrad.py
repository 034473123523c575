"""Normwise relative error of kernel gradients against float64: lax, im2col and wgrad F(m, 3).

The kernel gradient of a SAME 3x3 (2-D) or 3x3x3 (3-D) layer, float32 inputs and output
gradient, against the float64 gradient of the same rounded data; median of 3 seeds. Prints the
rows of docs/accuracy.md's kernel-gradient table.

  python bench/accuracy_wgrad.py
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax import lax

import jaxconv
from jaxconv import _api, _tune
from jaxconv._registry import forced

jax.config.update("jax_enable_x64", True)

CANDIDATES = ("lax", "im2col", "wgrad2", "wgrad4", "wgrad6")
LAYERS = [
  ("2-D 2x16x16xC, 3x3", (2, 16, 16, 64), (3, 3, 64, 64), ("NHWC", "HWIO", "NHWC")),
  ("2-D 2x16x16xC, 3x3", (2, 16, 16, 256), (3, 3, 256, 256), ("NHWC", "HWIO", "NHWC")),
  ("3-D 2x6x12x12xC, 3x3x3", (2, 6, 12, 12, 32), (3, 3, 3, 32, 32), ("NDHWC", "DHWIO", "NDHWC")),
  # ResNet-50's first 3x3 layer at batch 8: 25,088 terms per sum, where lax's own sum rounds.
  ("2-D 8x56x56xC, 3x3", (8, 56, 56, 64), (3, 3, 64, 64), ("NHWC", "HWIO", "NHWC")),
]


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _kernel_gradient_geometry(x, w, kw):
  """The kernel-gradient convolution jaxconv's primitive states for this layer."""
  fwd = lambda w: jaxconv.conv_general_dilated(x, w, **kw, algorithm="winograd4")
  with _tune.planned() as seen:
    out = jax.eval_shape(fwd, w)
    jax.vjp(fwd, w)[1](np.zeros(out.shape, out.dtype))
  return next(p.geometry for p in seen if p.geometry.out_shape == w.shape)


def main() -> int:
  for name, lhs, rhs, dn in LAYERS:
    errs = {a: [] for a in CANDIDATES}
    for seed in range(3):
      rng = np.random.default_rng(seed)
      x = rng.standard_normal(lhs).astype(np.float32)
      w = rng.standard_normal(rhs).astype(np.float32)
      nd = len(lhs) - 2
      kw = dict(window_strides=(1,) * nd, padding="SAME", dimension_numbers=dn, precision="highest")
      y = lax.conv_general_dilated(x, w, **kw)
      ct = rng.standard_normal(y.shape).astype(np.float32)
      f64 = lambda w, x=x, kw=kw: lax.conv_general_dilated(x.astype(np.float64), w, **kw)
      exact = jax.vjp(f64, w.astype(np.float64))[1](ct.astype(np.float64))[0]
      g = _kernel_gradient_geometry(x, w, kw)
      for label in CANDIDATES:
        algorithm, hint = forced(label)
        out = _api._run(x, ct, g, algorithm.name, algorithm.resolve(g, hint))
        errs[label].append(_rel(out, exact))
    med = {a: float(np.median(v)) for a, v in errs.items()}
    cells = [f"{med[a]:.2e}" for a in CANDIDATES]
    cells += [f"{med[a] / med['lax']:.2f}" for a in CANDIDATES[2:]]
    print(f"| {name} | {lhs[-1]} | " + " | ".join(cells) + " |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
