"""`jaxconv bench`: every algorithm against `lax` on the shape table, on whatever machine this is.

For each layer of `jaxconv._shapes` the runner times `lax.conv_general_dilated` and each requested
jaxconv algorithm side by side (`jaxconv._timing.interleaved_medians`: compiled ahead, interleaved
rounds, medians), measures each result's normwise relative error against a float64 reference, and
reports direct-convolution GFLOP/s next to two machine rates measured once per run: a large float32
GEMM (the ceiling a GEMM-based algorithm can hope for) and memory bandwidth. Results go to a
readable table on stdout and, under ``--out``, to ``bench.json``, ``bench.md`` and two PNG figures.

Algorithms that end up running the same computation (``auto`` and whatever it picks, ``winograd``
and the forced tile it chooses) are timed once and reported under each name, ``same_as`` naming
the twin in the JSON.

*Best lax.* jaxlib 0.10's XLA:CPU hands convolutions (and some dots) to YNNPACK by default, and
on some machines that runs slower than XLA's own code; ``XLA_FLAGS`` can turn those fusions off,
but only for a whole process. On CPU the runner therefore also times lax in a child process with
the other setting (`YNN_OFF_FLAG` added, or removed when this process has it), and reports every
speedup against the faster of the two lax times ("best lax") beside the one against this process's
lax. Those two lax times come from different processes, so the best-lax ratios carry that noise
too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv
from jaxconv import _host_memory as host_memory
from jaxconv._cache import available_cores
from jaxconv._registry import REGISTRY
from jaxconv._shapes import Shape, select
from jaxconv._timing import interleaved_rounds, round_ratios
from jaxconv._tune import rel_error

__all__ = [
  "DEFAULT_ALGORITHMS",
  "compare",
  "conv_fn",
  "format_tables",
  "machine_info",
  "measure_bandwidth",
  "measure_gemm",
  "plan_key",
  "reference",
  "rel_error",
  "run",
]

HIGHEST = lax.Precision.HIGHEST
# `auto`, then every registered algorithm under its own name (lax is always timed).
DEFAULT_ALGORITHMS = ("auto", *(a.name for a in REGISTRY if a.name != "lax"))
YNN_OFF_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
SCHEMA = 1
# Environment variables that change what a benchmark measures; recorded with every run.
ENV_KEYS = (
  "XLA_FLAGS",
  "XLA_PYTHON_CLIENT_PREALLOCATE",
  "XLA_PYTHON_CLIENT_MEM_FRACTION",
  "JAX_PLATFORMS",
  "JAX_ENABLE_X64",
  "JAXCONV_PATCH_BUDGET",
  "MALLOC_MMAP_THRESHOLD_",
  "MALLOC_TRIM_THRESHOLD_",
  "GLIBC_TUNABLES",
  "OMP_NUM_THREADS",
)


def conv_fn(
  shape: Shape, algorithm: str, *, train: bool = False
) -> Callable[..., jax.Array | tuple[jax.Array, ...]]:
  """The convolution of `shape` by `algorithm` ("lax" is `jax.lax` itself), at precision HIGHEST.

  With `train`, its training step instead: ``(x, k, dy) -> (y, dx, dk)``, the forward by
  `algorithm` and both gradients by what jaxconv's primitive picks for them (lax's own for lax).

  Example:
    >>> from jaxconv._shapes import by_name
    >>> s = by_name("tiny")
    >>> x, k = s.arrays()
    >>> conv_fn(s, "im2col")(x, k).shape
    (2, 16, 16, 4)
  """
  kw = shape.kwargs()
  if algorithm == "lax":
    conv = lambda x, k: lax.conv_general_dilated(x, k, **kw, precision=HIGHEST)
  else:
    conv = lambda x, k: jaxconv.conv_general_dilated(
      x, k, **kw, precision=HIGHEST, algorithm=algorithm
    )
  if not train:
    return conv

  def step(x: jax.Array, k: jax.Array, dy: jax.Array) -> tuple[jax.Array, ...]:
    y, pullback = jax.vjp(conv, x, k)
    return (y, *pullback(dy))

  return step


def what_ran(fn: Callable[..., Any], *args: Any) -> str:
  """The algorithms of `fn`'s convolutions in jaxpr order, e.g. 'winograd/wgrad/winograd'.

  Example:
    >>> from jaxconv._shapes import by_name
    >>> s = by_name("tiny")
    >>> x, k = s.arrays()
    >>> what_ran(conv_fn(s, "lax", train=True), x, k, conv_fn(s, "lax")(x, k))
    'lax/lax/lax'
  """
  names = []
  for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns:
    if eqn.primitive.name == "jaxconv_conv":
      names.append(eqn.params["algorithm"])
    elif eqn.primitive.name == "conv_general_dilated":
      names.append("lax")
  return "/".join(names)


def reference(
  shape: Shape, x: np.ndarray, k: np.ndarray, dy: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, ...]:
  """The convolution in float64 (lax under `jax.enable_x64`) of the given, already rounded inputs.

  Computed channels-last, with 1-D layers lifted to 2-D by a unit axis: XLA's CPU float64 1-D
  convolution runs about 25x slower than the same convolution in 2-D. Given an output gradient
  `dy`, the training step's ``(y, dx, dk)`` instead, by lax's own gradients in float64.

  Example:
    >>> from jaxconv._shapes import by_name
    >>> s = by_name("tiny")
    >>> str(reference(s, *s.arrays()).dtype)
    'float64'
  """
  lay_in, lay_k, lay_out = shape.layout
  spatial = lambda lay, skip: [i for i, c in enumerate(lay) if c not in skip]
  to_in = [lay_in.index("N"), *spatial(lay_in, "NC"), lay_in.index("C")]
  to_k = [*spatial(lay_k, "IO"), lay_k.index("I"), lay_k.index("O")]
  to_out = [lay_out.index("N"), *spatial(lay_out, "NC"), lay_out.index("C")]
  strides, pads = tuple(shape.strides), shape.padding
  if isinstance(pads, str):
    in_spatial = [np.shape(x)[i] for i in spatial(lay_in, "NC")]
    pads = lax.padtype_to_pads(in_spatial, [np.shape(k)[i] for i in to_k[:-2]], strides, pads)
  pads = [tuple(p) for p in pads]
  lifted = len(strides) == 1
  if lifted:
    strides, pads = (1, *strides), [(0, 0), *pads]
  letters = "DHW"[-len(strides) :]
  dn = (f"N{letters}C", f"{letters}IO", f"N{letters}C")

  def conv(a: jax.Array, b: jax.Array) -> jax.Array:  # user layouts in and out
    a, b = a.transpose(to_in), b.transpose(to_k)
    if lifted:
      a, b = a[:, None], b[None]
    out = lax.conv_general_dilated(
      a, b, strides, pads, dimension_numbers=dn, feature_group_count=shape.groups, precision=HIGHEST
    )
    return (out[:, 0] if lifted else out).transpose(np.argsort(to_out))

  with jax.enable_x64(True):
    x64, k64 = (jnp.asarray(np.asarray(a).astype(np.float64)) for a in (x, k))
    if dy is None:
      return np.asarray(jax.jit(conv)(x64, k64))
    y, pullback = jax.vjp(conv, x64, k64)
    grads = pullback(jnp.asarray(np.asarray(dy).astype(np.float64)))
    return tuple(np.asarray(a) for a in (y, *grads))


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())  # warm up
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def measure_gemm(n: int = 2048, repeats: int = 7) -> float:
  """The machine's float32 GEMM rate in FLOP/s: best of `repeats` n x n x n products.

  Example:
    >>> measure_gemm(64, repeats=1) > 0
    True
  """
  a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda a, b: jnp.dot(a, b, precision=HIGHEST)).lower(a, a).compile()
  return 2 * n**3 / _best_of(lambda: f(a, a), repeats)


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> tuple[float, float]:
  """Memory bandwidth in bytes/s as (in place, to a fresh buffer), counting read plus write.

  In place, ``x + 1`` overwrites a donated array: the memory system's rate. To a fresh buffer,
  every call's result is a new allocation of quarter the size; on CPU a buffer that large is a fresh
  `mmap`, so this rate includes the page faults that big layers pay for their outputs.

  Example:
    >>> inplace, fresh = measure_bandwidth(1 << 20, repeats=1)
    >>> inplace > 0 and fresh > 0
    True
  """
  n = nbytes // 4
  add = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  state = {"x": jnp.zeros(n, jnp.float32)}

  def step():
    state["x"] = add(state["x"])
    return state["x"]

  inplace = 2 * nbytes / _best_of(step, repeats)
  small = jnp.zeros(max(n // 4, 1), jnp.float32)
  fresh_fn = jax.jit(lambda x: x + 1.0).lower(small).compile()
  fresh = 2 * small.nbytes / _best_of(lambda: fresh_fn(small), repeats)
  return inplace, fresh


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.split(":")[0].strip() in ("model name", "Hardware", "cpu model"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
  try:
    return version(dist)
  except PackageNotFoundError:
    return None


def machine_info() -> dict:
  """Static facts about this machine and software, for the JSON record.

  Example:
    >>> sorted(machine_info())[:3]
    ['backend', 'cpu_cores', 'cpu_cores_available']
  """
  dev = jax.devices()[0]
  avail = available_cores()
  return {
    "backend": jax.default_backend(),
    "cpu_cores": os.cpu_count(),
    "cpu_cores_available": avail,
    "cpu_model": _cpu_model(),
    "device_count": jax.device_count(),
    "device_kind": dev.device_kind,
    "environment": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    "ynn_fusions": "on" if ynn_fusions_on() else "off",
    "host_memory": host_memory.state(),
    "jax": jax.__version__,
    "jaxconv": jaxconv.__version__,
    "jaxlib": _version("jaxlib"),
    "numpy": np.__version__,
    "platform": platform.platform(),
    "python": platform.python_version(),
  }


def plan_key(shape: Shape, algorithm: str) -> tuple:
  """What `algorithm` runs on `shape`: (algorithm, tile), or NotImplementedError if it cannot.

  Example:
    >>> from jaxconv._shapes import by_name
    >>> plan_key(by_name("tiny"), "winograd4")
    ('winograd', (4, 4))
  """
  if algorithm == "lax":
    return ("lax", None)
  x, k = (jax.ShapeDtypeStruct(s, shape.dtype) for s in (shape.lhs, shape.rhs))
  p = jaxconv.plan(x, k, **shape.kwargs(), precision=HIGHEST, algorithm=algorithm)
  return (p.algorithm, p.tile)


def _auto_label(plan: jaxconv.Plan) -> str:
  if plan.algorithm == "winograd":
    return f"winograd m={'x'.join(map(str, plan.tile))}"
  return plan.algorithm


def bench_shape(
  shape: Shape,
  algorithms: Sequence[str],
  *,
  rounds: int,
  min_round_s: float,
  gemm_rate: float,
  train: bool = False,
) -> dict:
  """Times lax and `algorithms` on one layer and measures their errors; one JSON-ready record.

  With `train`, each is timed on the layer's training step (`conv_fn`), FLOPs count the forward
  and both gradients (3x the forward's), and the error is the largest of the three results'.
  """
  start = time.perf_counter()
  x_np, k_np = shape.arrays()
  structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x_np, k_np)]
  auto = jaxconv.plan(*structs, **shape.kwargs(), precision=HIGHEST)
  arrays = [x_np, k_np]
  if train:
    dy = np.random.default_rng(1).standard_normal(auto.out_shape, np.float32)
    arrays.append(dy.astype(x_np.dtype))
  ref = reference(shape, *arrays)
  args = [jax.device_put(a) for a in arrays]
  results: dict[str, dict] = {}
  runs: dict[tuple, str] = {("lax", None): "lax"}  # what runs -> the name it is timed under
  keys: dict[str, tuple] = {"lax": ("lax", None)}
  for a in algorithms:
    try:
      keys[a] = plan_key(shape, a)
    except NotImplementedError as e:
      results[a] = {"skipped": str(e)}
      continue
    if train and keys[a] == ("lax", None):
      # lax's forward, jaxconv's gradients: not the step of lax itself, whose gradients are lax's.
      keys[a] = (a, None)
    # Time a twin under its forced name: 'auto' and 'winograd' reuse the explicit one.
    runs.setdefault(keys[a], a)
  for a in algorithms:
    if a in keys and runs[keys[a]] in ("auto", "winograd") and a not in ("auto", "winograd"):
      runs[keys[a]] = a
  names = list(runs.values())
  fns = [conv_fn(shape, n, train=train) for n in names]
  timed = interleaved_rounds(fns, args, rounds=rounds, min_round_s=min_round_s)
  per_round = dict(zip(names, timed))
  times = {n: float(np.median(t)) for n, t in per_round.items()}
  if train:
    errors = {
      n: max(rel_error(a, b) for a, b in zip(jax.jit(f)(*args), ref)) for n, f in zip(names, fns)
    }
  else:
    errors = {n: rel_error(jax.jit(f)(*args), ref) for n, f in zip(names, fns)}
  flops = auto.flops * (3 if train else 1)
  for a in ["lax", *algorithms]:
    if a in results:
      continue
    ran = runs[keys[a]]
    t = times[ran]
    ratios = round_ratios(per_round["lax"], per_round[ran])
    r = {
      "algorithm": keys[a][0],
      "tile": list(keys[a][1]) if keys[a][1] else None,
      "median_s": t,
      "ms": t * 1e3,
      # The median of the per-round ratios, with their quartiles (`round_ratios`).
      "speedup": ratios[1],
      "speedup_quartiles": [ratios[0], ratios[2]],
      "rounds_ms": [r * 1e3 for r in per_round[ran]],
      "gflops": flops / t / 1e9,
      "gemm_fraction": flops / t / gemm_rate,
      "error": errors[ran],
    }
    if ran != a:
      r["same_as"] = ran
    if train:
      r["ran"] = what_ran(fns[names.index(ran)], *args)
    results[a] = r
  del args
  label = results["auto"]["ran"] if train and "ran" in results.get("auto", {}) else None
  return {
    "name": shape.name,
    "describe": shape.describe(),
    "shape": shape.as_dict(),
    "flops": flops,
    "out_shape": list(auto.out_shape),
    "auto": {
      "algorithm": auto.algorithm,
      "label": label or _auto_label(auto),
      "reason": auto.reason,
    },
    "results": results,
    "wall_s": time.perf_counter() - start,
  }


def shape_line(record: dict) -> str:
  """One layer's result on a line: lax's time and each algorithm's speedup over it.

  Example:
    >>> from jaxconv._shapes import select
    >>> r = run(select(["tiny"]), ["im2col"], rounds=1, min_round_s=0.001, gemm_n=64, copy_mib=1)
    >>> shape_line(r["shapes"][0]).split(":")[0]
    'tiny'
  """
  parts = []
  for a, r in record["results"].items():
    if "skipped" in r:
      parts.append(f"{a} cannot run")
    elif a == "lax":
      parts.append(f"lax {r['ms']:.3g} ms")
    else:
      lo, hi = r["speedup_quartiles"]
      parts.append(f"{a} {r['speedup']:.2f}x ({lo:.2f}-{hi:.2f})")
  return f"{record['name']}: " + ", ".join(parts)


def run(
  shapes: Sequence[Shape],
  algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
  *,
  rounds: int = 7,
  min_round_s: float = 0.05,
  gemm_n: int = 2048,
  copy_mib: int = 256,
  progress: bool | None = None,
  command: str = "",
  train: bool = False,
) -> dict:
  """Benchmarks `shapes`; returns the JSON-ready record (machine, rates, per-shape results).

  Args:
    shapes: entries of the shape table.
    algorithms: jaxconv algorithms to time besides lax.
    rounds: interleaved timing rounds per layer.
    min_round_s: minimum seconds per function per round.
    gemm_n: size of the float32 GEMM that measures the machine's rate.
    copy_mib: MiB of the array that measures memory bandwidth.
    progress: show a progress bar on stderr (None: only on a terminal).
    command: the command line, recorded as is.
    train: time each layer's training step (forward, input and kernel gradients) instead.

  Example:
    >>> from jaxconv._shapes import select
    >>> r = run(select(["tiny"]), ["im2col"], rounds=1, min_round_s=0.001, gemm_n=64, copy_mib=1)
    >>> r["shapes"][0]["results"]["im2col"]["error"] < 1e-5
    True
  """
  try:
    from tqdm.auto import tqdm
  except ImportError:  # the bench extra is not installed: no bar
    tqdm = None
  start = time.perf_counter()
  bar = None
  if tqdm is not None:
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(shapes) + 1, file=sys.stderr, disable=not show)
    bar.set_description("machine rates")
  gemm = measure_gemm(gemm_n)
  inplace, fresh = measure_bandwidth(copy_mib << 20)
  if bar is not None:
    bar.update()
  records = []
  for s in shapes:
    if bar is not None:
      bar.set_description(s.name)
    records.append(
      bench_shape(
        s, algorithms, rounds=rounds, min_round_s=min_round_s, gemm_rate=gemm, train=train
      )
    )
    # A line per layer as it finishes: a run cut short (a time limit) still says what it measured.
    if bar is not None:
      bar.write(shape_line(records[-1]), file=sys.stderr)
      bar.update()
    else:
      print(shape_line(records[-1]), file=sys.stderr, flush=True)
  if bar is not None:
    bar.close()
  # Measured again: a GEMM rate that fell during the run says the machine was busier.
  gemm_end = measure_gemm(gemm_n)
  return {
    "schema": SCHEMA,
    "command": command,
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "machine": machine_info(),
    "rates": {
      "gemm_flops": gemm,
      "gemm_flops_end": gemm_end,
      "gemm_n": gemm_n,
      "bandwidth_bytes_s": inplace,
      "fresh_buffer_bytes_s": fresh,
      "copy_mib": copy_mib,
    },
    "settings": {
      "algorithms": list(algorithms),
      "rounds": rounds,
      "min_round_s": min_round_s,
      "train": train,
    },
    "wall_s": time.perf_counter() - start,
    "shapes": records,
  }


def ynn_fusions_on(flags: str | None = None) -> bool:
  """Whether XLA:CPU's YNNPACK fusions are on under `flags` (default: this process's XLA_FLAGS)."""
  flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
  return not any(f.startswith(YNN_OFF_FLAG) for f in shlex.split(flags))


def lax_other_setting(
  shapes: Sequence[Shape], *, rounds: int, min_round_s: float, train: bool = False
) -> tuple[dict[str, float], bool]:
  """lax's median ms per shape, timed in a child process with YNNPACK fusions switched over.

  Returns:
    The times by shape name, and whether the child had YNNPACK fusions on.
  """
  flags = shlex.split(os.environ.get("XLA_FLAGS", ""))
  on = ynn_fusions_on()
  flags = [f for f in flags if not f.startswith(YNN_OFF_FLAG)] + ([] if not on else [YNN_OFF_FLAG])
  with tempfile.TemporaryDirectory() as out:
    cmd = [
      sys.executable,
      "-m",
      "jaxconv._cli",
      "bench",
      "--shapes",
      ",".join(s.name for s in shapes),
      "--algorithms",
      "",
      "--rounds",
      str(rounds),
      "--min-round-s",
      str(min_round_s),
      "--out",
      out,
      "--no-figures",
      "--no-progress",
      "--no-best-lax",
      "--gemm-n",
      "256",
      "--copy-mib",
      "8",
      *(["--train"] if train else []),
      *([host_memory.OPTION] if host_memory.host_memory_kept() else []),
    ]
    env = {**os.environ, "XLA_FLAGS": shlex.join(flags)}
    # Its per-layer lines would read as this run's: kept back, shown only if it fails.
    done = subprocess.run(
      cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode:
      raise RuntimeError(f"timing lax with YNNPACK fusions switched over failed:\n{done.stderr}")
    child = json.loads((Path(out) / "bench.json").read_text())
  return {c["name"]: c["results"]["lax"]["ms"] for c in child["shapes"]}, not on


def add_best_lax(record: dict, other_ms: dict[str, float], other_on: bool) -> None:
  """Adds the other YNNPACK setting's lax time and every speedup against the faster lax."""
  record["best_lax"] = {"other_ynn_fusions": "on" if other_on else "off"}
  for s in record["shapes"]:
    if s["name"] not in other_ms:
      continue
    res = s["results"]
    s["lax_other_ms"] = other_ms[s["name"]]
    s["best_lax_ms"] = best = min(res["lax"]["ms"], other_ms[s["name"]])
    for r in res.values():
      if "ms" in r:
        r["speedup_best"] = best / r["ms"]


