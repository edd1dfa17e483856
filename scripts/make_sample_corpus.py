#!/usr/bin/env python3
"""Rebuilds data/sample/ (the corpus bundled for the quickstart) from ../shared/data.

For each of the 18 languages it keeps the first documents of the training split up to
TRAIN_BYTES of text and of the validation split up to VALID_BYTES (the splits are already
shuffled, so the first documents are a fair sample of every source). Deterministic: running it
again gives the same files.

    python3 scripts/make_sample_corpus.py [--shared ../shared/data] [--out data/sample]
"""
import argparse
import json
import pathlib

TRAIN_BYTES = 300_000
VALID_BYTES = 40_000


def take(src: pathlib.Path, dst: pathlib.Path, budget: int) -> tuple[int, int]:
    docs = size = 0
    with src.open(encoding="utf-8") as f, dst.open("w", encoding="utf-8") as out:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            n = len(doc["text"].encode("utf-8"))
            if size + n > budget and docs > 0:
                continue
            out.write(json.dumps({"text": doc["text"], "source": doc.get("source", "unknown")}, ensure_ascii=False) + "\n")
            docs += 1
            size += n
            if size >= budget * 0.98:
                break
    return docs, size


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--out", default="data/sample")
    a = p.parse_args()
    shared, out = pathlib.Path(a.shared), pathlib.Path(a.out)
    for split, budget in (("corpus", TRAIN_BYTES), ("valid", VALID_BYTES)):
        (out / split).mkdir(parents=True, exist_ok=True)
        for src in sorted((shared / split).glob("*.jsonl")):
            docs, size = take(src, out / split / src.name, budget)
            print(f"{split}/{src.name}: {docs} documents, {size} bytes")


if __name__ == "__main__":
    main()
