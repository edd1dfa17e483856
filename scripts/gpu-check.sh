#!/usr/bin/env bash
# The GPU check, in two halves, because the GPU machine has no Rust toolchain:
#
#   scripts/gpu-check.sh build   # here: builds the GPU test and benchmark binaries into gpu-bin/
#   scripts/gpu-check.sh run     # on the GPU machine (with gpu-bin/ carried): runs them all
#   scripts/gpu-check.sh run tests / run bench   # the same in two parts (two device calls)
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
        -p polylm-suite --test cuda_kernels --test cuda_engine --test cuda_optim --test cuda_matmul_tc \
        --test cuda_flash_attention -p polylm-kernels --test nvrtc_gate -p polylm-trainer --test nccl >"$json"
    cargo bench --locked --no-run --message-format=json --bench cuda_kernels --bench gpu_model \
        --bench cuda_matmul --bench cuda_attention >>"$json"
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
    cargo build --release --locked -p polylm-trainer
    cp target/release/polylm gpu-bin/polylm && strip --strip-debug gpu-bin/polylm
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

# PyTorch's scaled_dot_product_attention in the attention benchmark's setting, for the same-run
# comparison issue 8 asks for; prints that it skipped when the machine has no PyTorch.
run_sdpa() {
    echo "== PyTorch SDPA"
    {
        echo
        echo "## PyTorch scaled_dot_product_attention (the attention benchmark's setting)"
        echo
    } >>"$out/results.md"
    if ! command -v python3 >/dev/null; then
        echo "skipped: no python3 on this machine" >>"$out/results.md"
    elif ! timeout 180 python3 scripts/bench_sdpa.py >>"$out/results.md" 2>"$out/sdpa.log"; then
        echo "PyTorch SDPA FAILED: $(tail -3 "$out/sdpa.log")" >>"$out/results.md"
    fi
}

# The `polylm` binary on the GPU: a short quickstart run (bf16, f32 master weights), the
# training-step benchmark of the small and PolyLM-1.7B presets with the data-parallel path's
# overhead over NCCL beside the plain step, and the NCCL all-reduce bandwidth (issue 9).
run_trainer() {
    echo "== polylm on the GPU"
    local run_dir=/tmp/gpu-quickstart ok=0
    rm -rf "$run_dir"
    {
        echo
        echo "## polylm train (quickstart config, 300 steps, --device cuda)"
        echo
    } >>"$out/results.md"
    if timeout 300 gpu-bin/polylm train --config configs/quickstart.toml --device cuda --steps 300 \
        --out "$run_dir" --set "tokenizer.path=\"$run_dir/tokenizer.json\"" --set "data.dir=\"$run_dir/data\"" \
        --set log.progress=false --set eval.every=100 --set checkpoint.every=100 >"$out/train.log" 2>&1; then
        echo '```' >>"$out/results.md"
        grep -E "^quickstart:|^step .*(loss|validation)|^done" "$out/train.log" >>"$out/results.md" || true
        echo '```' >>"$out/results.md"
        cp "$run_dir/metrics.jsonl" "$run_dir/loss.svg" "$run_dir/bpb.svg" "$out/" 2>/dev/null || true
    else
        echo "polylm train FAILED: $(tail -5 "$out/train.log")" >>"$out/results.md"
        ok=1
    fi
    {
        echo
        echo "## polylm bench"
        echo
    } >>"$out/results.md"
    # Each preset twice: on the default (measured) kernels, and on the fast ones still waiting
    # for a GPU run (tensor-core matmul and flash attention with their Hopper paths, streamed
    # layernorm, one-read cross-entropy): the MFU of issue 9 comes from the second.
    local fast="POLYLM_GPU_MATMUL=tc POLYLM_GPU_ATTENTION=flash POLYLM_GPU_MATMUL_HOPPER=1 POLYLM_GPU_FLASH_HOPPER=1"
    fast="$fast POLYLM_GPU_LAYERNORM=streamed POLYLM_GPU_CROSS_ENTROPY=cluster"
    # On the fast kernels also a step of 4 micro-batches (16 sequences, 32K tokens): the
    # optimiser's fixed cost (about 12 ms for 1.7B parameters) spread as training spreads it.
    for kernels in default fast; do
        local runs=("--preset small --batch 16 --seq 256 --ddp nccl"
            "--preset polylm-1.7b --batch 4 --seq 2048 --steps 3 --ddp nccl"
            "--preset polylm-1.7b --batch 4 --seq 2048 --recompute --steps 2 --profile")
        [ "$kernels" = fast ] && runs+=("--preset polylm-1.7b --batch 4 --accum 4 --seq 2048 --recompute --steps 2")
        for args in "${runs[@]}"; do
            local envs=""
            [ "$kernels" = fast ] && envs=$fast
            # shellcheck disable=SC2086
            if env $envs timeout 240 gpu-bin/polylm bench $args --device cuda >"$out/bench.log" 2>&1; then
                echo "- $kernels kernels, \`polylm bench $args\`: $(sed '/^profile (/,$d' "$out/bench.log" | tr '\n' ';')" >>"$out/results.md"
                if grep -q "^profile (" "$out/bench.log"; then
                    { echo; echo '```'; sed -n '/^profile (/,$p' "$out/bench.log"; echo '```'; } >>"$out/results.md"
                fi
            else
                echo "- $kernels kernels, \`polylm bench $args\`: FAILED $(tail -3 "$out/bench.log")" >>"$out/results.md"
                ok=1
            fi
        done
    done
    {
        echo
        echo "## polylm bench-allreduce --backend nccl (world size 1)"
        echo
    } >>"$out/results.md"
    if timeout 120 gpu-bin/polylm bench-allreduce --backend nccl --sizes-mib 1,16,64,256,1024 --iters 10 \
        >"$out/allreduce.log" 2>&1; then
        cat "$out/allreduce.log" >>"$out/results.md"
    else
        echo "bench-allreduce FAILED: $(tail -3 "$out/allreduce.log")" >>"$out/results.md"
        ok=1
    fi
    return $ok
}

