#!/usr/bin/env python3
"""Build small random GPT-2 models with Hugging Face `transformers` and write the reference
values that `model/tests/hf_parity.rs` checks our model against.

Usage (from the workspace root):
    python3 -m venv .venv-hf
    .venv-hf/bin/pip install torch transformers safetensors
    .venv-hf/bin/python scripts/make_gpt2_fixtures.py

For each config below it writes model/tests/fixtures/gpt2/<name>/:
    config.json, model.safetensors   GPT2LMHeadModel.save_pretrained (transformers' own writer)
    reference.safetensors            input_ids [B, T] (I64); logits [B, T, V]; loss [1] (the
                                     labels=input_ids loss, i.e. next-token, mean over B·(T-1));
                                     grad.<name> for every parameter; adamw.losses [STEPS] (the
                                     loss before each step); adamw.<name> every parameter after
                                     STEPS AdamW steps. The AdamW hyper-parameters are in the
                                     file's __metadata__.
Every parameter is perturbed so that none is exactly 0 or 1 (LayerNorm weights near 1, biases
small and non-zero). Everything is float32 on the CPU, seeded.

It also writes model/tests/fixtures/gpt2/two_layer_bf16/: the `two_layer` model cast to
bfloat16 and saved by `save_pretrained` (BF16 tensors in the file), with reference.safetensors
holding input_ids and the float32 logits of those bf16 weights (`model.float()`).
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "model", "tests", "fixtures", "gpt2")

# name, vocab, positions, hidden, layers, heads, inner, batch, seq, seed
CONFIGS = [
    ("two_layer", 64, 16, 16, 2, 2, 64, 2, 8, 1),
    ("one_layer_ffn40", 50, 12, 24, 1, 3, 40, 3, 7, 2),
    ("three_layer_one_head", 40, 10, 8, 3, 1, 32, 1, 10, 3),
]
STEPS = 3
ADAMW = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def build(vocab, positions, hidden, layers, heads, inner, seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_inner=inner,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=vocab - 1,
        eos_token_id=vocab - 1,
    )
    model = GPT2LMHeadModel(cfg).float()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.add_(0.01 * torch.randn_like(p))
    model.eval()  # dropout is 0 anyway
    return model


def params(model):
    return {n: p for n, p in model.named_parameters()}


def main():
    for name, vocab, positions, hidden, layers, heads, inner, batch, seq, seed in CONFIGS:
        out = os.path.join(OUT, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        model = build(vocab, positions, hidden, layers, heads, inner, seed)
        model.save_pretrained(out, safe_serialization=True)
        for extra in ["generation_config.json"]:
            path = os.path.join(out, extra)
            if os.path.exists(path):
                os.remove(path)
        g = torch.Generator().manual_seed(seed + 100)
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        ref = {"input_ids": ids.to(torch.int64)}

        out_fw = model(input_ids=ids, labels=ids)
        ref["logits"] = out_fw.logits.detach().clone()
        ref["loss"] = out_fw.loss.detach().reshape(1).clone()
        out_fw.loss.backward()
        for n, p in params(model).items():
            ref["grad." + n] = p.grad.detach().clone()
        model.zero_grad()

        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": ADAMW["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=ADAMW["lr"],
            betas=(ADAMW["beta1"], ADAMW["beta2"]),
            eps=ADAMW["eps"],
        )
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            losses.append(loss.item())
            loss.backward()
            opt.step()
        ref["adamw.losses"] = torch.tensor(losses, dtype=torch.float32)
        for n, p in params(model).items():
            ref["adamw." + n] = p.detach().clone()
        meta = {k: repr(v) for k, v in ADAMW.items()}
        meta["steps"] = str(STEPS)
        meta["decay"] = "parameters with 2 or more axes"
        meta["torch"] = torch.__version__
        import transformers

        meta["transformers"] = transformers.__version__
        save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"), metadata=meta)
        with open(os.path.join(out, "config.json")) as f:
            json.load(f)
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, {size} bytes, loss {ref['loss'].item():.6f}")
    write_bf16(*CONFIGS[0])


def write_bf16(name, vocab, positions, hidden, layers, heads, inner, batch, seq, seed):
    out = os.path.join(OUT, name + "_bf16")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model = build(vocab, positions, hidden, layers, heads, inner, seed).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    path = os.path.join(out, "generation_config.json")
    if os.path.exists(path):
        os.remove(path)
    g = torch.Generator().manual_seed(seed + 100)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    with torch.no_grad():
        logits = model.float()(input_ids=ids).logits
    save_file({"input_ids": ids.to(torch.int64), "logits": logits.contiguous()}, os.path.join(out, "reference.safetensors"))
    print(f"{name}_bf16: written in bfloat16")


if __name__ == "__main__":
    main()
