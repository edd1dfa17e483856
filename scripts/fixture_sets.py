"""What the tokenizer fixture scripts share: where the data is, the text sets they encode, and
the FNV-1a hash of ids that the Rust tests recompute (`tokenizer/tests/common/mod.rs`)."""
import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
if not os.path.isdir(DATA):
    DATA = "/work/shared/data"

FNV_OFFSET, FNV_PRIME, MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def fnv_ids(h, ids):
    """FNV-1a 64 continued from `h` over each id as 4 little-endian bytes, then 0xFFFFFFFF."""
    for i in list(ids) + [0xFFFFFFFF]:
        for b in i.to_bytes(4, "little"):
            h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def set_entry(ids_all):
    """The reference of one text set from the ids of each text: text and id counts and the FNV
    hash over all of them."""
    h, n = FNV_OFFSET, 0
    for ids in ids_all:
        h = fnv_ids(h, ids)
        n += len(ids)
    return {"texts": len(ids_all), "ids": n, "fnv64": f"{h:016x}"}


def model_entry(tok, sets, samples, check=None):
    """The reference of a `tokenizers` tokenizer: `sets` hashed with `set_entry`, the ids and
    decoded text of `samples`; `check(set_name, texts, ids_all)` sees every set's ids."""
    entry = {"sets": {}, "samples": {}, "decoded": {}}
    for set_name, texts in sets.items():
        ids_all = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        if check:
            check(set_name, texts, ids_all)
        entry["sets"][set_name] = set_entry(ids_all)
    for set_name, texts in samples.items():
        ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        entry["samples"][set_name] = ids
        entry["decoded"][set_name] = [tok.decode(i, skip_special_tokens=False) for i in ids]
    return entry


def read_jsonl(path, limit_bytes=None, limit_lines=None):
    """The `text` of each record of a JSONL file, stopping once `limit_bytes` bytes of text or
    `limit_lines` records have been read."""
    out, total = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            out.append(text)
            total += len(text.encode("utf-8"))
            if (limit_bytes and total >= limit_bytes) or (limit_lines and len(out) >= limit_lines):
                break
    return out


def training_lines(langs, limit_bytes):
    """The non-blank lines of the first `limit_bytes` bytes of data/corpus/<lang>.jsonl of each
    language in `langs`, as SentencePiece trains on them."""
    lines = []
    for lang in langs:
        for text in read_jsonl(os.path.join(DATA, "corpus", f"{lang}.jsonl"), limit_bytes=limit_bytes):
            lines.extend(t for t in text.split("\n") if t.strip())
    return lines


def text_sets():
    """`valid-<lang>`: every record of data/valid/<lang>.jsonl, whole; `udhr-<lang>`: every
    non-empty line of data/udhr/<lang>.txt."""
    sets = {}
    for path in sorted(glob.glob(os.path.join(DATA, "valid", "*.jsonl"))):
        lang = os.path.basename(path)[: -len(".jsonl")]
        with open(path, encoding="utf-8") as f:
            sets[f"valid-{lang}"] = [json.loads(l)["text"] for l in f if l.strip()]
    for path in sorted(glob.glob(os.path.join(DATA, "udhr", "*.txt"))):
        lang = os.path.basename(path)[: -len(".txt")]
        with open(path, encoding="utf-8") as f:
            sets[f"udhr-{lang}"] = [l.rstrip("\n") for l in f if l.strip()]
    return sets
