#!/usr/bin/env python3
"""The `tokenizer.json` files that `transformers` writes for SentencePiece models, and reference
ids from Hugging Face `tokenizers`, for the Rust tests (`tokenizer/tests/hf_tokenizer.rs`).

Usage (from the workspace root):
    python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers transformers sentencepiece protobuf
    .venv-tok/bin/python scripts/make_hf_sentencepiece_fixtures.py

Committed output, tokenizer/tests/fixtures/hf/spm/:
    unigram.json    a SentencePiece unigram model (18 languages, vocab 2000, byte_fallback,
                    user-defined <mask> and ﬁ, the character map of
                    ../sentencepiece/normalizer.model) converted by `AutoTokenizer` without a
                    tokenizer class: Unigram with byte fallback, normalisers Precompiled and
                    Replace with regular expressions, Metaspace, Split on the user-defined pieces
    xlmr.json       the same model converted as an `XLMRobertaTokenizer`: Unigram without byte
                    fallback, Precompiled, WhitespaceSplit + Metaspace
    bpe.json        ../sentencepiece/normalizer.model (BPE) converted without a tokenizer class
    reference.json  {"samples": {set: [texts]}, "models": {name: {"samples": {set: [[ids]]},
                    "sets": {set: {"texts", "ids", "fnv64"}}, "decoded": {set: [texts]}}}}
Sets as in make_hf_tokenizer_fixtures.py (every validation record and UDHR line).
"""
import io
import json
import os
import shutil
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from fixture_sets import ROOT, model_entry, text_sets, training_lines

OUT = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "hf", "spm")
SPM = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "sentencepiece")
LANGS = ["ar", "de", "en", "es", "fr", "he", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr",
         "vi", "zh"]
SAMPLE_CHARS = 160
# Graphemes the Precompiled normaliser takes whole (< 6 bytes) or character by character, keys
# that are a prefix of a grapheme, unknown characters for unk fusion and byte fallback, spaces.
EDGE = ["", " ", "  two  spaces  ", "\n", "a\nb", "a \n b\n\n", "tab\there", "x   ", "   lead",
        "<s> literal </s> <unk>", "<mask> and ﬁne <mask>", "ﬁ\u0301 ﬁ\u0301\u0301", "e\u0301 A\u030a",
        "ｶﾞ ｶ\u3099 ﾊﾟ", "\u1100\u1161\u11a8 각", "\U0001F469\u200d\U0001F4BB \U0001F1EB\U0001F1F7",
        "①②③ ¼ ㎏ ﬀ", "ｆｕｌｌ　ｗｉｄｔｈ", "\u200b\ufeff\u200e\u200fzero", "\x00\x01 control\x7f",
        "12345 ٣٤ ໑", "\u0e01\u0e34\u0e4a \u0e01\u0e4a\u0e34", "\u05e9\u05c1\u05b8 \u05e9\u05b8\u05c1",
        "\u0628\u0651\u064e \u0628\u064e\u0651", "Ελληνικά ἄλφα", "ꙮ 𝔘𝔫𝔦 𐍈 \U00020000", "a\u0300\u0301\u0302\u0303",
        "Ǆ ǅ ǆ Ⅻ", "日本語のテキスト。", "한국어 텍스트", "\u00a0nbsp\u00a0 \u3000ideo"]


def train_unigram(charsmap):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines(LANGS, 40_000)), model_writer=buf, vocab_size=2000,
        model_type="unigram", byte_fallback=True, character_coverage=0.98,
        user_defined_symbols=["<mask>", "ﬁ"], num_threads=4, minloglevel=2)
    m = pb.ModelProto()
    m.ParseFromString(buf.getvalue())
    # The smaller map of normalizer.model (same nmt_nfkc rules over the code points these
    # languages use) keeps the fixture small.
    m.normalizer_spec.precompiled_charsmap = charsmap
    return m.SerializeToString()


def convert(model_bytes, tokenizer_class, name):
    with tempfile.TemporaryDirectory() as d:
        for f in ["tokenizer.model", "sentencepiece.bpe.model", "spiece.model"]:
            with open(os.path.join(d, f), "wb") as out:
                out.write(model_bytes)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": tokenizer_class} if tokenizer_class else {}, f)
        AutoTokenizer.from_pretrained(d).save_pretrained(os.path.join(d, "out"))
        shutil.copy(os.path.join(d, "out", "tokenizer.json"), os.path.join(OUT, name))
    return Tokenizer.from_file(os.path.join(OUT, name))


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(SPM, "normalizer.model"), "rb") as f:
        bpe_bytes = f.read()
    base = pb.ModelProto()
    base.ParseFromString(bpe_bytes)
    unigram_bytes = train_unigram(base.normalizer_spec.precompiled_charsmap)
    toks = {
        "unigram": convert(unigram_bytes, None, "unigram.json"),
        "xlmr": convert(unigram_bytes, "XLMRobertaTokenizer", "xlmr.json"),
        "bpe": convert(bpe_bytes, None, "bpe.json"),
    }
    sets = text_sets()
    samples = {name: [texts[0][:SAMPLE_CHARS]] for name, texts in sets.items()}
    samples["edge"] = EDGE
    sp = spm.SentencePieceProcessor(model_proto=unigram_bytes)
    out = {"samples": samples, "models": {}}
    for name, tok in toks.items():
        differ = []

        def against_sentencepiece(set_name, texts, ids_all):
            differ.extend(t for a, t in zip(ids_all, texts) if a != sp.encode(t))

        entry = model_entry(tok, sets, samples, against_sentencepiece if name == "unigram" else None)
        out["models"][name] = entry
        total = sum(s["ids"] for s in entry["sets"].values())
        note = f"; {len(differ)} texts differ from sentencepiece" if name == "unigram" else ""
        print(name, total, "ids on the full sets" + note)
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
