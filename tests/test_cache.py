"""The tuning cache on disk: location, key, atomic concurrent writes, bad files, no directory."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from jaxconv import _cache

KEY = {"backend": "cpu", "device_kind": "test", "jaxconv": "0", "xla_flags": []}
ENTRY = {"times": {"lax": 1.0, "im2col": 0.5}, "errors": {"lax": 0.0, "im2col": 1e-7}}


def test_location_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path / "a"))
  assert _cache.cache_dir() == tmp_path / "a"
  monkeypatch.delenv("JAXCONV_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert _cache.cache_dir() == tmp_path / "xdg" / "jaxconv"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert _cache.cache_dir() == tmp_path / "home" / ".cache" / "jaxconv"


def test_device_key_holds_versions_device_threads_and_measured_flags(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  key = _cache.device_key("cpu", "cpu")
  assert {"jaxconv", "jax", "jaxlib", "backend", "device_kind", "cpu_threads", "xla_flags"} <= set(
    key
  )
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=")
  flagged = _cache.device_key("cpu", "cpu")
  assert flagged["xla_flags"] == ["--xla_cpu_experimental_ynn_fusion_type="]  # dumps don't count
  assert _cache._file_name(flagged) != _cache._file_name(key)


def test_entries_persist_for_the_next_process(tmp_path):
  store = _cache.Store(KEY, tmp_path)
  store.put("g1", ENTRY)
  data = json.loads(store.path.read_text())
  assert data["schema"] == _cache.SCHEMA and data["device_key"] == KEY
  assert data["entries"] == {"g1": ENTRY}
  fresh = _cache.Store(KEY, tmp_path)  # as another process would see it
  assert fresh.get("g1") == ENTRY and fresh.get("g2") is None
  assert (fresh.info().hits, fresh.info().misses) == (1, 1)
  assert not list(tmp_path.glob(".tmp-*"))  # the temporary file was renamed into place


def test_a_store_sees_what_another_wrote_since(tmp_path):
  a, b = _cache.Store(KEY, tmp_path), _cache.Store(KEY, tmp_path)
  assert a.get("g") is None
  b.put("g", ENTRY)
  assert a.get("g") == ENTRY  # the file changed: re-read on a miss
  a.put("h", ENTRY)
  assert set(json.loads(a.path.read_text())["entries"]) == {"g", "h"}  # merged, not overwritten


WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("cache", sys.argv[1])
cache = sys.modules["cache"] = importlib.util.module_from_spec(spec)  # no jax: starts fast
spec.loader.exec_module(cache)
store = cache.Store({key!r}, cache.Path(sys.argv[2]))
for i in range(25):
  store.put(f"{{sys.argv[3]}}-{{i}}", {{"times": {{"lax": float(i)}}, "errors": {{"lax": 0.0}}}})
"""


def test_several_processes_writing_at_once_lose_nothing(tmp_path):
  script = WRITER.format(key=KEY)
  procs = [
    subprocess.Popen([sys.executable, "-c", script, _cache.__file__, str(tmp_path), f"p{n}"])
    for n in range(4)
  ]
  assert [p.wait(timeout=120) for p in procs] == [0] * 4
  entries = json.loads(_cache.Store(KEY, tmp_path).path.read_text())["entries"]
  assert len(entries) == 100 and entries["p3-24"]["times"]["lax"] == 24.0


def test_a_corrupt_file_warns_once_and_is_measured_afresh(tmp_path):
  store = _cache.Store(KEY, tmp_path)
  store.path.write_text('{"schema": 1, "entries": {"g": ')  # cut short
  with pytest.warns(RuntimeWarning, match="corrupt") as record:
    assert store.get("g") is None
    store.path.write_text("[1, 2]")  # valid JSON, not a cache
    store._mtime = 0.0
    assert store.get("g") is None
  assert len(record) == 1
  store.put("g", ENTRY)  # the next write replaces the bad file
  assert _cache.Store(KEY, tmp_path).get("g") == ENTRY


def test_an_unwritable_location_warns_once_and_keeps_memory(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("a regular file: nothing can be created under it, even by root")
  store = _cache.Store(KEY, blocker / "cache")
  with pytest.warns(RuntimeWarning, match="cannot write") as record:
    store.put("g", ENTRY)
    store.put("h", ENTRY)
  assert len(record) == 1
  assert store.get("g") == ENTRY and store.get("h") == ENTRY
  assert not store.info().writable and store.info().entries == 2


def test_unreadable_directory_entries_read_as_empty(tmp_path):
  store = _cache.Store(KEY, tmp_path / "missing")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a missing file is simply empty: no warning
    assert store.get("g") is None


def test_clear_removes_the_cache_files(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path))
  _cache.Store(KEY, tmp_path).put("g", ENTRY)
  (tmp_path / "notes.txt").write_text("not ours")
  assert [p.name for p, _ in _cache.files()] == [_cache._file_name(KEY)]
  removed = _cache.clear()
  assert [Path(p).name for p in removed] == [_cache._file_name(KEY)]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
