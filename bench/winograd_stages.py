"""Where a Winograd forward's time goes: its three stages timed alone, beside lax and a copy.

A Winograd F(m, 3) layer (`jaxconv._winograd`) runs three stages: the input transform ``BT d B``
of every tile (fused strided views, written out as ``n^2`` transformed positions), the
multiplication stage (one batched GEMM over channels per position) and the output transform
``AT M A`` (which also interleaves every tile's ``m x m`` outputs). For each layer and tile this
script times, in the same interleaved rounds (`jaxconv._timing`):

* ``lax``: `lax.conv_general_dilated` at precision HIGHEST;
* ``whole``: the forward by ``winograd<m>``, as `jaxconv.conv_general_dilated` runs it;
* ``input``: `transform_input` of the padded input alone, (n^2, E, 1, *tiles, C);
* ``gemm``: the multiplication stage alone, (n^2, E * tiles, C) x (n^2, C, O);
* ``output``: `transform_output` of the products alone, to (E, *out, O);
* ``copy``: ``v * 2`` over an array as large as the transformed input, one elementwise pass that
  reads and writes as many bytes as the input transform writes: its floor on this machine;
* ``gather``: the ``n^2`` strided views of the padded input that the input transform reads,
  stacked as they are (no arithmetic): what writing them as one (n^2, ...) array costs;
* ``view sum``: the same views added into one tile-sized array: what reading them costs.

It reports each stage's median and share of ``whole``, the GEMM's rate, how many cores each call
kept busy (the process's CPU time over the wall time), and the bytes each
transform writes per second beside the copy's and the gather's (the gather moves as many bytes as
the input transform; the view sum reads them and writes ``1 / n^2`` of them); ratios are medians
of per-round ratios with their quartiles (`jaxconv._timing.round_ratios`). Layers must be 2-D,
ungrouped, stride 1, undilated, with a 3x3 kernel (ResNet-50's stride-1 layers by default):

  python bench/winograd_stages.py [--shapes resnet50-56x64,...] [--tiles 2,4,6] [--rounds 9]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv
from jaxconv import _host_memory as host_memory
from jaxconv._bench import conv_fn
from jaxconv._geometry import normalize
from jaxconv._shapes import by_name
from jaxconv._timing import interleaved_call_rounds, ratio_text, round_ratios
from jaxconv._winograd import _plan, kernel_matrix, transform_input, transform_output

DEFAULT_SHAPES = "resnet50-56x64,resnet50-28x128,resnet50-14x256,resnet50-7x512"
HIGHEST = lax.Precision.HIGHEST


def stage_calls(name: str, m: int) -> tuple[dict, dict]:
  """The blocking callables of one layer and tile, and the sizes the report needs."""
  shape = by_name(name)
  x_np, k_np = shape.arrays()
  g = normalize(x_np, k_np, **shape.kwargs())
  if (
    g.ndim != 2
    or g.kernel != (3, 3)
    or g.strides != (1, 1)
    or g.rhs_dilation != (1, 1)
    or g.lhs_dilation != (1, 1)
    or g.feature_group_count != 1
    or g.batch_group_count != 1
    or shape.layout != ("NHWC", "HWIO", "NHWC")
  ):
    raise SystemExit(f"{name}: needs a 2-D NHWC/HWIO, ungrouped, stride-1, undilated 3x3 layer")
  out = g.out_spatial
  ms, mats, tiles = _plan(out, [m, m], [3, 3])
  n_pos = math.prod(bt.shape[0] for _, _, bt in mats)
  e, c, o = g.out_batch, g.in_features, g.out_features
  rows = e * math.prod(tiles)
  rng = np.random.default_rng(1)
  x, k = jnp.asarray(x_np), jnp.asarray(k_np)
  xb = lax.pad(x[:, None], jnp.zeros((), x.dtype), [(0, 0, 0)] * 2 + [*g.pad_config, (0, 0, 0)])
  v = jnp.asarray(rng.standard_normal((n_pos, rows, c), dtype=np.float32))
  u = jnp.asarray(rng.standard_normal((n_pos, c, o), dtype=np.float32))
  prod = jnp.asarray(rng.standard_normal((n_pos, e, *tiles, o), dtype=np.float32))

  ns = [bt.shape[0] for _, _, bt in mats]
  need = [t * mm + n - mm for t, mm, n in zip(tiles, ms, ns)]

  def views(xb):  # position (i, j) of every tile: the strided views `transform_input` reads
    xb = jnp.pad(
      xb, [(0, 0)] * 2 + [(0, max(0, n - s)) for n, s in zip(need, xb.shape[2:4])] + [(0, 0)]
    )
    lo = [(0, 0, i, j, 0) for i in range(ns[0]) for j in range(ns[1])]
    hi = [
      (e, 1, a + (tiles[0] - 1) * ms[0] + 1, b + (tiles[1] - 1) * ms[1] + 1, c)
      for _, _, a, b, _ in lo
    ]
    return [lax.slice(xb, s, t, (1, 1, *ms, 1)) for s, t in zip(lo, hi)]

  def gemm(v, u):
    return lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=HIGHEST)

  # The stages composed, with the real transformed kernel, are the convolution.
  u_real = jnp.asarray(kernel_matrix(mats), k.dtype) @ k.reshape(9, -1)
  v_real = transform_input(xb, ms, mats, tiles, g).reshape(n_pos, rows, c)
  y = transform_output(gemm(v_real, u_real.reshape(n_pos, c, o)).reshape(prod.shape), ms, mats, out)
  ref = conv_fn(shape, "lax")(x, k)
  err = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
  if err > 1e-4:
    raise AssertionError(f"{name}, m={m}: the composed stages differ from lax by {err:.1e}")

  programs = {
    "lax": (conv_fn(shape, "lax"), (x, k)),
    "whole": (conv_fn(shape, f"winograd{m}"), (x, k)),
    "input": (lambda xb: transform_input(xb, ms, mats, tiles, g), (xb,)),
    "gemm": (gemm, (v, u)),
    "output": (lambda p: transform_output(p, ms, mats, out), (prod,)),
    "copy": (lambda v: v * 2, (v,)),
    "gather": (lambda xb: jnp.stack(views(xb)), (xb,)),
    "view sum": (lambda xb: sum(views(xb)), (xb,)),
  }
  calls = {}
  for label, (fn, args) in programs.items():
    compiled = jax.jit(fn).lower(*args).compile()
    calls[label] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
    calls[label]()
  sizes = {
    "transformed_bytes": v.nbytes,
    "input_bytes": xb.nbytes,
    "product_bytes": prod.nbytes,
    "output_bytes": e * math.prod(out) * o * 4,
    "gemm_flops": 2 * n_pos * rows * c * o,
  }
  return calls, sizes


def _timed(call, spent: list[float]) -> None:
  """Calls `call`, adding the process's CPU time (every thread) and the wall time to `spent`."""
  cpu, wall = time.process_time(), time.perf_counter()
  call()
  spent[0] += time.process_time() - cpu
  spent[1] += time.perf_counter() - wall


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated shape-table names")
  p.add_argument("--tiles", default="4", help="comma-separated output tile sizes m")
  p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (median)")
  p.add_argument("--min-round-s", type=float, default=0.05, help="seconds per call per round")
  host_memory.add_option(p)
  args = p.parse_args(argv)
  host_memory.apply_option(args)
  print(
    f"jax {jax.__version__}, jaxconv {jaxconv.__version__}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, host memory {host_memory.state()}"
  )
  head = ["layer", "m", "lax ms", "whole ms", "whole x lax", "input ms", "gemm ms", "output ms"]
  head += ["stages/whole", "gemm GF/s", "input GB/s", "output GB/s", "copy GB/s", "gather GB/s"]
  head += ["view sum GB/s"]
  print("  ".join(f"{h:>17}" for h in head))
  for name in args.shapes.split(","):
    for m in (int(t) for t in args.tiles.split(",")):
      calls, sz = stage_calls(name, m)
      spent = {label: [0.0, 0.0] for label in calls}  # CPU seconds, wall seconds
      calls = {label: functools.partial(_timed, c, spent[label]) for label, c in calls.items()}
      t = interleaved_call_rounds(calls, rounds=args.rounds, min_round_s=args.min_round_s)
      med = {label: float(np.median(r)) for label, r in t.items()}
      stages = [a + b + c for a, b, c in zip(t["input"], t["gemm"], t["output"])]
      # Bytes moved: each transform reads its operand and writes its result; the copy both.
      moved_in = sz["input_bytes"] + sz["transformed_bytes"]
      moved_out = sz["product_bytes"] + sz["output_bytes"]
      row = [
        name,
        str(m),
        f"{med['lax'] * 1e3:.2f}",
        f"{med['whole'] * 1e3:.2f}",
        ratio_text(t["lax"], t["whole"]),
        f"{med['input'] * 1e3:.2f}",
        f"{med['gemm'] * 1e3:.2f}",
        f"{med['output'] * 1e3:.2f}",
        f"{round_ratios(stages, t['whole'])[1]:.2f}",
        f"{sz['gemm_flops'] / med['gemm'] / 1e9:.1f}",
        f"{moved_in / med['input'] / 1e9:.1f}",
        f"{moved_out / med['output'] / 1e9:.1f}",
        f"{2 * sz['transformed_bytes'] / med['copy'] / 1e9:.1f}",
        f"{moved_in / med['gather'] / 1e9:.1f}",
        f"{sz['transformed_bytes'] / med['view sum'] / 1e9:.1f}",
      ]
      print("  ".join(f"{c:>17}" for c in row))
      busy = ", ".join(f"{label} {c / w:.2f}" for label, (c, w) in spent.items())
      print(f"  cores busy (CPU time / wall time): {busy}")
      sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
