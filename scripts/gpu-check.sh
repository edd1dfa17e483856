#!/usr/bin/env bash
# The GPU check, in two halves, because the GPU machine has no Rust toolchain:
#
#   scripts/gpu-check.sh build            # here: the GPU test and benchmark binaries, `polylm`
#                                         # and the compiled kernels into gpu-bin/
#   scripts/gpu-check.sh run [PART ...]   # on the GPU machine (with gpu-bin/ carried)
#
# `run` goes through the parts in the order of what the open issues need most: kernels (tests
# and bandwidths), engine (the whole model's ops four ways, the optimiser), trainer (PolyLM-1.7B
# MFU and its kernel profile, data-parallel overhead, NCCL, a training run), attention (tests,
# benchmark, PyTorch SDPA), matmul (tests and benchmark against cuBLAS), gate (the NVRTC gate
# with the machine's NVRTC). Name parts to run only those (a second device call continues with what the first left).
# Every step's limit is cut to what is left before GPU_CHECK_DEADLINE seconds (default 540, for
# a device call of 600 s); a step that no longer fits is written down as skipped, so the
# results of the steps that ran always come back.
#
# `run` writes to $OUT (or ./gpu-out): results.md (card, date, each step's pass/fail or skip,
# the benchmark tables) and logs.tar.gz (the raw logs, tables and training metrics).
# docs/gpu-results.md records what it printed, with the card and date.
set -euo pipefail
cd "$(dirname "$0")/.."

build() {
    rm -rf gpu-bin && mkdir -p gpu-bin
    local json=gpu-bin/cargo-messages.json
    # --workspace everywhere: one feature set, so no dependency is built twice.
    cargo test --release --workspace --locked --no-run --message-format=json \
        --test cuda_kernels --test cuda_engine --test cuda_optim --test cuda_matmul_tc \
        --test cuda_flash_attention --test nvrtc_gate --test nccl >"$json"
    cargo bench --workspace --locked --no-run --message-format=json --bench cuda_kernels --bench gpu_model \
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
    cargo build --release --workspace --locked --bin polylm
    cp target/release/polylm gpu-bin/polylm && strip --strip-debug gpu-bin/polylm
    # Every kernel module an H100/H200 loads, compiled here (matmul_wgmma alone takes NVRTC a
    # minute and a half): the device reuses them when its NVRTC has the same version (13.0).
    local cuda_libs
    cuda_libs=$(scripts/cuda-venv.sh)
    LD_LIBRARY_PATH="$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        gpu-bin/polylm compile-kernels --arch sm_90 --cache gpu-bin/kernel-cache
    du -sh gpu-bin
}

# The seconds a step with limit $1 may take: its limit, cut to what is left before the deadline.
limit_for() {
    local left=$((deadline - (SECONDS - started)))
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# Whether a step with limit $2 still fits (at least 20 s left); if not, writes that step $1 was
# skipped and sets last_skipped.
fits() {
    last_skipped=0
    if [ "$(limit_for "$2")" -ge 20 ]; then
        return 0
    fi
    last_skipped=1
    echo "- \`$1\`: skipped, out of time (GPU_CHECK_DEADLINE=$deadline s)" >>"$out/results.md"
    skipped=1
    return 1
}

# The POLYLM_GPU_* settings (as `env` takes them) of kernel set $1: default (none: the shipped
# choice, tensor-core matmul and flash attention with their Hopper forward paths on sm_90, cached
# layernorm, row cross-entropy), simple (the simple matmul and attention), tc (the portable
# tensor-core kernels, no Hopper path), hopper (every Hopper path, the Hopper flash backward
# too, the streamed layernorm, the one-read cluster cross-entropy), streamed and cluster (the
# defaults with the streamed layernorm, with the cluster cross-entropy).
kernel_env() {
    case $1 in
        default) echo "" ;;
        simple) echo "POLYLM_GPU_MATMUL=simple POLYLM_GPU_ATTENTION=simple" ;;
        tc) echo "POLYLM_GPU_MATMUL_HOPPER=0 POLYLM_GPU_FLASH_HOPPER=0" ;;
        hopper) echo "POLYLM_GPU_FLASH_HOPPER=all POLYLM_GPU_LAYERNORM=streamed POLYLM_GPU_CROSS_ENTROPY=cluster" ;;
        streamed) echo "POLYLM_GPU_LAYERNORM=streamed" ;;
        cluster) echo "POLYLM_GPU_CROSS_ENTROPY=cluster" ;;
        *) echo "unknown kernel set '$1'" >&2; return 2 ;;
    esac
}

