#!/usr/bin/env python3
"""Write the `two_layer` GPT-2 fixture in the other layouts the Hugging Face Hub ships, with
PyTorch's and transformers' own writers, for `model/tests/hub_formats.rs`.

Usage (from the workspace root, after scripts/make_gpt2_fixtures.py):
    .venv-hf/bin/python scripts/make_hub_fixtures.py

Writes model/tests/fixtures/hub/<layout>/ (each with the fixture's config.json):
    bin/               pytorch_model.bin: torch.save of the state dict (zip format) as older
                       transformers wrote it: `transformer.` names, the tied lm_head.weight
                       sharing the embedding's storage, the attn.bias / attn.masked_bias
                       buffers, and wpe stored transposed (a strided view of its storage)
    bin_legacy/        pytorch_model.bin in the pre-1.6 format (_use_new_zipfile_serialization
                       =False) with bare names (`wte.weight`, `h.0...`) as OpenAI's GPT-2 has
    bin_sharded_bf16/  the two_layer_bf16 weights as two torch.save shards and
                       pytorch_model.bin.index.json
    safetensors_sharded/  save_pretrained(max_shard_size=...) of the two_layer model: shards
                       and model.safetensors.index.json
and, for `polylm generate` on a Hub checkpoint (trainer/tests/hub_checkpoint.rs):
    bin/tokenizer.json    a 64-token Metaspace BPE trained by the `tokenizers` library
    bin/generate.json     prompts, and the text transformers' greedy generate gives for each
                          (the prompt starts with <s>, stops at the config's eos_token_id)
    bin/choices.jsonl     multiple-choice items ({"prompt", "choices", "gold"})
    bin/choices.ref.json  transformers' log-likelihood of each choice given its prompt
                          (tokens as trainer/src/choice.rs takes them)
and training_checkpoint/pytorch_model.bin: a training script's torch.save of
{"model": state dict, "optimizer": AdamW's state (tensors of its own), "step", "args"}, the
state dict's names prefixed as DistributedDataParallel around torch.compile leaves them
(`module._orig_mod.transformer...`);
and two tiny torch.save files of broadcast views (stride 0): views/small.pt, an (2, 3) view of a
3-element storage, and views/huge.pt, a view of 10^12 elements of a 1-element storage, which a
reader must refuse rather than try to allocate; views/nested.pt holds its state dict two
levels down ({"state_dict": {"module": {"module.x": ...}}}).
"""
import json
import os
import shutil

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2LMHeadModel

TEXT = [
    "All human beings are born free and equal in dignity and rights.",
    "They are endowed with reason and conscience and should act towards one another in a spirit of brotherhood.",
    "Everyone has the right to life, liberty and security of person.",
]
PROMPTS = ["All human", "Everyone has"]
CHOICES = [
    ("All human", [" beings", " rights", " free"], 0),
    ("Everyone has", [" life", " the right"], 1),
    ("They are", [" endowed", " born", " equal"], 2),
    ("", [" All", " They"], 0),
]
NEW_TOKENS = 8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = os.path.join(ROOT, "model", "tests", "fixtures", "gpt2")
OUT = os.path.join(ROOT, "model", "tests", "fixtures", "hub")


def fresh(name, source="two_layer"):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.copy(os.path.join(GPT2, source, "config.json"), d)
    return d


def state_dict(source, dtype=torch.float32):
    sd = {k: v.to(dtype) for k, v in load_file(os.path.join(GPT2, source, "model.safetensors")).items()}
    return sd


