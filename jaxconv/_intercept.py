"""`jaxconv.use`: route `jax.lax.conv_general_dilated` through jaxconv inside a `with` block.

Libraries without a hook for the convolution (Haiku, Equinox, Flax's `ConvTranspose`, plain user
code) look `conv_general_dilated` up in a module at call time: `jax.lax` for direct calls, and
`jax._src.lax.convolution` for lax's own wrappers (`lax.conv`, `lax.conv_transpose`,
`lax.conv_with_general_padding`, `lax.conv_general_dilated_patches`). While at least one thread is
inside `use`, those module attributes hold a dispatcher; when the last one leaves, the originals
are restored.

The dispatcher reads the algorithm from a thread-local JAX *user context*: a thread that is not
inside `use` gets plain lax even while another thread is, nested blocks see the innermost
algorithm, and because the context is part of `jax.jit`'s cache key a jitted function traced
outside the block is traced again inside it (and the other way round) rather than reusing a trace
made under the other choice. While jaxconv itself runs (its argument checks ask lax for the result
type, its transposes convolve again), the dispatcher passes straight to lax, so nothing recurses.

A reference captured before the block (`from jax.lax import conv_general_dilated` at import, or a
default argument such as nnx's `Conv(conv_general_dilated=lax.conv_general_dilated)`) is not
patched: hand jaxconv to such code through its own hook instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import threading
from collections.abc import Iterator

import jax
from jax._src.lax import convolution as _convolution

from jaxconv._select import check_algorithm

__all__ = ["use"]

_ORIGINAL = _convolution.conv_general_dilated
# The namespaces that libraries and lax's wrappers read `conv_general_dilated` from at call time.
_MODULES = ("jax.lax", "jax._src.lax.convolution", "jax._src.lax")

# A jit-cache-sensitive, thread-local setting where JAX offers one; a context variable otherwise.
_make_user_context = getattr(jax, "make_user_context", None)
if _make_user_context is not None:
  _algorithm = _make_user_context(None)

  def _current() -> str | None:
    return _algorithm.value

  def _setting(algorithm: str | None) -> contextlib.AbstractContextManager:
    return _algorithm(algorithm)

else:  # pragma: no cover - older JAX: correct dispatch, but jit caches ignore the block
  _algorithm_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jaxconv_algorithm", default=None
  )

  def _current() -> str | None:
    return _algorithm_var.get()

  @contextlib.contextmanager
  def _setting(algorithm: str | None) -> Iterator[None]:
    token = _algorithm_var.set(algorithm)
    try:
      yield
    finally:
      _algorithm_var.reset(token)


# True while jaxconv handles an intercepted call: its own calls to lax must reach lax. Not part of
# the jit cache key, so entering jaxconv does not make the functions it calls retrace.
_inside_jaxconv: contextvars.ContextVar[bool] = contextvars.ContextVar(
  "jaxconv_inside", default=False
)

_lock = threading.Lock()
_users = 0  # threads (and nesting levels) currently inside `use`


@functools.wraps(_ORIGINAL)
def _dispatch(*args, **kwargs):
  algorithm = _current()
  if algorithm is None or _inside_jaxconv.get():
    return _ORIGINAL(*args, **kwargs)
  from jaxconv._api import conv_general_dilated

  token = _inside_jaxconv.set(True)
  try:
    return conv_general_dilated(*args, **kwargs, algorithm=algorithm)
  finally:
    _inside_jaxconv.reset(token)


def _patch(old, new) -> None:
  for name in _MODULES:
    module = importlib.import_module(name)
    # Only replace what is still ours to replace: a later patch by someone else stays in place.
    if getattr(module, "conv_general_dilated", None) is old:
      module.conv_general_dilated = new


def _acquire() -> None:
  global _users
  with _lock:
    if _users == 0:
      _patch(_ORIGINAL, _dispatch)
    _users += 1


def _release() -> None:
  global _users
  with _lock:
    _users -= 1
    if _users == 0:
      _patch(_dispatch, _ORIGINAL)


@contextlib.contextmanager
def use(algorithm: str = "auto") -> Iterator[None]:
  """Runs every `jax.lax.conv_general_dilated` traced inside the block through jaxconv.

  Covers direct calls and lax's wrappers (`lax.conv`, `lax.conv_transpose`, ...), hence Haiku's
  and Equinox's convolutions and Flax's `ConvTranspose`. Nestable (the innermost algorithm wins);
  other threads keep plain lax; the original functions are restored when the last block exits.
  jaxconv's own lax path never comes back here. Also usable as a decorator.

  Args:
    algorithm: as in `jaxconv.conv_general_dilated`; checked on entry.

  Raises:
    TypeError, ValueError: for an unknown `algorithm`.

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv
    >>> x, w = jnp.ones((1, 1, 5)), jnp.ones((1, 1, 3))
    >>> f = lambda x, w: jax.lax.conv(x, w, (1,), "VALID")
    >>> with jaxconv.use("im2col"):
    ...   inside = jax.make_jaxpr(f)(x, w)
    >>> [e.primitive.name for e in inside.eqns], jax.make_jaxpr(f)(x, w).eqns[0].primitive.name
    (['jaxconv_conv'], 'conv_general_dilated')
  """
  check_algorithm(algorithm)
  _acquire()
  try:
    with _setting(algorithm):
      yield
  finally:
    _release()
