#!/usr/bin/env bash
# `serve`'s GPU checks on a machine with a GPU and no Rust toolchain, from binaries
# built elsewhere (BENCHMARKS.md "serve on a GPU"):
#
#   gpu_checks.sh BIN_DIR
#
# BIN_DIR holds serve_bench (`cargo build --release -p cardet-serve --example
# serve_bench`), gpu_test (`cargo test --release -p cardet-serve --test gpu
# --no-run`'s binary) and home/fixtures/serve/yolov8n-dynamic.onnx (the export
# the tests cache under $CARDET_HOME). ONNX Runtime's GPU build comes from
# ORT_DYLIB_PATH, else from $CARDET_HOME/gpu/env.sh (`cargo xtask setup --gpu`); on a
# machine that cannot reach PyPI, unpack what `ort_gpu_pack.py WHEEL SM OUT.tar.xz`
# made from the onnxruntime-gpu wheel and point ORT_DYLIB_PATH at its libonnxruntime.so.*;
# CUDA's libraries from LD_LIBRARY_PATH, else from the NVIDIA wheels of the
# machine's python3. Each step's output is printed; $OUT, when set, gets
# checks.log, nvidia-smi's utilisation once a second in smi.log and /proc/stat's
# CPU line once a second in cpu.log.
set -uo pipefail
BIN="$(realpath "${1:?usage: gpu_checks.sh BIN_DIR}")"
LOGS="${OUT:-/tmp/serve-gpu-checks}"
mkdir -p "$LOGS"
exec > >(tee "$LOGS/checks.log") 2>&1
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  # shellcheck source=/dev/null
  . "${CARDET_HOME:-$HOME/.cache/cardet}/gpu/env.sh" || exit 1
fi
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
  site=$(python3 -c "import site; print(site.getsitepackages()[0])")
  LD_LIBRARY_PATH=$(find "$site/nvidia" -name "lib*.so*" -printf '%h\n' | sort -u | paste -sd:)
  export LD_LIBRARY_PATH
fi
export CARDET_HOME="$BIN/home" RUST_BACKTRACE=1
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 1 >"$LOGS/smi.log" 2>&1 &
smi=$!
# The host's CPU counters once a second (the 8th number after "cpu" is steal time): on
# the H100, two processes ran slow with the GPU mostly idle, which a contended vCPU
# under the kernel-launching thread would explain.
while sleep 1; do echo "$(date -u +%T) $(head -1 /proc/stat)"; done >"$LOGS/cpu.log" 2>&1 &
cpu=$!
trap 'kill $smi $cpu 2>/dev/null' EXIT
date -u
echo "== serve's GPU tests"
timeout 120 "$BIN/gpu_test" --include-ignored --nocapture --test-threads 1
echo "== one CUDA run of 8 images: pageable, page-locked, on the device"
timeout 60 "$BIN/serve_bench" transfer --gpu --max-batch 8
run="timeout 100 $BIN/serve_bench batching --gpu --threads 4 --slices 6 --secs 2 --max-batch 8"
for delay in 1000 0; do
  echo "== 8 clients, system shared memory, max_queue_delay $delay us"
  $run --shared-memory --clients 8 --delay-us $delay
done
echo "== 32 clients, system shared memory, max_queue_delay 0"
$run --shared-memory --clients 32
echo "== 8 clients, binary REST, max_queue_delay 1000 us"
$run --clients 8 --delay-us 1000
# On the H100 binary REST reached 1.66-1.70x with the clients on one thread, which
# moved 4.9 MB bodies for both sides; the same with the clients on 4 threads.
echo "== 8 clients, binary REST, max_queue_delay 1000 us, clients on 4 threads"
$run --clients 8 --delay-us 1000 --client-threads 4
echo "== one session's batch sizes, switched"
timeout 60 "$BIN/serve_bench" shapes --gpu --threads 4 --max-batch 8
date -u
