"""Argument normalisation: the same exceptions as lax, before any computation, naming the value."""

from __future__ import annotations

import re
import warnings

import jax
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv._geometry import normalize

X = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)

VERIFIER = "Cannot lower jaxpr with verifier errors:"

# (id, positional args after lhs/rhs as a dict of overrides, text the message must contain)
BAD_CALLS = [
  ("rank-mismatch", dict(rhs=W[0]), "ndim"),
  ("lhs-rank-1", dict(lhs=X[0, 0, 0], rhs=W[0, 0, 0]), "rank"),
  ("channels", dict(rhs=W[:, :2]), "rhs input feature"),
  ("dtype-mismatch", dict(rhs=W.astype(np.float16)), "same dtype"),
  ("strides-length", dict(window_strides=(1,)), "window_strides"),
  ("strides-zero", dict(window_strides=(0, 1)), "window_strides"),
  ("strides-negative", dict(window_strides=(1, -2)), "window_strides"),
  ("strides-float", dict(window_strides=(1.5, 1)), "window_strides"),
  ("strides-none", dict(window_strides=None), "window_strides"),
  ("padding-unknown", dict(padding="FULL"), "padding"),
  ("padding-count", dict(padding=[(0, 0)]), "padding"),
  ("padding-triples", dict(padding=[(0, 0, 0), (0, 0)]), "padding"),
  ("padding-too-negative", dict(padding=[(-6, 0), (0, 0)]), "padding"),
  ("lhs-dilation-zero", dict(padding=[(0, 0)] * 2, lhs_dilation=(0, 1)), "lhs_dilation"),
  ("lhs-dilation-length", dict(padding=[(0, 0)] * 2, lhs_dilation=(1,)), "lhs_dilation"),
  ("lhs-dilation-string-padding", dict(padding="SAME", lhs_dilation=(2, 1)), "padding"),
  ("rhs-dilation-zero", dict(rhs_dilation=(1, 0)), "rhs_dilation"),
  ("rhs-dilation-length", dict(rhs_dilation=(1, 1, 1)), "rhs_dilation"),
  ("layout-not-tuple", dict(dimension_numbers="NCHW"), "dimension_numbers"),
  ("layout-length", dict(dimension_numbers=("NCHW", "OIHW")), "dimension_numbers"),
  ("layout-chars", dict(dimension_numbers=("NCHW", "OIHW", "NCHX")), "dimension_numbers"),
  ("layout-duplicate", dict(dimension_numbers=("NCHH", "OIHW", "NCHW")), "dimension_numbers"),
  ("layout-missing-c", dict(dimension_numbers=("NXHW", "OIHW", "NCHW")), "dimension_numbers"),
  ("feature-groups-zero", dict(feature_group_count=0), "feature_group_count"),
  ("feature-groups-divide", dict(feature_group_count=2), "feature_group_count"),
  (
    "feature-groups-out",
    dict(lhs=np.concatenate([X, X], 1), rhs=W[:3], feature_group_count=2),
    "feature_group_count",
  ),
  (
    "batch-groups-divide",
    dict(batch_group_count=3, rhs=np.concatenate([W, W[:2]])),
    "batch_group_count",
  ),
  ("batch-groups-out", dict(batch_group_count=2, rhs=W[:3]), "batch_group_count"),
  ("batch-groups-negative", dict(batch_group_count=-1), "batch_group_count"),
  (
    "both-groups",
    dict(
      lhs=np.concatenate([X, X], 1),
      rhs=np.concatenate([W, W]),
      feature_group_count=2,
      batch_group_count=2,
    ),
    "batch_group_count",
  ),
  ("kernel-empty", dict(rhs=W[:, :, :0]), "rhs"),
  ("precision-unknown", dict(precision="fast-please"), "recision"),
  ("precision-int", dict(precision=3), "recision"),
  ("preferred-narrower", dict(preferred_element_type=np.float16), "preferred_element_type"),
  ("preferred-int-for-float", dict(preferred_element_type=np.int32), "preferred_element_type"),
]


def _call(fn, overrides, **extra):
  args = dict(lhs=X, rhs=W, window_strides=(1, 1), padding="VALID")
  args.update(overrides)
  return fn(**args, **extra)


def _lax_error(overrides) -> BaseException:
  try:
    with warnings.catch_warnings():  # lax divides by a zero stride before it rejects it
      warnings.simplefilter("ignore")
      jax.block_until_ready(_call(lax.conv_general_dilated, overrides))
  except Exception as e:  # the reference behaviour
    return e
  raise AssertionError("lax accepted a call the table says is bad")


