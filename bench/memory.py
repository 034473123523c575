"""Peak memory of each algorithm against lax on one large convolution (CPU).

Each algorithm runs in a fresh Python process, so one run's buffers and caches never count towards
another's. The process makes a random input and kernel, compiles the convolution ahead, hands the
compiler's freed heap back to the system, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), runs the convolution once and reads the peak (``VmHWM``). Reported per
algorithm: the resident memory before the call (runtime, input and kernel), the peak during the
call, the peak's ratio to lax's, and XLA's own account of the compiled program's temporary buffers
(`jax.stages.Compiled.memory_analysis`). Linux only.

  python bench/memory.py --out docs/memory.md        # 64x224x224x64, 3x3, SAME (about 2 minutes)
  python bench/memory.py --batch 8 --size 56          # a quick check
  python bench/memory.py --train --batch 32 --size 56  # a training step, ResNet-50's first stage

With ``--train`` the call is a training step of the layer, ``y, (dx, dw) = vjp(conv, x, w)(dy)``
with ``dy`` resident beforehand, and the algorithm is the forward's (jaxconv's gradients go to
whatever ``auto`` picks for them); ``--stride 2`` makes it a strided layer to ``2 * channels``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

ALGORITHMS = ("lax", "im2col", "winograd2", "winograd4", "auto")
NHWC = ("NHWC", "HWIO", "NHWC")


def _status_kib(key: str) -> int:
  for line in open("/proc/self/status"):
    if line.startswith(key + ":"):
      return int(line.split()[1])
  raise KeyError(key)


def child(
  algorithm: str, batch: int, size: int, channels: int, kernel: int, train: bool, stride: int
) -> dict:
  """Runs one convolution in this process and measures it (the body of a subprocess)."""
  import jax
  import numpy as np
  from jax import lax

  import jaxconv

  rng = np.random.default_rng(0)
  host = rng.standard_normal((batch, size, size, channels), dtype=np.float32)
  x = jax.block_until_ready(jax.device_put(host))  # the copy is asynchronous: wait, then free
  del host
  out_channels = channels * stride
  w = jax.device_put(
    rng.standard_normal((kernel, kernel, channels, out_channels), dtype=np.float32) / 24.0
  )
  kw = dict(window_strides=(stride, stride), padding="SAME", dimension_numbers=NHWC)
  if algorithm == "lax":
    conv = lambda a, b: lax.conv_general_dilated(a, b, **kw)
  else:
    conv = lambda a, b: jaxconv.conv_general_dilated(a, b, **kw, algorithm=algorithm)
  args = (x, w)
  fn = conv
  if train:
    out = jax.eval_shape(conv, x, w).shape
    args = (x, w, jax.device_put(rng.standard_normal(out, dtype=np.float32)))

    def fn(a, b, dy):
      y, pullback = jax.vjp(conv, a, b)
      return y, pullback(dy)

  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  try:  # hand the compiler's freed heap back to the OS, so every run starts from the same place
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS
    f.write("5")
  before = _status_kib("VmRSS")
  start = time.perf_counter()
  y = jax.block_until_ready(compiled(*args))
  run_s = time.perf_counter() - start
  peak = _status_kib("VmHWM")
  del y
  return dict(
    algorithm=algorithm,
    rss_before_gb=before * 1024 / 1e9,
    peak_rss_gb=peak * 1024 / 1e9,
    xla_temp_gb=analysis.temp_size_in_bytes / 1e9,
    xla_args_gb=analysis.argument_size_in_bytes / 1e9,
    xla_out_gb=analysis.output_size_in_bytes / 1e9,
    compile_s=compile_s,
    run_s=run_s,
  )


def measure(algorithm: str, args: argparse.Namespace) -> dict:
  """`child` in a fresh interpreter; returns its record."""
  cmd = [
    sys.executable,
    __file__,
    "--child",
    algorithm,
    *("--batch", str(args.batch), "--size", str(args.size)),
    *("--channels", str(args.channels), "--kernel", str(args.kernel)),
    *("--stride", str(args.stride)),
    *(["--train"] if args.train else []),
  ]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # whatever found jaxconv here
  done = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if done.returncode:
    raise RuntimeError(f"{algorithm} failed:\n{done.stderr}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def table(records: list[dict], args: argparse.Namespace) -> str:
  lax_peak = next(r["peak_rss_gb"] for r in records if r["algorithm"] == "lax")
  what = (
    "A training step (forward, input and kernel gradients) of the layer: input"
    if args.train
    else "Input"
  )
  lines = [
    f"{what} {args.batch}x{args.size}x{args.size}x{args.channels} float32 (NHWC), "
    f"{args.kernel}x{args.kernel} kernel, {args.channels} -> {args.channels * args.stride}, "
    f"stride {args.stride}, SAME. "
    f"Arguments and results are {records[0]['xla_args_gb']:.2f} GB and "
    f"{records[0]['xla_out_gb']:.2f} GB.",
    "",
    "| algorithm | RSS before the call | peak RSS | peak / lax's | XLA temp buffers | time |",
    "|---|---|---|---|---|---|",
  ]
  for r in records:
    lines.append(
      f"| {r['algorithm']} | {r['rss_before_gb']:.2f} GB | {r['peak_rss_gb']:.2f} GB | "
      f"{r['peak_rss_gb'] / lax_peak:.2f}x | {r['xla_temp_gb']:.2f} GB | {r['run_s']:.2f} s |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--channels", type=int, default=64)
  p.add_argument("--kernel", type=int, default=3)
  p.add_argument("--stride", type=int, default=1)
  p.add_argument("--train", action="store_true", help="a training step, not a forward call")
  p.add_argument("--algorithms", default=",".join(ALGORITHMS))
  p.add_argument("--out", help="also write the markdown table here")
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    record = child(
      args.child, args.batch, args.size, args.channels, args.kernel, args.train, args.stride
    )
    print(json.dumps(record))
    return 0
  algorithms = args.algorithms.split(",")
  if "lax" not in algorithms:
    algorithms.insert(0, "lax")
  records = []
  for algorithm in algorithms:
    records.append(measure(algorithm, args))
    print(json.dumps(records[-1]), file=sys.stderr, flush=True)
  text = table(records, args)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write("# Peak memory\n\n" + text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
