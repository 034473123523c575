"""Keeping XLA:CPU's temporaries in the heap instead of faulting them in again on every run.

XLA:CPU gives each run of a compiled program its temporaries as one block, allocated with
`posix_memalign` by the worker thread that starts the run and freed when it ends. glibc serves a
block above its mmap threshold (at most 32 MiB), or any block a thread's arena (64 MiB heaps)
cannot hold, with a fresh `mmap` and returns it with `munmap`, so the kernel faults in and zeroes
every page of it again on every run. A training step's temporaries are that large: a ResNet for
32x32 images at batch 32 takes 111 MB of them with lax (30,000 page faults per step measured) and
162 MB with jaxconv (40,000). PyTorch's eager steps pay the same for their large tensors.

`keep_host_memory` sets three glibc malloc parameters so that such blocks come from the main
heap and stay there for the next run: one arena for all threads (`M_ARENA_MAX`, as thread arenas
fall back to mmap for large blocks whatever the limits), no mmap (`M_MMAP_MAX`), and a trim
threshold of 2 GiB (`M_TRIM_THRESHOLD`) so the top of the heap is not handed back after each
run. The price is that the process keeps its peak heap: its resident memory does not fall after
a large step. The same settings, for a process that cannot call it before JAX starts, are the
environment variable `GLIBC_TUNABLES` (`TUNABLES`).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import platform

__all__ = [
  "OPTION",
  "TUNABLES",
  "add_option",
  "apply_option",
  "host_memory_kept",
  "keep_host_memory",
  "state",
]

# glibc's malloc.h parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_BYTES = 2**31 - 1  # mallopt takes an int
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_BYTES))

TUNABLES = (
  f"glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={_TRIM_BYTES}"
)
"""The value of `GLIBC_TUNABLES` that makes the same settings from a process's start."""

_kept = False


def _tunables_set() -> bool:
  """Whether the process started with `GLIBC_TUNABLES` making the same three settings."""
  pairs = dict(
    item.split("=", 1) for item in os.environ.get("GLIBC_TUNABLES", "").split(":") if "=" in item
  )
  try:
    return (
      int(pairs.get("glibc.malloc.arena_max", 0)) == 1
      and int(pairs.get("glibc.malloc.mmap_max", -1)) == 0
      and int(pairs.get("glibc.malloc.trim_threshold", 0)) >= 1 << 30
    )
  except ValueError:
    return False


def host_memory_kept() -> bool:
  """Whether this process keeps XLA:CPU's temporaries in the heap between runs.

  True after `keep_host_memory()` or when the process started with `GLIBC_TUNABLES` set to
  `TUNABLES`. The autotuner reads it: where memory is not kept it charges each candidate the
  time of faulting its temporaries in (see docs/tuning.md), and it keeps the two kinds of
  measurement in separate cache files.

  Example:
    >>> import jaxconv
    >>> isinstance(jaxconv.host_memory_kept(), bool)
    True
  """
  return _kept or _tunables_set()


def state() -> str:
  """ "kept" or "fresh", as benchmark records and the tuning cache's device key name it."""
  return "kept" if host_memory_kept() else "fresh"


OPTION = "--keep-host-memory"
"""The command-line option of `jaxconv bench`, `jaxconv tune` and the bench scripts."""


def add_option(parser: argparse.ArgumentParser) -> None:
  """Adds `OPTION` to a command line; `apply_option` acts on it once the arguments are parsed."""
  parser.add_argument(
    OPTION,
    action="store_true",
    help="keep XLA:CPU's temporaries in the heap between runs (jaxconv.keep_host_memory)",
  )


def apply_option(args: argparse.Namespace) -> None:
  """Calls `keep_host_memory` if the parsed command line asked for it."""
  if getattr(args, "keep_host_memory", False):
    keep_host_memory()


def keep_host_memory() -> bool:
  """Makes glibc keep large blocks in the heap, so XLA:CPU's temporaries are not faulted in anew.

  Call it before JAX's first computation (arenas are given to threads when they first allocate,
  and XLA's worker threads start with its CPU backend). It changes malloc for the whole process,
  so every program gains, lax's as well as jaxconv's, and PyTorch's in the same process (whole
  training steps measured with and without it: docs/benchmarks.md).

  Returns:
    True if the settings were made; False where the C library is not glibc (macOS, musl), where
    there is nothing to change.

  Raises:
    RuntimeError: if a JAX backend has already started; set `GLIBC_TUNABLES` to `TUNABLES` in the
      environment of the process instead.

  Example:
    >>> import jaxconv
    >>> jaxconv.keep_host_memory()  # doctest: +SKIP
    True
  """
  global _kept
  if _kept:
    return True
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  from jax._src import xla_bridge

  if xla_bridge.backends_are_initialized() and not _tunables_set():
    raise RuntimeError(
      "keep_host_memory() must be called before JAX's first computation: XLA's worker threads "
      "already hold their own malloc arenas. Start the process with "
      f"GLIBC_TUNABLES={TUNABLES} instead."
    )
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  for param, value in _SETTINGS:
    if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
      raise OSError(f"mallopt({param}, {value}) failed")
  _kept = True
  return True
