"""What every convolution algorithm declares: the interface the registry, `auto` and the tuner read.

An algorithm is one module (`_lax.py`, `_im2col.py`, `_winograd.py`, ...) holding one `Algorithm`
instance. It answers, for a normalised `ConvGeometry`:

* `cannot`: why it cannot compute the geometry, or None when it can;
* `variants`: the static parameters worth trying (Winograd's tile sizes; `(None,)` when there is
  nothing to choose), which the autotuner measures one by one;
* `predict`: its predicted seconds on the CPU it was fitted to, or None where it has no model or
  is known not to pay (`auto` then never picks it without a measurement);
* `run`: the computation itself, in the user's layouts;
* `nested`: the convolutions `run` hands back to `auto` (a decomposition's parts), which the
  tuner measures before timing the algorithm itself;
* `shares_with`: the forward layer whose intermediate a kernel gradient's `run` computes again,
  which a training step compiled as one program computes once for both: the tuner then times the
  two together (`_tune._pairing`).

It also states what `auto` and the tuner may assume of its results: whether they are `exact` (the
same products as lax, so NaN and infinity propagate as in lax) and the `tolerance`, the largest
normwise relative difference from lax's result a measurement may show before the tuner drops it.
The registry (`_registry.py`) lists the instances; nothing outside an algorithm's module reads its
constants.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Mapping

import jax
import numpy as np

from jaxconv._geometry import ConvGeometry

__all__ = ["Algorithm", "Variant", "eps"]

Variant = tuple[int, ...] | None
"""An algorithm's static parameter (Winograd: the output tile per spatial axis); None if none."""


def eps(dtype: np.dtype) -> float:
  """Unit roundoff of a floating dtype's real part; 0 for exact (integer, boolean) dtypes."""
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.complexfloating):
    dtype = np.empty((), dtype).real.dtype
  if not np.issubdtype(dtype, np.inexact) and dtype.kind != "V":
    return 0.0
  return float(np.finfo(dtype).eps)


class Algorithm(abc.ABC):
  """One convolution algorithm, as the registry sees it.

  Attributes:
    name: the name `algorithm=` takes (and `Plan.algorithm` reports).
    exact: True when it performs the same products as lax (only the summation order differs), so
      non-finite values propagate exactly as in lax.
  """

  name: str
  exact: bool = True

  def forced(self) -> Mapping[str, Hashable]:
    """Names a caller may force, each with a hint for `resolve` (None: the algorithm picks)."""
    return {self.name: None}

  @abc.abstractmethod
  def cannot(self, g: ConvGeometry) -> str | None:
    """Why this algorithm cannot compute `g` (a clause), or None when it can."""

  def variants(self, g: ConvGeometry) -> tuple[Variant, ...]:
    """The variants the autotuner measures on `g` (only called when `cannot(g)` is None)."""
    del g
    return (None,)

  def resolve(self, g: ConvGeometry, hint: Hashable) -> Variant:
    """The variant a forced name runs on `g` (`hint` from `forced`; None: the best predicted)."""
    del hint
    return self.variants(g)[0]

  def predict(self, g: ConvGeometry, variant: Variant) -> float | None:
    """Predicted seconds on the reference CPU, or None: no model, or known not to pay."""
    del g, variant
    return None

  def explain(self, g: ConvGeometry, variant: Variant) -> str:
    """Why `predict` favours this algorithm on `g`, as a clause for `Plan.reason`."""
    del g
    return f"{self.label(variant)} (cost model)"

  def why_not_predicted(self, g: ConvGeometry) -> str:
    """Why `predict` returned None for `g`, as a clause for `Plan.reason`."""
    del g
    return f"{self.name} has no cost model"

  def nested(self, g: ConvGeometry, variant: Variant) -> tuple[ConvGeometry, ...]:
    """The convolutions it runs through `auto` to compute `g` (measured first by the tuner)."""
    del g, variant
    return ()

  def shares_with(self, g: ConvGeometry, variant: Variant) -> tuple[ConvGeometry, str] | None:
    """The forward convolution and candidate label that compute an intermediate `run` needs too.

    Where `g` is a layer's kernel gradient and `run`, as that forward candidate's `run`, computes
    an identical array from the layer's input, XLA computes it once in a step compiled as one
    program, so the pair together costs less than their times alone add up to. None where
    nothing is shared.
    """
    del g, variant
    return None

  def tolerance(self, g: ConvGeometry, variant: Variant) -> float:
    """Largest normwise relative difference from lax's result the tuner accepts."""
    del variant
    return 8 * eps(g.out_dtype)

  def label(self, variant: Variant) -> str:
    """A short name of the algorithm with its variant, as tables print it."""
    del variant
    return self.name

  def describe(self, g: ConvGeometry, variant: Variant) -> dict:
    """Extra `Plan` fields of this algorithm (Winograd: the tile and interpolation points)."""
    del g, variant
    return {}

  @abc.abstractmethod
  def run(self, lhs: jax.Array, rhs: jax.Array, g: ConvGeometry, variant: Variant) -> jax.Array:
    """Computes the convolution `g` describes, in the user's layouts and lax's result dtype."""

  def __repr__(self) -> str:
    return f"<jaxconv algorithm {self.name!r}>"
