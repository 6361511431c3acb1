#!/usr/bin/env bash
# `cargo xtask bench serve --gpu`: `serve_bench batching --gpu`, dynamic batching on
# against off on CUDA device 0, with the GPU build of ONNX Runtime that
# `cargo xtask setup --gpu` installs (its env.sh sets ORT_DYLIB_PATH and
# LD_LIBRARY_PATH). Arguments go to serve_bench.
set -euo pipefail
env_file="${CARDET_HOME:-$HOME/.cache/cardet}/gpu/env.sh"
if [ ! -f "$env_file" ]; then
  echo "gpu_batching.sh: no $env_file: run \`cargo xtask setup --gpu\` first" >&2
  exit 1
fi
# shellcheck source=/dev/null
. "$env_file"
exec cargo run --release -q -p cardet-serve --example serve_bench -- batching --gpu "$@"
