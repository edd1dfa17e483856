#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention in the setting of benches/cuda_attention.rs, so that
gpu-check compares our flash attention with it in the same run (issue 8).

Causal, bf16, head dimension 128, 16 heads, 16K tokens in total (batch = 16384 / seq),
sequence 512 to 8192. Forward, backward (gradients of q, k, v for a fixed output gradient)
and forward + backward, each timed with CUDA events over 10 runs after 2 warm-up runs.
TFLOP/s as in our benchmark: the forward counts 4·batch·heads·seq²·head_dim, halved for the
causal mask; the backward 2.5 times that; forward + backward 3.5 times.

    python3 scripts/bench_sdpa.py

Prints a Markdown table with the same columns as ours. Without PyTorch or without a GPU it
prints why it skipped and exits 0 (the GPU machine may have no PyTorch: nothing can be
installed there).
"""

import sys

TOKENS, HEADS, HEAD_DIM = 16384, 16, 128
SEQS = [512, 1024, 2048, 4096, 8192]
WARMUP, ITERS = 2, 10


def timed_ms(torch, fn):
    """Mean milliseconds of `fn` over ITERS runs after WARMUP, timed with CUDA events."""
    for _ in range(WARMUP):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(ITERS):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / ITERS


def main():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("skipped: PyTorch is not installed on this machine")
        return 0
    if not torch.cuda.is_available():
        print("skipped: PyTorch sees no GPU")
        return 0
    name = f"PyTorch SDPA (torch {torch.__version__})"
    print(f"Device: {torch.cuda.get_device_name()}. Same setting as the table above.\n")
    print("| kernel | seq | batch | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for seq in SEQS:
        batch = TOKENS // seq
        shape = (batch, HEADS, seq, HEAD_DIM)

        def tensor():
            x = torch.rand(shape, device="cuda", generator=gen, dtype=torch.float32) * 2 - 1
            return x.to(torch.bfloat16).requires_grad_(True)

        q, k, v = tensor(), tensor(), tensor()
        dout = tensor().detach()

        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        with torch.no_grad():
            fwd = timed_ms(torch, forward)
        out = forward()
        bwd = timed_ms(torch, lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
        both = timed_ms(torch, lambda: torch.autograd.grad(forward(), (q, k, v), dout))
        flops = 4.0 * batch * HEADS * seq * seq * HEAD_DIM / 2.0

        def tflops(f, ms):
            return f / ms / 1e9

        print(
            f"| {name} | {seq} | {batch} | {fwd:.3f} | {tflops(flops, fwd):.1f} | {bwd:.3f} | "
            f"{tflops(2.5 * flops, bwd):.1f} | {both:.3f} | {tflops(3.5 * flops, both):.1f} |"
        )
        del q, k, v, dout, out
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
