"""Where a whole-model training step spends its time: a profile summed by layer and by operation.

Traces ten steps of one of `bench/train_model.py`'s models (jaxconv's convolutions, ``auto`` with
the tuning cache as it is) with `jax.profiler`, then sums the time of every XLA:CPU thunk by the
operation that emitted it: each convolution (forward, and its gradients as "bwd") by its layer,
named ``L<input size>x<kernel>x<in>x<out>s<stride>``, and the rest of the step by its last jaxpr
operation (batch norm's reductions and products, the activations, the update). Profiling slows
every thunk, and the two worker threads' times are added up: the shares are what to read.

Run from the repository root with jaxconv importable (``pip install -e .`` or ``PYTHONPATH=.``).

Usage:
  python bench/profile_model.py [--model resnet] [--backend jaxconv] [--keep-host-memory]
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_model

from jaxconv import _host_memory as host_memory

STEPS = 10


def _named(conv_fn):
  """`train_model._conv` with each call in a named scope that says which layer it is."""

  def conv(conv, x, w, stride=1):
    with jax.named_scope(f"L{x.shape[1]}x{w.shape[0]}x{w.shape[2]}x{w.shape[3]}s{stride}"):
      return conv_fn(conv, x, w, stride)

  return conv


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="resnet", choices=("resnet", "unet"))
  parser.add_argument("--backend", default="jaxconv", choices=tuple(train_model.BACKENDS))
  host_memory.add_option(parser)
  args = parser.parse_args(argv)
  host_memory.apply_option(args)

  train_model._conv = _named(train_model._conv)
  init, loss, make_batch = (
    getattr(train_model, f"{args.model}_{p}") for p in ("init", "loss", "batch")
  )
  params, batch = init(jax.random.key(0)), make_batch(jax.random.key(1))
  velocity = jax.tree.map(jnp.zeros_like, params)
  step = jax.jit(train_model._step(loss, args.backend)).lower(params, velocity, batch).compile()
  for _ in range(3):
    jax.block_until_ready(step(params, velocity, batch))
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    for _ in range(STEPS):
      jax.block_until_ready(step(params, velocity, batch))
    jax.profiler.stop_trace()
    trace = next(pathlib.Path(folder).rglob("*.xplane.pb"))
    profile = jax.profiler.ProfileData.from_file(str(trace))

  # Each instruction of the compiled step and the jaxpr operation that emitted it.
  emitted = {}
  for line in step.as_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%(\S+) = .*?metadata=\{op_name=\"([^\"]*)\"", line)
    if m:
      emitted.setdefault(m.group(1), m.group(2))
  by_layer, rest = collections.Counter(), collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads run the thunks
        continue
      for event in line.events:
        op = emitted.get(event.name)
        if op is None:
          continue
        ms = event.duration_ns / 1e6 / STEPS
        layer = re.search(r"(transpose\()?[^/]*?(L\d+x\d+x\d+x\d+s\d+)", op)
        if layer:
          by_layer[("bwd " if layer.group(1) else "fwd ") + layer.group(2)] += ms
        else:
          rest[op.split("/")[-1]] += ms
  conv_ms, rest_ms = sum(by_layer.values()), sum(rest.values())
  total = conv_ms + rest_ms
  print(f"{args.model} step, {args.backend}, {host_memory.state()} host memory; ms per step")
  print(f"convolutions {conv_ms:.1f} ({conv_ms / total:.0%}), the rest {rest_ms:.1f}")
  for name, ms in sorted(by_layer.items(), key=lambda kv: (kv[0][4:], kv[0])):
    print(f"  {ms:7.2f}  {name}")
  print("the rest, by operation:")
  for name, ms in rest.most_common(12):
    print(f"  {ms:7.2f}  {name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
