"""Numerical sloppiness fails loudly: float64 available, implicit rank promotion is an error.

Every test sees an empty tuning cache of its session (never the developer's own), with autotuning
off, so `auto` decides by its heuristic unless a test measures.
"""

import os
import tempfile

import jax

os.environ["JAXCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxconv-test-cache-")
os.environ.pop("JAXCONV_AUTOTUNE", None)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
