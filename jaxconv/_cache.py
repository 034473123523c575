"""The autotuner's measurements on disk: one JSON file per device key.

The directory is ``$JAXCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxconv``, else
``~/.cache/jaxconv``. A measurement is only valid where it was taken, so each file belongs to one
*device key*: jaxconv, jax and jaxlib versions, a digest of the algorithms' source (a changed
algorithm is measured afresh, release or not), the backend and device kind, the CPU threads XLA may
use and the XLA flags that change what is measured. Its name is ``<backend>-<hash of the key>.json``
and it records the key in full. Inside, entries are keyed by the normalised geometry (shapes,
layouts, strides, padding, dilations, groups, dtypes, precision).

Writing is safe with several processes at once: each write takes an exclusive lock (a ``.lock`` file
beside the cache, `fcntl.flock`), re-reads the file, merges its own entries and replaces the file
atomically (a temporary file in the same directory, then `os.replace`), so readers never see half a
file and no writer loses another's entries. A file that cannot be read or parsed gives one warning
and is treated as empty (its geometries are measured afresh and the next write replaces it); a
directory that cannot be created or written gives one warning, and the measurements stay in memory
for the rest of the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxconv import _host_memory as host_memory

try:
  import fcntl
except ImportError:  # pragma: no cover - Windows: atomic replace, but no lock between processes
  fcntl = None

__all__ = ["TuneCacheInfo", "available_cores", "cache_dir", "clear", "device_key", "files", "store"]

SCHEMA = 1
_NAME = re.compile(r"^[a-z0-9_]+-[0-9a-f]{16}\.json$")
# XLA flags that only choose what is dumped or logged: they do not change what is measured.
_NEUTRAL_FLAG_PREFIXES = ("--xla_dump", "--xla_log", "--xla_cpu_dump")


def cache_dir() -> Path:
  """Where the cache files live (the environment is read on every call)."""
  if os.environ.get("JAXCONV_CACHE_DIR"):
    return Path(os.environ["JAXCONV_CACHE_DIR"]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "jaxconv"


def available_cores() -> int:
  """The CPU cores this process may run on (its affinity; all of them where that is unknown)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - not Linux
    return os.cpu_count() or 1


def _measured_flags() -> list[str]:
  flags = shlex.split(os.environ.get("XLA_FLAGS", ""))
  return sorted(f for f in flags if not f.startswith(_NEUTRAL_FLAG_PREFIXES))


@functools.cache
def source_digest() -> str:
  """A digest of the source of jaxconv's algorithms: the registry's modules and what they import.

  Benchmarks, command line and cache code are left out: changing them changes no measurement.
  """
  from jaxconv._registry import REGISTRY

  here = Path(__file__).parent
  todo = sorted({type(a).__module__.rsplit(".", 1)[-1] for a in REGISTRY})
  seen: set[str] = set()
  digest = hashlib.sha256()
  while todo:
    name = todo.pop()
    if name in seen or not (here / f"{name}.py").exists():
      continue
    seen.add(name)
    text = (here / f"{name}.py").read_bytes()
    digest.update(name.encode() + b"\0" + text)
    todo += re.findall(rb"^\s*from jaxconv\.(\w+) import", text, re.MULTILINE)
    todo = [t.decode() if isinstance(t, bytes) else t for t in todo]
  return digest.hexdigest()[:16]


