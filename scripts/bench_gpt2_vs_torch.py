#!/usr/bin/env python3
"""Forward+backward tokens/s and peak memory of our model against PyTorch `transformers`
GPT-2 with the same config, batch and sequence length, side by side in one run.

Usage (from the workspace root):
    cargo build --release -p polylm-model --examples
    .venv-hf/bin/python scripts/bench_gpt2_vs_torch.py [--rounds 2] [--steps 5] [--baseline-bin PATH]

Each measurement is its own process (so that peak resident memory, VmHWM, is that
measurement's alone); ours and PyTorch's alternate, per preset and thread count, for
`--rounds` rounds, and the best round of each is reported. Threads: RAYON_NUM_THREADS for
ours, torch.set_num_threads (and OMP/MKL_NUM_THREADS) for PyTorch. PyTorch runs float32
GPT2LMHeadModel with its default attention (sdpa), dropout 0, labels = random targets.
--baseline-bin adds another build of `bench_model` (an older commit, say) to the same
alternation, as one more column.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples", "bench_model")

# preset: vocab, layers, hidden, heads, ffn, context, batch, seq (must match ModelConfig::preset)
PRESETS = {
    "tiny": (8192, 2, 128, 4, 512, 128, 8, 128),
    "small": (16384, 4, 256, 8, 1024, 256, 4, 256),
}


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def torch_child(preset, threads, steps):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(threads)
    vocab, layers, hidden, heads, ffn, context, batch, seq = PRESETS[preset]
    cfg = GPT2Config(vocab_size=vocab, n_positions=context, n_embd=hidden, n_layer=layers, n_head=heads,
                     n_inner=ffn, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, initializer_range=0.006, tie_word_embeddings=True,
                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).float().train()
    ids = torch.randint(0, vocab, (batch, seq))
    targets = torch.randint(0, vocab, (batch, seq))
    times = []
    loss = None
    for step in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        loss.backward()
        if step > 0:
            times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({"impl": "torch", "preset": preset, "batch": batch, "seq": seq, "threads": str(threads),
                      "median_step_s": round(median, 4), "tokens_per_s": round(batch * seq / median, 1),
                      "peak_rss_mib": round(vm_hwm_mib(), 1), "loss": round(loss.item(), 4),
                      "torch": torch.__version__}))


def run(cmd, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch-child", nargs=2, metavar=("PRESET", "THREADS"))
    ap.add_argument("--baseline-bin", help="another bench_model build, measured alongside")
    args = ap.parse_args()
    if args.torch_child:
        torch_child(args.torch_child[0], int(args.torch_child[1]), args.steps)
        return
    rows = []
    for preset, (_, _, _, _, _, _, batch, seq) in PRESETS.items():
        for threads in (1, 2):
            best = {}
            for _ in range(args.rounds):
                cmds = [
                    ("polylm", [BIN, "train", preset, str(batch), str(seq), str(args.steps)]),
                    ("polylm+recompute", [BIN, "train", preset, str(batch), str(seq), str(args.steps), "recompute"]),
                    ("torch", [sys.executable, __file__, "--steps", str(args.steps), "--torch-child", preset, str(threads)]),
                ]
                if args.baseline_bin:
                    cmds.append(("baseline", [args.baseline_bin, "train", preset, str(batch), str(seq), str(args.steps)]))
                for name, cmd in cmds:
                    r = run(cmd, threads)
                    if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
                        best[name] = r
            rows.append((preset, threads, best))
            print(json.dumps({"preset": preset, "threads": threads, **{k: v for k, v in best.items()}}), flush=True)
    print()
    extra = " baseline tok/s | ours / baseline |" if args.baseline_bin else ""
    print("| preset | B×T | threads | ours tok/s | PyTorch tok/s | ours / PyTorch | ours peak MiB | ours+recompute tok/s, peak MiB | PyTorch peak MiB |" + extra)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.baseline_bin else ""))
    for preset, threads, b in rows:
        o, r, t = b["polylm"], b["polylm+recompute"], b["torch"]
        line = (f"| {preset} | {o['batch']}×{o['seq']} | {threads} | {o['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | "
                f"{o['tokens_per_s'] / t['tokens_per_s']:.2f} | {o['peak_rss_mib']:.0f} | {r['tokens_per_s']:.0f}, {r['peak_rss_mib']:.0f} | {t['peak_rss_mib']:.0f} |")
        if args.baseline_bin:
            base = b["baseline"]["tokens_per_s"]
            line += f" {base:.0f} | {o['tokens_per_s'] / base:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
