"""`jaxconv.use`: interception of `jax.lax.conv_general_dilated`, nesting, threads, jit caches."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax._src.lax import convolution

import jaxconv
from jaxconv import _intercept, _lax

ORIGINAL = convolution.conv_general_dilated
X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 3)), jnp.float32)
W = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 3, 4)), jnp.float32)
DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def _algorithms(f, *args) -> list[str]:
  """What each convolution in f's jaxpr runs: 'lax' or the jaxconv algorithm."""
  out = []
  for e in jax.make_jaxpr(f)(*args).jaxpr.eqns:
    if e.primitive.name == "conv_general_dilated":
      out.append("lax")
    elif e.primitive.name == "jaxconv_conv":
      out.append(e.params["algorithm"])
  return out


def test_routes_and_restores():
  assert _algorithms(_conv, X, W) == ["lax"]
  with jaxconv.use("im2col"):
    assert lax.conv_general_dilated is not ORIGINAL
    assert _algorithms(_conv, X, W) == ["im2col"]
    # lax's own wrappers look the function up in their module, which is patched too.
    assert _algorithms(lambda x, w: lax.conv(x, w, (1, 1), "SAME"), X.transpose(0, 3, 1, 2),
                       W.transpose(3, 2, 0, 1)) == ["im2col"]  # fmt: skip
  assert lax.conv_general_dilated is ORIGINAL and convolution.conv_general_dilated is ORIGINAL
  assert _algorithms(_conv, X, W) == ["lax"]


def test_nesting_inner_wins_outer_restored():
  with jaxconv.use("im2col"):
    with jaxconv.use("winograd4"):
      assert _algorithms(_conv, X, W) == ["winograd"]
      with jaxconv.use("lax"):
        assert _algorithms(_conv, X, W) == ["lax"]
    assert _algorithms(_conv, X, W) == ["im2col"]
  assert lax.conv_general_dilated is ORIGINAL


def test_restores_after_an_exception_and_checks_the_algorithm():
  with pytest.raises(ZeroDivisionError), jaxconv.use("im2col"):
    1 / 0  # noqa: B018
  assert lax.conv_general_dilated is ORIGINAL
  with pytest.raises(ValueError, match="algorithm"), jaxconv.use("im2kol"):
    pass
  assert lax.conv_general_dilated is ORIGINAL


def test_result_matches_lax_and_gradients_flow():
  ref = _conv(X, W), jax.grad(lambda x, w: jnp.sum(_conv(x, w) ** 2), (0, 1))(X, W)
  with jaxconv.use("im2col"):
    got = _conv(X, W), jax.grad(lambda x, w: jnp.sum(_conv(x, w) ** 2), (0, 1))(X, W)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_jit_cache_follows_the_block():
  f = jax.jit(_conv)
  lowered = lambda: f.lower(X, W).as_text()
  outside = lowered()
  with jaxconv.use("im2col"):
    inside = lowered()
  assert "convolution" in outside and "convolution" not in inside  # retraced, not reused
  assert lowered() == outside  # and back again


def test_own_lax_path_never_recurses():
  # jaxconv's lax path was bound before any patching, and its argument checks ask lax for the
  # result type: inside `use("lax")` and `use("auto")` both end in lax's primitive.
  assert _lax._conv is ORIGINAL
  with jaxconv.use("lax"):
    assert _algorithms(_conv, X, W) == ["lax"]
    own = lambda x, w: jaxconv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=DN, algorithm="lax"
    )
    assert _algorithms(own, X, W) == ["lax"]
  with jaxconv.use("auto"):
    # 1x1 kernel: auto picks lax, and the gradient's lax transposes come back through `use`.
    w1 = W[:1, :1]
    g = jax.grad(lambda x, w: jnp.sum(_conv(x, w) ** 2), (0, 1))(X, w1)
  ref = jax.grad(lambda x, w: jnp.sum(_conv(x, w) ** 2), (0, 1))(X, w1)
  for a, b in zip(g, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_threads_keep_plain_lax():
  inside, release = threading.Event(), threading.Event()
  seen = {}

  def worker():
    with jaxconv.use("im2col"):
      seen["worker"] = _algorithms(_conv, X, W)
      inside.set()
      release.wait(30)

  t = threading.Thread(target=worker)
  t.start()
  try:
    assert inside.wait(30)
    # The worker is inside `use`: the module attribute is the dispatcher, yet this thread is not.
    assert lax.conv_general_dilated is _intercept._dispatch
    seen["main"] = _algorithms(_conv, X, W)
  finally:
    release.set()
    t.join(30)
  assert seen == {"worker": ["im2col"], "main": ["lax"]}
  assert lax.conv_general_dilated is ORIGINAL


def test_decorator_form():
  @jaxconv.use("im2col")
  def traced():
    return _algorithms(_conv, X, W)

  assert traced() == ["im2col"] and _algorithms(_conv, X, W) == ["lax"]