# Runs test binary $2 as entry $1 with a limit of $3 seconds, the kernels chosen by $4 (simple:
# the defaults; tc: tensor-core matmul and flash attention; hopper: those with their Hopper
# paths, the streamed layernorm and the one-read cross-entropy) and the test arguments after.
run_test() {
    local label=$1 bin=$2 limit=$3 mode=$4
    shift 4
    local log=${label/:/-} mm=simple attn=simple hop=0 ln=cached ce=rows
    [ "$mode" != simple ] && mm=tc && attn=flash
    [ "$mode" = hopper ] && hop=1 && ln=streamed && ce=cluster
    echo "== $label"
    local ok=0
    if POLYLM_GPU_MATMUL=$mm POLYLM_GPU_ATTENTION=$attn POLYLM_GPU_MATMUL_HOPPER=$hop \
        POLYLM_GPU_FLASH_HOPPER=$hop POLYLM_GPU_LAYERNORM=$ln POLYLM_GPU_CROSS_ENTROPY=$ce \
        timeout "$limit" "gpu-bin/$bin" --test-threads=4 --nocapture "$@" >"$out/$log.log" 2>&1; then
        echo "- \`$label\`: passed" >>"$out/results.md"
    else
        local rc=$?
        local why="FAILED"
        [ $rc = 124 ] && why="TIMED OUT after ${limit} s"
        echo "- \`$label\`: $why (see $log.log)" >>"$out/results.md"
        ok=1
    fi
    grep -E "^test .* \.\.\. |^test result" "$out/$log.log" | sed 's/^/    /' >>"$out/results.md" || true
    grep -E "panicked|assert" "$out/$log.log" | head -20 | sed 's/^/    /' >>"$out/results.md" || true
    return $ok
}

# `run [tests|bench|all]`: the tests, the benchmarks (kernels, model, matmul, attention and the
# trainer), or both (default). Split them across two device calls when one would pass the
# 10-minute command limit.
run() {
    local what=${1:-all}
    out="${OUT:-gpu-out}"
    mkdir -p "$out"
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # NCCL: the machine has it only inside the Python wheel nvidia-nccl-cu13, as libnccl.so.2;
    # cudarc looks for libnccl.so, so link that name to it.
    local nccl_lib
    nccl_lib="$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)/lib/libnccl.so.2"
    if [ -f "$nccl_lib" ]; then
        mkdir -p /tmp/polylm-nccl && ln -sf "$nccl_lib" /tmp/polylm-nccl/libnccl.so
        export LD_LIBRARY_PATH="/tmp/polylm-nccl:$LD_LIBRARY_PATH"
    fi
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
        echo "- Part: $what"
        echo
    } >"$out/results.md"
    local status=0
    if [ "$what" = tests ] || [ "$what" = all ]; then
        # cuda_engine three times: with the simple kernels; with the tensor-core matmul and
        # flash attention (tc: POLYLM_GPU_MATMUL=tc, POLYLM_GPU_ATTENTION=flash); and with their
        # Hopper paths on top plus the streamed layernorm and one-read cross-entropy (hopper).
        # The Hopper tests of the matmul and attention binaries run on their own, with short
        # limits: a kernel that hangs on the hardware (an mbarrier never completing) then costs
        # two minutes, not the portable tests' results.
        run_test nvrtc_gate nvrtc_gate 200 simple || status=1
        run_test cuda_kernels cuda_kernels 240 simple || status=1
        run_test cuda_engine cuda_engine 180 simple || status=1
        run_test cuda_optim cuda_optim 120 simple || status=1
        run_test cuda_matmul_tc cuda_matmul_tc 240 simple --skip hopper || status=1
        run_test cuda_matmul_tc:hopper cuda_matmul_tc 120 simple hopper || status=1
        run_test cuda_flash_attention cuda_flash_attention 240 simple --skip hopper || status=1
        run_test cuda_flash_attention:hopper cuda_flash_attention 120 simple hopper || status=1
        run_test cuda_engine:tc cuda_engine 180 tc || status=1
        run_test cuda_engine:hopper cuda_engine 120 hopper || status=1
        run_test nccl nccl 60 simple || status=1
    fi
    if [ "$what" = bench ] || [ "$what" = all ]; then
        run_bench "benchmarks" cuda_kernels_bench bench || status=1
        run_bench "model benchmark" gpu_model_bench model || status=1
        run_bench "matmul vs cuBLAS" cuda_matmul_bench matmul || status=1
        run_bench "attention" cuda_attention_bench attention || status=1
        run_sdpa
        run_trainer || status=1
    fi
    cat "$out/results.md"
    return $status
}

case "${1:-}" in
    build) build ;;
    run) run "${2:-all}" ;;
    *) echo "usage: $0 build | run [tests|bench|all]" >&2; exit 2 ;;
esac
