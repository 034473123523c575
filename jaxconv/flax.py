"""Flax convolution layers that run on jaxconv, one line each; Flax is imported only when called.

Both Flax APIs have a hook for the convolution function, so no patching is involved:

* linen: ``nn.Conv(..., conv_general_dilated_cls=jaxconv.ConvGeneralDilated)`` (Flax instantiates
  the class with no arguments, so the algorithm is "auto"; for another one pass
  ``functools.partial(jaxconv.ConvGeneralDilated, algorithm="im2col")``) or
  ``nn.Conv(..., conv_general_dilated=jaxconv.ConvGeneralDilated("im2col"))``;
* nnx: ``nnx.Conv(..., conv_general_dilated=jaxconv.conv_general_dilated)`` or
  ``jaxconv.ConvGeneralDilated("im2col")``; nnx's ``out_sharding`` and ``preferred_element_type``
  reach jaxconv as they would reach lax.

`Conv` and `NnxConv` below write those for you. Layers without a hook (``ConvTranspose``,
``ConvLocal``) can run inside ``with jaxconv.use(...)``.
"""

from __future__ import annotations

from typing import Any

from jaxconv._api import ConvGeneralDilated

__all__ = ["Conv", "NnxConv"]


def Conv(*args: Any, algorithm: str = "auto", **kwargs: Any) -> Any:
  """A `flax.linen.Conv` whose convolution is jaxconv's.

  Args:
    *args: positional arguments of `flax.linen.Conv` (features, kernel_size, ...).
    algorithm: as in `jaxconv.conv_general_dilated`.
    **kwargs: keyword arguments of `flax.linen.Conv`.

  Returns:
    The linen module (an ordinary `flax.linen.Conv`: same parameters, same checkpoints).

  Example:
    >>> import jax, jax.numpy as jnp, jaxconv.flax
    >>> conv = jaxconv.flax.Conv(8, (3, 3), algorithm="im2col")
    >>> params = conv.init(jax.random.key(0), jnp.ones((1, 6, 6, 3)))
    >>> conv.apply(params, jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """
  from flax import linen as nn

  return nn.Conv(*args, conv_general_dilated=ConvGeneralDilated(algorithm), **kwargs)


def NnxConv(*args: Any, algorithm: str = "auto", **kwargs: Any) -> Any:
  """A `flax.nnx.Conv` whose convolution is jaxconv's.

  Args:
    *args: positional arguments of `flax.nnx.Conv` (in_features, out_features, kernel_size, ...).
    algorithm: as in `jaxconv.conv_general_dilated`.
    **kwargs: keyword arguments of `flax.nnx.Conv`, `rngs` included.

  Returns:
    The nnx module (an ordinary `flax.nnx.Conv`).

  Example:
    >>> import jax.numpy as jnp, jaxconv.flax
    >>> from flax import nnx
    >>> conv = jaxconv.flax.NnxConv(3, 8, (3, 3), algorithm="winograd4", rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((2, 6, 6, 3))).shape
    (2, 6, 6, 8)
  """
  from flax import nnx

  return nnx.Conv(*args, conv_general_dilated=ConvGeneralDilated(algorithm), **kwargs)
