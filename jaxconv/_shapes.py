"""The benchmark shape table: the convolution layers `jaxconv bench` and `pytest bench` time.

One table serves both runners, so their results describe the same layers. Each `Shape` is a single
`conv_general_dilated` call: input and kernel shapes in the named layout, strides, padding, feature
groups and dtype, plus tags to select subsets by:

* ``seed``: the seed example, a batch of 8 RGB images of 150x150 with a 3x3 edge kernel, 3 -> 16.
* ``resnet``: ResNet-50's 3x3 layers at batch 8, stride 1 SAME and stride 2 (padded by 1, as
  torchvision pads them).
* ``vgg``: VGG-16's 13 conv layers at batch 1 (3x3, stride 1, SAME).
* ``mobilenet``: MobileNet-v2's depthwise 3x3 layers at batch 8 (``feature_group_count = C``).
* ``depthwise``: every depthwise layer: MobileNet-v2's 3x3 ones (``mobilenet``, one stride 2),
  ConvNeXt's 7x7 ones (``convnext``) and EfficientNet-B0's 5x5 ones (``efficientnet``).
* ``strided``: strided layers whose kernel is a multiple of the stride (ConvNeXt's patchify stem
  and 2x2 downsampling, a DCGAN discriminator's 4x4 stride-2 layers).
* ``3d``: 3x3x3 layers of video and medical-volume networks (one depthwise), layout NDHWC.
* ``pointwise``: ResNet-50's bottleneck 1x1 layers at batch 8 (one a stride-2 projection).
* ``5x5``: a 5x5 layer. ``1d``: 1-D layers, an audio front end and a sequence layer.
* ``float32`` / ``bfloat16``: the dtype (every entry has one). bfloat16 variants repeat a few
  float32 layers under the same name plus ``-bf16``.
* ``quick``: a subset that runs in about a minute on two CPU cores.
* ``tiny``: layers that take milliseconds, for tests; never part of the default set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["SHAPES", "Shape", "by_name", "select"]

NHWC = ("NHWC", "HWIO", "NHWC")
NWC = ("NWC", "WIO", "NWC")
NDHWC = ("NDHWC", "DHWIO", "NDHWC")
Padding = str | tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmarked convolution.

  Attributes:
    name: unique name, used by ``--shapes``.
    lhs: input shape, in the layout's input order.
    rhs: kernel shape, in the layout's kernel order.
    strides: window strides.
    padding: "SAME", "VALID" or explicit ``(low, high)`` pairs.
    groups: ``feature_group_count``.
    layout: ``dimension_numbers`` as three layout strings.
    dtype: input and kernel dtype name.
    tags: labels to select by (the dtype's name is always one).
    note: where the layer comes from.
  """

  name: str
  lhs: tuple[int, ...]
  rhs: tuple[int, ...]
  strides: tuple[int, ...]
  padding: Padding
  groups: int = 1
  layout: tuple[str, str, str] = NHWC
  dtype: str = "float32"
  tags: tuple[str, ...] = ()
  note: str = ""

  def kwargs(self) -> dict:
    """Keyword arguments of `conv_general_dilated` besides the arrays.

    Example:
      >>> by_name("seed").kwargs()["padding"]
      'VALID'
    """
    return dict(
      window_strides=self.strides,
      padding=self.padding,
      dimension_numbers=self.layout,
      feature_group_count=self.groups,
    )

  def arrays(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random input and kernel of this shape and dtype, scaled so outputs are of order one.

    Example:
      >>> x, k = by_name("tiny").arrays()
      >>> x.shape, k.shape, str(x.dtype)
      ((2, 16, 16, 3), (3, 3, 3, 4), 'float32')
    """
    import jax.numpy as jnp  # bfloat16 is a numpy dtype only once ml_dtypes is loaded

    rng = np.random.default_rng(seed)
    fan_in = math.prod(self.rhs) // self.rhs[self.layout[1].index("O")]
    x = rng.standard_normal(self.lhs, np.float32)
    k = rng.standard_normal(self.rhs, np.float32) / np.float32(math.sqrt(fan_in))
    dtype = jnp.dtype(self.dtype)
    return x.astype(dtype), k.astype(dtype)

  def describe(self) -> str:
    """A short human-readable summary of the layer.

    Example:
      >>> by_name("seed").describe()
      '8x150x150x3 -> 16, 3x3, VALID'
    """
    lay_in, lay_k = self.layout[0], self.layout[1]
    feats = self.rhs[lay_k.index("O")]
    kernel = "x".join(str(self.rhs[i]) for i, c in enumerate(lay_k) if c not in "IO")
    parts = ["x".join(str(d) for d in self.lhs) + f" -> {feats}", kernel]
    if any(s > 1 for s in self.strides):
      parts.append("s" + "x".join(map(str, self.strides)))
    if isinstance(self.padding, str):
      parts.append(self.padding)
    elif len({p for pair in self.padding for p in pair}) == 1:
      parts.append(f"pad {self.padding[0][0]}")
    else:
      parts.append("pad " + ",".join(f"{lo}:{hi}" for lo, hi in self.padding))
    if self.groups > 1:
      parts.append("depthwise" if self.groups == self.lhs[lay_in.index("C")] else f"g{self.groups}")
    if self.dtype != "float32":
      parts.append(self.dtype)
    return ", ".join(parts)

  def as_dict(self) -> dict:
    """The entry as plain JSON-ready values."""
    d = dataclasses.asdict(self)
    d["padding"] = (
      self.padding if isinstance(self.padding, str) else [list(p) for p in self.padding]
    )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _conv2d(name, n, hw, c, o, k=3, s=1, padding="SAME", groups=1, tags=(), note=""):
  return Shape(
    name=name,
    lhs=(n, hw, hw, c),
    rhs=(k, k, c // groups, o),
    strides=(s, s),
    padding=padding,
    groups=groups,
    tags=tuple(tags),
    note=note,
  )


def _build() -> tuple[Shape, ...]:
  out = [
    _conv2d(
      "seed",
      8,
      150,
      3,
      16,
      padding="VALID",
      tags=("seed", "quick"),
      note="a batch of 8 RGB images with a 3x3 edge kernel tiled to 3 -> 16 channels",
    )
  ]
  # ResNet-50: the 3x3 convolution of each stage's bottleneck, and the strided one that opens it.
  for hw, c, quick in ((56, 64, False), (28, 128, True), (14, 256, False), (7, 512, False)):
    tags = ("resnet", "quick") if quick else ("resnet",)
    out.append(_conv2d(f"resnet50-{hw}x{c}", 8, hw, c, c, tags=tags, note="ResNet-50 3x3"))
  for hw, c, quick in ((56, 128, False), (28, 256, True), (14, 512, False)):
    tags = ("resnet", "quick") if quick else ("resnet",)
    out.append(
      _conv2d(
        f"resnet50-{hw}x{c}-s2",
        8,
        hw,
        c,
        c,
        s=2,
        padding=((1, 1), (1, 1)),
        tags=tags,
        note="ResNet-50 3x3 stride 2",
      )
    )
  # VGG-16's 13 layers; repeated shapes stay separate entries so the table reads as the network.
  vgg = [
    ("1_1", 224, 3, 64),
    ("1_2", 224, 64, 64),
    ("2_1", 112, 64, 128),
    ("2_2", 112, 128, 128),
    ("3_1", 56, 128, 256),
    ("3_2", 56, 256, 256),
    ("3_3", 56, 256, 256),
    ("4_1", 28, 256, 512),
    ("4_2", 28, 512, 512),
    ("4_3", 28, 512, 512),
    ("5_1", 14, 512, 512),
    ("5_2", 14, 512, 512),
    ("5_3", 14, 512, 512),
  ]
  for layer, hw, c, o in vgg:
    out.append(_conv2d(f"vgg16-conv{layer}", 1, hw, c, o, tags=("vgg",), note="VGG-16"))
  for hw, c, quick in ((112, 32, False), (56, 144, True), (14, 576, False)):
    tags = ("mobilenet", "depthwise", "quick") if quick else ("mobilenet", "depthwise")
    out.append(
      _conv2d(
        f"mobilenetv2-dw{hw}x{c}",
        8,
        hw,
        c,
        c,
        groups=c,
        tags=tags,
        note="MobileNet-v2 depthwise 3x3",
      )
    )
  out.append(
    _conv2d(
      "mobilenetv2-dw112x96-s2",
      8,
      112,
      96,
      96,
      s=2,
      padding=((1, 1), (1, 1)),
      groups=96,
      tags=("mobilenet", "depthwise"),
      note="MobileNet-v2 depthwise 3x3 stride 2",
    )
  )
  for hw, c, quick in ((56, 96, True), (28, 192, False), (14, 384, False)):
    tags = ("convnext", "depthwise", "quick") if quick else ("convnext", "depthwise")
    out.append(
      _conv2d(
        f"convnext-dw{hw}x{c}",
        8,
        hw,
        c,
        c,
        k=7,
        groups=c,
        tags=tags,
        note="ConvNeXt-T depthwise 7x7",
      )
    )
  # Strided layers whose kernel is a multiple of the stride: ConvNeXt's patchify stem and
  # downsampling layers, a DCGAN discriminator's 4x4 stride-2 layers.
  for name, hw, c, o, k, s, padding, note in (
    ("convnext-stem", 224, 3, 96, 4, 4, "VALID", "ConvNeXt-T stem, 4x4 stride 4 (patchify)"),
    ("convnext-down56x96", 56, 96, 192, 2, 2, "VALID", "ConvNeXt-T downsampling, 2x2 stride 2"),
    ("dcgan-d32x128", 32, 128, 256, 4, 2, ((1, 1), (1, 1)), "DCGAN discriminator 4x4 stride 2"),
    ("dcgan-d64x64", 64, 64, 128, 4, 2, ((1, 1), (1, 1)), "DCGAN discriminator 4x4 stride 2"),
  ):
    out.append(_conv2d(name, 8, hw, c, o, k=k, s=s, padding=padding, tags=("strided",), note=note))
  for hw, c in ((28, 240), (14, 672)):
    out.append(
      _conv2d(
        f"efficientnet-dw{hw}x{c}",
        8,
        hw,
        c,
        c,
        k=5,
        groups=c,
        tags=("efficientnet", "depthwise"),
        note="EfficientNet-B0 depthwise 5x5",
      )
    )
  for name, n, dhw, c, groups, quick, note in (
    ("conv3d-16x32x32x32", 2, (16, 32, 32), 32, 1, True, "a 3x3x3 video/volume layer"),
    ("conv3d-c3d-8x56x56x64", 2, (8, 56, 56), 64, 1, False, "C3D's second 3x3x3 layer"),
    ("conv3d-unet-32x64x64x16", 1, (32, 64, 64), 16, 1, False, "3-D U-Net's first level"),
    ("conv3d-dw-16x28x28x96", 2, (16, 28, 28), 96, 96, False, "X3D-style 3x3x3 depthwise"),
  ):
    out.append(
      Shape(
        name,
        lhs=(n, *dhw, c),
        rhs=(3, 3, 3, c // groups, c),
        strides=(1, 1, 1),
        padding="SAME",
        groups=groups,
        layout=NDHWC,
        tags=("3d", "quick") if quick else ("3d",),
        note=note,
      )
    )
  # ResNet-50's bottleneck 1x1 layers: two of every block's three convolutions.
  for hw, c, o, s, note in (
    (56, 256, 64, 1, "reduces a stage-1 block's 256 features to 64"),
    (56, 64, 256, 1, "expands them back to 256"),
    (56, 256, 512, 2, "stage 2's stride-2 projection shortcut"),
    (14, 1024, 256, 1, "reduces a stage-3 block's 1024 features to 256"),
  ):
    name = f"resnet50-1x1-{hw}x{c}-{o}" + ("-s2" if s > 1 else "")
    out.append(
      _conv2d(name, 8, hw, c, o, k=1, s=s, tags=("pointwise",), note=f"ResNet-50 1x1: {note}")
    )
  # The convolutions of bench/train_model.py's ResNet for 32x32 images (batch 32): its stem, each
  # distinct 3x3 layer, and the 1x1 stride-2 projections.
  for hw, c, o, k, s in (
    (32, 3, 32, 3, 1),
    (32, 32, 32, 3, 1),
    (32, 32, 64, 3, 2),
    (16, 64, 64, 3, 1),
    (16, 64, 128, 3, 2),
    (8, 128, 128, 3, 1),
    (8, 128, 256, 3, 2),
    (4, 256, 256, 3, 1),
    (32, 32, 64, 1, 2),
    (16, 64, 128, 1, 2),
    (8, 128, 256, 1, 2),
  ):
    name = f"cifar-resnet-{hw}x{c}-{o}" + (f"-{k}x{k}" if k != 3 else "") + ("-s2" if s > 1 else "")
    pad = ((k // 2, (k - 1) // 2),) * 2
    out.append(
      _conv2d(
        name,
        32,
        hw,
        c,
        o,
        k=k,
        s=s,
        padding=pad,
        tags=("cifar-resnet",),
        note=("bench/train_model.py's ResNet for 32x32 images"),
      )
    )
  out.append(_conv2d("conv5x5-32x64", 8, 32, 64, 64, k=5, tags=("5x5",), note="a 5x5 layer"))
  out.append(
    Shape(
      "audio-frontend",
      lhs=(8, 16000, 1),
      rhs=(10, 1, 512),
      strides=(5,),
      padding="VALID",
      layout=NWC,
      tags=("1d", "quick"),
      note="wav2vec-style front end: 1 s of 16 kHz audio, kernel 10, stride 5",
    )
  )
  out.append(
    Shape(
      "conv1d-4096x256",
      lhs=(8, 4096, 256),
      rhs=(3, 256, 256),
      strides=(1,),
      padding="SAME",
      layout=NWC,
      tags=("1d", "quick"),
      note="a 1-D sequence layer, kernel 3",
    )
  )
  # bfloat16 variants of a few float32 layers.
  f32 = {s.name: s for s in out}
  for name, quick in (("seed", True), ("resnet50-56x64", False), ("resnet50-28x128", False)):
    s = f32[name]
    tags = tuple(t for t in s.tags if t != "quick") + (("quick",) if quick else ())
    out.append(dataclasses.replace(s, name=f"{name}-bf16", dtype="bfloat16", tags=tags))
  # Tiny layers for tests; excluded from the default set.
  out.append(_conv2d("tiny", 2, 16, 3, 4, tags=("tiny",), note="a tiny layer for tests"))
  out.append(
    _conv2d("tiny-wide", 1, 12, 16, 16, tags=("tiny",), note="a tiny layer Winograd applies to")
  )
  return tuple(dataclasses.replace(s, tags=(*s.tags, s.dtype)) for s in out)


SHAPES: tuple[Shape, ...] = _build()


def by_name(name: str) -> Shape:
  """The entry called `name`.

  Raises:
    KeyError: if there is none, naming the known names.

  Example:
    >>> by_name("resnet50-28x128").lhs
    (8, 28, 28, 128)
  """
  for s in SHAPES:
    if s.name == name:
      return s
  raise KeyError(f"unknown shape {name!r}; known: {', '.join(s.name for s in SHAPES)}")


def select(
  names: Iterable[str] | None = None,
  *,
  quick: bool = False,
  dtype: str | None = None,
  tags: Sequence[str] = (),
) -> list[Shape]:
  """Entries of the table, in table order.

  Args:
    names: exact names, or tags (every entry carrying one; a name wins over a tag spelled the
      same); None for the default set (all entries but the tiny ones).
    quick: keep only the quick subset.
    dtype: keep only this dtype ("float32" or "bfloat16").
    tags: keep only entries carrying all of these tags.

  Raises:
    KeyError: an unknown name or tag.

  Example:
    >>> [s.name for s in select(quick=True, dtype="bfloat16")]
    ['seed-bf16']
  """
  if names is None:
    chosen = [s for s in SHAPES if "tiny" not in s.tags]
  else:
    wanted = set()
    for n in names:
      # An exact name selects that entry only; anything else is a tag.
      hits = {s.name for s in SHAPES if n == s.name} or {s.name for s in SHAPES if n in s.tags}
      if not hits:
        by_name(n)  # raises with the list of known names
      wanted |= hits
    chosen = [s for s in SHAPES if s.name in wanted]
  if quick:
    chosen = [s for s in chosen if "quick" in s.tags]
  if dtype is not None:
    chosen = [s for s in chosen if s.dtype == dtype]
  return [s for s in chosen if all(t in s.tags for t in tags)]
