#!/usr/bin/env bash
# The GPU benchmark on a lent device machine (it has torch and transformers, not DeepSpeed).
#
#   scripts/gpu_bench.sh collect [DIR]       here: the wheels DeepSpeed needs there, into DIR
#   scripts/gpu_bench.sh run [BENCH ARGS]    there: install them, run `bench gpu` into $OUT
#
# DIR defaults to .whl (ignored by .gitignore, so it travels only when the device tool's `carry`
# names it). DeepSpeed is an sdist only: it is built here into a pure-Python wheel with its ops
# left to JIT-build on the device (DS_BUILD_OPS=0; needs a Python with torch, $PYTHON). The
# other wheels are downloaded for the device's CPython ($PY_VERSION, 3.12) and x86-64. The set is
# what DeepSpeed 0.19.8's Requires-Dist names that the device image lacks (hjson, pydantic and its
# pydantic-core, annotated-types, typing-inspection, typing-extensions); einops, msgpack, ninja,
# numpy, packaging, psutil, py-cpuinfo and tqdm are in the image. Versions are requirements.lock's.
#
# The device call, from the repository root (the tree travels; PYTHONPATH=. finds the package):
#   run(command="bash scripts/gpu_bench.sh run", carry=[".whl"], timeout_s=560)
# It writes $OUT/bench_gpu.json and $OUT/bench_gpu.log and ends with the summary table.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
SITE=${SITE:-/tmp/site}
DEPS=(hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions)

pin() {  # NAME==VERSION from requirements.lock
  local line
  line=$(grep -i -E "^$1==" requirements.lock) || { echo "no pin for $1 in requirements.lock" >&2; exit 1; }
  echo "$line"
}

collect() {
  local dir=${1:-.whl}
  mkdir -p "$dir"
  case "$(realpath "$dir")/" in
    "$PWD"/*) git check-ignore -q "$dir/probe.whl" || {
      echo "$dir is not ignored by git: it would travel (and show) as untracked files" >&2
      exit 1
    } ;;
  esac
  local deepspeed
  deepspeed=$(pin deepspeed)
  if ! ls "$dir"/deepspeed-"${deepspeed#*==}"-py3-none-any.whl >/dev/null 2>&1; then
    local build
    build=$(mktemp -d)
    "$PYTHON" -m pip download --no-deps --no-binary :all: -d "$build" "$deepspeed"
    DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$dir" "$build"/deepspeed-*.tar.gz
    rm -rf "$build"
  fi
  local pins=()
  for name in "${DEPS[@]}"; do pins+=("$(pin "$name")"); done
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" "${pins[@]}"
  ls -l "$dir"
  du -sh "$dir"
}

run_bench() {
  local dir=${WHEELS:-.whl} out=${OUT:-.}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$dir"/*.whl
  export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
  "$PYTHON" -m grokschedule.bench.gpu --out "$out/bench_gpu.json" "$@" 2>&1 | tee "$out/bench_gpu.log"
}

case "${1:-}" in
  collect) shift; collect "$@" ;;
  run) shift; run_bench "$@" ;;
  *) sed -n '2,6p' "$0" >&2; exit 2 ;;
esac
