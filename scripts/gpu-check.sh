#!/usr/bin/env bash
# The GPU check, in two halves, because the GPU machine has no Rust toolchain:
#
#   scripts/gpu-check.sh build   # here: builds the GPU test and benchmark binaries into gpu-bin/
#   scripts/gpu-check.sh run     # on the GPU machine (with gpu-bin/ carried): runs them all
#
# `run` writes to $OUT (or ./gpu-out): results.md (card, date, each test's pass/fail, the
# kernels' bandwidth table) and the raw logs. It finishes in a few minutes on an H100/H200.
# docs/gpu-results.md records what it printed, with the card and date.
set -euo pipefail
cd "$(dirname "$0")/.."

build() {
    rm -rf gpu-bin && mkdir -p gpu-bin
    local json=gpu-bin/cargo-messages.json
    cargo test --release --locked --no-run --message-format=json \
        -p polylm-suite --test cuda_kernels --test cuda_engine --test cuda_optim -p polylm-kernels --test nvrtc_gate >"$json"
    cargo bench --locked --no-run --message-format=json --bench cuda_kernels --bench gpu_model >>"$json"
    python3 - "$json" <<'PY'
import json, shutil, subprocess, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    if msg.get("reason") != "compiler-artifact" or not exe:
        continue
    name = msg["target"]["name"]
    if msg["target"]["kind"] == ["bench"]:
        name += "_bench"
    if name in seen:
        continue
    seen.add(name)
    dst = f"gpu-bin/{name}"
    shutil.copy(exe, dst)
    subprocess.run(["strip", "--strip-debug", dst], check=False)
    print("built", dst)
PY
    rm -f "$json"
    du -sh gpu-bin
}

# Runs benchmark binary $2, appending its Markdown table ($3.md) to results.md.
run_bench() {
    local title=$1 bin=$2 name=$3
    echo "== $title"
    echo >>"$out/results.md"
    if POLYLM_BENCH_OUT="$out/$name.md" timeout 400 "gpu-bin/$bin" >"$out/$name.log" 2>&1; then
        cat "$out/$name.md" >>"$out/results.md"
    else
        echo "$title FAILED: $(tail -3 "$out/$name.log")" >>"$out/results.md"
        return 1
    fi
}

run() {
    out="${OUT:-gpu-out}"
    mkdir -p "$out"
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export POLYLM_KERNEL_CACHE=/tmp/polylm-kernel-cache
    export POLYLM_REQUIRE_NVRTC=1
    local card
    card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
    {
        echo "# GPU check"
        echo
        echo "- Card: $card"
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
        echo
    } >"$out/results.md"
    local status=0
    for test in nvrtc_gate cuda_kernels cuda_engine cuda_optim; do
        echo "== $test"
        if timeout 300 "gpu-bin/$test" --test-threads=4 --nocapture >"$out/$test.log" 2>&1; then
            echo "- \`$test\`: passed" >>"$out/results.md"
        else
            echo "- \`$test\`: FAILED (see $test.log)" >>"$out/results.md"
            status=1
        fi
        grep -E "^test .* \.\.\. |^test result" "$out/$test.log" | sed 's/^/    /' >>"$out/results.md" || true
        grep -E "panicked|assert" "$out/$test.log" | head -20 | sed 's/^/    /' >>"$out/results.md" || true
    done
    run_bench "benchmarks" cuda_kernels_bench bench || status=1
    run_bench "model benchmark" gpu_model_bench model || status=1
    cat "$out/results.md"
    return $status
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
