#!/usr/bin/env python3
"""Train small SentencePiece models and write reference ids for the Rust parity test.

Usage (from the workspace root):
    pip install sentencepiece
    python3 scripts/make_sentencepiece_fixtures.py

Writes into tokenizer/tests/fixtures/sentencepiece/:
    bpe.model      BPE, byte_fallback, split_digits, vocab 2000
    unigram.model  unigram, byte_fallback, vocab 2000
    reference.json {"texts": {"<set>": [lines...]}, "ids": {"<model>": {"<set>": [[ids]...]}}}
Sets: valid-<lang> (first LINES lines of data/valid/<lang>.jsonl) and udhr-<lang>.
"""
import io
import json
import os
import sentencepiece as spm

from fixture_sets import DATA, ROOT, read_jsonl, training_lines

OUT = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "sentencepiece")
LANGS = ["en", "de", "ru", "zh"]
TRAIN_BYTES = 150_000  # per language
LINES = 120
MAX_CHARS = 200  # truncate long validation lines to keep the fixture small


def varint(data, pos):
    shift = value = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def put_varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def fields(data):
    """Yield (field, wire, raw bytes of the whole field) for one protobuf message."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = varint(data, pos)
            pos += n
        else:
            raise ValueError(f"wire type {wire}")
        yield key >> 3, wire, data[start:pos]


def strip_charsmap(model):
    """Drop NormalizerSpec.precompiled_charsmap (field 3.2, ~240 KB) to keep the fixtures
    small: the Rust importer then normalises by its NFKC fallback, which agrees with the map on
    these languages. Reference ids come from the unstripped model. (normalizer.model, from
    make_sentencepiece_normalizer_fixtures.py, keeps its map.)"""
    out = bytearray()
    for num, wire, raw in fields(model):
        if num == 3 and wire == 2:
            key_len = len(put_varint((3 << 3) | 2))
            _, body_start = varint(raw, key_len)
            body = b"".join(r for n, _, r in fields(raw[body_start:]) if n != 2)
            out += put_varint((3 << 3) | 2) + put_varint(len(body)) + body
        else:
            out += raw
    return bytes(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    train = training_lines(LANGS, TRAIN_BYTES)
    common = dict(vocab_size=2000, byte_fallback=True, character_coverage=0.98,
                  num_threads=4, minloglevel=2)
    for name, extra in [("bpe", dict(model_type="bpe", split_digits=True)),
                        ("unigram", dict(model_type="unigram"))]:
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(train), model_writer=buf, **common, **extra)
        with open(os.path.join(OUT, f"{name}.model"), "wb") as f:
            f.write(buf.getvalue())
    texts = {}
    for lang in LANGS:
        lines = []
        for text in read_jsonl(os.path.join(DATA, "valid", f"{lang}.jsonl"), limit_lines=LINES):
            lines.append(text.replace("\n", " ")[:MAX_CHARS])
        texts[f"valid-{lang}"] = lines
        with open(os.path.join(DATA, "udhr", f"{lang}.txt"), encoding="utf-8") as f:
            texts[f"udhr-{lang}"] = [l.rstrip("\n")[:MAX_CHARS] for l in f if l.strip()][:LINES]
    ids = {}
    for name in ["bpe", "unigram"]:
        path = os.path.join(OUT, f"{name}.model")
        sp = spm.SentencePieceProcessor(model_file=path)
        ids[name] = {k: [sp.encode(t) for t in v] for k, v in texts.items()}
        with open(path, "rb") as f:
            model = f.read()
        with open(path, "wb") as f:
            f.write(strip_charsmap(model))
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump({"texts": texts, "ids": ids}, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
