"""Tests for jaxconv._transforms (Winograd / Cook-Toom transform generator)."""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

from jaxconv._transforms import DEFAULT_POINTS, default_points, winograd_matrices

TABLE = [(m, r) for m in range(2, 9) for r in range(2, 8)]


# --- exact helpers -------------------------------------------------------------------------


def _rand_fracs(rng: random.Random, k: int) -> list[Fraction]:
  return [Fraction(rng.randint(-9, 9), rng.randint(1, 7)) for _ in range(k)]


def _matvec(a, x):
  return [sum((aij * xj for aij, xj in zip(row, x, strict=True)), Fraction(0)) for row in a]


def _correlate(d, g):
  m = len(d) - len(g) + 1
  return [sum((d[i + k] * g[k] for k in range(len(g))), Fraction(0)) for i in range(m)]


def _winograd_1d(at, g_mat, bt, d, g):
  u = _matvec(g_mat, g)
  v = _matvec(bt, d)
  return _matvec(at, [ui * vi for ui, vi in zip(u, v, strict=True)])


def _assert_exact(at, g_mat, bt, m, r, seed, trials=3):
  rng = random.Random(seed)
  n = m + r - 1
  for _ in range(trials):
    d, g = _rand_fracs(rng, n), _rand_fracs(rng, r)
    assert _winograd_1d(at, g_mat, bt, d, g) == _correlate(d, g)


# --- exactness -----------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "r"), TABLE)
def test_default_points_exact(m, r):
  at, g_mat, bt = winograd_matrices(m, r, exact=True)
  n = m + r - 1
  assert (len(at), len(at[0])) == (m, n)
  assert (len(g_mat), len(g_mat[0])) == (n, r)
  assert (len(bt), len(bt[0])) == (n, n)
  assert all(isinstance(x, Fraction) for mat in (at, g_mat, bt) for row in mat for x in row)
  _assert_exact(at, g_mat, bt, m, r, seed=1000 * m + r)


@pytest.mark.parametrize(
  ("m", "r", "points"),
  [
    (1, 1, []),
    (1, 4, [0, 1, -1]),
    (4, 1, ["1/3", 5, -7]),
    (2, 3, [0, 1, -1]),
    (4, 3, [0, 1, -1, 2, -2]),
    (3, 2, ["1/3", "-2/5", 7]),
    (3, 4, [Fraction(3, 2), Fraction(-2, 3), 10, "-1/7", 0]),
    (6, 3, [0, 1, -1, 2, -2, "1/2", "-1/2"]),
    (5, 5, [1, 2, 3, 4, 5, 6, 7, 8]),
  ],
)
def test_custom_points_exact(m, r, points):
  at, g_mat, bt = winograd_matrices(m, r, points, exact=True)
  _assert_exact(at, g_mat, bt, m, r, seed=m * 31 + r)


def test_point_at_infinity_is_last():
  at, g_mat, bt = winograd_matrices(4, 3, [0, 1, -1, 2, -2], exact=True)
  assert g_mat[-1] == (0, 0, 1)
  assert tuple(row[-1] for row in at) == (0, 0, 0, 1)
  # M(t) = t (t^2 - 1)(t^2 - 4) = t^5 - 5 t^3 + 4 t
  assert bt[-1] == (0, 4, 0, -5, 0, 1)


# --- the seed's F(4,3) matrices (Lavin & Gray 2016) ---------------------------------------

F = Fraction
SEED_A = [[1, 0, 0, 0], [1, 1, 1, 1], [1, -1, 1, -1], [1, 2, 4, 8], [1, -2, 4, -8], [0, 0, 0, 1]]
SEED_B = [
  [4, 0, 0, 0, 0, 0],
  [0, -4, 4, -2, 2, 4],
  [-5, -4, -4, -1, -1, 0],
  [0, 1, -1, 2, -2, -5],
  [1, 1, 1, 1, 1, 0],
  [0, 0, 0, 0, 0, 1],
]
SEED_G = [
  [F(1, 4), 0, 0],
  [F(-1, 6), F(-1, 6), F(-1, 6)],
  [F(-1, 6), F(1, 6), F(-1, 6)],
  [F(1, 24), F(1, 12), F(1, 6)],
  [F(1, 24), F(-1, 12), F(1, 6)],
  [0, 0, 1],
]


