"""What bounds a layer's training step: the time its products take and the time the rest takes.

Each layer's training step (`jaxconv bench --train`'s ``(x, k, dy) -> (y, dx, dk)``) with `auto`
is traced with `jax.profiler` for ten steps. Every thunk XLA:CPU runs is either a **product**
(a dot or a convolution, or a fusion holding one, as YNNPACK's do) or **the rest**: Winograd's
transforms, im2col's gathers, col2im's overlap-adds, transpositions, padding, copies. The script
takes the wall time each kind's thunks cover on the threads that run them (the union of their
intervals, so two threads busy at once count once) and splits the profiled step into products,
the rest alone (no product running beside it) and time with no thunk running, beside lax's and
`auto`'s steps timed unprofiled in the same interleaved rounds. "No thunk" is the executor's own
work between thunks and work that runs on XLA:CPU's thread pool after its thunk has returned:
XLA's own convolution (lax's, with YNNPACK fusions off) and its large unbatched dots, whose
thunks only start them. The profiler slows the step (by 5-60% on the 2-core Intel Xeon, most
with YNNPACK fusions off, where every thread pool task is traced), so the split is read as shares
of the profiled step and applied to the unprofiled one, assuming the slowdown spreads evenly. Two
bounds follow, each counting "no thunk" against it:

- lax's step over the share of the products and of no thunk: the most `auto`'s step could gain on
  lax if the rest took no time, with the products as they run;
- lax's step over the share the rest's thunks cover and of no thunk: the most it could gain if
  the products took no time.

Run from the repository root with jaxconv importable (``pip install -e .`` or ``PYTHONPATH=.``),
after ``jaxconv tune --train`` of the same layers (`auto` otherwise runs its heuristic choices).

Usage:
  python bench/step_bounds.py [--shapes NAMES] [--rounds 9] [--keep-host-memory]
"""

from __future__ import annotations

import pathlib
import re
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from scheduler import blocking, layer_arguments

from jaxconv import _host_memory as host_memory
from jaxconv._bench import conv_fn, what_ran
from jaxconv._shapes import select
from jaxconv._timing import interleaved_call_rounds, ratio_text

STEPS = 10
PRODUCT_OPCODES = frozenset({"dot", "convolution"})
CONTROL_FLOW = frozenset({"while", "conditional", "call"})


def instruction_kinds(hlo: str) -> dict[str, str]:
  """Each instruction of a compiled module that runs as a thunk: "product" or "rest".

  A fusion is a product when the computation it calls holds a dot or a convolution. Loops and
  conditionals are left out (the instructions of their bodies are classified instead), and so
  are the instructions inside fusions, which never run as thunks of their own.

  Example:
    >>> hlo = '''
    ... %fused (p: f32[2,2]) -> f32[2,2] {
    ...   %p = f32[2,2]{1,0} parameter(0)
    ...   ROOT %d = f32[2,2]{1,0} dot(%p, %p), lhs_contracting_dims={1}, rhs_contracting_dims={0}
    ... }
    ... ENTRY %main (a: f32[2,2]) -> f32[2,2] {
    ...   %a = f32[2,2]{1,0} parameter(0)
    ...   %t = f32[2,2]{0,1} transpose(%a), dimensions={1,0}
    ...   %f = f32[2,2]{1,0} fusion(%t), kind=kCustom, calls=%fused
    ...   ROOT %c = f32[2,2]{1,0} convolution(%f, %f), dim_labels=bf_io->bf
    ... }'''
    >>> kinds = instruction_kinds(hlo)
    >>> [kinds[name] for name in ("a", "t", "f", "c")]
    ['rest', 'rest', 'product', 'product']
  """
  opcodes: dict[str, set[str]] = {}  # computation -> the opcodes in its body
  calls, instructions, current = {}, {}, None
  for line in hlo.splitlines():
    head = re.match(r"\s*(?:ENTRY )?%(\S+) \(.*\{\s*$", line)
    if head:
      current = head.group(1)
      opcodes[current] = set()
      continue
    m = re.match(r"\s*(?:ROOT )?%(\S+) = (?:\([^=]*\)|\S+) ([\w-]+)\(", line)
    if m is None or current is None:
      continue
    opcodes[current].add(m.group(2))
    instructions[m.group(1)] = (m.group(2), current)
    called = re.search(r"calls=%([\w.-]+)", line)
    if called:
      calls[m.group(1)] = called.group(1)
  fused = {calls[name] for name, (opcode, _) in instructions.items() if opcode == "fusion"}
  kinds = {}
  for name, (opcode, computation) in instructions.items():
    body = opcodes.get(calls.get(name, ""), set())
    if opcode not in CONTROL_FLOW and computation not in fused:
      kinds[name] = "product" if PRODUCT_OPCODES & ({opcode} | body) else "rest"
  return kinds


