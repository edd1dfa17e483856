#!/usr/bin/env python3
"""Our tokenizer against Hugging Face `tokenizers`, `sentencepiece` and `tiktoken`, side by side
in one run on the same corpus and settings.

Usage (from the workspace root):
    python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers sentencepiece tiktoken
    cargo build --release -p polylm-tokenizer --bin tokenizer --example encode_bench --example ids_dump
    .venv-tok/bin/python benches/tokenizer_vs_hf.py [--vocab 32000,256000] [--alpha 0.5,0.3,1.0] [--timeout 1800]

Environment: TOKENIZER_BIN, ENCODE_BENCH and IDS_DUMP name the built binaries (default:
target/release/; IDS_DUMP is the `ids_dump` example, optional).
GPT-2's encoder.json + vocab.bpe are read from tokenizer/tests/fixtures/large/gpt2/ (made by
scripts/make_hf_tokenizer_fixtures.py); that part is skipped without them.

1. Training, per vocabulary size, each trainer in its own process under /usr/bin/time (wall time,
   peak RSS), on ../shared/data/corpus (18 languages, 85 MB):
   - ours: `tokenizer train` (NFKC, ▁ words, digits split, byte fallback, language balance with
     the first --alpha, default 0.5 like the trainer; every further --alpha is trained too, for
     the compression table only: --alpha 1.0 keeps the natural distribution, which is what
     sentencepiece sees); its phase times (counting, preparing, merges) are printed from its log;
   - tokenizers: BPE trainer, NFKC, Metaspace + Digits(individual), byte-fallback model, the 4
     specials and 256 <0xNN> tokens reserved (the trainer itself has no byte fallback);
   - sentencepiece: model_type=bpe, byte_fallback, split_digits, character_coverage=0.9995,
     all sentences, as many threads as the machine has.
   The Python trainers read the corpus as one text per line (the .jsonl texts split at newlines).
2. Encode MB/s on the validation split (4.7 MB), 1 and 2 threads, best of 3:
   - our largest model: ours vs `tokenizers` on its exported tokenizer.json (the same ids: with
     the ids_dump example built, they are compared on every validation text);
   - GPT-2 (50,257 byte-level): our tokenizer.json importer vs `tokenizers` vs `tiktoken`.
3. Compression on the validation split, per language: bytes per token of ours (each --alpha) and
   of the sentencepiece BPE trained at the same size on the same corpus.
Prints Markdown tables; writes models and logs under --work (default /tmp/tokbench).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
TOKENIZER_BIN = os.environ.get("TOKENIZER_BIN", os.path.join(TARGET, "release", "tokenizer"))
ENCODE_BENCH = os.environ.get("ENCODE_BENCH", os.path.join(TARGET, "release", "examples", "encode_bench"))
IDS_DUMP = os.environ.get("IDS_DUMP", os.path.join(TARGET, "release", "examples", "ids_dump"))
GPT2 = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "large", "gpt2")
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def timed(cmd, timeout, log):
    """Run cmd under /usr/bin/time; returns (wall seconds, peak RSS MB) or None on failure."""
    full = ["/usr/bin/time", "-f", "TIME %e %M"] + cmd
    with open(log, "w") as f:
        try:
            p = subprocess.run(full, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout"
    text = open(log).read()
    line = [l for l in text.splitlines() if l.startswith("TIME ")]
    if p.returncode != 0 or not line:
        return None
    _, secs, kb = line[-1].split()
    return float(secs), int(kb) / 1024


def corpus_txt(work):
    path = os.path.join(work, "corpus.txt")
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as out:
            for p in sorted(glob.glob(os.path.join(DATA, "corpus", "*.jsonl"))):
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        for t in json.loads(line)["text"].split("\n"):
                            if t.strip():
                                out.write(t + "\n")
    return path


def train_hf(corpus, vocab, out):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    specials = SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False)
    tok.train([corpus], trainer)
    tok.save(out)


def train_spm(corpus, vocab, out):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=out, model_type="bpe", vocab_size=vocab, byte_fallback=True,
        split_digits=True, character_coverage=0.9995, input_sentence_size=0, num_threads=os.cpu_count(),
        max_sentence_length=1 << 20, minloglevel=2, pad_id=3)


def valid_texts():
    out = {}
    for p in sorted(glob.glob(os.path.join(DATA, "valid", "*.jsonl"))):
        with open(p, encoding="utf-8") as f:
            out[os.path.basename(p)[:-6]] = [json.loads(l)["text"] for l in f if l.strip()]
    return out


def bench_python(fn, texts, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(texts)
        best = min(best, time.perf_counter() - t)
    return best


def ours_encode(model, threads):
    p = subprocess.run([ENCODE_BENCH, model, os.path.join(DATA, "valid"), str(threads)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", default="32000,256000")
    ap.add_argument("--alpha", default="0.5", help="our language-balance exponents (the first is timed)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per training run")
    ap.add_argument("--work", default="/tmp/tokbench")
    ap.add_argument("--skip-train", action="store_true", help="reuse models already in --work")
    ap.add_argument("--train-hf", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--train-spm", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.train_hf:
        return train_hf(a.train_hf[0], int(a.train_hf[1]), a.train_hf[2])
    if a.train_spm:
        return train_spm(a.train_spm[0], int(a.train_spm[1]), a.train_spm[2])
    os.makedirs(a.work, exist_ok=True)
    vocabs = [int(v) for v in a.vocab.split(",")]
    alphas = [float(x) for x in a.alpha.split(",")]
    # The first alpha's model is ours-<v>.json; further ones ours-a<alpha>-<v>.json.
    ours_name = lambda v, k: f"ours-{v}" if k == 0 else f"ours-a{alphas[k]:g}-{v}"
    corpus = corpus_txt(a.work)
    print(f"machine: {os.cpu_count()} cores, shared with other jobs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    print("\n### Training (wall s / peak RSS MB)\n")
    print("| vocab | ours | tokenizers | sentencepiece | ours / faster other |")
    print("|---|---|---|---|---|")
    for v in vocabs:
        w = lambda n: os.path.join(a.work, n)
        runs = {}
        if not a.skip_train:
            for k, alpha in enumerate(alphas):
                r = timed([TOKENIZER_BIN, "train", "--corpus", os.path.join(DATA, "corpus"), "--vocab-size", str(v),
                           "--alpha", str(alpha), "--out", w(ours_name(v, k) + ".json")], a.timeout,
                          w(ours_name(v, k) + ".log"))
                if k == 0:
                    runs["ours"] = r
                    log = w(ours_name(v, k) + ".log")
                    phases = [l.strip() for l in open(log) if "training time:" in l] if os.path.exists(log) else []
                    if phases:
                        print(f"(ours at alpha {alpha:g}, vocab {v}: {phases[-1]})")
                else:
                    print(f"(ours at alpha {alpha:g}, vocab {v}: {r[0]:.1f} s / {r[1]:.0f} MB)" if isinstance(r, tuple)
                          else f"(ours at alpha {alpha:g}, vocab {v}: {r})")
            runs["hf"] = timed([sys.executable, __file__, "--train-hf", corpus, str(v), w(f"hf-{v}.json")],
                               a.timeout, w(f"hf-{v}.log"))
            runs["spm"] = timed([sys.executable, __file__, "--train-spm", corpus, str(v), w(f"spm-{v}")],
                                a.timeout, w(f"spm-{v}.log"))
        fmt = lambda r: ("timeout" if r == "timeout" else "skipped" if a.skip_train else "failed" if not r
                         else f"{r[0]:.1f} s / {r[1]:.0f} MB")
        others = [r[0] for k, r in runs.items() if k != "ours" and isinstance(r, tuple)]
        ratio = (f"{runs['ours'][0] / min(others):.2f}×" if isinstance(runs.get("ours"), tuple) and others else "-")
        print(f"| {v} | {fmt(runs.get('ours'))} | {fmt(runs.get('hf'))} | {fmt(runs.get('spm'))} | {ratio} |")
        sys.stdout.flush()

    texts = valid_texts()
    flat = [t for ts in texts.values() for t in ts]
    mb = sum(len(t.encode("utf-8")) for t in flat) / 1e6
    big = max((v for v in vocabs if os.path.exists(os.path.join(a.work, f"ours-{v}.json"))), default=None)
    print(f"\n### Encode MB/s, validation split ({mb:.1f} MB), best of 3\n")
    print("| model | threads | ours | tokenizers | tiktoken | ours / faster other |")
    print("|---|---|---|---|---|---|")
    from tokenizers import Tokenizer
    id_check = None
    if big:
        ours_json = os.path.join(a.work, f"ours-{big}.json")
        hf_json = os.path.join(a.work, f"ours-{big}.tokenizer.json")
        subprocess.run([TOKENIZER_BIN, "export-hf", "--model", ours_json, "--out", hf_json], check=True)
        for threads in (1, 2):
            os.environ["RAYON_NUM_THREADS"] = str(threads)
            r = ours_encode(ours_json, threads)
            hf = Tokenizer.from_file(hf_json)
            hf.encode_special_tokens = True
            if threads == 1:
                s = bench_python(lambda ts: [hf.encode(t, add_special_tokens=False) for t in ts], flat)
            else:
                s = bench_python(lambda ts: hf.encode_batch(ts, add_special_tokens=False), flat)
            print(f"| ours {big} (export) | {threads} | {r['mb_per_s']:.1f} | {mb / s:.1f} | - | {r['mb_per_s'] / (mb / s):.2f}× |")
            sys.stdout.flush()
        if os.path.exists(IDS_DUMP):
            hf = Tokenizer.from_file(hf_json)
            hf.encode_special_tokens = True
            p = subprocess.run([IDS_DUMP, ours_json], input=json.dumps(flat), capture_output=True, text=True, check=True)
            ours_ids = json.loads(p.stdout)
            hf_ids = [e.ids for e in hf.encode_batch(flat, add_special_tokens=False)]
            bad = sum(x != y for x, y in zip(ours_ids, hf_ids))
            id_check = f"ids of ours and of `tokenizers` on the export: {bad} of {len(flat)} texts differ"
    if os.path.exists(os.path.join(GPT2, "vocab.bpe")):
        import tiktoken
        import tiktoken.load
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(GPT2, "vocab.bpe"),
                                                             os.path.join(GPT2, "encoder.json"))
        pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
        tt = tiktoken.Encoding(name="gpt2-local", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        hf = Tokenizer.from_file(os.path.join(GPT2, "tokenizer.json"))
        for threads in (1, 2):
            r = ours_encode(GPT2, threads)
            if threads == 1:
                s_hf = bench_python(lambda ts: [hf.encode(t, add_special_tokens=False) for t in ts], flat)
                s_tt = bench_python(lambda ts: [tt.encode_ordinary(t) for t in ts], flat)
            else:
                s_hf = bench_python(lambda ts: hf.encode_batch(ts, add_special_tokens=False), flat)
                s_tt = bench_python(lambda ts: tt.encode_ordinary_batch(ts, num_threads=2), flat)
            best = max(mb / s_hf, mb / s_tt)
            print(f"| GPT-2 50257 | {threads} | {r['mb_per_s']:.1f} | {mb / s_hf:.1f} | {mb / s_tt:.1f} | {r['mb_per_s'] / best:.2f}× |")
            sys.stdout.flush()

    if id_check:
        print(f"\n({id_check})")
    print("\n### Compression on the validation split (bytes per token; higher is better)\n")
    import sentencepiece as spm
    for v in vocabs:
        spm_model = os.path.join(a.work, f"spm-{v}.model")
        ours = [(alpha, os.path.join(a.work, ours_name(v, k) + ".json")) for k, alpha in enumerate(alphas)]
        ours = [(alpha, p) for alpha, p in ours if os.path.exists(p)]
        if not (ours and os.path.exists(spm_model)):
            print(f"vocab {v}: skipped (a model is missing)\n")
            continue
        rs = [ours_encode(p, 2) for _, p in ours]
        sp = spm.SentencePieceProcessor(model_file=spm_model)
        print(f"vocab {v} (ratio: ours / spm bytes per token, above 1 ours compresses better):\n")
        print("| lang | sentencepiece BPE | " + " | ".join(f"ours α={al:g} | ratio" for al, _ in ours) + " |")
        print("|---|---|" + "---|---|" * len(ours))
        tot_b, tot_s, tot_o = 0, 0, [0] * len(ours)
        for lang, ts in texts.items():
            b = rs[0]["langs"][lang][0]
            n_spm = sum(len(i) for i in sp.encode(ts))
            tot_b, tot_s = tot_b + b, tot_s + n_spm
            cells = []
            for k, r in enumerate(rs):
                n_ours = r["langs"][lang][1]
                tot_o[k] += n_ours
                cells.append(f"{b / n_ours:.3f} | {n_spm / n_ours:.3f}")
            print(f"| {lang} | {b / n_spm:.3f} | " + " | ".join(cells) + " |")
        print(f"| all | {tot_b / tot_s:.3f} | " + " | ".join(f"{tot_b / o:.3f} | {tot_s / o:.3f}" for o in tot_o) + " |\n")


if __name__ == "__main__":
    main()
