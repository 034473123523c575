"""Bounded memory on large inputs, by XLA's own account of the compiled program's buffers.

Compiling is enough (nothing this size is allocated): `memory_analysis()` gives the argument,
output and temporary bytes of the executable. The peak-RSS measurement of the same convolution is
`bench/memory.py`.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax import lax

import jaxconv

LHS = jax.ShapeDtypeStruct((64, 224, 224, 64), np.float32)
RHS = jax.ShapeDtypeStruct((3, 3, 64, 64), np.float32)
KW = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _buffer_bytes(fn) -> tuple[int, int]:
  m = jax.jit(fn).lower(LHS, RHS).compile().memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes, m.temp_size_in_bytes


@pytest.mark.parametrize("algorithm", ["im2col", "winograd2", "winograd4", "auto"])
def test_large_input_stays_within_1_5x_of_lax(algorithm):
  lax_io, lax_temp = _buffer_bytes(lambda x, w: lax.conv_general_dilated(x, w, **KW))
  io, temp = _buffer_bytes(
    lambda x, w: jaxconv.conv_general_dilated(x, w, **KW, algorithm=algorithm)
  )
  assert io == lax_io
  assert io + temp <= 1.5 * (lax_io + lax_temp), f"temporary buffers: {temp / 1e9:.2f} GB"
  # Neither the input nor the output is copied: what remains is the blocks' working set.
  assert temp <= jaxconv.patch_budget() + LHS.size * 4 // 8
