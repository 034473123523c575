"""The benchmark shape table, `jaxconv bench` end to end on a tiny layer, the seed demo and the
compile-time and memory scripts."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _bench, _demo
from jaxconv._cli import main
from jaxconv._shapes import SHAPES, Shape, by_name, select


def test_table_is_well_formed():
  assert len({s.name for s in SHAPES}) == len(SHAPES)
  for s in SHAPES:
    lay_in, lay_k, lay_out = s.layout
    assert len(s.lhs) == len(lay_in) == len(s.rhs) == len(lay_k) == len(lay_out), s.name
    assert len(s.strides) == len(s.lhs) - 2, s.name
    assert s.dtype in ("float32", "bfloat16") and s.dtype in s.tags, s.name
    assert s.lhs[lay_in.index("C")] == s.groups * s.rhs[lay_k.index("I")], s.name
    assert s.describe() and s.note, s.name
    json.dumps(s.as_dict())


def test_table_covers_the_networks():
  tags = Counter(t for s in SHAPES for t in s.tags)
  assert tags["vgg"] == 13
  assert tags["mobilenet"] == 4 and tags["convnext"] == 3 and tags["efficientnet"] == 2
  assert all(s.groups == s.lhs[-1] for s in select(["depthwise"]))
  assert tags["3d"] == 4 and all(s.layout[0] == "NDHWC" for s in select(["3d"]))
  assert {s.name for s in select(["resnet"], dtype="float32")} >= {
    "resnet50-56x64",
    "resnet50-7x512",
    "resnet50-56x128-s2",
    "resnet50-14x512-s2",
  }
  assert tags["1d"] == 2 and tags["5x5"] == 1 and tags["bfloat16"] >= 1
  seed = by_name("seed")
  assert (seed.lhs, seed.rhs, seed.padding) == ((8, 150, 150, 3), (3, 3, 3, 16), "VALID")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_every_entry_is_accepted_by_plan(shape: Shape):
  structs = [jax.ShapeDtypeStruct(a, shape.dtype) for a in (shape.lhs, shape.rhs)]
  p = jaxconv.plan(*structs, **shape.kwargs())
  assert p.flops > 0 and math.prod(p.out_shape) > 0
  assert _bench.plan_key(shape, "im2col") == ("im2col", None)


def test_selection():
  default = select()
  assert default and all("tiny" not in s.tags for s in default)
  quick = select(quick=True)
  assert 0 < len(quick) < len(default) and all("quick" in s.tags for s in quick)
  # The quick subset stays small: a few GFLOP in all.
  assert sum(jaxconv.plan(*s.arrays(), **s.kwargs()).flops for s in quick) < 30e9
  assert [s.name for s in select(["tiny", "seed"])] == ["seed", "tiny"]
  assert all(s.dtype == "bfloat16" for s in select(dtype="bfloat16"))
  with pytest.raises(KeyError, match="unknown shape"):
    select(["no-such-layer"])


def test_reference_matches_lax_in_float64_for_any_layout():
  for s in (
    Shape(
      "nchw", (2, 6, 9, 8), (6, 2, 3, 3), (1, 2), ((1, 0), (2, 1)), 3, ("NCHW", "OIHW", "NHWC")
    ),
    Shape("ncw", (2, 6, 9), (4, 3, 3), (2,), "SAME", 2, ("NCW", "OIW", "NCW")),
    by_name("tiny"),
  ):
    x, k = s.arrays()
    with jax.enable_x64(True):
      want = lax.conv_general_dilated(
        x.astype(np.float64), k.astype(np.float64), **s.kwargs(), precision="highest"
      )
    got = _bench.reference(s, x, k)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-12, atol=1e-12)


def test_reference_of_a_training_step_matches_lax_gradients_in_float64():
  s = Shape("ncw", (2, 6, 9), (4, 3, 3), (2,), "SAME", 2, ("NCW", "OIW", "NCW"))
  x, k = s.arrays()
  with jax.enable_x64(True):
    conv = lambda a, b: lax.conv_general_dilated(a, b, **s.kwargs(), precision="highest")
    y, pullback = jax.vjp(conv, x.astype(np.float64), k.astype(np.float64))
    dy = np.random.default_rng(0).standard_normal(y.shape)
    want = (y, *pullback(dy))
  got = _bench.reference(s, x, k, dy.astype(np.float32))
  for a, b in zip(got, want, strict=True):
    assert a.dtype == np.float64
    np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6, atol=1e-6)


def test_cli_bench_train(tmp_path, capsys):
  out = tmp_path / "train"
  args = _bench_args(out, "--no-figures", "--no-best-lax", "--train")
  args[args.index("auto,im2col,winograd,winograd2")] = "auto,im2col"
  assert main(args) == 0
  assert "training steps" in capsys.readouterr().out
  record = json.loads((out / "bench.json").read_text())
  assert record["settings"]["train"] is True
  (layer,) = record["shapes"]
  forward = jaxconv.plan(
    *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in by_name("tiny-wide").arrays()),
    **by_name("tiny-wide").kwargs(),
  ).flops
  assert layer["flops"] == 3 * forward
  res = layer["results"]
  assert res["lax"]["ran"] == "lax/lax/lax"
  assert res["im2col"]["ran"].startswith("im2col/") and res["im2col"]["ran"].count("/") == 2
  for name, r in res.items():
    assert r["ms"] > 0 and r["error"] < 1e-5, name


def _bench_args(out, *extra):
  return [
    "bench",
    "--shapes",
    "tiny-wide",
    "--rounds",
    "1",
    "--min-round-s",
    "0.001",
    "--gemm-n",
    "128",
    "--copy-mib",
    "2",
    "--no-progress",
    "--algorithms",
    "auto,im2col,winograd,winograd2",
    "--out",
    str(out),
    *extra,
  ]


def test_cli_bench_end_to_end(tmp_path, capsys):
  first = tmp_path / "first"
  assert main(_bench_args(first)) == 0
  out = capsys.readouterr()
  text = out.out
  assert "tiny-wide" in text and "lax ms" in text and "float32 GEMM" in text
  # Each layer's line as it finished, this process's alone (not the other YNNPACK setting's lax).
  lines = [line for line in out.err.splitlines() if line.startswith("tiny-wide:")]
  assert len(lines) == 1 and "lax " in lines[0] and "x (" in lines[0], out.err
  for name in ("bench.json", "bench.md", "speedup.png", "throughput.png"):
    assert (first / name).stat().st_size > 0, name
  record = json.loads((first / "bench.json").read_text())
  assert record["command"].startswith("jaxconv bench --shapes tiny-wide")
  machine = record["machine"]
  assert machine["jax"] == jax.__version__ and machine["cpu_cores"] >= 1
  assert record["rates"]["gemm_flops"] > 0 and record["rates"]["bandwidth_bytes_s"] > 0
  (layer,) = record["shapes"]
  res = layer["results"]
  assert set(res) == {"lax", "auto", "im2col", "winograd", "winograd2"}
  assert res["lax"]["speedup"] == 1.0
  assert record["rates"]["gemm_flops_end"] > 0 and "after the layers" in text
  for name, r in res.items():
    assert r["ms"] > 0 and r["gflops"] > 0 and r["error"] < 1e-5, name
    # One round: the speedup is that round's ratio, and both quartiles are it too.
    (lax_round,), (own_round,) = res["lax"]["rounds_ms"], r["rounds_ms"]
    assert r["ms"] == pytest.approx(own_round), name
    assert r["speedup"] == pytest.approx(lax_round / own_round), name
    assert r["speedup_quartiles"] == pytest.approx([r["speedup"]] * 2), name
  assert "auto x IQR" in text
  # auto ran whatever it picked: timed once, reported under both names.
  picked = res["auto"]["algorithm"]
  assert res["auto"]["same_as"] in ("lax", "im2col", "winograd", "winograd2"), picked
  assert layer["auto"]["algorithm"] == picked
  # Best lax: lax timed again in a child process with the other YNNPACK setting.
  assert machine["ynn_fusions"] == ("on" if _bench.ynn_fusions_on() else "off")
  assert record["best_lax"]["other_ynn_fusions"] != machine["ynn_fusions"]
  assert layer["lax_other_ms"] > 0
  assert layer["best_lax_ms"] == min(layer["lax_other_ms"], res["lax"]["ms"])
  for name, r in res.items():
    assert r["speedup_best"] == pytest.approx(layer["best_lax_ms"] / r["ms"]), name
  assert "x best" in text and (first / "speedup_best_lax.png").stat().st_size > 0

  second = tmp_path / "second"
  assert main([*_bench_args(second, "--no-figures"), "--compare", str(first / "bench.json")]) == 0
  text = capsys.readouterr().out
  assert "old ms" in text and "tiny-wide" in text
  assert not (second / "speedup.png").exists()

  # Two files: compare without running.
  assert main(["bench", "--compare", str(first / "bench.json"), str(second / "bench.json")]) == 0
  assert "change" in capsys.readouterr().out


def test_cli_bench_rejects_bad_selections(capsys):
  assert main(["bench", "--shapes", "no-such-layer"]) == 2
  assert main(["bench", "--shapes", "tiny", "--algorithms", "fft"]) == 2
  assert "unknown" in capsys.readouterr().err


def test_demo_numpy_im2col_equals_lax():
  rng = np.random.default_rng(0)
  x = rng.random((2, 11, 9, 3))
  w = rng.standard_normal((3, 3, 3, 5))
  for stride in (1, 2):
    want = lax.conv_general_dilated(
      x, w, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(_demo.im2col_numpy(x, w, stride), want, rtol=1e-12, atol=1e-12)


def test_demo_winograd_patch_equals_correlation():
  signal = pytest.importorskip("scipy.signal")
  rng = np.random.default_rng(1)
  d, g = rng.standard_normal((6, 6)), _demo.EDGE.astype(np.float64)
  np.testing.assert_allclose(
    _demo.winograd_patch(d, g), signal.correlate(d, g, mode="valid"), atol=1e-12
  )


def test_demo_runs(tmp_path, capsys):
  assert (
    main(["demo", "--size", "20", "--batch", "2", "--rounds", "1", "--out", str(tmp_path)]) == 0
  )
  text = capsys.readouterr().out
  assert "Winograd F(4, 3)" in text and "numpy im2col" in text
  assert (tmp_path / "demo.png").stat().st_size > 0


def _bench_script(name: str):
  """Imports bench/<name>.py (a script, not part of the package)."""
  path = Path(__file__).parent.parent / "bench" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compile_time_script(tmp_path):
  out = tmp_path / "compile.md"
  args = ["--shapes", "tiny", "--algorithms", "lax,im2col", "--repeats", "1"]
  assert _bench_script("compile_time").main([*args, "--out", str(out)]) == 0
  text = out.read_text()
  assert "| tiny |" in text and "mean / lax's" in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_script(tmp_path):
  out = tmp_path / "memory.md"
  args = ["--batch", "2", "--size", "16", "--channels", "4", "--algorithms", "im2col"]
  assert _bench_script("memory").main([*args, "--out", str(out)]) == 0
  rows = [line for line in out.read_text().splitlines() if line.startswith(("| lax", "| im2col"))]
  assert len(rows) == 2 and all(" GB |" in row for row in rows)


def test_layer_costs_skips_one_class():
  skipping = _bench_script("layer_costs")._skipping
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))

  def run(conv, w, strides=(1, 1)):
    return conv(x, w, strides, "SAME", dimension_numbers=dn)

  skipped = skipping(lax.conv_general_dilated, 4)
  np.testing.assert_array_equal(run(skipped, w), x)
  # the skipped kernel still has a gradient (zero), so the step updates every parameter
  np.testing.assert_array_equal(jax.grad(lambda w: run(skipped, w).sum())(w), np.zeros(w.shape))
  # other widths, other strides and no class at all run the convolution
  for conv, strides in [(skipped, (2, 2)), (skipping(lax.conv_general_dilated, 8), (1, 1))]:
    np.testing.assert_array_equal(run(conv, w, strides), run(lax.conv_general_dilated, w, strides))
  np.testing.assert_array_equal(
    run(skipping(lax.conv_general_dilated, None), w), run(lax.conv_general_dilated, w)
  )


def test_winograd_stages_script(capsys):
  script = _bench_script("winograd_stages")
  args = ["--shapes", "tiny-wide", "--tiles", "2,4", "--rounds", "1", "--min-round-s", "0.001"]
  assert script.main(args) == 0
  rows = [line.split() for line in capsys.readouterr().out.splitlines() if "tiny-wide" in line]
  assert [r[1] for r in rows] == ["2", "4"]
  assert all(float(r[2]) > 0 and float(r[3]) > 0 and r[4].endswith("x") for r in rows)
  # gather and view sum GB/s: on a tiny layer under load they can round to 0.0
  assert all(len(r) == 16 and float(r[14]) >= 0 and float(r[15]) >= 0 for r in rows)
  with pytest.raises(SystemExit, match="stride-1"):
    script.main(["--shapes", "resnet50-56x128-s2", "--rounds", "1"])


def test_scheduler_script(capsys):
  script = _bench_script("scheduler")
  assert script.main(["--shapes", "tiny", "--rounds", "1", "--min-round-s", "0.001"]) == 0
  lines = capsys.readouterr().out.splitlines()
  timed = next(line for line in lines if line.startswith("tiny ("))
  assert all(f"{name} " in timed for name in ("lax", "lax sequential", "auto", "auto sequential"))
  ratios = lines[lines.index(timed) + 1]
  assert "auto x lax" in ratios and "sequential x default: auto" in ratios


def test_gpu_script_runs_its_steps(tmp_path):
  # bench/gpu.sh takes the GPU measurements; on tiny layers its tune, forward and train steps run
  # anywhere, each writing its log and `jaxconv bench`'s results.
  script = Path(__file__).parent.parent / "bench" / "gpu.sh"
  env = {
    **os.environ,
    "PYTHON": sys.executable,
    "LAYERS": "tiny-wide",
    "EXTRA": "tiny",
    "GEMM_N": "64",
    "COPY_MIB": "1",
  }
  run = subprocess.run(
    ["bash", str(script), str(tmp_path), "tune", "forward", "train"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert run.stdout.count("exit 0") == 3, run.stdout
  assert "tiny-wide" in (tmp_path / "tune.txt").read_text()
  for step in ("forward", "train"):
    record = json.loads((tmp_path / step / "bench.json").read_text())
    names = {s["name"] for s in record["shapes"]}
    assert names == ({"tiny-wide"} if step == "train" else {"tiny", "tiny-wide"})
    assert record["settings"]["train"] == (step == "train")
  bad = subprocess.run(["bash", str(script), str(tmp_path), "nonsense"], capture_output=True)
  assert bad.returncode == 2


def test_step_bounds_splits_a_profiled_step(capsys):
  script = _bench_script("step_bounds")
  a = jnp.ones((8, 128, 128))
  compiled = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a).T + 1).lower(a).compile()
  kinds = script.instruction_kinds(compiled.as_text())
  assert "product" in kinds.values() and "rest" in kinds.values()
  spent = script.profile(compiled, (a,))
  assert spent["product"] > 0 and spent["rest covered"] >= spent["rest"] - 1e-6 >= -1e-6
  assert spent["product"] + spent["rest"] + spent["none"] == pytest.approx(spent["step"])
  assert script.main(["--shapes", "tiny", "--rounds", "1", "--min-round-s", "0.001"]) == 0
  line = capsys.readouterr().out.splitlines()[-1]
  shares = r"\d+% \+ \d+% \+ -?\d+%"
  assert re.match(
    rf"tiny, \S+/\S+/\S+: [\d.]+ \| [\d.]+, .* \| [\d.]+, {shares} \| [\d.]+, [\d.]+$", line
  )
