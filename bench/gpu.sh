#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md in one go, from a source checkout (nothing installed):
#
#   bash bench/gpu.sh [DIR] [STEP ...]     # default DIR out/gpu; default steps: all, in this order
#
# Steps (each under its own time limit, each writing DIR/STEP.txt; a step that fails or runs out
# of time does not stop the next):
#   machine    the GPU, driver, CUDA and package versions
#   tune       `jaxconv tune` on ResNet-50's 3x3 layers (forward and both gradients), the quick
#              subset and ResNet-50's 1x1 layers (forward): every candidate timed against lax
#              (cuDNN), the tuning cache kept in DIR/cache so that later steps run the tuned `auto`
#   forward    `jaxconv bench` (forward) on the same layers, every algorithm -> DIR/forward/
#   train      `jaxconv bench --train` on ResNet-50's 3x3 layers -> DIR/train/
#   models     bench/train_model.py: whole-model training steps, lax, jaxconv and (where PyTorch
#              is importable) PyTorch on the same GPU
#   pytest     the pytest-benchmark suite on the quick subset -> DIR/bench-pytest.json
#   tests      the algorithms' differential tests, run on the GPU
#   more       `jaxconv bench` on the rest of the shape table -> DIR/more/
#
# JAXCONV_GPU_LIMIT_SCALE scales every step's time limit (default 1). LAYERS (ResNet-50's seven 3x3
# layers), EXTRA (the quick subset and ResNet-50's 1x1 layers) and MORE (the rest of the table)
# override the layers: shape names or tags, as `jaxconv bench --shapes` takes them. GEMM_N and
# COPY_MIB size the rate probes.
set -uo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

dir="${1:-out/gpu}"
shift $(($# > 0 ? 1 : 0))
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(machine tune forward train models pytest tests more)
mkdir -p "$dir"
dir="$(readlink -f "$dir")"
py="${PYTHON:-python3}"
scale="${JAXCONV_GPU_LIMIT_SCALE:-1}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export JAXCONV_CACHE_DIR="$dir/cache"

resnet="resnet50-56x64,resnet50-28x128,resnet50-14x256,resnet50-7x512"
resnet="${LAYERS:-$resnet,resnet50-56x128-s2,resnet50-28x256-s2,resnet50-14x512-s2}"
extra="${EXTRA:-quick,pointwise}"
more="${MORE:-vgg,mobilenet,convnext,efficientnet,3d,5x5,1d,bfloat16}"
algorithms="auto,im2col,direct,winograd2,winograd4,winograd6,wgrad,subpixel,col2im"
bench=("$py" -m jaxconv._cli bench --no-progress --rounds 7 --min-round-s 0.02)
probes=(--gemm-n "${GEMM_N:-8192}" --copy-mib "${COPY_MIB:-1024}")  # a GPU's rates need big ones

run_step() {  # name, limit in seconds, command...
  local name=$1 limit
  limit=$(awk -v a="$2" -v s="$scale" 'BEGIN { print int(a * s) }')
  shift 2
  echo "== $name: limit ${limit} s, started $(date +%T)"
  timeout "$limit" "$@" >"$dir/$name.txt" 2>&1
  local rc=$?
  echo "   exit $rc at $(date +%T)"
}

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvidia-smi | sed -n 3p
  "$py" - <<'EOF'
import importlib.metadata as md, platform, jax
print("python", platform.python_version(), "|", platform.platform())
for d in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "nvidia-cudnn-cu13",
          "nvidia-cudnn-cu12", "nvidia-cublas", "torch", "flax", "optax", "pytest-benchmark"):
  try:
    print(d, md.version(d))
  except md.PackageNotFoundError:
    pass
print("devices", jax.devices(), "backend", jax.default_backend())
EOF
}

for step in "${steps[@]}"; do
  case "$step" in
    machine) machine >"$dir/machine.txt" 2>&1 ;;
    tune)
      run_step tune 300 bash -c "'$py' -m jaxconv._cli tune --shapes '$resnet' --train \
        && '$py' -m jaxconv._cli tune --shapes '$extra'" ;;
    forward)
      run_step forward 240 "${bench[@]}" --shapes "$resnet,$extra" --algorithms "$algorithms" \
        "${probes[@]}" --out "$dir/forward" ;;
    train)
      run_step train 240 "${bench[@]}" --train --shapes "$resnet" \
        --algorithms auto,im2col,winograd4 "${probes[@]}" --out "$dir/train" ;;
    models) run_step models 240 "$py" bench/train_model.py --tune --rounds 15 ;;
    pytest)
      run_step pytest 240 "$py" -m pytest bench --benchmark-only --quick -p no:cacheprovider \
        --algorithms auto,im2col,winograd4 --benchmark-max-time=0.2 \
        "--benchmark-json=$dir/bench-pytest.json" ;;
    tests)
      run_step tests 300 "$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" \
        -W default::DeprecationWarning \
        tests/test_im2col.py tests/test_winograd.py tests/test_direct.py tests/test_autodiff.py \
        tests/test_wgrad.py tests/test_subpixel.py tests/test_col2im.py tests/test_regressions.py ;;
    more)
      run_step more 300 "${bench[@]}" --shapes "$more" \
        --algorithms "$algorithms" "${probes[@]}" --out "$dir/more" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
echo "results in $dir"