def _seed_matrices():
  at = [[F(SEED_A[i][k]) for i in range(6)] for k in range(4)]  # A^T
  bt = [[F(SEED_B[j][i]) for j in range(6)] for i in range(6)]  # B^T
  g_mat = [[F(x) for x in row] for row in SEED_G]
  return at, g_mat, bt


def test_seed_f43_is_exact():
  _assert_exact(*_seed_matrices(), 4, 3, seed=43, trials=5)


@pytest.mark.parametrize("points", [None, [0, 1, -1, 2, -2]])
def test_seed_f43_matches_ours(points):
  ours = winograd_matrices(4, 3, points, exact=True)
  seed = _seed_matrices()
  rng = random.Random(7)
  for _ in range(5):
    d, g = _rand_fracs(rng, 6), _rand_fracs(rng, 3)
    assert _winograd_1d(*ours, d, g) == _winograd_1d(*seed, d, g)


def test_seed_f43_same_algorithm_up_to_diagonal_scaling():
  """With the seed's points (0, 1, -1, 2, -2, inf) each transform-domain coordinate of
  ours is the seed's up to a scalar per point (split between G, BT, AT, product 1)."""
  at, g_mat, bt = winograd_matrices(4, 3, [0, 1, -1, 2, -2], exact=True)
  s_at, s_g, s_bt = _seed_matrices()

  def ratio(u, v):
    (q,) = {a / b for a, b in zip(u, v, strict=True) if b != 0}
    assert all((a == 0) == (b == 0) for a, b in zip(u, v, strict=True))
    return q

  for i in range(6):
    col = [row[i] for row in at]
    s_col = [row[i] for row in s_at]
    prod = ratio(col, s_col) * ratio(g_mat[i], s_g[i]) * ratio(bt[i], s_bt[i])
    assert prod == 1


# --- float version ---------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "r"), [(2, 3), (4, 3), (6, 3), (8, 7), (3, 2)])
def test_float_matches_exact(m, r):
  exact = winograd_matrices(m, r, exact=True)
  floats = winograd_matrices(m, r)
  n = m + r - 1
  for e, f, shape in zip(exact, floats, [(m, n), (n, r), (n, n)], strict=True):
    assert isinstance(f, np.ndarray)
    assert f.dtype == np.float64
    assert f.shape == shape
    np.testing.assert_array_equal(f, np.array([[float(x) for x in row] for row in e]))
    assert not f.flags.writeable


def test_cached_and_normalised_key():
  a = winograd_matrices(4, 3, [0, 1, -1, 2, -2])
  b = winograd_matrices(4, 3, ("0", Fraction(1), "-1", "4/2", -2))
  assert all(x is y for x, y in zip(a, b, strict=True))
  c = winograd_matrices(4, 3, [0, 1, -1, 2, -2], exact=True)
  assert c is winograd_matrices(4, 3, [0, 1, -1, 2, -2], exact=True)
  assert winograd_matrices(4, 3) is winograd_matrices(4, 3, default_points(4, 3))


def test_default_points_table():
  assert set(DEFAULT_POINTS) == set(TABLE)
  for (m, r), pts in DEFAULT_POINTS.items():
    assert pts == default_points(m, r)
    assert len(pts) == m + r - 2
    assert len(set(pts)) == len(pts)
    assert all(isinstance(p, Fraction) for p in pts)
  assert default_points(2, 3) == (0, 1, -1)
  assert default_points(1, 1) == ()
  assert len(default_points(12, 9)) == 19  # beyond the table: still distinct points
  assert len(set(default_points(12, 9))) == 19


