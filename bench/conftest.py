"""pytest-benchmark suite over the shape table: `pytest bench --benchmark-only`.

Every layer of `jaxconv._shapes` is one benchmark group holding `lax.conv_general_dilated` and each
jaxconv algorithm that applies to it (the others are skipped with the reason `jaxconv.plan` gives).
Select with ``--quick``, ``--shapes NAME[,NAME]`` (names or tags), ``--dtype``, ``--algorithms``, or
with markers: every tag is one (``-m quick``, ``-m "resnet and not bfloat16"``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import jaxconv
from jaxconv._bench import plan_key
from jaxconv._shapes import SHAPES, select

ALGORITHMS = tuple(a for a in jaxconv.ALGORITHMS if a != "lax")
HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
  group = parser.getgroup("jaxconv benchmarks")
  group.addoption("--quick", action="store_true", help="only the quick subset of the shape table")
  group.addoption("--shapes", default=None, help="comma-separated shape names or tags")
  group.addoption("--dtype", choices=("float32", "bfloat16"), help="only layers of this dtype")
  group.addoption(
    "--algorithms",
    default=",".join(ALGORITHMS),
    help="comma-separated jaxconv algorithms timed besides lax (default: %(default)s)",
  )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
  # Scripts beside the suite run on their own (`python bench/NAME.py`); importing them for
  # --doctest-modules would run their module-level settings (such as x64 mode) in this process.
  if collection_path.suffix == ".py" and collection_path.parent == HERE:
    return not collection_path.name.startswith(("test_", "conftest"))
  return None


def pytest_configure(config: pytest.Config) -> None:
  for tag in sorted({t for s in SHAPES for t in s.tags}):
    config.addinivalue_line("markers", f"{tag}: layers of the shape table tagged {tag!r}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
  if "case" not in metafunc.fixturenames:
    return
  opt = metafunc.config.getoption
  names = [n.strip() for n in opt("--shapes").split(",") if n.strip()] if opt("--shapes") else None
  shapes = select(names, quick=opt("--quick"), dtype=opt("--dtype"))
  algorithms = [a.strip() for a in opt("--algorithms").split(",") if a.strip() not in ("", "lax")]
  unknown = [a for a in algorithms if a not in ALGORITHMS]
  if unknown:
    raise pytest.UsageError(f"unknown algorithm(s) {unknown}; known: {', '.join(ALGORITHMS)}")
  params = []
  for s in shapes:
    marks = [getattr(pytest.mark, t) for t in s.tags]
    for a in ("lax", *algorithms):
      try:
        plan_key(s, a)
      except NotImplementedError as e:
        marks_a = [*marks, pytest.mark.skip(reason=str(e).split(". Algorithms")[0])]
      else:
        marks_a = marks
      params.append(pytest.param((s, a), id=f"{s.name}-{a}", marks=marks_a))
  metafunc.parametrize("case", params)
