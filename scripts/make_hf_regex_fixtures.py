#!/usr/bin/env python3
"""Regular expressions as `tokenizers` runs them (Oniguruma), for the Rust tests
(`tokenizer/src/hf/regex/mod.rs`, `tokenizer/tests/hf_tokenizer.rs`).

Usage (from the workspace root):
    python3 -m venv .venv-tok && .venv-tok/bin/pip install tokenizers
    .venv-tok/bin/python scripts/make_hf_regex_fixtures.py

Committed output, tokenizer/tests/fixtures/hf/regex/:
    llama3.json     a byte-level BPE laid out as Llama 3's, Qwen2's and GPT-4-style tokenizer.json
                    files are: Split on the GPT-4 expression (letters, numbers in runs of up to
                    three, punctuation, `\\s+(?!\\S)`), then ByteLevel without its own regex;
                    vocab 1000, trained here with `tokenizers` on the 18 languages
    words.json      a BPE over the Whitespace pre-tokenizer (words and runs of other non-space
                    characters) after NFD, StripAccents and Lowercase; vocab 1000
    reference.json  {"samples", "models": {"llama3": ..., "words": ...}} as in
                    make_hf_tokenizer_fixtures.py,
                    and "regex": [[pattern, text, text with each match replaced by "<>"]]
"""
import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from fixture_sets import ROOT, model_entry, text_sets, training_lines

OUT = os.path.join(ROOT, "tokenizer", "tests", "fixtures", "hf", "regex")
LANGS = ["ar", "de", "en", "es", "fr", "he", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr",
         "vi", "zh"]
GPT4_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SAMPLE_CHARS = 160
EDGE = ["", " ", "  two  spaces  ", "\n", "a\nb", "a \n b\n\n", "tab\there", "x   ", "   lead",
        "Hello world's 12345 'RE  \n\n  x!!\n", "it'LL DON'T we'd", "١٢٣٤٥ ²³ 1234567",
        "Привет, 世界 — ok…", "\U0001F469\u200d\U0001F4BB 🇫🇷", "\u200b\ufeff\x00 ctl", "e\u0301 \u0e01\u0e34"]
REGEX = [
    (r"\A +| +\z", ["  a b  ", "a b", "   ", ""]),
    (" {2,}", ["a  b c   d", "    "]),
    ("\\A\u2581", ["\u2581a\u2581", "a\u2581"]),
    (r"<mask>|ﬁ|\[INST\]|\ |\#", ["a<mask>ﬁ[INST] #x"]),
    ("ab|abc", ["abcab"]),
    ("a+?", ["aaa"]),
    ("a*", ["baa", ""]),
    ("a*?b", ["aab b"]),
    (r"(?:ab)+c|x{2}", ["ababc abc xxx"]),
    ("[^a-c ]+", ["abxyz cd"]),
    (r"[\-\]a]+", ["a-]b"]),
    (".", ["a\nb"]),
    (r"\x41|\x{263a}", ["A\u263a"]),
    ("a{,2}", ["aaa a{,2}"]),
    ("a{2,3}", ["aaaaaaa"]),
    ("a{x}", ["a{x}"]),
    ("(?:a|)*", ["b"]),
    (r"\A", ["xy"]),
    (r"\z", ["xy"]),
    ("(a|ab)(c|bcd)", ["abcd"]),
    ("é|e\u0301", ["e\u0301 é"]),
    # Unicode sets, anchors per line, case folding, look-ahead: GPT-4-style splits.
    (r"\d+", ["1٣໑² \U0001D7CE\uff10x"]),
    (r"\w+", ["aé_1٣ß· Ⅻ²‿\u0301\u0903\u200d\u200c ª\U0001F600\u0e33\u0e4e"]),
    (r"\s", [" \t\n\x0b\x0c\r\x1c\xa0\u3000\u200b\x85\u2028\u2029\u202f\u205f\u1680\u2000\u200a\u180e\ufeff"]),
    (r"\S+|\D|\W", ["a1 ,٣"]),
    (r"\p{L}+|\p{N}+|\p{P}|\p{S}|\p{Z}|\p{M}|\p{C}", ["héllo 世界 ١٢ ² ½ Ⅻ, $+ \u0301\x00\u200e\u2028"]),
    (r"\p{Lu}\p{Ll}*|\p{^L}+|\P{N}", ["aBÇdé 12"]),
    (r"[^\s\p{L}\p{N}]+", ["a,.! b…ok"]),
    (r"^a|b$", ["ab\nab\r\nab"]),
    (r"(?i:ab)|(?i)ǆ|x(?-i)y", ["AB aB Ǆ ǅ ǆ XY xy xY"]),
    (r"(?i)k|[a-c]", ["Kk\u212a ABC"]),
    (r"\s+(?!\S)|\s+", ["a   b  ", "a \n b"]),
    (r"a(?=b)|c(?!d)", ["ab ac cd ce"]),
    (r"\x41\u00e9\x{1F600}", ["Aé\U0001F600"]),
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
     ["Hello world's 12345 'RE  \n\n  x!!\n", "Привет, 世界 ١٢٣٤ — it'LL"]),
]


def train_llama3_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_lines(LANGS, 40_000), trainer)
    return tok


def train_words():
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["[UNK]"], show_progress=False)
    tok.train_from_iterator(training_lines(LANGS, 40_000), trainer)
    return tok


def main():
    os.makedirs(OUT, exist_ok=True)
    toks = {"llama3": train_llama3_style(), "words": train_words()}
    sets = text_sets()
    samples = {name: [texts[0][:SAMPLE_CHARS]] for name, texts in sets.items()}
    samples["edge"] = EDGE
    out = {"samples": samples, "models": {}}
    for name, tok in toks.items():
        tok.save(os.path.join(OUT, f"{name}.json"))
        out["models"][name] = model_entry(tok, sets, samples)
        print(name, sum(s["ids"] for s in out["models"][name]["sets"].values()), "ids on the full sets")
    out["regex"] = [[p, t, normalizers.Replace(Regex(p), "<>").normalize_str(t)] for p, texts in REGEX for t in texts]
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
