"""Trains a small CNN (Flax linen + optax) on scikit-learn's digits, with a choice of convolution.

The data set ships with scikit-learn (1797 grey 8x8 images of handwritten digits; nothing is
downloaded). It is split 80/20, stratified, with a fixed seed. The network is three 3x3
convolutions (1 -> 32 -> 64, average pooling to 4x4, -> 64), global average pooling and two dense
layers (128, 10), trained with Adam (cosine-decayed step size) on the cross-entropy for `--epochs`
epochs of minibatches of 64 in a fixed shuffled order, so every `--conv` choice sees exactly the
same computation up to the convolution's rounding. `--conv lax` is Flax's own default; the others
plug jaxconv in through linen's hook,
``nn.Conv(..., conv_general_dilated=jaxconv.ConvGeneralDilated(algorithm))``.

For each choice the script prints the mean training loss and the test accuracy per epoch and the
seconds per epoch (the first epoch, which compiles, is reported apart); given several choices it
also prints each loss curve's largest relative deviation from the first choice's. With `--noise`
it trains lax once more from a start one float32 ulp away: its deviation is the size of float32
noise, against which the others' deviations are to be read.

Usage:
  python examples/train_digits.py --conv lax im2col winograd auto --epochs 40 --noise
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax import lax

import jaxconv

CONVS = ("lax", "im2col", "winograd", "auto")


def load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Train and test images (N, 8, 8, 1) in [0, 1] and integer labels, split 80/20."""
  from sklearn.datasets import load_digits as sk_load_digits
  from sklearn.model_selection import train_test_split

  data = sk_load_digits()
  images = (data.images / 16.0).astype(np.float32)[..., None]
  x_tr, x_te, y_tr, y_te = train_test_split(
    images, data.target, test_size=0.2, random_state=seed, stratify=data.target
  )
  return x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32)


class CNN(nn.Module):
  """Three 3x3 convolutions, pooling, and a two-layer classifier."""

  conv: str = "lax"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hook = None if self.conv == "lax" else jaxconv.ConvGeneralDilated(self.conv)
    conv = functools.partial(nn.Conv, precision=lax.Precision.HIGHEST, conv_general_dilated=hook)
    x = nn.relu(conv(32, (3, 3))(x))
    x = nn.relu(conv(64, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(conv(64, (3, 3))(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(x)


def train(
  conv: str,
  epochs: int,
  *,
  batch_size: int = 64,
  learning_rate: float = 3e-3,
  seed: int = 0,
  max_steps: int | None = None,
  perturb: bool = False,
  verbose: bool = False,
) -> dict[str, Any]:
  """Trains the CNN with one convolution choice.

  Args:
    conv: "lax" or a jaxconv algorithm.
    epochs: passes over the training set.
    batch_size: examples per step (the last, smaller batch of an epoch is dropped).
    learning_rate: Adam's step size.
    seed: initialisation, split and shuffling seed (the same for every `conv`).
    max_steps: stop after this many steps (for a quick check).
    perturb: move every initial parameter one float32 ulp up: a run that differs from the
      unperturbed one by rounding only, the yardstick for "agrees to within float32 noise".
    verbose: print one line per epoch.

  Returns:
    A dict with the per-step losses, per-epoch mean losses, per-epoch seconds, per-epoch test
    accuracies and the final test accuracy.
  """
  x_tr, y_tr, x_te, y_te = load_digits(seed)
  model = CNN(conv)
  params = CNN("lax").init(jax.random.key(seed), x_tr[:1])  # the same start for every choice
  if perturb:
    params = jax.tree.map(lambda p: jnp.nextafter(p, jnp.inf), params)
  steps_per_epoch = len(x_tr) // batch_size
  # Cosine decay settles the final accuracy instead of leaving it to the last step's noise.
  opt = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(params):
      logits = model.apply(params, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(model.apply(params, x), -1) == y)

  rng = np.random.default_rng(seed)
  losses, epoch_losses, epoch_seconds, accuracies = [], [], [], []
  for epoch in range(epochs):
    order = rng.permutation(len(x_tr))
    start = time.perf_counter()
    epoch_loss = []
    for i in range(steps_per_epoch):
      idx = order[i * batch_size : (i + 1) * batch_size]
      params, opt_state, loss = step(params, opt_state, x_tr[idx], y_tr[idx])
      epoch_loss.append(loss)
      if max_steps is not None and len(losses) + len(epoch_loss) >= max_steps:
        break
    epoch_loss = [float(v) for v in jax.block_until_ready(epoch_loss)]
    epoch_seconds.append(time.perf_counter() - start)
    losses += epoch_loss
    epoch_losses.append(float(np.mean(epoch_loss)))
    accuracies.append(float(accuracy(params, x_te, y_te)))
    if verbose:
      print(
        f"{conv:>9} epoch {epoch + 1:3d}  loss {epoch_losses[-1]:.5f}  "
        f"test accuracy {accuracies[-1]:.4f}  {epoch_seconds[-1]:.2f} s",
        flush=True,
      )
    if max_steps is not None and len(losses) >= max_steps:
      break
  return dict(
    conv=conv,
    losses=losses,
    epoch_losses=epoch_losses,
    epoch_seconds=epoch_seconds,
    accuracies=accuracies,
    test_accuracy=accuracies[-1],
  )


def _deviation(losses: list[float], ref: list[float]) -> float:
  losses, ref = np.asarray(losses), np.asarray(ref)
  return float(np.max(np.abs(losses - ref) / np.abs(ref)))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--conv", nargs="+", default=["lax"], choices=CONVS)
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--noise", action="store_true", help="also train lax from a start one ulp away (yardstick)"
  )
  parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
  args = parser.parse_args(argv)

  kw = dict(batch_size=args.batch_size, seed=args.seed, verbose=not args.quiet)
  results = [train(c, args.epochs, **kw) for c in args.conv]
  if args.noise:
    results.append(dict(train("lax", args.epochs, perturb=True, **kw), conv="lax+1ulp"))
  print(f"\n{'conv':>9}  {'test acc':>8}  {'1st epoch s':>11}  {'s/epoch (median of rest)':>24}")
  for r in results:
    rest = r["epoch_seconds"][1:] or r["epoch_seconds"]
    print(
      f"{r['conv']:>9}  {r['test_accuracy']:8.4f}  {r['epoch_seconds'][0]:11.2f}  "
      f"{np.median(rest):24.3f}"
    )
  if len(results) > 1:
    ref = results[0]
    print(f"\nlargest relative deviation of the loss curves from {ref['conv']}'s:")
    print(f"{'conv':>9}  {'first 50 steps':>14}  {'all steps':>10}  {'epoch means':>11}")
    for r in results[1:]:
      print(
        f"{r['conv']:>9}  {_deviation(r['losses'][:50], ref['losses'][:50]):14.2e}  "
        f"{_deviation(r['losses'], ref['losses']):10.2e}  "
        f"{_deviation(r['epoch_losses'], ref['epoch_losses']):11.2e}"
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
