#!/usr/bin/env python3
"""Check that Hugging Face `transformers` loads the checkpoints our model writes and computes
the same logits: the f32 checkpoint to 1e-5 and the bf16 one to 1e-5 against our logits from
the same bf16-rounded weights (both computed in f32), relative to the largest logit.

Usage (from the workspace root):
    cargo run --release -p polylm-model --example export_gpt2 -- /tmp/polylm-export
    .venv-hf/bin/python scripts/check_gpt2_export.py /tmp/polylm-export
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/polylm-export"
    ours = load_file(f"{root}/ours.safetensors")
    ids = ours["input_ids"]
    ok = True
    for name in ["f32", "bf16"]:
        model = GPT2LMHeadModel.from_pretrained(f"{root}/{name}", attn_implementation="eager").float().eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        want = ours[f"logits.{name}"]
        err = ((logits - want).abs().max() / want.abs().max()).item()
        good = err <= 1e-5
        ok &= good
        print(f"{name}: loaded by transformers, dtype in file {model.config.dtype}, max relative logit difference {err:.2e} {'OK' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