# ----------------------------------------------------------------------------- reporting


def _render(rows: list[list[str]], markdown: bool, left: int = 1) -> str:
  """A table of strings, as markdown or aligned text (the first `left` columns flush left)."""
  if markdown:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  fmt = lambda r: "  ".join(
    c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
  ).rstrip()
  return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths), *map(fmt, rows[1:])])


def _machine_lines(record: dict) -> list[str]:
  m, rates = record["machine"], record["rates"]
  gemm = f"{rates['gemm_flops'] / 1e9:.1f} GFLOP/s"
  if "gemm_flops_end" in rates:
    gemm += f" (after the layers: {rates['gemm_flops_end'] / 1e9:.1f})"
  return [
    f"machine: {m['cpu_model']}, {m['cpu_cores_available']} cores available; {m['backend']} "
    f"device {m['device_kind']}; {m['platform']}; host memory {m.get('host_memory', 'fresh')}",
    f"versions: jaxconv {m['jaxconv']}, jax {m['jax']}, jaxlib {m['jaxlib']}, numpy {m['numpy']}, "
    f"python {m['python']}",
    f"float32 GEMM ({rates['gemm_n']}^3, best of 7): {gemm}; "
    f"memory bandwidth ({rates['copy_mib']} MiB in place): "
    f"{rates['bandwidth_bytes_s'] / 1e9:.1f} GB/s, to a fresh buffer: "
    f"{rates['fresh_buffer_bytes_s'] / 1e9:.1f} GB/s",
  ]


