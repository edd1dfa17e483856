#!/usr/bin/env python3
"""Usage: python3 benches/matmul_vs_numpy.py [--sizes 256,512,1024,2048] [--threads 1,2] [--repeat 5] [--rounds 2] [--settle 0.5] [--ours-bin PATH]

Times numpy's float32 matmul (OpenBLAS) and polylm's f32 GEMM (benches/matmul_gflops.rs) side by
side, interleaved case by case (numpy, ours, numpy, ours, ...; best run of each kept), and
prints a table of GFLOP/s and the ratio ours/numpy.

Needs `pip install numpy threadpoolctl`. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed
from the environment before numpy is loaded (they can force a slower OpenBLAS kernel), and the
OpenBLAS kernel actually used is reported from threadpoolctl. Our binary is built with
`cargo bench --bench matmul_gflops --no-run` unless --ours-bin names a built one.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REMOVED = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}

try:
    import numpy as np
except ImportError:
    sys.exit("numpy is not installed: pip install numpy threadpoolctl")
try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:
    threadpool_info = threadpool_limits = None
    print("threadpoolctl not installed (pip install threadpoolctl): numpy runs in subprocesses", file=sys.stderr)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUMPY_CHILD = """
import sys, time, numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32); b = rng.standard_normal((n, n), dtype=np.float32)
a @ b
best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(reps))
print(2.0 * n ** 3 / best / 1e9)
"""


def numpy_gflops(n, threads, repeat):
    if threadpool_limits is None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", NUMPY_CHILD, str(n), str(repeat)], env=env,
                             check=True, capture_output=True, text=True).stdout
        return float(out.strip())
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b  # warm-up (and thread start)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def build_ours():
    cmd = ["cargo", "bench", "--bench", "matmul_gflops", "--no-run", "--message-format=json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "matmul_gflops" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("could not find the matmul_gflops bench executable")


def ours_gflops(binary, n, threads, repeat):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "--sizes", str(n), "--threads", str(threads), "--repeat", str(repeat)],
                         env=env, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("ours "):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
            return float(fields["gflops"])
    raise RuntimeError(f"no result line in: {out!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (best kept)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved numpy/ours rounds per case")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to wait after numpy before timing ours (OpenBLAS threads spin)")
    ap.add_argument("--ours-bin", help="path to a built matmul_gflops binary (skips cargo)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    binary = args.ours_bin or build_ours()
    print(f"numpy {np.__version__}; removed from env for numpy: {REMOVED or 'nothing'}")
    if threadpool_info is not None:
        for lib in threadpool_info():
            if lib.get("internal_api") == "openblas":
                print(f"OpenBLAS {lib.get('version')} core type: {lib.get('architecture')} "
                      f"(threading: {lib.get('threading_layer')}, max threads {lib.get('num_threads')})")
    print(f"ours: {binary}")
    print()
    print(f"{'size':>6} {'threads':>7} {'numpy GFLOP/s':>14} {'ours GFLOP/s':>13} {'ours/numpy':>10}")
    for t in threads:
        for n in sizes:
            reps = args.repeat if n >= 1024 else args.repeat * 4
            np_best = ours_best = 0.0
            for _ in range(args.rounds):
                np_best = max(np_best, numpy_gflops(n, t, reps))
                # OpenBLAS worker threads keep spinning for a while after a call; let them go to
                # sleep so that they do not compete with our threads for the cores.
                time.sleep(args.settle)
                ours_best = max(ours_best, ours_gflops(binary, n, t, reps))
            print(f"{n:>6} {t:>7} {np_best:>14.1f} {ours_best:>13.1f} {ours_best / np_best:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
