"""Winograd / Cook-Toom transform matrices for minimal filtering F(m, r).

The 1-D minimal filtering algorithm F(m, r) computes ``m`` outputs of an ``r``-tap
correlation from ``n = m + r - 1`` inputs using only ``n`` general multiplications. It is
the transpose of the Cook-Toom algorithm for *linear convolution* of a length-``m``
sequence ``x`` with a length-``r`` filter ``h``: read both as polynomials ``x(t)`` and
``h(t)``; their product ``s(t) = h(t) x(t)`` has degree ``n - 1``, so it is fixed by its
values at ``n - 1`` distinct finite points ``a_i`` together with its leading coefficient
(its "value at infinity", ``h_{r-1} x_{m-1}``). Cook-Toom therefore (1) *evaluates*
``h`` and ``x`` at the ``a_i`` and at infinity (Vandermonde matrices ``E``, ``n x r``,
and ``V``, ``n x m``), (2) multiplies the ``n`` values *pointwise*, and (3) recovers the
coefficients of ``s`` by *Lagrange interpolation*,
``s(t) = sum_i s(a_i) L_i(t) + s_inf M(t)`` with ``M(t) = prod_j (t - a_j)`` and
``L_i(t) = prod_{j != i} (t - a_j) / N_i``, ``N_i = prod_{j != i} (a_i - a_j)``; the
interpolation matrix ``C`` (``n x n``) has these coefficient vectors as columns. This is
an algebraic identity, not an approximation: ``s - s_inf M`` has degree ``n - 2`` and is
interpolated exactly by ``n - 1`` nodes, so in exact (here: ``fractions.Fraction``)
arithmetic ``s = C [(E h) * (V x)]`` holds for every ``h`` and ``x``. Linear convolution
with ``h`` is the linear map ``x -> T_h x`` (``T_h`` the ``n x m`` Toeplitz matrix), and
its transpose ``d -> T_h^T d`` is exactly the correlation
``y[i] = sum_k d[i + k] h[k]`` of an ``n``-long input with the filter. Transposing the
factorisation ``T_h = C diag(E h) V`` gives ``y = V^T [(E h) * (C^T d)]``, i.e. the
Winograd form ``y = AT [(G g) * (BT d)]`` with ``AT = V^T``, ``G = E``, ``BT = C^T``
(Winograd 1980; Lavin & Gray 2016). Nesting the 1-D algorithm gives the 2-D one,
``Y = AT [(G g G^T) * (BT d BT^T)] AT^T``. The ``n`` diagonal factors are only defined up
to a per-point rescaling shared between ``G``, ``BT`` and ``AT`` (see
:func:`winograd_matrices` for the split used here), and the choice of points governs the
floating-point error, which grows quickly with ``n`` (Barabasz et al. 2020).

References:
  S. Winograd, *Arithmetic Complexity of Computations*, SIAM, 1980.
  A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016
  (and the companion ``wincnn`` generator, github.com/andravin/wincnn).
  B. Barabasz, A. Anderson, K. M. Soodhalter and D. Gregg, "Error analysis and improving
  the accuracy of Winograd convolution for deep neural networks", ACM TOMS 46(4), 2020.
  K. Vincent, K. Stephano, M. Frumkin, B. Ginsburg and J. Demouth, "On improving the
  numerical stability of Winograd convolutions", ICLR workshop, 2017.
  S. A. Alam, A. Anderson, B. Barabasz and D. Gregg, "Winograd convolution for deep
  neural networks: efficient point selection", ACM TECS 21(6), 2022.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping
from fractions import Fraction
from types import MappingProxyType

import numpy as np

__all__ = [
  "DEFAULT_POINTS",
  "ExactMatrix",
  "PointLike",
  "default_points",
  "winograd_matrices",
]

#: A point as accepted by :func:`winograd_matrices`: an integer, a ``Fraction`` (any
#: ``numbers.Rational``) or a string that ``Fraction`` parses, such as ``"-3/2"``.
PointLike = int | Fraction | str

#: An exact matrix: a tuple of rows, each a tuple of ``Fraction``.
ExactMatrix = tuple[tuple[Fraction, ...], ...]

# ---------------------------------------------------------------------------------------
# Default interpolation points.
#
# The finite points for each tile length n = m + r - 1 (infinity is always added as the
# n-th point). Chosen for float32 accuracy of the *2-D* algorithm as used in a conv layer:
# float32-cast transforms, transform-domain products summed over C = 64 input channels,
# output transform; error = normwise relative error against a float64 direct correlation,
# divided by the error of a float32 direct (im2col) correlation on the same data. Each
# (m, r) with 2 <= m <= 8, 2 <= r <= 7 was scored under three accumulation models
# (sequential float32 sums, OpenBLAS sgemm, XLA-CPU dot; geometric mean, several seeds).
# Candidates: the literature sets below, an exhaustive search over sets symmetric under
# t -> -t drawn from 0, +-1, +-2, +-1/2, +-3, +-1/3, +-3/2, +-2/3, +-4, +-1/4, +-3/4,
# +-4/3, +-5/4, +-4/5, +-5/3, +-3/5, +-5/2, +-2/5, +-5, +-1/5 (for n <= 10 and n = 11, 13;
# for n = 12, 14 over sets closed under t -> -t and t -> 1/t), then single-point local
# refinement. The winner depended only on n: for every n the best set for one (m, r) was
# the best, or within 1.5 %, for every other (m, r) with the same n.
#
# Sources / provenance per n:
#  n=2   0: any single point works; 0 is the cheapest (F(1,2), F(2,1) are trivial).
#  n=3   +-1/2: within 1 % of the searched optimum (+-2/3) and all entries are dyadic,
#        hence exact in every binary format.
#  n=4   0, +-1: Lavin & Gray 2016 / wincnn README F(2,3); also the searched optimum
#        (Barabasz et al. 2020 likewise).
#  n=5   +-1/3, +-4/3: searched (+-4/3, +-2/5 ties within 0.5 %); better than Barabasz
#        et al.'s 0, -1, 1, 1/2 for F(3,3) in our measurements.
#  n=6   0, +-3/2, +-2/3: searched; a t, 1/t pair as advocated by Alam et al. 2022. 2-D
#        F(4,3) float32 error 1.9-2.5x direct vs 2.7-3.6x for Barabasz et al.'s
#        0, -1, 1, 1/2, -2 and 4.1-5.5x for Lavin & Gray's 0, +-1, +-2.
#  n=7   +-1/4, +-4/5, +-5/3: searched (F(5,3) 3.9-5.2x, vs 6.2-8.5x for the
#        0, +-1, +-1/2, 2 extension of the n=8 set).
#  n=8   0, +-1, +-1/2, +-2: Lavin & Gray 2016 / wincnn F(6,3), Barabasz et al. 2020;
#        also the searched optimum (a local optimum under every accumulation model).
#  n=9   +-1, +-2/3, +-1/4, +-5/2: searched (F(7,3) 21-28x, vs 77-106x for
#        0, +-1, +-1/2, +-2, -1/4).
#  n=10  0, +-5/4, +-4/5, +-5/2, +-2/5: searched (two t, 1/t quadruples). 2-D F(8,3) error
#        44-61x direct, vs 580-840x for the 0, +-1, +-1/2, +-2 set extended by +-1/4 or
#        +-4 as in Barabasz et al.; points near |t| = 1 keep t^k from spreading.
#  n=11  +-1, +-1/2, +-4/3, +-5/2, +-1/5: searched.
#  n=12  0, +-1, +-3, +-1/3, +-3/2, +-2/3: searched (t, 1/t quadruples).
#  n=13  +-1, +-1/2, +-3, +-4/5, +-5/3, +-1/5: searched.
#  n=14  0, +-3, +-1/3, +-5/4, +-4/5, +-5/3, +-3/5: searched (t, 1/t quadruples).
# ---------------------------------------------------------------------------------------
_POINTS_BY_N: dict[int, tuple[str, ...]] = {
  1: (),
  2: ("0",),
  3: ("1/2", "-1/2"),
  4: ("0", "1", "-1"),
  5: ("1/3", "-1/3", "4/3", "-4/3"),
  6: ("0", "3/2", "-3/2", "2/3", "-2/3"),
  7: ("1/4", "-1/4", "4/5", "-4/5", "5/3", "-5/3"),
  8: ("0", "1", "-1", "1/2", "-1/2", "2", "-2"),
  9: ("1", "-1", "2/3", "-2/3", "1/4", "-1/4", "5/2", "-5/2"),
  10: ("0", "5/4", "-5/4", "4/5", "-4/5", "5/2", "-5/2", "2/5", "-2/5"),
  11: ("1", "-1", "1/2", "-1/2", "4/3", "-4/3", "5/2", "-5/2", "1/5", "-1/5"),
  12: ("0", "1", "-1", "3", "-3", "1/3", "-1/3", "3/2", "-3/2", "2/3", "-2/3"),
  13: ("1", "-1", "1/2", "-1/2", "3", "-3", "4/5", "-4/5", "5/3", "-5/3", "1/5", "-1/5"),
  14: (
    "0", "3", "-3", "1/3", "-1/3", "5/4", "-5/4", "4/5", "-4/5", "5/3", "-5/3", "3/5",
    "-3/5",
  ),
}  # fmt: skip

# The (m, r) range covered by DEFAULT_POINTS.
_TABLE_M = range(2, 9)
_TABLE_R = range(2, 8)


def _points_for_n(n: int) -> tuple[Fraction, ...]:
  """The default ``n - 1`` finite points for tile length ``n``."""
  if n in _POINTS_BY_N:
    return tuple(Fraction(p) for p in _POINTS_BY_N[n])
  # Beyond the table (n > 14, where float32 Winograd is of little use anyway): extend the
  # n = 14 set by +-k, +-1/k for k = 1, 2, ..., skipping points already present.
  pts = [Fraction(p) for p in _POINTS_BY_N[max(_POINTS_BY_N)]]
  k = 1
  while len(pts) < n - 1:
    for p in (Fraction(k), Fraction(-k), Fraction(1, k), Fraction(-1, k)):
      if len(pts) < n - 1 and p not in pts:
        pts.append(p)
    k += 1
  return tuple(pts)


def _check_size(name: str, value: object) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
  value = int(value)
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {name}={value}")
  return value


def default_points(m: int, r: int) -> tuple[Fraction, ...]:
  """Return the default finite interpolation points used for F(m, r).

  The set depends only on the tile length ``n = m + r - 1`` (see ``_POINTS_BY_N`` for
  how it was chosen); the point at infinity is implied and not included.

  Args:
    m: Number of outputs per tile (``m >= 1``).
    r: Filter length (``r >= 1``).

  Returns:
    A tuple of ``m + r - 2`` distinct ``Fraction`` points.

  Raises:
    TypeError: If ``m`` or ``r`` is not an integer.
    ValueError: If ``m`` or ``r`` is smaller than 1.

  >>> default_points(2, 3)
  (Fraction(0, 1), Fraction(1, 1), Fraction(-1, 1))
  """
  m = _check_size("m", m)
  r = _check_size("r", r)
  return _points_for_n(m + r - 1)


def _to_fraction(p: object) -> Fraction:
  if isinstance(p, bool):
    raise TypeError(f"points must be ints, Fractions or strings like '1/2', got {p!r}")
  if isinstance(p, numbers.Rational):
    return Fraction(p.numerator, p.denominator)
  if isinstance(p, str):
    try:
      return Fraction(p)
    except (ValueError, ZeroDivisionError):
      raise ValueError(f"points: cannot parse {p!r} as a rational number") from None
  raise TypeError(
    f"points must be ints, Fractions or strings like '1/2', got "
    f"{type(p).__name__} {p!r} (floats are rejected to keep the algorithm exact; "
    f"pass Fraction(1, 2) or '1/2' instead of 0.5)"
  )


def _normalise_points(points: Iterable[PointLike], n: int) -> tuple[Fraction, ...]:
  if isinstance(points, (str, bytes)) or not isinstance(points, Iterable):
    raise TypeError(f"points must be a sequence of points, got {points!r}")
  points = list(points)
  if len(points) != n - 1:
    raise ValueError(
      f"points must hold m + r - 2 = {n - 1} finite points (infinity is added "
      f"automatically), got {len(points)}: points={points!r}"
    )
  pts = tuple(_to_fraction(p) for p in points)
  seen: set[Fraction] = set()
  for p in pts:
    if p in seen:
      raise ValueError(f"points must be distinct, but {p} is repeated: points={pts!r}")
    seen.add(p)
  return pts


# --- exact polynomial helpers ------------------------------------------------------------


def _poly_from_roots(roots: Iterable[Fraction]) -> list[Fraction]:
  """Coefficients (lowest degree first) of the monic polynomial prod (t - a)."""
  coeffs = [Fraction(1)]
  for a in roots:
    shifted = [Fraction(0), *coeffs]  # t * p(t)
    for k, c in enumerate(coeffs):
      shifted[k] -= a * c  # - a * p(t)
    coeffs = shifted
  return coeffs


def _primitive(vec: list[Fraction]) -> tuple[Fraction, list[Fraction]]:
  """Split ``vec = c * ints`` with ``ints`` integers of gcd 1 and ``c > 0``."""
  den = 1
  for v in vec:
    den = math.lcm(den, v.denominator)
  ints = [int(v * den) for v in vec]
  g = 0
  for v in ints:
    g = math.gcd(g, v)
  if g == 0:
    return Fraction(1), list(vec)
  return Fraction(g, den), [Fraction(v // g) for v in ints]


@functools.lru_cache(maxsize=256)
def _exact(m: int, r: int, pts: tuple[Fraction, ...]) -> tuple[ExactMatrix, ...]:
  n = m + r - 1
  g_rows: list[list[Fraction]] = []
  a_cols: list[list[Fraction]] = []
  b_rows: list[list[Fraction]] = []
  for i, a in enumerate(pts):
    others = pts[:i] + pts[i + 1 :]
    # Evaluation rows (Vandermonde) for filter and output, interpolation row for input.
    c_g, g_row = _primitive([a**k for k in range(r)])
    c_a, a_col = _primitive([a**k for k in range(m)])
    c_b, b_row = _primitive([*_poly_from_roots(others), Fraction(0)])
    n_i = math.prod((a - b for b in others), start=Fraction(1))
    # AT column and BT row are kept primitive integer vectors (exact in float32 for all
    # tabulated sizes); the whole remaining scalar goes into G, with its sign moved
    # into BT so that G's factor is positive (F(2,3) then matches Lavin & Gray's G).
    scale = c_g * c_a * c_b / n_i
    if scale < 0:
      scale, b_row = -scale, [-v for v in b_row]
    g_rows.append([scale * v for v in g_row])
    a_cols.append(a_col)
    b_rows.append(b_row)
  # The point at infinity: leading coefficients, and M(t) = prod_j (t - a_j), again made
  # a primitive integer vector with the factor in G (M is monic, so it stays positive).
  c_b, b_row = _primitive(_poly_from_roots(pts))
  g_rows.append([Fraction(0)] * (r - 1) + [c_b])
  a_cols.append([Fraction(0)] * (m - 1) + [Fraction(1)])
  b_rows.append(b_row)
  at = tuple(tuple(a_cols[j][k] for j in range(n)) for k in range(m))
  g = tuple(tuple(row) for row in g_rows)
  bt = tuple(tuple(row) for row in b_rows)
  return at, g, bt


@functools.lru_cache(maxsize=256)
def _floating(m: int, r: int, pts: tuple[Fraction, ...]) -> tuple[np.ndarray, ...]:
  out = []
  for mat in _exact(m, r, pts):
    arr = np.array([[float(v) for v in row] for row in mat], dtype=np.float64)
    arr.flags.writeable = False  # cached and shared between callers
    out.append(arr)
  return tuple(out)


def winograd_matrices(
  m: int,
  r: int,
  points: Iterable[PointLike] | None = None,
  *,
  exact: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[ExactMatrix, ExactMatrix, ExactMatrix]:
  """Build the transforms ``(AT, G, BT)`` of the minimal filtering algorithm F(m, r).

  With ``n = m + r - 1``, for an input ``d`` of length ``n`` and a filter ``g`` of length
  ``r`` the correlation ``y[i] = sum_k d[i + k] g[k]`` (``i < m``) is exactly
  ``AT @ ((G @ g) * (BT @ d))``; in 2-D, ``Y = AT @ ((G g G^T) * (BT d BT^T)) @ AT^T``.

  The matrices come from the Cook-Toom construction (module docstring) with the given
  finite points plus the point at infinity (always the last row of ``G`` and ``BT`` and
  the last column of ``AT``), in exact rational arithmetic. For point ``a_i`` the
  construction fixes row ``i`` of ``G``, column ``i`` of ``AT`` and row ``i`` of ``BT``
  only up to scalars whose product is ``1 / N_i``. Here the ``AT`` column (``a_i^k``) and
  the ``BT`` row (coefficients of ``prod_{j != i} (t - a_j)``, or of ``M(t)`` for
  infinity) are scaled to primitive integer vectors (gcd 1) and ``G`` takes the whole
  remaining factor, with the sign chosen so that that factor is positive; for F(2, 3) and
  points 0, 1, -1 this gives Lavin & Gray's ``G`` and ``BT``. Why this split: rescaling by
  a power of two changes no rounding, and any other rescaling only changes which entries
  are exactly representable, so the split barely matters for accuracy. Moving the factor
  into ``BT`` or ``AT`` instead changed the measured float32 2-D error by less than 1 %
  (F(4, 3) to F(8, 3), 64 channels; the ``BT`` split was 0.2-0.6 % lower, within the
  spread between accumulation orders). We therefore keep ``BT`` and ``AT``, which are
  applied to every input and output tile, as integers that are exact in float32 (for all
  tabulated sizes except the largest ``BT`` entries at n = 14), so their entries add no
  representation error and their many ``+-1`` entries need no multiplication, and put
  every inexact constant (such as ``1/6``) into ``G``, which transforms each filter once.
  ``G``'s entries can be small (about 1e-12 at n = 14): fine in float32 and bfloat16
  range, not in float16.

  Args:
    m: Number of outputs per tile (``m >= 1``).
    r: Filter length (``r >= 1``).
    points: The ``m + r - 2`` distinct finite interpolation points, as ints,
        ``Fraction`` s or strings such as ``"1/2"`` (floats are rejected). ``None``
        uses :func:`default_points`. Infinity is always added as the last point.
    exact: If true return ``Fraction`` matrices as tuples of row tuples; otherwise
        read-only ``float64`` numpy arrays (copy them before modifying).

  Returns:
    ``(AT, G, BT)`` with shapes ``(m, n)``, ``(n, r)`` and ``(n, n)``. Results are
    cached, so repeated calls (e.g. at trace time) return the same objects.

  Raises:
    TypeError: If ``m`` or ``r`` is not an integer, or a point has an unsupported type.
    ValueError: If ``m < 1`` or ``r < 1``, if ``points`` does not hold ``m + r - 2``
        points, if a point repeats, or if a string point cannot be parsed.

  >>> import numpy as np
  >>> AT, G, BT = winograd_matrices(2, 3)
  >>> AT.shape, G.shape, BT.shape
  ((2, 4), (4, 3), (4, 4))
  >>> d, g = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.0, -1.0])
  >>> AT @ ((G @ g) * (BT @ d))
  array([-2., -2.])
  >>> _, G, _ = winograd_matrices(2, 3, points=[0, 1, "-1"], exact=True)
  >>> [[str(x) for x in row] for row in G]
  [['1', '0', '0'], ['1/2', '1/2', '1/2'], ['1/2', '-1/2', '1/2'], ['0', '0', '1']]
  """
  m = _check_size("m", m)
  r = _check_size("r", r)
  n = m + r - 1
  pts = _points_for_n(n) if points is None else _normalise_points(points, n)
  key = (m, r, pts)
  if exact:
    return _exact(*key)
  return _floating(*key)


#: Default finite points for every tabulated F(m, r), 2 <= m <= 8, 2 <= r <= 7.
DEFAULT_POINTS: Mapping[tuple[int, int], tuple[Fraction, ...]] = MappingProxyType(
  {(m, r): _points_for_n(m + r - 1) for m in _TABLE_M for r in _TABLE_R}
)