# Every POLYLM_GPU_* variable unset, so that a kernel set means the same whatever the caller's
# environment holds.
unset_kernel_env() {
    local v
    for v in MATMUL MATMUL_HOPPER ATTENTION FLASH_HOPPER LAYERNORM CROSS_ENTROPY; do
        unset "POLYLM_GPU_$v"
    done
}

# Runs test binary $2 as entry $1 with a limit of $3 seconds, the kernels chosen by set $4 (see
# kernel_env) and the test arguments after.
run_test() {
    local label=$1 bin=$2 limit=$3 mode=$4
    shift 4
    fits "$label" "$limit" || return 1
    limit=$(limit_for "$limit")
    local log=${label/:/-} envs
    envs=$(kernel_env "$mode")
    echo "== $label"
    local ok=0 t0=$SECONDS
    # shellcheck disable=SC2086
    if env $envs timeout "$limit" "gpu-bin/$bin" --test-threads=4 --nocapture "$@" >"$out/$log.log" 2>&1; then
        echo "- \`$label\`: passed ($((SECONDS - t0)) s)" >>"$out/results.md"
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

# Runs benchmark binary $2 ($1 its title) with a limit of $4 seconds, appending its Markdown
# table ($3.md) to results.md.
run_bench() {
    local title=$1 bin=$2 name=$3 limit=$4
    fits "$title" "$limit" || return 1
    echo "== $title"
    local t0=$SECONDS
    echo >>"$out/results.md"
    if POLYLM_BENCH_OUT="$out/$name.md" timeout "$(limit_for "$limit")" "gpu-bin/$bin" >"$out/$name.log" 2>&1; then
        if [ -f "$out/$name.md" ]; then
            cat "$out/$name.md" >>"$out/results.md"
        else
            echo "$title wrote no table: $(tail -2 "$out/$name.log")" >>"$out/results.md"
        fi
        echo "($title: $((SECONDS - t0)) s)" >>"$out/results.md"
    else
        echo "$title FAILED: $(tail -3 "$out/$name.log")" >>"$out/results.md"
        return 1
    fi
}

# Runs the command after $2 (VAR=value settings first, as `env` takes them) with a limit of $2
# seconds, into log $1.log; returns its status.
run_polylm() {
    local name=$1 limit=$2
    shift 2
    fits "$name" "$limit" || return 1
    echo "== $name"
    local envs=()
    while [ $# -gt 0 ] && [[ $1 == *=* ]] && [[ $1 != -* ]]; do
        envs+=("$1")
        shift
    done
    last_status=0
    env ${envs[@]+"${envs[@]}"} timeout "$(limit_for "$limit")" "$@" >"$out/$name.log" 2>&1 || last_status=$?
    return $last_status
}

# The kernel cache: the modules compiled by `build`, then whatever this machine's NVRTC still
# has to compile (on every core), so that no test pays for a compile.
part_cache() {
    mkdir -p "$POLYLM_KERNEL_CACHE"
    [ -d gpu-bin/kernel-cache ] && cp -n gpu-bin/kernel-cache/*.cubin "$POLYLM_KERNEL_CACHE"/ 2>/dev/null || true
    { echo; echo "## Kernel cache"; echo; } >>"$out/results.md"
    if run_polylm compile-kernels 300 gpu-bin/polylm compile-kernels; then
        echo "- $(tail -1 "$out/compile-kernels.log")" >>"$out/results.md"
    elif [ "$last_skipped" = 0 ]; then
        echo "- compile-kernels FAILED: $(tail -3 "$out/compile-kernels.log")" >>"$out/results.md"
        return 1
    fi
}

# A kernel family's part, headed $1: test binary $2, its portable tests and then its Hopper
# tests alone with a short limit (a kernel that hangs on the hardware, an mbarrier never
# completing, then costs a minute and a half, not the portable results), then benchmark binary
# $3 with its table in $4.md.
kernel_part() {
    local ok=0
    { echo; echo "## $1"; echo; } >>"$out/results.md"
    run_test "$2" "$2" 150 tc --skip hopper || ok=1
    run_test "$2:hopper" "$2" 90 default hopper || ok=1
    run_bench "$1" "$3" "$4" 200 || ok=1
    return $ok
}

# Issue 7: the tensor-core matmul, and its benchmark against cuBLAS.
part_matmul() {
    kernel_part "Matmul against cuBLAS" cuda_matmul_tc cuda_matmul_bench matmul
}

# Issue 8: flash attention, its benchmark and PyTorch's SDPA beside it (skipped when the
# machine has no PyTorch).
part_attention() {
    local ok=0
    kernel_part "Attention" cuda_flash_attention cuda_attention_bench attention || ok=1
    fits "PyTorch SDPA" 120 || return 1
    echo "== PyTorch SDPA"
    {
        echo
        echo "### PyTorch scaled_dot_product_attention (the attention benchmark's setting)"
        echo
    } >>"$out/results.md"
    if ! command -v python3 >/dev/null; then
        echo "skipped: no python3 on this machine" >>"$out/results.md"
    elif ! timeout "$(limit_for 120)" python3 scripts/bench_sdpa.py >>"$out/results.md" 2>"$out/sdpa.log"; then
        echo "PyTorch SDPA FAILED: $(tail -3 "$out/sdpa.log")" >>"$out/results.md"
    fi
    return $ok
}

# Issue 6: every kernel against the CPU, then the memory-bound kernels' bandwidths (cached and
# streamed layernorm, row and cluster cross-entropy side by side).
part_kernels() {
    local ok=0
    { echo; echo "## Kernels"; echo; } >>"$out/results.md"
    run_test cuda_kernels cuda_kernels 180 default || ok=1
    run_bench "kernel bandwidths" cuda_kernels_bench kernels-bench 200 || ok=1
    return $ok
}

# The engine's ops and the tiny model on the GPU against the CPU: on the shipped kernels
# (default), every Hopper path (hopper), the portable tensor-core ones (tc) and the simple ones
# (simple); the optimiser.
part_engine() {
    local ok=0
    { echo; echo "## Engine"; echo; } >>"$out/results.md"
    run_test cuda_engine cuda_engine 120 default || ok=1
    run_test cuda_engine:hopper cuda_engine 120 hopper || ok=1
    run_test cuda_engine:tc cuda_engine 120 tc || ok=1
    run_test cuda_engine:simple cuda_engine 120 simple || ok=1
    run_test cuda_optim cuda_optim 90 default || ok=1
    return $ok
}

# Issue 9: `polylm bench` of PolyLM-1.7B on the shipped kernels (tensor-core matmul and flash
# attention with their Hopper paths), its kernel-by-kernel profile, four micro-batches per step,
# the streamed layernorm and the cluster cross-entropy, the data-parallel path's overhead over NCCL;
# the NCCL tests and all-reduce bandwidth at world size 1; a short quickstart run on the GPU;
# the simple kernels and the model benchmark last.
part_trainer() {
    local ok=0
    { echo; echo "## polylm bench"; echo; } >>"$out/results.md"
    # Batch 4 × 2048 without recomputation fits in 43 GB (an H100's 80 GB too); --accum spreads
    # the optimiser's fixed cost (about 12 ms for 1.7B parameters) as training does.
    local runs=("default|--preset polylm-1.7b --batch 4 --seq 2048 --steps 3"
        "default|--preset polylm-1.7b --batch 4 --seq 2048 --steps 1 --profile"
        "default|--preset polylm-1.7b --batch 4 --accum 4 --seq 2048 --steps 2"
        "streamed|--preset polylm-1.7b --batch 4 --seq 2048 --steps 3"
        "cluster|--preset polylm-1.7b --batch 4 --seq 2048 --steps 3"
        "default|--preset polylm-1.7b --batch 4 --seq 2048 --recompute --steps 3 --ddp nccl"
        "default|--preset small --batch 16 --seq 256 --ddp nccl")
    bench_runs "${runs[@]}" || ok=1
    run_test nccl nccl 60 simple || ok=1
    { echo; echo "## polylm bench-allreduce --backend nccl (world size 1)"; echo; } >>"$out/results.md"
    if run_polylm allreduce 90 gpu-bin/polylm bench-allreduce --backend nccl --sizes-mib 1,16,64,256,1024 --iters 10; then
        cat "$out/allreduce.log" >>"$out/results.md"
    else
        [ "$last_skipped" = 1 ] || echo "bench-allreduce FAILED: $(tail -3 "$out/allreduce.log")" >>"$out/results.md"
        ok=1
    fi
    local run_dir=/tmp/gpu-quickstart
    rm -rf "$run_dir"
    { echo; echo "## polylm train (quickstart config, 300 steps, --device cuda)"; echo; } >>"$out/results.md"
    if run_polylm train 150 gpu-bin/polylm train --config configs/quickstart.toml --device cuda --steps 300 \
        --out "$run_dir" --set "tokenizer.path=\"$run_dir/tokenizer.json\"" --set "data.dir=\"$run_dir/data\"" \
        --set log.progress=false --set eval.every=100 --set checkpoint.every=100; then
        echo '```' >>"$out/results.md"
        grep -E "^quickstart:|^step .*(loss|validation)|^done" "$out/train.log" >>"$out/results.md" || true
        echo '```' >>"$out/results.md"
        cp "$run_dir/metrics.jsonl" "$run_dir/loss.svg" "$run_dir/bpb.svg" "$out/" 2>/dev/null || true
    else
        [ "$last_skipped" = 1 ] || echo "polylm train FAILED: $(tail -5 "$out/train.log")" >>"$out/results.md"
        ok=1
    fi
    { echo; echo "## polylm bench on the simple kernels"; echo; } >>"$out/results.md"
    runs=("simple|--preset small --batch 16 --seq 256"
        "simple|--preset polylm-1.7b --batch 4 --seq 2048 --steps 1")
    bench_runs "${runs[@]}" || ok=1
    run_bench "model benchmark" gpu_model_bench model 200 || ok=1
    return $ok
}

# Runs `polylm bench` for each "KERNELS|ARGS" given (KERNELS: a kernel set of kernel_env), one
# line of results.md each, the profile as a block.
bench_runs() {
    local ok=0 spec kernels args envs log
    for spec in "$@"; do
        kernels=${spec%%|*}
        args=${spec#*|}
        envs=$(kernel_env "$kernels")
        bench_run=$((bench_run + 1))
        log="$out/polylm-bench-$bench_run.log"
        # shellcheck disable=SC2086
        if run_polylm "polylm-bench-$bench_run" 150 $envs gpu-bin/polylm bench $args --device cuda; then
            echo "- $kernels kernels, \`polylm bench $args\`: $(sed '/^profile (/,$d' "$log" | tr '\n' ';')" >>"$out/results.md"
            if grep -q "^profile (" "$log"; then
                { echo; echo '```'; sed -n '/^profile (/,$p' "$log"; echo '```'; } >>"$out/results.md"
            fi
        else
            local why=FAILED
            [ "$last_status" = 124 ] && why="TIMED OUT"
            [ "$last_skipped" = 1 ] || echo "- $kernels kernels, \`polylm bench $args\`: $why $(tail -3 "$log")" >>"$out/results.md"
            ok=1
        fi
    done
    return $ok
}

# The NVRTC gate with this machine's own NVRTC (CI runs it with the pinned one).
part_gate() {
    { echo; echo "## NVRTC gate"; echo; } >>"$out/results.md"
    run_test nvrtc_gate nvrtc_gate 120 simple
}

# Packs everything under $out but results.md into logs.tar.gz: the device tool brings back
# at most eight files.
pack_logs() {
    local files
    files=$(cd "$out" && find . -maxdepth 1 -type f ! -name results.md ! -name logs.tar.gz -printf '%P\n')
    [ -n "$files" ] || return 0
    # shellcheck disable=SC2086
    (cd "$out" && tar czf logs.tar.gz $files && rm -f $files)
}

# `run [PART ...]`: the parts named (cache is always first), else all of them in order.
run() {
    out="${OUT:-gpu-out}"
    deadline=${GPU_CHECK_DEADLINE:-540}
    started=$SECONDS
    skipped=0
    last_skipped=0
    last_status=0
    bench_run=0
    mkdir -p "$out"
    local parts=("$@")
    [ ${#parts[@]} = 0 ] && parts=(kernels engine trainer attention matmul gate)
    local part
    for part in "${parts[@]}"; do
        case $part in
            matmul | attention | kernels | engine | trainer | gate) ;;
            *) echo "unknown part '$part' (matmul, attention, kernels, engine, trainer, gate)" >&2; return 2 ;;
        esac
    done
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # NCCL: the machine has it only inside the Python wheel nvidia-nccl-cu13, as libnccl.so.2;
    # cudarc looks for libnccl.so, so link that name to it.
    local nccl_lib
    nccl_lib="$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null || true)/lib/libnccl.so.2"
    if [ -f "$nccl_lib" ]; then
        mkdir -p /tmp/polylm-nccl && ln -sf "$nccl_lib" /tmp/polylm-nccl/libnccl.so
        export LD_LIBRARY_PATH="/tmp/polylm-nccl:$LD_LIBRARY_PATH"
    fi
    unset_kernel_env
    export POLYLM_KERNEL_CACHE=/tmp/polylm-kernel-cache
    export POLYLM_REQUIRE_NVRTC=1
    local card
    card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1 || true)
    {
        echo "# GPU check"
        echo
        echo "- Card: $card"
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
        echo "- Parts: ${parts[*]} (deadline $deadline s)"
    } >"$out/results.md"
    local status=0
    part_cache || status=1
    for part in "${parts[@]}"; do
        "part_$part" || status=1
    done
    echo >>"$out/results.md"
    echo "Finished in $((SECONDS - started)) s$([ $skipped = 1 ] && echo '; some steps were skipped for time')." >>"$out/results.md"
    pack_logs
    cat "$out/results.md"
    return $status
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 build | run [matmul|attention|kernels|engine|trainer|gate ...]" >&2; exit 2 ;;
esac
