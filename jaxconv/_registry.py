"""The list of algorithms: what `auto`, `plan`, the autotuner, the errors and the benchmarks read.

Like oneDNN's implementation list, the order is the order of preference when two candidates tie:
lax first. Adding an algorithm is one module with an `Algorithm` instance and one line here.
"""

from __future__ import annotations

from collections.abc import Hashable

from jaxconv._algorithm import Algorithm
from jaxconv._col2im import COL2IM
from jaxconv._direct import DIRECT
from jaxconv._im2col import IM2COL
from jaxconv._lax import LAX
from jaxconv._pixelshuffle import PIXELSHUFFLE
from jaxconv._spacetodepth import SPACETODEPTH
from jaxconv._subpixel import SUBPIXEL
from jaxconv._wgrad import WGRAD
from jaxconv._winograd import WINOGRAD

__all__ = ["ALGORITHMS", "REGISTRY", "by_name", "forced"]

REGISTRY: tuple[Algorithm, ...] = (
  LAX, IM2COL, DIRECT, WINOGRAD, WGRAD, SUBPIXEL, COL2IM, PIXELSHUFFLE, SPACETODEPTH
)  # fmt: skip

_FORCED: dict[str, tuple[Algorithm, Hashable]] = {
  name: (a, hint) for a in REGISTRY for name, hint in a.forced().items()
}
ALGORITHMS: tuple[str, ...] = ("auto", *_FORCED)
"""Every value `algorithm=` accepts: "auto", then each registered algorithm's names."""

_BY_NAME = {a.name: a for a in REGISTRY}


def by_name(name: str) -> Algorithm:
  """The registered algorithm called `name` (as `Plan.algorithm` reports it)."""
  return _BY_NAME[name]


def forced(name: str) -> tuple[Algorithm, Hashable]:
  """The algorithm a forced `algorithm=name` runs, with its hint for `Algorithm.resolve`."""
  return _FORCED[name]
