#!/usr/bin/env python3
"""A SentencePiece model that keeps its precompiled normaliser map, and what the `sentencepiece`
library makes of hard text with it, for `tokenizer/tests/sentencepiece_normalizer.rs`.

Usage (from the workspace root):
    pip install sentencepiece
    python3 scripts/make_sentencepiece_normalizer_fixtures.py

Writes into tokenizer/tests/fixtures/sentencepiece/:
    normalizer.model  BPE, vocab 1000, byte_fallback, split_digits, the default nmt_nfkc rule
                      with its ~240 KB map kept, trained on all 18 languages of the corpus,
                      user-defined pieces "<mask>" and "ﬁ" (a ligature NFKC would split)
    normalizer.json   {"cases": [{"set", "text", "normalized", "ids"}...]} (ids null for the
                      code-point runs): validation lines of
                      every language (and their NFD forms for vi, ar, he, th, ko), every code
                      point from U+0000 to U+33FF and of a few higher blocks in runs, random
                      sequences of combining marks on bases of several scripts, whitespace
                      edge cases and the user-defined pieces
"""
import json
import os
import random
import unicodedata

import sentencepiece as spm

from fixture_sets import DATA, ROOT, read_jsonl, training_lines

OUT = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "sentencepiece")
LANGS = ["ar", "de", "en", "es", "fr", "he", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th",
         "tr", "vi", "zh"]
TRAIN_BYTES = 60_000  # per language
LINES = 8
MAX_CHARS = 200


def texts():
    cases = []
    for lang in LANGS:
        for t in read_jsonl(os.path.join(DATA, "valid", f"{lang}.jsonl"), limit_lines=LINES):
            t = t[:MAX_CHARS]
            cases.append((f"valid-{lang}", t))
            if lang in ("vi", "ar", "he", "th", "ko"):
                cases.append((f"nfd-{lang}", unicodedata.normalize("NFD", t)))
    points = [c for c in range(0x0, 0x3400) if not 0xD800 <= c < 0xE000]
    points += list(range(0xFB00, 0xFB50)) + list(range(0xFE00, 0xFFFE)) + list(range(0x1D400, 0x1D500))
    points += list(range(0x1F100, 0x1F200))
    for i in range(0, len(points), 40):
        cases.append(("code-points", "".join(chr(c) for c in points[i:i + 40])))
    rng = random.Random(0)
    bases = "aeiouyAEOU\u0627\u0644\u05d0\u05e9\u0e01\u0e2a\u0915\u1100\u3042"
    marks = [0x300, 0x301, 0x302, 0x303, 0x306, 0x309, 0x31B, 0x323, 0x327, 0x328, 0x338, 0x5B4,
             0x5BC, 0x5C1, 0x64E, 0x650, 0x651, 0x670, 0xE31, 0xE34, 0xE38, 0xE48, 0xE49, 0x93C,
             0x94D, 0x3099, 0x309A]
    for _ in range(300):
        t = " ".join("".join(rng.choice(bases) + "".join(chr(rng.choice(marks)) for _ in range(rng.randint(1, 3)))
                             for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3)))
        cases.append(("combining", t))
    for t in ["", " ", "   ", "\t\n", "  a  b  ", "a\u3000\u3000b", "\u200b\u200f x \ufeff",
              "ﬁ <mask> ﬁne", "<mask><mask>", " ﬁ", "x\u00a0\u2003y", "１２３ ４５６", "Ⅻ ㍿ ㈱"]:
        cases.append(("edge", t))
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    train = training_lines(LANGS, TRAIN_BYTES)
    path = os.path.join(OUT, "normalizer.model")
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(train), model_writer=f, vocab_size=1000, model_type="bpe",
            byte_fallback=True, split_digits=True, character_coverage=0.98,
            user_defined_symbols=["<mask>", "ﬁ"], num_threads=4, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=path)
    # Ids for everything but the code-point runs (mostly byte fallbacks there: their
    # normalisation is the point, and their ids would triple the file).
    out = [{"set": s, "text": t, "normalized": sp.normalize(t), "ids": None if s == "code-points" else sp.encode(t)}
           for s, t in texts()]
    with open(os.path.join(OUT, "normalizer.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": out}, f, ensure_ascii=False, separators=(",", ":"))
    print(len(out), "cases;", os.path.getsize(path), "byte model")


if __name__ == "__main__":
    main()
