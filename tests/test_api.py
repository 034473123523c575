"""The entry points: signature parity with lax, `plan`, `ConvGeneralDilated`, algorithm choice."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

import jaxconv
from tests.util import check_against_lax, random_array, rng_for

DN = ("NHWC", "HWIO", "NHWC")


def test_signature_matches_lax():
  ours = inspect.signature(jaxconv.conv_general_dilated).parameters
  theirs = inspect.signature(lax.conv_general_dilated).parameters
  assert list(ours)[: len(theirs)] == list(theirs)
  for name, param in theirs.items():
    assert ours[name].default == param.default, name
    assert ours[name].kind == param.kind, name
  assert ours["algorithm"].kind is inspect.Parameter.KEYWORD_ONLY
  assert ours["algorithm"].default == "auto"
  call = inspect.signature(jaxconv.ConvGeneralDilated.__call__).parameters
  assert list(call)[1:] == list(theirs)


def test_positional_arguments_like_lax():
  rng = rng_for("positional")
  x, w = random_array(rng, (2, 6, 7, 7), np.float32), random_array(rng, (4, 3, 3, 3), np.float32)
  args = (x, w, (2, 1), [(1, 0), (0, 1)], (1, 1), (1, 2), None, 2, 1, "highest", None, None)
  ref = lax.conv_general_dilated(*args)
  out = jaxconv.conv_general_dilated(*args, algorithm="im2col")
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_plan_reports_what_runs(monkeypatch):
  x = jax.ShapeDtypeStruct((8, 150, 150, 3), np.float32)
  k = jax.ShapeDtypeStruct((3, 3, 3, 16), np.float32)
  p = jaxconv.plan(x, k, (1, 1), "VALID", dimension_numbers=DN)
  assert p.algorithm == "im2col" and "K*C" in p.reason
  assert p.out_shape == (8, 148, 148, 16) and p.out_dtype == np.float32
  assert p.flops == 2 * 8 * 148 * 148 * 16 * 27
  with pytest.raises(dataclasses.FrozenInstanceError):
    p.algorithm = "lax"

  ran = []
  monkeypatch.setattr(
    jaxconv._api, "_run", lambda x, w, g, a, tile: ran.append(a) or jax.numpy.zeros(1)
  )
  jaxconv.conv_general_dilated(
    np.zeros(x.shape, x.dtype), np.zeros(k.shape, k.dtype), (1, 1), "VALID", dimension_numbers=DN
  )
  assert ran == [p.algorithm]


def test_auto_prefers_lax_on_wide_pointwise_layers():
  x = jax.ShapeDtypeStruct((8, 56, 56, 64), np.float32)
  k = jax.ShapeDtypeStruct((1, 1, 64, 64), np.float32)
  p = jaxconv.plan(x, k, (1, 1), "SAME", dimension_numbers=DN)
  assert p.algorithm == "lax" and "1x1" in p.reason


def test_forced_algorithm_is_reported():
  x = jax.ShapeDtypeStruct((8, 56, 56, 64), np.float32)
  k = jax.ShapeDtypeStruct((3, 3, 64, 64), np.float32)
  p = jaxconv.plan(x, k, (1, 1), "SAME", dimension_numbers=DN, algorithm="im2col")
  assert p.algorithm == "im2col" and "requested" in p.reason


def test_conv_general_dilated_class_is_immutable_and_flax_compatible():
  conv = jaxconv.ConvGeneralDilated()  # Flax linen instantiates with no arguments
  assert conv.algorithm == "auto"
  assert hash(conv) == hash(jaxconv.ConvGeneralDilated("auto"))
  with pytest.raises(dataclasses.FrozenInstanceError):
    conv.algorithm = "im2col"
  rng = rng_for("class")
  x, w = random_array(rng, (2, 9, 9, 3), np.float32), random_array(rng, (3, 3, 3, 5), np.float32)
  ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, precision="highest")
  out = jaxconv.ConvGeneralDilated("im2col")(
    x, w, (1, 1), "SAME", dimension_numbers=DN, precision="highest", out_sharding=None
  )
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_lax_algorithm_is_lax():
  rng = rng_for("lax")
  x, w = random_array(rng, (2, 3, 9, 9), np.float32), random_array(rng, (4, 3, 3, 3), np.float32)
  out = jaxconv.conv_general_dilated(x, w, (1, 1), "SAME", algorithm="lax")
  np.testing.assert_array_equal(out, lax.conv_general_dilated(x, w, (1, 1), "SAME"))


def test_forced_algorithm_that_cannot_names_those_that_can():
  x, w = np.ones((1, 1, 6, 6), np.int32), np.ones((1, 1, 3, 3), np.int32)
  with pytest.raises(NotImplementedError, match=r"int32.*Algorithms that can: lax, im2col"):
    jaxconv.conv_general_dilated(x, w, (1, 1), "VALID", algorithm="winograd")


@pytest.mark.parametrize("algorithm", ["lax", "im2col"])
def test_out_sharding_is_honoured(algorithm):
  mesh = jax.make_mesh((1,), ("batch",), axis_types=(jax.sharding.AxisType.Explicit,))
  rng = rng_for("sharding")
  x, w = random_array(rng, (2, 8, 8, 3), np.float32), random_array(rng, (3, 3, 3, 4), np.float32)
  with jax.set_mesh(mesh):
    out = jax.jit(
      lambda x, w: jaxconv.conv_general_dilated(
        x,
        w,
        (1, 1),
        "SAME",
        dimension_numbers=DN,
        out_sharding=P("batch"),
        algorithm=algorithm,
      )
    )(x, w)
  assert out.sharding.spec == P("batch", None, None, None)
  check_against_lax(x, w, algorithm, window_strides=(1, 1), padding="SAME", dimension_numbers=DN)


def test_version_is_exposed():
  assert isinstance(jaxconv.__version__, str) and jaxconv.__version__
  assert set(jaxconv.__all__) <= set(dir(jaxconv))