def covered_ms(intervals: list[tuple[int, int]]) -> float:
  """Milliseconds covered by the union of (start, end) intervals in nanoseconds.

  Example:
    >>> covered_ms([(0, 2_000_000), (1_000_000, 3_000_000), (5_000_000, 6_000_000)])
    4.0
  """
  total, reach = 0, None
  for start, end in sorted(intervals):
    if reach is None or start > reach:
      total, reach = total + end - start, end
    elif end > reach:
      total, reach = total + end - reach, end
  return total / 1e6


def profile(program, operands) -> dict[str, float]:
  """Milliseconds per step: product thunks, the rest's alone, no thunk, and the whole step.

  Also ``rest covered``, the time the rest's thunks cover with or without a product beside them.
  """
  kinds = instruction_kinds(program.as_text())
  for _ in range(3):
    jax.block_until_ready(program(*operands))
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    start = time.perf_counter()
    for _ in range(STEPS):
      jax.block_until_ready(program(*operands))
    step_ms = (time.perf_counter() - start) * 1e3 / STEPS
    jax.profiler.stop_trace()
    trace = next(pathlib.Path(folder).rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(trace))
  spans: dict[str, list[tuple[int, int]]] = {"product": [], "rest": []}
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):  # the threads that run thunks: pool and client
        continue
      for event in line.events:
        kind = kinds.get(event.name)
        if kind is not None:
          spans[kind].append((event.start_ns, event.start_ns + event.duration_ns))
  product = covered_ms(spans["product"]) / STEPS
  any_thunk = covered_ms([s for kind in spans.values() for s in kind]) / STEPS
  return {
    "product": product,
    "rest": any_thunk - product,
    "none": step_ms - any_thunk,
    "step": step_ms,
    "rest covered": covered_ms(spans["rest"]) / STEPS,
  }


def main(argv: list[str] | None = None) -> int:
  args = layer_arguments(__doc__, argv)

  print(f"jax {jax.__version__}; {host_memory.state()}; ms per step (medians)")
  print(
    "layer, auto picks: lax | auto, x lax | auto profiled, products + rest alone + no thunk |"
    " x lax bounds: rest free, products free"
  )
  for shape in select(args.shapes.split(",")):
    x, k = shape.arrays()
    operands = (x, k, conv_fn(shape, "lax")(x, k))
    programs = {
      name: jax.jit(conv_fn(shape, name, train=True)).lower(*operands).compile()
      for name in ("lax", "auto")
    }
    calls = {name: blocking(p, operands) for name, p in programs.items()}
    for call in calls.values():
      call()  # warm up
    times = interleaved_call_rounds(calls, rounds=args.rounds, min_round_s=args.min_round_s)
    lax_ms, auto_ms = (float(np.median(times[name])) * 1e3 for name in ("lax", "auto"))
    spent = profile(programs["auto"], operands)
    share = {kind: spent[kind] / spent["step"] for kind in ("product", "rest", "none")}
    rest_free = lax_ms / (auto_ms * (share["product"] + share["none"]))
    products_free = lax_ms / (auto_ms * (spent["rest covered"] / spent["step"] + share["none"]))
    picks = what_ran(conv_fn(shape, "auto", train=True), *operands)
    print(
      f"{shape.name}, {picks}: {lax_ms:.2f} | {auto_ms:.2f}, "
      f"{ratio_text(times['lax'], times['auto'])} | {spent['step']:.2f}, "
      f"{share['product']:.0%} + {share['rest']:.0%} + {share['none']:.0%} | "
      f"{rest_free:.2f}, {products_free:.2f}",
      flush=True,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
