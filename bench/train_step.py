"""Times one training step of a convolution (forward, then gradients wrt input and kernel).

ResNet-50's 3x3 layers at batch 8 (SAME, NHWC/HWIO, float32, precision HIGHEST): for each layer and
each algorithm, the compiled step ``y, (dx, dw) = vjp(conv)(x, w)(ct)`` is timed side by side
with lax's (`jaxconv._timing.interleaved_rounds`) and reported as the median of the per-round
ratios lax / jaxconv, with their quartiles (above 1 means faster than lax). The backward pass
runs jaxconv's transposes, whose algorithm the auto rule picks; the column "convs" names what
ran, in the step's jaxpr order (the forward, then the kernel and input gradients). With
``--through``, the step obtained by letting JAX differentiate the algorithm's own gathers and
GEMMs (no custom rules) is timed as well.

Run from the repository root with jaxconv importable (``pip install -e .`` or ``PYTHONPATH=.``).

Usage:
  python bench/train_step.py [--batch 8] [--rounds 7] [--layers 56 28] [--through] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv
from jaxconv import _api
from jaxconv import _host_memory as host_memory
from jaxconv._bench import what_ran
from jaxconv._timing import interleaved_rounds, ratio_text, round_ratios

DN = ("NHWC", "HWIO", "NHWC")
HIGHEST = lax.Precision.HIGHEST
# ResNet-50's 3x3 convolutions: spatial size, channels in = out.
LAYERS = {56: 64, 28: 128, 14: 256, 7: 512}
ALGORITHMS = ("auto", "im2col", "winograd")


def _conv(algorithm: str):
  def conv(x, w):
    return jaxconv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=DN, precision=HIGHEST, algorithm=algorithm
    )

  return conv


def _through(algorithm: str, x, w):
  """The algorithm differentiated by JAX itself: its gathers transpose into scatters."""
  p = jaxconv.plan(
    x, w, (1, 1), "SAME", dimension_numbers=DN, precision=HIGHEST, algorithm=algorithm
  )
  return lambda x, w: _api._run(x, w, p.geometry, p.algorithm, p.tile)


def _step(conv):
  def step(x, w, ct):
    y, vjp = jax.vjp(conv, x, w)
    dx, dw = vjp(ct)
    return y, dx, dw

  return step


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--layers", type=int, nargs="+", default=list(LAYERS), choices=list(LAYERS))
  parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
  parser.add_argument("--through", action="store_true", help="also time autodiff-through steps")
  parser.add_argument("--json", help="write the results to this file")
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  host_memory.apply_option(args)

  rng = np.random.default_rng(0)
  rows = []
  print(f"{'layer':<22}{'algorithm':<22}{'convs':<26}{'lax ms':>9}{'ms':>9}{'lax/x (IQR)':>20}")
  for size in args.layers:
    c = LAYERS[size]
    x = jnp.asarray(rng.standard_normal((args.batch, size, size, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((args.batch, size, size, c)), jnp.float32)
    variants = [(a, _step(_conv(a))) for a in args.algorithms]
    if args.through:
      variants += [(f"{a} (through)", _step(_through(a, x, w))) for a in ("im2col", "winograd")]
    fns = [_step(_conv("lax")), *(f for _, f in variants)]
    rounds = interleaved_rounds(fns, [x, w, ct], rounds=args.rounds)
    lax_s = float(np.median(rounds[0]))
    layer = f"{size}x{size}x{c}->{c}"
    for (name, f), r in zip(variants, rounds[1:]):
      ran = what_ran(f, x, w, ct) if "through" not in name else "(autodiff)"
      t = float(np.median(r))
      lo, ratio, hi = round_ratios(rounds[0], r)
      cell = ratio_text(rounds[0], r)
      print(f"{layer:<22}{name:<22}{ran:<26}{1e3 * lax_s:>9.1f}{1e3 * t:>9.1f}{cell:>20}")
      rows.append(
        dict(
          layer=layer,
          algorithm=name,
          convs=ran,
          lax_s=lax_s,
          s=t,
          lax_over_jaxconv=ratio,
          quartiles=[lo, hi],
        )
      )
    sys.stdout.flush()
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(batch=args.batch, device=str(jax.devices()[0]), rows=rows), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