def format_tables(record: dict, *, markdown: bool = False) -> str:
  """The run as two tables: times and throughput, then errors against float64."""
  algos = record["settings"]["algorithms"]
  best_lax = "best_lax" in record
  head = ["shape", "GFLOP", "lax ms", "lax GF/s"]
  if best_lax:
    head.append(f"lax ms, YNN {record['best_lax']['other_ynn_fusions']}")
  for a in algos:
    head += [f"{a} ms", f"{a} x", f"{a} x IQR"] + ([f"{a} x best"] if best_lax else [])
  head += ["best GF/s", "best %GEMM", "auto picks"]
  rows, err_rows = [head], [["shape", "lax", *algos]]
  gemm = record["rates"]["gemm_flops"]
  for s in record["shapes"]:
    res = s["results"]
    row = [
      s["name"],
      f"{s['flops'] / 1e9:.2f}",
      f"{res['lax']['ms']:.2f}",
      f"{res['lax']['gflops']:.1f}",
    ]
    if best_lax:
      row.append(f"{s['lax_other_ms']:.2f}" if "lax_other_ms" in s else "-")
    errs = [s["name"], f"{res['lax']['error']:.1e}"]
    for a in algos:
      if "skipped" in res[a]:
        row += ["-"] * (4 if best_lax else 3)
        errs.append("-")
      else:
        lo, hi = res[a].get("speedup_quartiles", (math.nan, math.nan))
        row += [f"{res[a]['ms']:.2f}", f"{res[a]['speedup']:.2f}x", f"{lo:.2f}-{hi:.2f}"]
        if best_lax:
          row.append(f"{res[a]['speedup_best']:.2f}x" if "speedup_best" in res[a] else "-")
        errs.append(f"{res[a]['error']:.1e}")
    best = max((r["gflops"] for r in res.values() if "skipped" not in r), default=0.0)
    row += [f"{best:.1f}", f"{100 * best * 1e9 / gemm:.0f}%", s["auto"]["label"]]
    rows.append(row)
    err_rows.append(errs)
  note = (
    "speedup x = the median over the interleaved rounds of lax's time / the algorithm's in the "
    "same round, x IQR = their quartiles; ms = medians; GF/s = direct-convolution FLOPs / time"
  )
  if record["settings"].get("train"):
    note = (
      "training steps (forward, input and kernel gradients; auto picks: what ran for the three); "
      + note.replace("FLOPs", "FLOPs of all three")
    )
  if best_lax:
    note += (
      "; x best = the faster lax (this process or a child with YNNPACK fusions "
      f"{record['best_lax']['other_ynn_fusions']}) / algorithm ms"
    )
  title = "normwise relative error against a float64 reference"
  if markdown:
    return f"{_render(rows, True)}\n\n{note}.\n\n{title}:\n\n{_render(err_rows, True)}\n"
  lines = _machine_lines(record)
  return "\n".join(
    [*lines, "", _render(rows, False), f"({note})", "", f"{title}:", _render(err_rows, False), ""]
  )