def main():
    sd = state_dict("two_layer")
    n = json.load(open(os.path.join(GPT2, "two_layer", "config.json")))["n_positions"]

    # Zip format, as transformers < 4.35 saved GPT-2: tied head, buffers, a strided tensor.
    d = fresh("bin")
    out = {}
    for k, v in sd.items():
        out[k] = v
        if k.endswith("attn.c_attn.weight"):
            prefix = k[: -len("c_attn.weight")]
            out[prefix + "bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
            out[prefix + "masked_bias"] = torch.tensor(-1e4)
    out["transformer.wpe.weight"] = sd["transformer.wpe.weight"].t().contiguous().t()
    assert not out["transformer.wpe.weight"].is_contiguous()
    out["lm_head.weight"] = out["transformer.wte.weight"]  # the same storage, as tying makes it
    torch.save(out, os.path.join(d, "pytorch_model.bin"))

    # Legacy format with bare names (OpenAI's GPT-2 on the Hub).
    d = fresh("bin_legacy")
    bare = {k.removeprefix("transformer."): v for k, v in sd.items()}
    torch.save(bare, os.path.join(d, "pytorch_model.bin"), _use_new_zipfile_serialization=False)

    # Two bf16 shards and their index.
    d = fresh("bin_sharded_bf16", "two_layer_bf16")
    bf = state_dict("two_layer_bf16", torch.bfloat16)
    names = sorted(bf)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate([names[:half], names[half:]]):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: bf[k] for k in part}, os.path.join(d, fname))
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * v.element_size() for v in bf.values())
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(d, "pytorch_model.bin.index.json"), "w"), indent=2)

    # transformers' own sharded safetensors.
    d = os.path.join(OUT, "safetensors_sharded")
    shutil.rmtree(d, ignore_errors=True)
    model = GPT2LMHeadModel.from_pretrained(os.path.join(GPT2, "two_layer"))
    model.save_pretrained(d, max_shard_size="20KB")
    for extra in ["generation_config.json"]:
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    # A 64-token tokenizer for the `bin` checkpoint, and transformers' greedy continuations.
    d = os.path.join(OUT, "bin")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=64, special_tokens=["<unk>", "<s>", "</s>"]))
    assert tok.get_vocab_size() == 64, tok.get_vocab_size()
    tok.save(os.path.join(d, "tokenizer.json"))
    model = GPT2LMHeadModel.from_pretrained(os.path.join(GPT2, "two_layer")).eval()
    cases = []
    for prompt in PROMPTS:
        ids = [tok.token_to_id("<s>")] + tok.encode(prompt, add_special_tokens=False).ids
        new = min(NEW_TOKENS, model.config.n_positions - len(ids))
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                             eos_token_id=model.config.eos_token_id, pad_token_id=0)
        full = out[0].tolist()
        cases.append({"prompt": prompt, "max_new_tokens": new, "ids": full, "text": tok.decode(full[1:], skip_special_tokens=True)})
    json.dump({"cases": cases}, open(os.path.join(d, "generate.json"), "w"), indent=2)

    # Multiple choice: the prompt's ids, and each choice's ids as the suffix that tokenizing
    # prompt + choice adds (or the choice alone when the prompt's ids are not a prefix); an
    # empty prompt is the config's eos_token_id. The sum of log P(choice token | before).
    def enc(text):
        return tok.encode(text, add_special_tokens=False).ids if text else []

    refs = []
    with open(os.path.join(d, "choices.jsonl"), "w") as f:
        for prompt, choices, gold in CHOICES:
            f.write(json.dumps({"prompt": prompt, "choices": choices, "gold": gold}) + "\n")
            p = enc(prompt) or [model.config.eos_token_id]
            logliks = []
            for c in choices:
                whole = enc(prompt + c)
                cont = whole[len(p):] if prompt and len(whole) > len(p) and whole[: len(p)] == p else enc(c)
                assert len(p + cont) <= model.config.n_positions, (prompt, c, len(p + cont))
                ids = torch.tensor([p + cont])
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids).logits[0].double(), -1)
                logliks.append(sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(cont)))
            refs.append({"prompt": prompt, "loglik": logliks})
    json.dump({"items": refs}, open(os.path.join(d, "choices.ref.json"), "w"), indent=2)

    d = fresh("training_checkpoint")
    model = GPT2LMHeadModel.from_pretrained(os.path.join(GPT2, "two_layer"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    wrapped = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    torch.save({"step": 1, "model": wrapped, "optimizer": opt.state_dict(), "args": {"lr": 1e-3, "name": "run"}},
               os.path.join(d, "pytorch_model.bin"))

    d = os.path.join(OUT, "views")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    row = torch.tensor([1.5, -2.0, 3.25])
    torch.save({"x": row.expand(2, 3)}, os.path.join(d, "small.pt"))
    torch.save({"x": torch.tensor([7.0]).expand(10**12)}, os.path.join(d, "huge.pt"))
    # A state dict two wrapping levels down, with DDP's prefix.
    torch.save({"meta": {"epoch": 1}, "state_dict": {"module": {"module.x": row}}}, os.path.join(d, "nested.pt"))

    for name in sorted(os.listdir(OUT)):
        print(name, sorted(os.listdir(os.path.join(OUT, name))))


if __name__ == "__main__":
    main()
