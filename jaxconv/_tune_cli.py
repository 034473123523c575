"""`jaxconv tune`: fill the tuning cache for the benchmark table's layers, list it, or clear it."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np

from jaxconv import _autodiff, _cache, _tune
from jaxconv._bench import add_selection, selected_shapes
from jaxconv._geometry import ConvGeometry, normalize
from jaxconv._select import choose, measurable

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The `jaxconv tune` options."""
  add_selection(p)
  p.add_argument(
    "--precision",
    default="highest",
    choices=("highest", "default"),
    help="the precision to tune at (default: highest, as `jaxconv bench` times; a model that "
    "passes no precision runs at default, another cache entry)",
  )
  p.add_argument(
    "--train",
    action="store_true",
    help="also the gradients' convolutions of each layer's training step (as bench --train runs)",
  )
  p.add_argument("--force", action="store_true", help="measure again what the cache already has")
  p.add_argument("--show", action="store_true", help="list the cache files and their entries")
  p.add_argument("--clear", action="store_true", help="delete every jaxconv cache file")


def _show() -> int:
  files = _cache.files()
  print(f"cache directory: {_cache.cache_dir()}")
  current = _tune._store().path
  if not files:
    print("no measurements")
  for path, data in files:
    key = data.get("device_key", {})
    mark = " (this device and setup)" if path == current else ""
    print(f"\n{path.name}{mark}: {len(data['entries'])} geometries")
    print("  " + ", ".join(f"{k}={v}" for k, v in key.items()))
    for geometry, entry in data["entries"].items():
      times = entry.get("times", {})
      if "lax" not in times:
        continue
      best = min(times, key=times.get)
      print(
        f"  {geometry}\n    fastest {best} {times['lax'] / times[best]:.2f}x lax "
        f"({', '.join(f'{k} {v * 1e3:.3g} ms' for k, v in sorted(times.items()))}); tuned in "
        f"{entry.get('tuned_s', float('nan')):.2f} s"
      )
  return 0


def _gradients(g: ConvGeometry) -> list[tuple[str, ConvGeometry]]:
  """The convolutions of the layer `g`'s input and kernel gradients, as its VJP binds them."""
  x, k = (jax.ShapeDtypeStruct(a, g.dtype) for a in (g.lhs_shape, g.rhs_shape))
  dy = jax.ShapeDtypeStruct(g.out_shape, g.out_dtype)

  def grads(x, k, dy):
    return jax.vjp(lambda a, b: _autodiff.conv(a, b, g, "lax", None), x, k)[1](dy)

  found = []
  for eqn in jax.make_jaxpr(grads)(x, k, dy).jaxpr.eqns:
    if eqn.primitive.name == "jaxconv_conv" and eqn.params["geometry"] != g:  # not the forward
      grad = eqn.params["geometry"]
      role = "kernel gradient" if grad.out_shape == g.rhs_shape else "input gradient"
      found.append((role, grad))
  return found


def main(args: argparse.Namespace) -> int:
  """Runs `jaxconv tune` with parsed `args`."""
  if args.clear:
    removed = _cache.clear()
    print(f"removed {len(removed)} cache file(s) from {_cache.cache_dir()}")
    return 0
  if args.show:
    return _show()
  shapes = selected_shapes(args)
  if shapes is None:
    return 2
  precision = None if args.precision == "default" else args.precision
  start = time.perf_counter()
  items = []
  for s in shapes:
    structs = [jax.ShapeDtypeStruct(a, np.dtype(s.dtype)) for a in (s.lhs, s.rhs)]
    g = normalize(*structs, **s.kwargs(), precision=precision)
    items.append((s.name, g))
    if args.train:
      items += [(f"{s.name} {role}", grad) for role, grad in _gradients(g)]
  todo = [g for _, g in items if measurable(g) and (args.force or _tune.lookup(g) is None)]
  todo = list(dict.fromkeys(todo))  # a layer's input gradient may be another's forward
  if todo and _tune.passes() > 1:
    print(f"measuring {len(todo)} geometries, then each again ({_tune.passes()} passes)")
  with _tune.recording() as measured:
    for g in todo:
      if args.force or _tune.lookup(g) is None:  # not already measured as another's nested one
        _tune.measure(g)
  _tune.confirm(measured)
  entries = [_tune.lookup(g) for g in measured]
  for name, g in items:
    plan = choose(g, "auto", measure=False)
    if not measurable(g):
      cost = "not measured"
    else:
      cost = f"tuned in {_tune.lookup(g)['tuned_s']:.2f} s" if g in todo else "cached"
    print(f"{name:<24} {plan.label:<10} {cost:<16} {plan.reason}")
    sys.stdout.flush()
  if entries:
    costs = [e["tuned_s"] for e in entries]
    compiles = [e["compile_s"] for e in entries]
    print(
      f"\ntuned {len(costs)} geometries in {time.perf_counter() - start:.0f} s: per geometry "
      f"min {min(costs):.2f} s, median {statistics.median(costs):.2f} s, max {max(costs):.2f} s "
      f"(compiles: median {statistics.median(compiles):.2f} s, max {max(compiles):.2f} s)"
    )
  print(f"cache: {_tune._store().path}")
  return 0