@pytest.mark.parametrize(
  "overrides,needle", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
@pytest.mark.parametrize("algorithm", ["auto", "lax", "im2col"])
def test_bad_input_raises_what_lax_raises(overrides, needle, algorithm, monkeypatch):
  lax_error = _lax_error(overrides)
  expected = type(lax_error)

  def no_compute(*a, **k):
    raise AssertionError("computation started before validation")

  monkeypatch.setattr(jaxconv._api, "_run", no_compute)
  monkeypatch.setattr(jaxconv._api, "_run_lax", no_compute)
  with pytest.raises(expected) as info:
    _call(jaxconv.conv_general_dilated, overrides, algorithm=algorithm)
  assert needle in str(info.value), str(info.value)
  # lax's own wording comes first, so a regex written against lax's message keeps matching. For
  # rules XLA's verifier checks, lax's message is the verifier's sentence plus source locations.
  said = str(lax_error)
  if said.startswith(VERIFIER):
    said = said[len(VERIFIER) :].strip().splitlines()[0].strip()
  assert re.search(re.escape(said), str(info.value)), (said, str(info.value))


@pytest.mark.parametrize(
  "algorithm,error",
  [("winograd7", ValueError), ("IM2COL", ValueError), (None, TypeError), (3, TypeError)],
)
def test_unknown_algorithm(algorithm, error):
  with pytest.raises(error, match="algorithm"):
    jaxconv.conv_general_dilated(X, W, (1, 1), "VALID", algorithm=algorithm)
  with pytest.raises(error, match="algorithm"):
    jaxconv.ConvGeneralDilated(algorithm=algorithm)


def test_padding_error_is_also_runtime_error():
  with pytest.raises(RuntimeError):  # what lax raises
    jaxconv.conv_general_dilated(X, W, (1, 1), "FULL")


def test_non_array_input():
  with pytest.raises(TypeError, match="lhs"):
    jaxconv.conv_general_dilated(X.tolist(), W, (1, 1), "VALID")


@pytest.mark.parametrize(
  "padding,expected",
  [
    ("SAME", ((1, 1), (1, 1))),
    ("SAME_LOWER", ((1, 1), (1, 1))),
    ("VALID", ((0, 0), (0, 0))),
    ("same", ((1, 1), (1, 1))),
    (np.array([[1, -1], [0, 2]]), ((1, -1), (0, 2))),
    ([[1, 2], [3, 4]], ((1, 2), (3, 4))),
  ],
  ids=str,
)
def test_padding_forms(padding, expected):
  g = normalize(X, W, (1, 1), padding)
  assert g.padding == expected
  assert g.out_shape == lax.conv_general_dilated(X, W, (1, 1), padding).shape


def test_same_lower_puts_the_odd_pad_first():
  g = normalize(X, W[..., :2], (1, 1), "SAME_LOWER")
  assert g.padding == ((1, 1), (1, 0))


def test_geometry_is_canonical_and_cached():
  g = normalize(
    X.transpose(0, 2, 3, 1),
    W.transpose(2, 3, 1, 0),
    [2, 1],
    "SAME",
    dimension_numbers=["NHWC", "HWIO", "NHWC"],
    rhs_dilation=[1, 2],
  )
  assert (g.batch, g.in_features, g.in_spatial, g.out_features, g.kernel) == (
    2,
    3,
    (5, 5),
    4,
    (3, 3),
  )
  assert g.strides == (2, 1) and g.rhs_dilation == (1, 2) and g.dilated_kernel == (3, 5)
  assert g.out_shape == (2, 3, 5, 4) and g.out_spatial == (3, 5)
  assert g.padding == ((1, 1), (2, 2)) and g.padded_spatial == (7, 9)
  assert g is normalize(
    X.transpose(0, 2, 3, 1),
    W.transpose(2, 3, 1, 0),
    (2, 1),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    rhs_dilation=(1, 2),
  )
  with pytest.raises(AttributeError):
    g.batch = 3  # frozen


def test_integral_float_group_count_is_accepted_like_lax():
  np.testing.assert_array_equal(
    jaxconv.conv_general_dilated(
      X, W, (1, 1), "VALID", feature_group_count=1.0, algorithm="im2col"
    ).shape,
    lax.conv_general_dilated(X, W, (1, 1), "VALID", feature_group_count=1.0).shape,
  )
