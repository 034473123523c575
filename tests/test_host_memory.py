"""`keep_host_memory`: XLA:CPU's large temporaries stay in the heap instead of faulting in anew."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

import jaxconv
from jaxconv import _cache, _host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# In a fresh process: a 100 MB block malloc'd, written, freed and malloc'd again, with the page
# faults of writing it the second time; then a program with about 160 MB of temporaries (two 80 MB
# scans XLA does not fuse) run sixteen times, with its temporaries and the page faults of the last
# fourteen runs. (A kept heap still grows now and then, by fragmentation, so those are compared in
# total, not per run.)
CHILD = textwrap.dedent(
  """
  import ctypes, resource, sys
  import jaxconv
  if sys.argv[1] == "keep":
    assert jaxconv.keep_host_memory() and jaxconv.host_memory_kept()
  faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  libc = ctypes.CDLL("libc.so.6")
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  n = 100 << 20
  p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
  p = libc.malloc(n); before = faults(); ctypes.memset(p, 1, n); again = faults() - before
  libc.free(p)
  import jax, jax.numpy as jnp
  f = jax.jit(lambda x: jnp.cumsum(jnp.cumsum(x)[::-1]).sum()).lower(
    jax.ShapeDtypeStruct((20_000_000,), jnp.float32)).compile()
  x = jnp.ones((20_000_000,), jnp.float32)
  for i in range(16):
    if i == 2:
      before = faults()
    jax.block_until_ready(f(x))
  print(again, f.memory_analysis().temp_size_in_bytes, faults() - before)
  """
)


def _env(**extra: str) -> dict[str, str]:
  """This process's environment without GLIBC_TUNABLES, for a child that starts fresh."""
  return {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, **extra}


def _faults(mode: str) -> tuple[int, int, int]:
  out = subprocess.run(
    [sys.executable, "-c", CHILD, mode],
    env=_env(JAX_PLATFORMS="cpu"),
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  again, temp, runs = map(int, out.split()[-3:])
  return again, temp, runs


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_kept_host_memory_stops_temporaries_faulting_in():
  again_fresh, temp, fresh = _faults("fresh")
  again_kept, _, kept = _faults("keep")
  pages = (100 << 20) // 4096
  assert again_fresh > pages // 2, again_fresh  # a fresh mmap: every page faults in again
  assert again_kept < pages // 100, again_kept  # the same heap block, still mapped
  assert temp > 128 << 20, temp  # beyond both the mmap threshold and a thread arena's heap
  assert fresh > 14 * (temp // 4096), fresh  # every run faults its temporaries in
  assert kept < 0.8 * fresh, (kept, fresh)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_host_memory_after_jax_started_raises(monkeypatch):
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setattr(_host_memory, "_kept", False)
  import jax.numpy as jnp

  jnp.zeros(1).block_until_ready()  # the CPU backend is up
  with pytest.raises(RuntimeError, match=r"before JAX's first computation.*GLIBC_TUNABLES="):
    jaxconv.keep_host_memory()
  assert not jaxconv.host_memory_kept()


@pytest.mark.parametrize(
  "value, kept",
  [
    (_host_memory.TUNABLES, True),
    (
      "glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=4294967296",
      True,
    ),
    ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296", False),  # thread arenas
    ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0", False),  # the heap is trimmed
    ("glibc.malloc.arena_max=one", False),
    ("", False),
  ],
)
def test_host_memory_kept_reads_glibc_tunables(monkeypatch, value, kept):
  monkeypatch.setattr(_host_memory, "_kept", False)
  monkeypatch.setenv("GLIBC_TUNABLES", value)
  assert jaxconv.host_memory_kept() is kept
  assert _cache.device_key("cpu", "cpu")["host_memory"] == ("kept" if kept else "fresh")


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_cli_bench_keep_host_memory_records_it(tmp_path):
  env = _env(XDG_CACHE_HOME=str(tmp_path / "cache"))
  cmd = [sys.executable, "-m", "jaxconv._cli", "bench", "--keep-host-memory", "--shapes", "tiny"]
  cmd += ["--algorithms", "im2col", "--rounds", "1", "--min-round-s", "0.001", "--gemm-n", "64"]
  cmd += ["--copy-mib", "2", "--no-figures", "--no-progress", "--no-best-lax"]
  out = subprocess.run(
    [*cmd, "--out", str(tmp_path)], env=env, check=True, capture_output=True, text=True
  ).stdout
  assert "host memory kept" in out
  assert json.loads((tmp_path / "bench.json").read_text())["machine"]["host_memory"] == "kept"
