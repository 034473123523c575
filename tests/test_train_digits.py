"""The digits training example, shortened: every convolution follows lax's loss trajectory."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("optax")
pytest.importorskip("sklearn")

PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


@pytest.fixture(scope="module")
def example():
  spec = importlib.util.spec_from_file_location("train_digits", PATH)
  module = importlib.util.module_from_spec(spec)
  # Flax's module dataclasses look their defining module up in sys.modules.
  sys.modules[spec.name] = module
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    del sys.modules[spec.name]


STEPS = 12


@pytest.fixture(scope="module")
def lax_losses(example):
  return np.asarray(example.train("lax", 1, max_steps=STEPS)["losses"])


# Largest relative deviation from lax's step losses allowed over the first dozen steps. im2col's
# forward pass gives exactly lax's zeros, but its gradients run through `auto`, which may pick
# Winograd for them (measured: 2.7e-5). Winograd F(4, 3) (which "winograd" and "auto" pick for some
# layers)
# leaves float32 residues (up to 6e-7 on the first layer) where a window covers only blank pixels
# and lax gives an exact 0. ReLU passes those residues that are positive, and Adam's first steps,
# which scale each gradient component by its own magnitude, turn them into visibly different
# updates. Measured after 12 steps: winograd 9e-4, auto 5e-4 to 6e-4.
RTOL = {"im2col": 2e-4, "winograd": 5e-3, "auto": 5e-3}


@pytest.mark.parametrize("conv", list(RTOL))
def test_loss_trajectory_follows_lax(example, lax_losses, conv):
  losses = np.asarray(example.train(conv, 1, max_steps=STEPS)["losses"])
  assert losses.shape == lax_losses.shape == (STEPS,)
  assert np.all(np.isfinite(losses))
  np.testing.assert_allclose(losses, lax_losses, rtol=RTOL[conv])


def test_command_line(example, capsys):
  assert example.main(["--conv", "im2col", "--epochs", "1", "--quiet"]) == 0
  out = capsys.readouterr().out
  assert "im2col" in out and "test acc" in out