def compare(old: dict, new: dict) -> str:
  """The change from run `old` to run `new`, shape by shape, for the algorithms both timed.

  Example:
    >>> run = lambda ms: {"machine": {"device_kind": "cpu", "cpu_model": "x"},
    ...   "shapes": [{"name": "seed", "results": {"lax": {"ms": ms, "speedup": 1.0}}}]}
    >>> print(compare(run(2.0), run(1.5)))
    shape  algorithm  old ms  new ms  change  old x  new x
    -----  ---------  ------  ------  ------  -----  -----
    seed   lax          2.00    1.50  -25.0%  1.00x  1.00x
  """
  lines = []
  mo, mn = old["machine"], new["machine"]
  if (mo["device_kind"], mo["cpu_model"]) != (mn["device_kind"], mn["cpu_model"]):
    lines.append(
      f"note: different machines ({mo['cpu_model']} / {mo['device_kind']} vs {mn['cpu_model']} / "
      f"{mn['device_kind']}): compare speedups over lax, not times"
    )
  rows = [["shape", "algorithm", "old ms", "new ms", "change", "old x", "new x"]]
  old_shapes = {s["name"]: s for s in old["shapes"]}
  for s in new["shapes"]:
    if s["name"] not in old_shapes:
      continue
    before = old_shapes[s["name"]]["results"]
    for a, r in s["results"].items():
      b = before.get(a)
      if b is None or "skipped" in r or "skipped" in b:
        continue
      change = r["ms"] / b["ms"] - 1
      rows.append(
        [
          s["name"],
          a,
          f"{b['ms']:.2f}",
          f"{r['ms']:.2f}",
          f"{100 * change:+.1f}%",
          f"{b['speedup']:.2f}x",
          f"{r['speedup']:.2f}x",
        ]
      )
  if len(rows) == 1:
    lines.append("no shape and algorithm in common")
  else:
    lines.append(_render(rows, False, left=2))
  return "\n".join(lines)


