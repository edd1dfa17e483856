#!/usr/bin/env python3
"""Reference ids of the SentencePiece BPE models shipped by `mistral-common`, for the Rust parity
test `tokenizer/tests/mistral_sentencepiece.rs`.

Usage (from the workspace root):
    python3 -m venv .venv-tok && .venv-tok/bin/pip install sentencepiece mistral-common
    .venv-tok/bin/python scripts/make_mistral_sentencepiece_fixtures.py

The models (`tokenizer.model.v1`, `mistral_instruct_tokenizer_*.model.v2/v3/v7`, Apache-2.0, from
the mistral-common package) are about 0.5 MB each, so they are copied into the git-ignored
`tokenizer/tests/fixtures/large/mistral/` and not committed. What is committed is
`tokenizer/tests/fixtures/mistral/reference.json`: for every model and every text set
(`valid-<lang>`: each record of data/valid/<lang>.jsonl, whole, newlines included;
`udhr-<lang>`: each non-empty line of data/udhr/<lang>.txt) the number of texts, the number of
ids and a 64-bit FNV-1a hash of all ids (each id as 4 little-endian bytes, each text followed by
0xFFFFFFFF), plus a few sample texts (short cuts of each set and some edge cases) with their full ids.
"""
import glob
import json
import os
import shutil

import mistral_common
import sentencepiece as spm

from fixture_sets import FNV_OFFSET, ROOT, fnv_ids, text_sets  # noqa: E402

OUT = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "mistral")
LARGE = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "large", "mistral")
MODELS = ["tokenizer.model.v1", "*.model.v2", "*.model.v3", "*.model.v7"]
SAMPLE_CHARS = 200


def main():
    data_dir = os.path.join(os.path.dirname(mistral_common.__file__), "data")
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(LARGE, exist_ok=True)
    sets = text_sets()
    samples = {}
    for name, texts in sets.items():
        # A few short texts with the awkward cases: the first text, cut, and one with a newline.
        picked = [texts[0][:SAMPLE_CHARS]]
        with_newline = [t for t in texts if "\n" in t]
        if with_newline:
            picked.append(with_newline[0][:SAMPLE_CHARS])
        samples[name] = picked
    samples["edge"] = ["", " ", "  two  spaces  ", "\n", "a\nb", "tab\there", "<s> literal </s>",
                       "12345 ٣٤ ①", "ﬁ ｆｕｌｌ", "\u200b\ufeffzero", "\U0001F600 emoji", "e\u0301"]
    out = {"mistral_common": mistral_common.__version__, "samples": samples, "models": {}}
    for pattern in MODELS:
        for path in sorted(glob.glob(os.path.join(data_dir, pattern))):
            model = os.path.basename(path)
            shutil.copyfile(path, os.path.join(LARGE, model))
            sp = spm.SentencePieceProcessor(model_file=path)
            entry = {"sets": {}, "samples": {}}
            for name, texts in sets.items():
                h, n_ids = FNV_OFFSET, 0
                for ids in sp.encode(texts):
                    h = fnv_ids(h, ids)
                    n_ids += len(ids)
                entry["sets"][name] = {"texts": len(texts), "ids": n_ids, "fnv64": f"{h:016x}"}
            for name, texts in samples.items():
                entry["samples"][name] = sp.encode(texts)
            out["models"][model] = entry
            print(model, sum(s["ids"] for s in entry["sets"].values()), "ids")
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