@pytest.mark.parametrize(("m", "r"), [(2, 3), (4, 3), (6, 3), (8, 3), (2, 5), (4, 5), (3, 7)])
def test_2d_identity_float64(m, r):
  at, g_mat, bt = winograd_matrices(m, r)
  rng = np.random.default_rng(m * 10 + r)
  n = m + r - 1
  for _ in range(3):
    d = rng.standard_normal((n, n))
    g = rng.standard_normal((r, r))
    y = at @ ((g_mat @ g @ g_mat.T) * (bt @ d @ bt.T)) @ at.T
    ref = np.array([[np.sum(d[i : i + r, j : j + r] * g) for j in range(m)] for i in range(m)])
    assert np.linalg.norm(y - ref) <= 1e-12 * np.linalg.norm(ref)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("kwargs", "exc", "needle"),
  [
    ({"m": 0, "r": 3}, ValueError, "m"),
    ({"m": -2, "r": 3}, ValueError, "m"),
    ({"m": 2, "r": 0}, ValueError, "r"),
    ({"m": 2.0, "r": 3}, TypeError, "m"),
    ({"m": True, "r": 3}, TypeError, "m"),
    ({"m": 2, "r": "3"}, TypeError, "r"),
    ({"m": 2, "r": 3, "points": [0, 1]}, ValueError, "points"),
    ({"m": 2, "r": 3, "points": [0, 1, -1, 2]}, ValueError, "points"),
    ({"m": 2, "r": 3, "points": [0, 1, 1]}, ValueError, "points"),
    ({"m": 2, "r": 3, "points": [0, "1/2", Fraction(2, 4)]}, ValueError, "points"),
    ({"m": 2, "r": 3, "points": [0, 0.5, -1]}, TypeError, "points"),
    ({"m": 2, "r": 3, "points": [0, "half", -1]}, ValueError, "points"),
    ({"m": 2, "r": 3, "points": "0,1,-1"}, TypeError, "points"),
  ],
)
def test_validation(kwargs, exc, needle):
  with pytest.raises(exc, match=needle) as info:
    winograd_matrices(**kwargs)
  if "points" not in kwargs:
    name = needle
    value = kwargs[name]
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_default_points_validation():
  with pytest.raises(ValueError, match="r"):
    default_points(3, 0)
  with pytest.raises(TypeError, match="m"):
    default_points(1.5, 3)


def test_duplicate_message_names_value():
  with pytest.raises(ValueError, match=r"points.*1/2.*repeated|1/2 is repeated"):
    winograd_matrices(2, 3, [0, "1/2", "2/4"])


# --- float32 accuracy ------------------------------------------------------------------------
#
# Model of a conv layer in float32: transforms with the float32-cast matrices, transform-domain
# products summed over C = 64 channels, output transform; every reduction accumulates
# sequentially in float32 (deterministic on every machine, unlike BLAS whose blocking changes
# the rounding). Error = normwise relative error against float64 direct correlation; the
# reference scale is the error of float32 direct correlation (im2col, same accumulation).


def _seq_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Batched a @ b in float32 with sequential accumulation over the contracted axis."""
  acc = a[..., :, 0:1] * b[..., 0:1, :]
  for k in range(1, a.shape[-1]):
    acc = acc + a[..., :, k : k + 1] * b[..., k : k + 1, :]
  return acc


def _f32_error_ratio(m: int, r: int, channels: int = 64, tiles: int = 24, filters: int = 8):
  n = m + r - 1
  rng = np.random.default_rng(1234 + m)
  d = rng.standard_normal((tiles, channels, n, n)).astype(np.float32)
  g = rng.standard_normal((filters, channels, r, r)).astype(np.float32)
  # direct correlation via im2col
  patches = np.lib.stride_tricks.sliding_window_view(d, (r, r), axis=(2, 3))
  patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(tiles * m * m, channels * r * r)
  w = g.reshape(filters, channels * r * r).T
  ref = (patches.astype(np.float64) @ w.astype(np.float64)).reshape(tiles, m, m, filters)
  direct32 = _seq_matmul(patches, w).reshape(tiles, m, m, filters)
  # Winograd with float32 matrices
  at, g_mat, bt = (x.astype(np.float32) for x in winograd_matrices(m, r))
  u = _seq_matmul(_seq_matmul(g_mat, g), g_mat.T)  # filters, C, n, n
  v = _seq_matmul(_seq_matmul(bt, d), bt.T)  # tiles, C, n, n
  u = u.reshape(filters, channels, n * n).transpose(2, 1, 0)  # nn, C, filters
  v = v.reshape(tiles, channels, n * n).transpose(2, 0, 1)  # nn, tiles, C
  prod = _seq_matmul(v, u).transpose(1, 2, 0).reshape(tiles, filters, n, n)
  y = _seq_matmul(_seq_matmul(at, prod), at.T).transpose(0, 2, 3, 1)  # tiles, m, m, filters

  def err(x):
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)

  return err(y) / err(direct32)


@pytest.mark.parametrize(("m", "target"), [(2, 1.5), (4, 5.0), (6, 10.0)])
def test_float32_accuracy(m, target):
  ratio = _f32_error_ratio(m, 3)
  # Measured with this model: 0.57x, 1.92x and 8.10x; require a 15% margin.
  assert ratio <= 0.85 * target, f"F({m},3): float32 error {ratio:.2f}x direct"
