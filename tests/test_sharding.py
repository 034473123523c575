"""Runs `tests/_sharding_cases.py` in a fresh process with 8 virtual CPU devices.

The host platform's device count is read once, when JAX initialises, and this process has already
initialised it; hence the subprocess.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sharding_cases_on_eight_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
    [env.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/_sharding_cases.py"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