def figures(record: dict, out: Path) -> list[Path]:
  """Writes speedup.png and throughput.png under `out`; returns their paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import FuncFormatter, LogLocator

  shapes = record["shapes"]
  algos = record["settings"]["algorithms"]
  m = record["machine"]
  where = (
    m["device_kind"]
    if m["backend"] != "cpu"
    else f"{m['cpu_model']}, {m['cpu_cores_available']} cores"
  )
  names = [s["name"] for s in shapes][::-1]
  ys = np.arange(len(names))
  size = (8.5, 1.9 + 0.27 * len(names))
  plain = FuncFormatter(lambda v, _: f"{v:g}")

  def finish(fig, ax, path: Path, ncol: int) -> Path:
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.legend(fontsize=8, ncol=ncol, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

  paths = []
  baselines = [("speedup", "speedup.png", "lax.conv_general_dilated")]
  if "best_lax" in record:
    baselines.append(
      ("speedup_best", "speedup_best_lax.png", "the best lax (either YNNPACK setting)")
    )
  for key, name, baseline in baselines:
    fig, ax = plt.subplots(figsize=size)
    height = 0.8 / max(len(algos), 1)
    for i, a in enumerate(algos):
      res = [s["results"][a] for s in shapes][::-1]
      vals = np.array([r.get(key, np.nan) for r in res])
      bars = ax.barh(ys + ((len(algos) - 1) / 2 - i) * height, vals - 1, height, left=1, label=a)
      if key == "speedup":  # the per-round ratios' quartiles as whiskers
        q = np.array([r.get("speedup_quartiles", (np.nan, np.nan)) for r in res]).reshape(-1, 2)
        whisk = np.clip(np.abs(q.T - vals), 0, None)
        ax.errorbar(
          vals,
          ys + ((len(algos) - 1) / 2 - i) * height,
          xerr=whisk,
          fmt="none",
          ecolor=bars.patches[0].get_facecolor() if bars.patches else "black",
          elinewidth=0.8,
          capsize=1.5,
          alpha=0.9,
        )
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel(f"speedup over {baseline} (higher is better); {where}", fontsize=9)
    paths.append(finish(fig, ax, out / name, len(algos)))

  fig, ax = plt.subplots(figsize=size)
  markers = "osD^v<>p"
  for i, a in enumerate(["lax", *algos]):
    vals = [s["results"][a].get("gflops", np.nan) for s in shapes][::-1]
    ax.plot(vals, ys, markers[i % len(markers)], label=a, alpha=0.75)
  gemm = record["rates"]["gemm_flops"] / 1e9
  ax.axvline(gemm, color="black", ls="--", lw=1, label=f"float32 GEMM, {gemm:.0f} GFLOP/s")
  ax.set_xlabel(f"direct-convolution GFLOP/s (higher is better); {where}", fontsize=9)
  paths.append(finish(fig, ax, out / "throughput.png", len(algos) + 2))
  return paths


def write(record: dict, out: Path, *, with_figures: bool = True) -> list[Path]:
  """Writes bench.json, bench.md and (if matplotlib is installed) the figures under `out`."""
  out.mkdir(parents=True, exist_ok=True)
  paths = [out / "bench.json", out / "bench.md"]
  paths[0].write_text(json.dumps(record, indent=1) + "\n")
  md = "\n".join(f"- {line}" for line in _machine_lines(record))
  cmd = f"`{record['command']}`" if record["command"] else "(not recorded)"
  paths[1].write_text(f"command: {cmd}\n\n{md}\n\n{format_tables(record, markdown=True)}")
  if with_figures:
    try:
      paths += figures(record, out)
    except ImportError:
      print(
        "matplotlib is not installed (pip install 'jaxconv[bench]'): no figures", file=sys.stderr
      )
  return paths


# ----------------------------------------------------------------------------- command line


def add_selection(p: argparse.ArgumentParser) -> None:
  """The options that select layers of the shape table (`jaxconv bench` and `jaxconv tune`)."""
  p.add_argument("--quick", action="store_true", help="only the quick subset (about a minute)")
  p.add_argument("--shapes", help="comma-separated shape names or tags (see bench --list)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), help="only layers of this dtype")


def selected_shapes(args: argparse.Namespace) -> list[Shape] | None:
  """The layers `add_selection`'s options select; None (after a message) for an unknown name."""
  names = [n.strip() for n in args.shapes.split(",") if n.strip()] if args.shapes else None
  try:
    return list(select(names, quick=args.quick, dtype=args.dtype))
  except KeyError as e:
    print(e.args[0], file=sys.stderr)
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The `jaxconv bench` options."""
  add_selection(p)
  p.add_argument(
    "--algorithms",
    default=",".join(DEFAULT_ALGORITHMS),
    help=f"comma-separated jaxconv algorithms to time besides lax (default: %(default)s; any of "
    f"{', '.join(jaxconv.ALGORITHMS[2:])}, auto)",
  )
  p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median)")
  p.add_argument("--min-round-s", type=float, default=0.05, help="seconds per function per round")
  p.add_argument(
    "--out", default="out", help="folder for bench.json, bench.md, PNGs (default: out)"
  )
  p.add_argument(
    "--compare",
    nargs="+",
    metavar="JSON",
    help="OLD.json: print the change from that run to this one; OLD.json NEW.json: compare two "
    "runs without running anything",
  )
  p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument(
    "--no-best-lax",
    action="store_true",
    help="on CPU, skip timing lax in a child process with the other YNNPACK setting",
  )
  p.add_argument(
    "--train",
    action="store_true",
    help="time each layer's training step: forward, input and kernel gradients",
  )
  p.add_argument("--list", action="store_true", help="list the shape table and exit")
  p.add_argument("--gemm-n", type=int, default=2048, help="size of the GEMM-rate probe")
  p.add_argument("--copy-mib", type=int, default=256, help="MiB of the bandwidth probe")


def main(args: argparse.Namespace, argv: Sequence[str]) -> int:
  """Runs `jaxconv bench` with parsed `args`; `argv` is recorded as the command line."""
  if args.compare and len(args.compare) > 2:
    print("--compare takes OLD.json or OLD.json NEW.json", file=sys.stderr)
    return 2
  if args.compare and len(args.compare) == 2:
    old, new = (json.loads(Path(p).read_text()) for p in args.compare)
    print(compare(old, new))
    return 0
  shapes = selected_shapes(args)
  if shapes is None:
    return 2
  if args.list:
    for s in shapes:
      print(f"{s.name:<24} {s.describe():<44} {','.join(s.tags)}")
    return 0
  if not shapes:
    print("no shape matches the selection", file=sys.stderr)
    return 2
  algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip() and a.strip() != "lax"]
  unknown = [a for a in algorithms if a not in jaxconv.ALGORITHMS]
  if unknown:
    print(
      f"unknown algorithm(s) {unknown}; known: {', '.join(jaxconv.ALGORITHMS)}", file=sys.stderr
    )
    return 2
  old = json.loads(Path(args.compare[0]).read_text()) if args.compare else None
  record = run(
    shapes,
    algorithms,
    rounds=args.rounds,
    min_round_s=args.min_round_s,
    gemm_n=args.gemm_n,
    copy_mib=args.copy_mib,
    progress=False if args.no_progress else None,
    command=shlex.join(["jaxconv", *argv]),
    train=args.train,
  )
  if not args.no_best_lax and record["machine"]["backend"] == "cpu":
    other, on = lax_other_setting(
      shapes, rounds=args.rounds, min_round_s=args.min_round_s, train=args.train
    )
    add_best_lax(record, other, on)
  print(format_tables(record))
  paths = write(record, Path(args.out), with_figures=not args.no_figures)
  print(f"wrote {', '.join(map(str, paths))} ({record['wall_s']:.0f} s)")
  if old is not None:
    print()
    print(compare(old, record))
  return 0