def device_key(backend: str, device_kind: str) -> dict:
  """What a measurement depends on besides the geometry: versions, device, threads, flags, heap."""
  import jax
  import jaxlib

  from jaxconv import __version__

  return {
    "jaxconv": __version__,
    "source": source_digest(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "backend": backend,
    "device_kind": device_kind,
    "cpu_threads": available_cores(),
    "xla_flags": _measured_flags(),
    "host_memory": host_memory.state(),
  }


def _file_name(key: dict) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return f"{key['backend']}-{digest}.json"


@dataclasses.dataclass(frozen=True)
class TuneCacheInfo:
  """The state of the autotuner's cache for the current device (`jaxconv.cache_info()`).

  Attributes:
    path: the cache file for the current device key.
    entries: geometries with a measurement (on disk and in memory).
    hits: lookups that found a measurement.
    misses: lookups that found none.
    measured: geometries measured by this process.
    writable: False when measurements stay in memory (the directory cannot be written).
  """

  path: str
  entries: int
  hits: int
  misses: int
  measured: int
  writable: bool


class Store:
  """The measurements of one device key: memory first, the file behind it."""

  def __init__(self, key: dict, directory: Path):
    self.key = key
    self.path = directory / _file_name(key)
    self._entries: dict[str, dict] = {}
    self._mtime: float | None = None  # of the file when last read; None: never read
    self._lock = threading.Lock()
    self._warned: set[str] = set()
    self.writable = True
    self.hits = self.misses = self.measured = 0

  def _warn(self, kind: str, message: str) -> None:
    if kind not in self._warned:  # once per store and kind
      self._warned.add(kind)
      warnings.warn(message, RuntimeWarning, stacklevel=4)

  def _read_file(self) -> dict[str, dict]:
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return {}
    except OSError as e:
      self._warn("read", f"jaxconv: cannot read the tuning cache {self.path} ({e}); measuring.")
      return {}
    try:
      data = json.loads(text)
      if data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
        raise ValueError(f"not a jaxconv tuning cache of schema {SCHEMA}")
      return {str(k): v for k, v in data["entries"].items() if isinstance(v, dict)}
    except (ValueError, AttributeError) as e:
      self._warn(
        "parse",
        f"jaxconv: the tuning cache {self.path} is corrupt ({e}); its geometries are measured "
        "afresh and the file is replaced on the next write.",
      )
      return {}

  def _refresh(self) -> None:
    """Re-reads the file when another process changed it since the last read."""
    try:
      mtime = self.path.stat().st_mtime
    except OSError:
      mtime = None
    if self._mtime is None or mtime != self._mtime:
      self._entries = {**self._read_file(), **self._entries}
      self._mtime = mtime if mtime is not None else -1.0

  def get(self, geometry: str) -> dict | None:
    with self._lock:
      entry = self._entries.get(geometry)
      if entry is None:
        self._refresh()
        entry = self._entries.get(geometry)
      if entry is None:
        self.misses += 1
      else:
        self.hits += 1
      return entry

  def entries(self) -> dict[str, dict]:
    with self._lock:
      self._refresh()
      return dict(self._entries)

  def put(self, geometry: str, entry: dict) -> None:
    with self._lock:
      self._entries[geometry] = entry
      self.measured += 1
      if self.writable:
        try:
          self._write({geometry: entry})
        except OSError as e:
          self.writable = False
          self._warn(
            "write",
            f"jaxconv: cannot write the tuning cache in {self.path.parent} ({e}); measurements "
            "stay in memory for this process. Set JAXCONV_CACHE_DIR to a writable directory.",
          )

  def _write(self, new: dict[str, dict]) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(self.path.with_suffix(".lock")):
      merged = {**self._read_file(), **new}
      payload = {
        "schema": SCHEMA,
        "device_key": self.key,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": dict(sorted(merged.items())),
      }
      fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
      try:
        with os.fdopen(fd, "w") as f:
          json.dump(payload, f, indent=1)
        os.replace(tmp, self.path)
      except BaseException:
        with contextlib.suppress(OSError):
          os.unlink(tmp)
        raise
      self._entries = {**merged, **self._entries}
      self._mtime = self.path.stat().st_mtime

  def info(self) -> TuneCacheInfo:
    with self._lock:
      return TuneCacheInfo(
        path=str(self.path),
        entries=len(self._entries),
        hits=self.hits,
        misses=self.misses,
        measured=self.measured,
        writable=self.writable,
      )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
  if fcntl is None:  # pragma: no cover
    yield
    return
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


_stores: dict[tuple[str, str], Store] = {}
_stores_lock = threading.Lock()


def store(backend: str, device_kind: str) -> Store:
  """The store of the current device key and cache directory (one per process and key)."""
  key = device_key(backend, device_kind)
  directory = cache_dir()
  ident = (json.dumps(key, sort_keys=True), str(directory))
  with _stores_lock:
    if ident not in _stores:
      _stores[ident] = Store(key, directory)
    return _stores[ident]


def _cache_files(directory: Path) -> list[Path]:
  return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def clear() -> list[Path]:
  """Deletes every jaxconv cache file in `cache_dir()` and forgets what memory holds."""
  removed = []
  directory = cache_dir()
  if directory.is_dir():
    for p in _cache_files(directory):
      with contextlib.suppress(OSError):
        p.unlink()
        removed.append(p)
      with contextlib.suppress(OSError):
        p.with_suffix(".lock").unlink()
  with _stores_lock:
    _stores.clear()
  return removed


def files() -> list[tuple[Path, dict[str, Any]]]:
  """Every readable jaxconv cache file in `cache_dir()`, with its contents."""
  out = []
  directory = cache_dir()
  if directory.is_dir():
    for p in _cache_files(directory):
      with contextlib.suppress(OSError, ValueError):
        data = json.loads(p.read_text())
        if data.get("schema") == SCHEMA:
          out.append((p, data))
  return out
