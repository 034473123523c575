#!/usr/bin/env bash
# The images' entry point, also runnable outside Docker from a checkout with jaxconv installed.
#
# With arguments, runs them as a command (from the repository root): `docker run IMAGE pytest`.
# Without, runs the benchmarks and writes their results under $OUT (default /out):
#   $OUT/bench.json, bench.md, speedup.png, throughput.png   `jaxconv bench`
#   $OUT/bench-pytest.json                                   `pytest bench --benchmark-only`
# JAXCONV_QUICK=1 runs only the quick subset, with fewer rounds and lax, auto, im2col and winograd
# only in the pytest suite: JAXCONV_QUICK=1 OUT=/tmp/x docker/entrypoint.sh
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if [[ $# -gt 0 ]]; then
  exec "$@"
fi

out="${OUT:-/out}"
mkdir -p "$out"
bench=(--out "$out" --no-progress)
suite=(--benchmark-only "--benchmark-json=$out/bench-pytest.json" -p no:cacheprovider)
if [[ "${JAXCONV_QUICK:-0}" != 0 ]]; then
  bench+=(--quick --rounds 3)
  suite+=(--quick --algorithms auto,im2col,winograd --benchmark-max-time=0.2)
fi

jaxconv bench "${bench[@]}"
pytest bench "${suite[@]}"
echo "results in $out"
