"""jaxconv: convolution in JAX by im2col and Winograd, a drop-in for `lax.conv_general_dilated`."""

from importlib.metadata import PackageNotFoundError, version

from jaxconv import flax as flax  # Flax itself is imported only when its helpers are called
from jaxconv._api import ConvGeneralDilated as ConvGeneralDilated
from jaxconv._api import cache_info as cache_info
from jaxconv._api import conv_general_dilated as conv_general_dilated
from jaxconv._api import conv_transpose as conv_transpose
from jaxconv._api import plan as plan
from jaxconv._geometry import ConvGeometry as ConvGeometry
from jaxconv._host_memory import host_memory_kept as host_memory_kept
from jaxconv._host_memory import keep_host_memory as keep_host_memory
from jaxconv._im2col import patch_budget as patch_budget
from jaxconv._im2col import set_patch_budget as set_patch_budget
from jaxconv._intercept import use as use
from jaxconv._refine import refine as refine
from jaxconv._registry import ALGORITHMS as ALGORITHMS
from jaxconv._select import Plan as Plan
from jaxconv._select import set_nonfinite as set_nonfinite
from jaxconv._transforms import default_points as default_points
from jaxconv._transforms import winograd_matrices as winograd_matrices
from jaxconv._tune import Tuned as Tuned
from jaxconv._tune import TuneTable as TuneTable
from jaxconv._tune import autotune as autotune
from jaxconv._tune import set_autotune as set_autotune
from jaxconv._tune import tune as tune

try:
  __version__ = version("jaxconv")
except PackageNotFoundError:  # running from a source tree
  __version__ = "0.0.0+unknown"

__all__ = [
  "ALGORITHMS",
  "ConvGeneralDilated",
  "ConvGeometry",
  "Plan",
  "TuneTable",
  "Tuned",
  "autotune",
  "cache_info",
  "conv_general_dilated",
  "conv_transpose",
  "default_points",
  "flax",
  "host_memory_kept",
  "keep_host_memory",
  "patch_budget",
  "plan",
  "refine",
  "set_autotune",
  "set_nonfinite",
  "set_patch_budget",
  "tune",
  "use",
  "winograd_matrices",
]
