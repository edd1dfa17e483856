#!/usr/bin/env python3
"""Encode speed of `tokenizer.json` files: our importer (`HfTokenizer`) against Hugging Face
`tokenizers` on the same files, side by side in one run, on the validation split (4.6 MB, 18
languages). By default the files `transformers` writes for SentencePiece models
(tokenizer/tests/fixtures/hf/spm/: unigram.json, xlmr.json, bpe.json; the tests check that both
give the same ids on every validation text and UDHR line).

Usage (from the workspace root):
    cargo build --release -p polylm-tokenizer --example encode_bench
    .venv-tok/bin/python benches/tokenizer_json_vs_hf.py [--rounds 2] [FILE.json ...]

1 thread: one text at a time (Python) or a 1-thread pool (ours); 2 threads: `encode_batch`
(RAYON_NUM_THREADS=2) or a 2-thread pool. Each figure is the best of 3 passes with a cold cache;
rounds alternate the two libraries. Prints a Markdown table of MB/s and the ratio.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_vs_hf import ROOT, bench_python, ours_encode, valid_texts  # noqa: E402

SPM = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "hf", "spm")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", default=[os.path.join(SPM, f) for f in ["unigram.json", "xlmr.json", "bpe.json"]])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from tokenizers import Tokenizer
    flat = [t for texts in valid_texts().values() for t in texts]
    mb = sum(len(t.encode("utf-8")) for t in flat) / 1e6
    print(f"{len(flat)} texts, {mb:.2f} MB")
    print("| file | threads | ours MB/s | tokenizers MB/s | ours / tokenizers |")
    print("|---|---:|---|---|---|")
    for path in a.files:
        for threads in (1, 2):
            ours, theirs = [], []
            for _ in range(a.rounds):
                os.environ["RAYON_NUM_THREADS"] = str(threads)
                ours.append(ours_encode(path, threads)["mb_per_s"])
                if threads == 1:
                    fn = lambda ts: [tok.encode(t, add_special_tokens=False) for t in ts]
                else:
                    fn = lambda ts: tok.encode_batch(ts, add_special_tokens=False)
                tok = Tokenizer.from_file(path)
                theirs.append(mb / bench_python(fn, flat))
            ratios = " · ".join(f"{o / t:.2f}×" for o, t in zip(ours, theirs))
            print(f"| {os.path.basename(path)} | {threads} | {' · '.join(f'{o:.2f}' for o in ours)} | "
                  f"{' · '.join(f'{t:.2f}' for t in theirs)} | {ratios} |")


if __name__ == "__main__":
    main()
