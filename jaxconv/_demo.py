"""`jaxconv demo`: the seed example, step by step, on real photographs.

The seed's walkthrough: a batch of 8 RGB images of 150x150 (photographs bundled with
scikit-image), a 3x3 edge kernel ``[[1, 0, -1], [0, 0, 0], [-1, 0, 1]]`` tiled to 3 -> 16 channels,
and a VALID convolution computed four ways: the seed's numpy im2col (a strided view of the patches,
`np.lib.stride_tricks.as_strided`, contracted with the kernel by `np.tensordot`), jaxconv's im2col,
jaxconv's Winograd and `lax.conv_general_dilated`. Then one 6x6 patch by Winograd F(4, 3) in plain
numpy, ``Y = AT [(G g G^T) * (BT d BT^T)] AT^T``, checked against `scipy.signal.correlate`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["edge_kernel", "im2col_numpy", "load_images", "winograd_patch"]

EDGE = np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]], np.float32)
# RGB photographs that ship inside the scikit-image wheel (no download).
PHOTOS = (
  "astronaut",
  "chelsea",
  "coffee",
  "rocket",
  "retina",
  "hubble_deep_field",
  "immunohistochemistry",
  "colorwheel",
)


def load_images(size: int = 150, batch: int = 8) -> tuple[np.ndarray, str]:
  """A float32 batch ``(batch, size, size, 3)`` in [0, 1], and where it came from.

  Photographs from scikit-image's bundled data, centre-cropped square and resized; without
  scikit-image, smooth synthetic images instead.

  Example:
    >>> x, source = load_images(16, 2)
    >>> x.shape, str(x.dtype), bool(0 <= x.min() and x.max() <= 1)
    ((2, 16, 16, 3), 'float32', True)
  """
  try:
    import skimage.data
    from skimage.transform import resize
  except ImportError:
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    imgs = [
      np.stack([np.sin(6 * (xx + i) * yy) ** 2, xx, yy], axis=-1) for i in range(batch)
    ]  # smooth colours with edges of every orientation
    return np.asarray(imgs, np.float32), "synthetic images (scikit-image is not installed)"
  imgs = []
  for i in range(batch):
    img = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()[..., :3]
    h, w = img.shape[:2]
    side = min(h, w)
    img = img[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    if i >= len(PHOTOS):  # more images than photographs: mirror the repeats
      img = img[:, ::-1]
    imgs.append(resize(img, (size, size, 3), anti_aliasing=True))
  names = ", ".join(PHOTOS[: min(batch, len(PHOTOS))])
  return np.asarray(imgs, np.float32), f"scikit-image photographs ({names})"


def edge_kernel(cin: int = 3, cout: int = 16) -> np.ndarray:
  """The seed's 3x3 edge kernel tiled to an HWIO kernel ``(3, 3, cin, cout)``.

  Example:
    >>> edge_kernel().shape
    (3, 3, 3, 16)
  """
  return np.tile(EDGE[..., None, None], (1, 1, cin, cout))


def im2col_numpy(x: np.ndarray, w: np.ndarray, stride: int = 1) -> np.ndarray:
  """The seed's VALID convolution (NHWC input, HWIO kernel) by im2col in numpy.

  A strided view exposes every kh x kw x C patch without copying; `np.tensordot` contracts it
  with the kernel in one GEMM.

  Example:
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> im2col_numpy(x, np.ones((3, 3, 1, 1)))[0, :, :, 0]
    array([[45., 54.],
           [81., 90.]])
  """
  n, h, wd, c = x.shape
  kh, kw, _, _ = w.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  sn, sh, sw, sc = x.strides
  patches = np.lib.stride_tricks.as_strided(
    x,
    shape=(n, oh, ow, kh, kw, c),
    strides=(sn, sh * stride, sw * stride, sh, sw, sc),
    writeable=False,
  )
  return np.tensordot(patches, w, axes=([3, 4, 5], [0, 1, 2]))


def winograd_patch(d: np.ndarray, g: np.ndarray, m: int = 4) -> np.ndarray:
  """Winograd F(m, r) on one ``(m + r - 1)``-square patch `d` and an r x r kernel `g`.

  ``Y = AT [(G g G^T) * (BT d BT^T)] AT^T``: `m` x `m` outputs of the correlation with
  ``(m + r - 1)^2`` multiplications instead of ``m^2 r^2``.

  Example:
    >>> d = np.arange(36.0).reshape(6, 6)
    >>> winograd_patch(d, np.ones((3, 3)))[0]
    array([63., 72., 81., 90.])
  """
  from jaxconv._transforms import winograd_matrices

  at, gm, bt = winograd_matrices(m, g.shape[0])
  return at @ ((gm @ g @ gm.T) * (bt @ d @ bt.T)) @ at.T


def _correlate_valid(d: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, str]:
  try:
    from scipy.signal import correlate
  except ImportError:
    out = im2col_numpy(d[None, :, :, None], g[:, :, None, None])[0, :, :, 0]
    return out, "numpy im2col (scipy is not installed)"
  return correlate(d, g, mode="valid"), "scipy.signal.correlate(patch, kernel, mode='valid')"


def _figure(images: np.ndarray, out: np.ndarray, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cols = min(4, len(images))
  fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols, 4.6), squeeze=False)
  for i in range(cols):
    axes[0, i].imshow(images[i])
    lim = float(np.percentile(np.abs(out[i, ..., 0]), 99)) or 1.0  # a few edges would dominate
    axes[1, i].imshow(out[i, ..., 0], cmap="RdBu", vmin=-lim, vmax=lim)
    for ax in axes[:, i]:
      ax.set_xticks([])
      ax.set_yticks([])
  axes[0, 0].set_ylabel("input (RGB)")
  axes[1, 0].set_ylabel("output channel 0")
  fig.suptitle("the seed's 3x3 edge kernel, 3 -> 16 channels (every channel alike)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def run_demo(
  size: int = 150, batch: int = 8, rounds: int = 9, out: Path | None = Path("out")
) -> dict:
  """Runs the walkthrough, printing each step; returns times (s) and errors by method."""
  import jax
  from jax import lax

  import jaxconv
  from jaxconv._timing import interleaved_medians

  images, source = load_images(size, batch)
  kernel = edge_kernel()
  dn = ("NHWC", "HWIO", "NHWC")
  kw = dict(dimension_numbers=dn, precision=lax.Precision.HIGHEST)
  p = jaxconv.plan(images, kernel, (1, 1), "VALID", dimension_numbers=dn)
  print(f"jaxconv {jaxconv.__version__}, jax {jax.__version__}, {jax.devices()[0].device_kind}")
  print(f"1. input: {images.shape} float32 in [0, 1], {source}")
  print(f"2. kernel: {EDGE.astype(int).tolist()} tiled to {kernel.shape} (HWIO)")

  ref = im2col_numpy(images.astype(np.float64), kernel.astype(np.float64))
  t_np = math.inf
  for _ in range(3):  # best of three: the first call also pays for allocating its result
    start = time.perf_counter()
    y_np = im2col_numpy(images, kernel)
    t_np = min(t_np, time.perf_counter() - start)
  patches = math.prod(ref.shape[:3])
  print(
    f"3. numpy im2col: a strided view of {patches} patches of 3x3x3 (no copy), tensordot with the "
    f"kernel -> {y_np.shape}"
  )
  print(f"   auto picks {p.algorithm!r}: {p.reason}")

  x, k = jax.device_put(images), jax.device_put(kernel)
  fns = {
    "lax": lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID", **kw),
    "im2col": lambda x, k: jaxconv.conv_general_dilated(
      x, k, (1, 1), "VALID", **kw, algorithm="im2col"
    ),
    "winograd": lambda x, k: jaxconv.conv_general_dilated(
      x, k, (1, 1), "VALID", **kw, algorithm="winograd"
    ),
  }
  times = dict(zip(fns, interleaved_medians(list(fns.values()), [x, k], rounds=rounds)))
  errors = {name: _err(jax.jit(fn)(x, k), ref) for name, fn in fns.items()}
  times["numpy im2col"], errors["numpy im2col"] = t_np, _err(y_np, ref)
  print("4. side by side (median of interleaved rounds; error: normwise, against float64 numpy):")
  print(f"   {'method':<14}{'ms':>10}{'vs lax':>10}{'rel. error':>12}")
  for name in ("lax", "im2col", "winograd", "numpy im2col"):
    extra = "  (best of 3 calls)" if name == "numpy im2col" else ""
    print(
      f"   {name:<14}{times[name] * 1e3:>10.3f}{times['lax'] / times[name]:>9.2f}x"
      f"{errors[name]:>12.2e}{extra}"
    )

  d = images[0, :6, :6, 0].astype(np.float64)  # one 6x6 patch of the red channel
  y_w = winograd_patch(d, EDGE.astype(np.float64), 4)
  y_c, how = _correlate_valid(d, EDGE.astype(np.float64))
  diff = float(np.abs(y_w - y_c).max())
  print(
    "5. Winograd F(4, 3) on one 6x6 patch: AT (4x6), G (6x3), BT (6x6) from "
    "winograd_matrices(4, 3);"
  )
  print(
    f"   36 multiplications for 16 outputs (direct: 144); max |difference| to {how}: {diff:.1e}"
  )
  if out is not None:
    try:
      out.mkdir(parents=True, exist_ok=True)
      _figure(images, np.asarray(y_np), out / "demo.png")
      print(f"6. figure: {out / 'demo.png'}")
    except ImportError:
      print("6. matplotlib is not installed (pip install 'jaxconv[bench]'): no figure")
  return {"times": times, "errors": errors, "winograd_patch_diff": diff}


def _err(y, ref: np.ndarray) -> float:
  y = np.asarray(y, np.float64)
  return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The `jaxconv demo` options."""
  p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
  p.add_argument("--size", type=int, default=150, help="image side (default: %(default)s)")
  p.add_argument("--batch", type=int, default=8, help="images in the batch (default: %(default)s)")
  p.add_argument("--out", default="out", help="folder for demo.png (default: %(default)s)")
  p.add_argument("--no-figure", action="store_true", help="skip the figure")


def main(args: argparse.Namespace) -> int:
  """Runs `jaxconv demo` with parsed `args`."""
  if args.size < 6 or args.batch < 1:
    print("--size must be at least 6 and --batch at least 1", file=sys.stderr)
    return 2
  run_demo(args.size, args.batch, args.rounds, None if args.no_figure else Path(args.out))
  return 0
