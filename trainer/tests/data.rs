//! Tests of the data subsystem: shards, `data prepare` on the real corpus, the curriculum, the
//! sampler (mixture, packing, determinism, resume) and validation loss / bits per byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use polylm_tokenizer::{LanguageCorpus, Tokenizer, TrainConfig};
use polylm_trainer::data::{
    prepare, validate, write_shard, BatchSampler, Curriculum, DataError, Dataset, DocMeta, PrepareOptions,
    SamplerState, Shard, SplitMix64, StageConfig,
};
use polylm_trainer::tokenizer::RunTokenizer;

const LANGS: [&str; 3] = ["de", "en", "zh"];
const MAX_DOCS: usize = 50;

fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if p.join("corpus/en.jsonl").is_file() {
        Some(p)
    } else {
        eprintln!("skipping: the shared corpus is not at {}", p.display());
        None
    }
}

/// A fresh, empty temporary directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polylm-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn first_texts(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take(n)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect()
}

fn train_tokenizer(vocab_size: usize, docs: usize) -> Tokenizer {
    let data = shared_data().expect("shared data");
    let corpora: Vec<LanguageCorpus> = LANGS
        .iter()
        .map(|l| LanguageCorpus::new(*l, first_texts(&data.join(format!("corpus/{l}.jsonl")), docs)))
        .collect();
    let cfg = TrainConfig { vocab_size, ..Default::default() };
    Tokenizer::new(polylm_tokenizer::train(&corpora, &cfg).unwrap())
}

fn tokenizer() -> &'static RunTokenizer {
    static T: OnceLock<RunTokenizer> = OnceLock::new();
    T.get_or_init(|| RunTokenizer::ours(train_tokenizer(600, 60)))
}

fn ours() -> &'static Tokenizer {
    tokenizer().as_ours().expect("our tokenizer")
}

/// The dataset prepared once (3 languages, 50 documents each, train + valid).
fn prepared() -> Option<&'static Path> {
    static D: OnceLock<Option<PathBuf>> = OnceLock::new();
    D.get_or_init(|| {
        let data = shared_data()?;
        let out = temp_dir("prepared");
        let opts = PrepareOptions {
            train: data.join("corpus"),
            valid: Some(data.join("valid")),
            pairs: None,
            out: out.clone(),
            langs: Some(LANGS.iter().map(|s| s.to_string()).collect()),
            max_docs_per_lang: Some(MAX_DOCS),
        };
        let lines = std::sync::Mutex::new(Vec::new());
        let m = prepare(&opts, tokenizer(), &|s| lines.lock().unwrap().push(s.to_string())).unwrap();
        assert!(lines.lock().unwrap().len() >= 6);
        assert_eq!(m.splits["train"].len(), 3);
        Some(out)
    })
    .as_deref()
}

fn dataset() -> Option<Arc<Dataset>> {
    Some(Arc::new(Dataset::open(prepared()?).unwrap()))
}

fn random_docs(rng: &mut SplitMix64, n: usize, vocab: u32) -> Vec<(Vec<u32>, DocMeta)> {
    (0..n)
        .map(|i| {
            let len = if i == 3 { 0 } else { rng.below(200) as usize };
            let toks: Vec<u32> = (0..len).map(|_| rng.below(u64::from(vocab)) as u32).collect();
            let meta =
                DocMeta { tokens: len as u32, bytes: rng.below(10_000) as u32, source: rng.below(7) as u16 };
            (toks, meta)
        })
        .collect()
}

#[test]
fn shard_round_trip_u16_and_u32() {
    let dir = temp_dir("roundtrip");
    let mut rng = SplitMix64::new(7);
    for (vocab, width) in [(600u32, 2usize), (65_536, 2), (65_537, 4), (256_000, 4)] {
        let docs = random_docs(&mut rng, 37, vocab);
        let path = dir.join(format!("v{vocab}.bin"));
        let totals = write_shard(&path, vocab, &docs).unwrap();
        let shard = Shard::open(&path).unwrap();
        assert_eq!(shard.token_width(), width);
        assert_eq!(shard.vocab_size(), vocab);
        assert_eq!(shard.num_docs(), docs.len());
        let ntok: u64 = docs.iter().map(|d| d.0.len() as u64).sum();
        let nbytes: u64 = docs.iter().map(|d| u64::from(d.1.bytes)).sum();
        assert_eq!((shard.total_tokens(), shard.total_bytes()), (ntok, nbytes));
        assert_eq!((totals.docs, totals.tokens, totals.bytes), (docs.len() as u64, ntok, nbytes));
        // The largest id survives the narrow width.
        let mut out = vec![12345];
        for (i, (toks, meta)) in docs.iter().enumerate() {
            assert_eq!(shard.doc_meta(i), *meta);
            out.truncate(1);
            shard.doc_tokens(i, &mut out);
            assert_eq!(&out[1..], &toks[..], "doc {i}");
            if toks.len() > 5 {
                let mut part = Vec::new();
                shard.doc_tokens_range(i, 2..5, &mut part);
                assert_eq!(part, &toks[2..5]);
            }
        }
        assert!(!dir.join(format!("v{vocab}.bin.tmp-{}", std::process::id())).exists());
    }
    // Largest ids of each width.
    let path = dir.join("edge.bin");
    write_shard(&path, 65_536, &[(vec![65_535, 0], DocMeta { tokens: 2, bytes: 1, source: 0 })]).unwrap();
    let mut out = Vec::new();
    Shard::open(&path).unwrap().doc_tokens(0, &mut out);
    assert_eq!(out, [65_535, 0]);
    // An id outside the vocabulary is refused by the writer, which leaves no file behind.
    let bad = dir.join("bad.bin");
    let err = write_shard(&bad, 100, &[(vec![1, 100], DocMeta::default())]).unwrap_err();
    assert!(matches!(err, DataError::TokenOutOfVocab { id: 100, doc: 0, vocab_size: 100, .. }), "{err}");
    assert!(!bad.exists());
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn truncated_or_corrupt_shards_are_errors() {
    let dir = temp_dir("corrupt");
    let mut rng = SplitMix64::new(11);
    let docs = random_docs(&mut rng, 20, 1000);
    let good = dir.join("good.bin");
    write_shard(&good, 1000, &docs).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.join("broken.bin");
    let expect_corrupt = |data: &[u8], what: &str| {
        std::fs::write(&path, data).unwrap();
        match Shard::open(&path) {
            Err(DataError::Corrupt { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(!reason.is_empty());
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    };
    let step = (bytes.len() / 40).max(1);
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(step).collect();
    cuts.extend([1, 8, 63, 64, 65, 71, 72, bytes.len() - 8, bytes.len() - 1]);
    for cut in cuts {
        expect_corrupt(&bytes[..cut], &format!("cut at {cut}"));
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 8]);
    expect_corrupt(&longer, "trailing data");
    for pos in (0..bytes.len()).step_by(step).chain([0, 9, 13, 17, 25, 33, 41, bytes.len() - 1]) {
        let mut flipped = bytes.clone();
        flipped[pos] ^= 0x10;
        expect_corrupt(&flipped, &format!("flip at {pos}"));
    }
    let err = Shard::open(&dir.join("missing.bin")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.bin"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn prepare_real_corpus_and_open() {
    let Some(dir) = prepared() else { return };
    let data = shared_data().unwrap();
    let ds = Dataset::open(dir).unwrap();
    ds.check_tokenizer(tokenizer()).unwrap();
    assert_eq!(ds.langs("train"), LANGS);
    assert_eq!(ds.langs("valid"), LANGS);
    assert!(ds.langs("pairs").is_empty());
    assert_eq!(ds.vocab_size(), 600);
    assert_eq!(Some(ds.eos_id()), ours().model().special_id("</s>"));
    assert!(ds.source_id("manpages").is_some(), "{:?}", ds.manifest().sources);
    assert!(ds.source_id("no-such-source").is_none());
    for lang in LANGS {
        let shard = ds.shard("train", lang).unwrap();
        assert_eq!(shard.num_docs(), MAX_DOCS);
        assert_eq!(shard.token_width(), 2);
        // The first document decodes back to its text, with its byte length and source.
        let line = std::fs::read_to_string(data.join(format!("corpus/{lang}.jsonl"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        let text = v["text"].as_str().unwrap();
        let mut ids = Vec::new();
        shard.doc_tokens(0, &mut ids);
        assert_eq!(tokenizer().decode(&ids).unwrap(), ours().roundtrip_text(text));
        let meta = shard.doc_meta(0);
        assert_eq!(meta.bytes as usize, text.len());
        assert_eq!(ds.manifest().sources[meta.source as usize], v["source"].as_str().unwrap());
    }
    assert!(matches!(ds.shard("train", "fr"), Err(DataError::MissingLanguage { .. })));

    // Another tokenizer does not match.
    let other = train_tokenizer(500, 20);
    let err = ds.check_tokenizer(&RunTokenizer::ours(other)).unwrap_err();
    assert!(matches!(err, DataError::TokenizerMismatch { .. }), "{err}");
    assert!(err.to_string().contains("data prepare"), "{err}");

    // A missing manifest, and a corrupted shard inside a dataset.
    let copy = temp_dir("copy");
    assert!(matches!(Dataset::open(&copy), Err(DataError::NoData(_))));
    for sub in ["train", "valid"] {
        std::fs::create_dir_all(copy.join(sub)).unwrap();
        for lang in LANGS {
            let f = format!("{sub}/{lang}.bin");
            std::fs::copy(dir.join(&f), copy.join(&f)).unwrap();
        }
    }
    std::fs::copy(dir.join("manifest.json"), copy.join("manifest.json")).unwrap();
    Dataset::open(&copy).unwrap();
    let victim = copy.join("train/de.bin");
    let mut b = std::fs::read(&victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&victim, &b).unwrap();
    let err = Dataset::open(&copy).unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }) && err.to_string().contains("de.bin"), "{err}");
    std::fs::write(copy.join("manifest.json"), "{\"format\": 1").unwrap();
    assert!(matches!(Dataset::open(&copy), Err(DataError::Corrupt { .. })));
    std::fs::remove_dir_all(&copy).ok();

    // Requesting a language that has no input.
    let opts = PrepareOptions {
        train: data.join("corpus"),
        out: temp_dir("missing-lang"),
        langs: Some(vec!["xx".into()]),
        ..Default::default()
    };
    let err = prepare(&opts, tokenizer(), &|_| {}).unwrap_err();
    assert!(matches!(&err, DataError::MissingLanguage { lang, .. } if lang == "xx"), "{err}");
}

#[test]
fn malformed_inputs_name_the_line() {
    let dir = temp_dir("malformed");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let out = dir.join("out");
    let opts = PrepareOptions {
        train: input.clone(),
        out: out.clone(),
        max_docs_per_lang: None,
        ..Default::default()
    };
    let run = |content: &[u8]| {
        std::fs::write(input.join("en.jsonl"), content).unwrap();
        prepare(&opts, tokenizer(), &|_| {})
    };
    let err =
        run(b"{\"text\": \"a\"}\n\n{\"text\": \"b\", \"source\": \"x\"}\n{\"text\": oops}\n").unwrap_err();
    assert!(matches!(&err, DataError::Json { line: 4, .. }), "{err}");
    assert!(err.to_string().contains("en.jsonl:4"), "{err}");
    let err = run(b"{\"text\": \"a\"}\n{\"text\": \"\xff\xfe\"}\n").unwrap_err();
    assert!(matches!(&err, DataError::InvalidUtf8 { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("en.jsonl:2"), "{err}");
    let err = run(b"{\"text\": \"a\"}\n{\"source\": \"b\"}\n").unwrap_err();
    assert!(matches!(&err, DataError::MissingField { line: 2, field: "text", .. }), "{err}");
    let err = run(b"{\"text\": 5}\n").unwrap_err();
    assert!(matches!(&err, DataError::Json { line: 1, .. }) && err.to_string().contains("text"), "{err}");
    assert!(!out.join("manifest.json").exists());

    // Plain text: blank-line separated paragraphs; bilingual pairs.
    std::fs::remove_file(input.join("en.jsonl")).unwrap();
    std::fs::write(input.join("en.txt"), "first line\nstill first\n\n\nsecond\n  \nthird").unwrap();
    std::fs::write(input.join("de.txt"), "eins\n\nzwei\n").unwrap();
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"src_lang\": \"en\", \"tgt_lang\": \"de\", \"src\": \"one\", \"tgt\": \"eins\"}\n\
         {\"src_lang\": \"en\", \"tgt_lang\": \"de\", \"src\": \"two\", \"tgt\": \"zwei\"}\n\
         {\"src_lang\": \"en\", \"tgt_lang\": \"zh\", \"src\": \"one\", \"tgt\": \"一\", \"source\": \"dict\"}\n",
    )
    .unwrap();
    let opts2 = PrepareOptions { pairs: Some(pairs.clone()), ..opts.clone() };
    let m = prepare(&opts2, tokenizer(), &|_| {}).unwrap();
    assert_eq!(
        m.splits["train"].iter().map(|s| (s.lang.as_str(), s.docs)).collect::<Vec<_>>(),
        [("de", 2), ("en", 3)]
    );
    assert_eq!(
        m.splits["pairs"].iter().map(|s| (s.lang.as_str(), s.docs)).collect::<Vec<_>>(),
        [("en-de", 2), ("en-zh", 1)]
    );
    let ds = Dataset::open(&out).unwrap();
    let mut ids = Vec::new();
    ds.shard("train", "en").unwrap().doc_tokens(0, &mut ids);
    assert_eq!(tokenizer().decode(&ids).unwrap(), "first line\nstill first");
    ids.clear();
    let s = ds.shard("pairs", "en-zh").unwrap();
    s.doc_tokens(0, &mut ids);
    assert_eq!(tokenizer().decode(&ids).unwrap(), "one\n一");
    assert_eq!(ds.source_name(s.doc_meta(0).source), Some("dict"));
    // A pair line without "tgt".
    std::fs::write(&pairs, "{\"src_lang\": \"en\", \"tgt_lang\": \"de\", \"src\": \"one\"}\n").unwrap();
    let err = prepare(&opts2, tokenizer(), &|_| {}).unwrap_err();
    assert!(matches!(&err, DataError::MissingField { line: 1, field: "tgt", .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn folders_of_parts_stream_in_batches() {
    // A language split into parts (read in name order as one input), more documents than one
    // encoding batch, and a document limit that ends inside the second part.
    let Some(data) = shared_data() else { return };
    let dir = temp_dir("parts");
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("en")).unwrap();
    std::fs::create_dir_all(input.join("notes")).unwrap();
    std::fs::write(input.join("notes/README.md"), "not an input").unwrap();
    let texts: Vec<String> = first_texts(&data.join("corpus/en.jsonl"), 1500);
    let (head, tail) = texts.split_at(1200);
    let jsonl: String =
        head.iter().map(|t| format!("{}\n", serde_json::json!({"text": t, "source": "a"}))).collect();
    std::fs::write(input.join("en/part-0.jsonl"), jsonl).unwrap();
    // Plain text parts hold blank-line separated documents, so only texts without blank lines.
    let plain: Vec<String> = tail
        .iter()
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n"))
        .collect();
    std::fs::write(input.join("en/part-1.txt"), plain.join("\n\n")).unwrap();
    let out = dir.join("out");
    let opts = PrepareOptions { train: input.clone(), out: out.clone(), ..Default::default() };
    let m = prepare(&opts, tokenizer(), &|_| {}).unwrap();
    assert_eq!(
        m.splits["train"].iter().map(|s| (s.lang.as_str(), s.docs)).collect::<Vec<_>>(),
        [("en", 1500)]
    );
    let want: Vec<&String> = head.iter().chain(&plain).filter(|t| !t.is_empty()).collect();
    let dataset = Dataset::open(&out).unwrap();
    let shard = dataset.shard("train", "en").unwrap();
    assert_eq!(shard.num_docs(), want.len());
    let mut ids = Vec::new();
    for (i, text) in want.iter().enumerate() {
        ids.clear();
        shard.doc_tokens(i, &mut ids);
        assert_eq!(ids, ours().encode(text), "document {i}");
        assert_eq!(shard.doc_meta(i).bytes as usize, text.len(), "document {i}");
    }

    let opts = PrepareOptions { max_docs_per_lang: Some(1250), ..opts };
    let m = prepare(&opts, tokenizer(), &|_| {}).unwrap();
    assert_eq!(m.splits["train"][0].docs, 1250);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gzip_inputs_read_as_their_text() {
    use std::io::Write;
    let Some(data) = shared_data() else { return };
    let dir = temp_dir("gzip");
    let (plain_in, gz_in) = (dir.join("plain"), dir.join("gz"));
    for d in [&plain_in, &gz_in.join("de")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let jsonl = |lang: &str, n: usize| -> Vec<u8> {
        let src = std::fs::read_to_string(data.join(format!("corpus/{lang}.jsonl"))).unwrap();
        src.lines().take(n).flat_map(|l| format!("{l}\n").into_bytes()).collect()
    };
    let gzip = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let (en, de) = (jsonl("en", 40), jsonl("de", 60));
    std::fs::write(plain_in.join("en.jsonl"), &en).unwrap();
    std::fs::write(plain_in.join("de.jsonl"), &de).unwrap();
    std::fs::write(gz_in.join("en.jsonl.gz"), gzip(&en)).unwrap();
    // Two gzip members in one part (as concatenated parts are), and a plain part after it.
    let cut = de.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(29).unwrap().0 + 1;
    let mut two = gzip(&de[..cut / 2]);
    two.extend(gzip(&de[cut / 2..cut]));
    std::fs::write(gz_in.join("de/0.jsonl.gz"), two).unwrap();
    std::fs::write(gz_in.join("de/1.jsonl"), &de[cut..]).unwrap();
    // A manifest beside the inputs is not a language.
    std::fs::write(gz_in.join("manifest.json"), "{}").unwrap();
    let run = |input: &Path, out: &str| {
        let out = dir.join(out);
        let opts = PrepareOptions { train: input.to_path_buf(), out: out.clone(), ..Default::default() };
        let m = prepare(&opts, tokenizer(), &|_| {}).unwrap();
        (m, out)
    };
    let (m_plain, out_plain) = run(&plain_in, "out-plain");
    let (m_gz, out_gz) = run(&gz_in, "out-gz");
    assert_eq!(m_plain.splits, m_gz.splits);
    assert_eq!(
        m_gz.splits["train"].iter().map(|s| (s.lang.as_str(), s.docs)).collect::<Vec<_>>(),
        [("de", 60), ("en", 40)]
    );
    for lang in ["de", "en"] {
        let file = format!("train/{lang}.bin");
        assert_eq!(std::fs::read(out_plain.join(&file)).unwrap(), std::fs::read(out_gz.join(&file)).unwrap());
    }

    // A damaged or truncated gzip file is an error naming it.
    let whole = gzip(&en);
    for (name, bytes) in [("truncated", whole[..whole.len() / 2].to_vec()), ("not gzip", en.clone())] {
        std::fs::write(gz_in.join("en.jsonl.gz"), &bytes).unwrap();
        let opts = PrepareOptions { train: gz_in.clone(), out: dir.join("out-bad"), ..Default::default() };
        let err = prepare(&opts, tokenizer(), &|_| {}).unwrap_err();
        assert!(
            matches!(err, DataError::Io { .. }) && err.to_string().contains("en.jsonl.gz"),
            "{name}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pairs_stream_into_one_shard_per_language_pair() {
    use std::io::Write;
    let Some(data) = shared_data() else { return };
    let dir = temp_dir("pairs");
    let input = dir.join("in");
    let pairs = dir.join("pairs");
    for d in [&input, &pairs] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(data.join("corpus/en.jsonl"), input.join("en.jsonl")).unwrap();
    // 1,500 pairs (more than one encoding batch) alternating two language pairs, over a plain
    // and a gzip file.
    let line = |i: usize| {
        let tgt = if i.is_multiple_of(2) { "de" } else { "fr" };
        format!(
            "{}\n",
            serde_json::json!({"src_lang": "en", "tgt_lang": tgt, "src": format!("pair {i}"), "tgt": format!("Paar {i}")})
        )
    };
    let first: String = (0..900).map(line).collect();
    let second: String = (900..1500).map(line).collect();
    std::fs::write(pairs.join("a.jsonl"), first).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(second.as_bytes()).unwrap();
    std::fs::write(pairs.join("b.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let out = dir.join("out");
    let opts = PrepareOptions {
        train: input.clone(),
        pairs: Some(pairs.clone()),
        out: out.clone(),
        max_docs_per_lang: Some(700),
        ..Default::default()
    };
    let m = prepare(&opts, tokenizer(), &|_| {}).unwrap();
    assert_eq!(
        m.splits["pairs"].iter().map(|s| (s.lang.as_str(), s.docs)).collect::<Vec<_>>(),
        [("en-de", 700), ("en-fr", 700)]
    );
    let dataset = Dataset::open(&out).unwrap();
    let mut ids = Vec::new();
    for (pair, doc, i) in [("en-de", 0, 0), ("en-de", 699, 1398), ("en-fr", 450, 901), ("en-fr", 699, 1399)] {
        ids.clear();
        dataset.shard("pairs", pair).unwrap().doc_tokens(doc, &mut ids);
        assert_eq!(tokenizer().decode(&ids).unwrap(), format!("pair {i}\nPaar {i}"), "{pair} {doc}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn stage(name: &str) -> StageConfig {
    StageConfig { name: name.into(), start_step: Some(0), ..Default::default() }
}

#[test]
fn curriculum_validation() {
    let Some(ds) = dataset() else { return };
    let none = BTreeMap::new();
    let bad = |stages: &[StageConfig], subsets: &BTreeMap<String, Vec<String>>, needle: &str| {
        match Curriculum::new(stages, subsets, &ds, 1000) {
            Err(DataError::BadCurriculum(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
            other => panic!("expected BadCurriculum({needle}), got {other:?}"),
        }
    };
    bad(&[], &none, "no stages");
    bad(&[StageConfig { start_tokens: Some(5), ..stage("a") }], &none, "exactly one");
    bad(&[StageConfig { start_step: None, ..stage("a") }], &none, "exactly one");
    bad(&[StageConfig { start_step: Some(3), ..stage("a") }], &none, "step 0");
    bad(&[stage("a"), StageConfig { start_step: Some(0), ..stage("b") }], &none, "\"b\"");
    bad(
        &[stage("a"), StageConfig { start_fraction: Some(1.5), start_step: None, ..stage("b") }],
        &none,
        "start_fraction",
    );
    bad(
        &[
            stage("a"),
            StageConfig { start_fraction: Some(0.5), start_step: None, ..stage("b") },
            StageConfig { start_step: Some(400), ..stage("c") },
        ],
        &none,
        "\"c\"",
    );
    bad(&[stage("a"), stage("a")], &none, "another stage");
    bad(&[StageConfig { non_english: Some(1.2), ..stage("a") }], &none, "non_english");
    bad(&[StageConfig { alpha: Some(-1.0), ..stage("a") }], &none, "alpha");
    let w = |pairs: &[(&str, f64)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect());
    bad(&[StageConfig { weights: w(&[("en", 1.0), ("xx", 1.0)]), ..stage("a") }], &none, "weights.xx");
    bad(&[StageConfig { weights: w(&[("en", -1.0)]), ..stage("a") }], &none, "weights.en");
    bad(&[StageConfig { weights: w(&[("en", 0.0)]), ..stage("a") }], &none, "sum to 0");
    bad(
        &[StageConfig { weights: w(&[("en", 1.0)]), non_english: Some(0.5), ..stage("a") }],
        &none,
        "combined",
    );
    bad(&[StageConfig { bilingual: Some(0.1), ..stage("a") }], &none, "bilingual");
    bad(&[StageConfig { subset: Some("nope".into()), ..stage("a") }], &none, "unknown subset");
    let subsets: BTreeMap<String, Vec<String>> =
        [("s".to_string(), vec!["no-such-source".to_string()])].into();
    bad(&[stage("a")], &subsets, "no-such-source");

    // The default schedule: 30% then 60% non-English, hq subset from 80% of the steps.
    let c = Curriculum::new(&Curriculum::default_stages_for(&ds), &none, &ds, 1000).unwrap();
    assert_eq!(c.num_stages(), 2);
    assert_eq!((c.stage_at(0, 0), c.stage_at(799, 0), c.stage_at(800, 0)), (0, 0, 1));
    assert_eq!(c.stage_name(1), "final");
    for (i, ne) in [(0, 0.3), (1, 0.6)] {
        let w: BTreeMap<_, _> = c.weights(i).iter().cloned().collect();
        assert!((w["en"] - (1.0 - ne)).abs() < 1e-12, "{w:?}");
        assert!((w.values().sum::<f64>() - 1.0).abs() < 1e-12);
        // Non-English languages ∝ tokens^0.3 of their whole split (a subset does not change it).
        let t = |l: &str| (ds.shard("train", l).unwrap().total_tokens() as f64).powf(0.3);
        assert!((w["de"] / w["zh"] - t("de") / t("zh")).abs() < 1e-9);
    }
    assert_eq!(c.stage_subset(1), Some("hq"));
    // Token starts, and TOML with unknown fields refused.
    let toml_text = "name = \"x\"\nstart_tokens = 0\nweights = { en = 2.0, de = 1.0, zh = 1.0 }\n";
    let st: StageConfig = toml::from_str(toml_text).unwrap();
    let c = Curriculum::new(
        &[st, StageConfig { start_tokens: Some(100), start_step: None, ..stage("y") }],
        &none,
        &ds,
        10,
    )
    .unwrap();
    assert_eq!((c.stage_at(1000, 99), c.stage_at(0, 100)), (0, 1));
    assert_eq!(c.weights(0), [("de".to_string(), 0.25), ("en".to_string(), 0.5), ("zh".to_string(), 0.25)]);
    assert!(toml::from_str::<StageConfig>("name = \"x\"\nstart_step = 0\nnon_englsh = 0.3\n").is_err());
}

fn fixed(ds: &Dataset, pairs: &[(&str, f64)]) -> Curriculum {
    let w: BTreeMap<String, f64> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    Curriculum::fixed(&w, ds).unwrap()
}

#[test]
fn mixture_proportions_and_stream_continuity() {
    let Some(ds) = dataset() else { return };
    let target = [("de", 0.3), ("en", 0.5), ("zh", 0.2)];
    let mut s = BatchSampler::new(ds.clone(), fixed(&ds, &target), 16, 3);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_target: BTreeMap<String, u32> = BTreeMap::new();
    let rows = 2000;
    for step in 0..(rows / 20) {
        let b = s.next_batch(20, step as u64, 0).unwrap();
        assert_eq!((b.ids.len(), b.targets.len(), b.batch, b.seq), (320, 320, 20, 16));
        assert_eq!(b.lang_tokens.values().sum::<u64>(), 320);
        for (r, lang) in b.row_langs.iter().enumerate() {
            *counts.entry(lang.clone()).or_default() += 1;
            let ids = &b.ids[r * 16..(r + 1) * 16];
            let tg = &b.targets[r * 16..(r + 1) * 16];
            assert_eq!(&tg[..15], &ids[1..]);
            // The next row of a language starts with the previous row's last target.
            if let Some(prev) = last_target.insert(lang.clone(), tg[15]) {
                assert_eq!(prev, ids[0]);
            }
        }
    }
    for (lang, p) in target {
        let observed = counts[lang] as f64 / rows as f64;
        let sigma = (p * (1.0 - p) / rows as f64).sqrt();
        assert!((observed - p).abs() < 4.0 * sigma, "{lang}: {observed} vs {p}");
        assert_eq!(s.tokens_seen()[lang], counts[lang] as u64 * 16);
    }
}

#[test]
fn packing_reproduces_documents_in_permutation_order() {
    let Some(ds) = dataset() else { return };
    let seq = 128;
    let eos = ds.eos_id();
    let shard = ds.shard("train", "en").unwrap();
    let docs: Vec<Vec<u32>> = (0..shard.num_docs())
        .map(|i| {
            let mut v = Vec::new();
            shard.doc_tokens(i, &mut v);
            v
        })
        .collect();
    // Enough rows for more than two epochs.
    let total = shard.total_tokens() as usize + docs.len();
    let rows = (2 * total) / seq + 10;
    let mut s = BatchSampler::new(ds.clone(), fixed(&ds, &[("en", 1.0)]), seq, 42);
    let mut stream = Vec::new();
    let mut last = 0;
    for step in 0..rows.div_ceil(8) {
        let b = s.next_batch(8, step as u64, 0).unwrap();
        assert!(b.row_langs.iter().all(|l| l == "en"));
        stream.extend_from_slice(&b.ids);
        last = *b.targets.last().unwrap();
    }
    stream.push(last);
    // Split at EOS: whole documents, each epoch a permutation of all of them.
    let segments: Vec<&[u32]> = stream.split(|&t| t == eos).collect();
    let complete = &segments[..segments.len() - 1];
    assert!(complete.len() >= 2 * docs.len(), "{} segments", complete.len());
    let mut orders = Vec::new();
    for epoch in complete.chunks(docs.len()).take(2) {
        let mut order: Vec<usize> = epoch
            .iter()
            .map(|seg| docs.iter().position(|d| d.as_slice() == *seg).expect("a segment is a whole document"))
            .collect();
        orders.push(order.clone());
        order.sort_unstable();
        order.dedup();
        assert_eq!(order.len(), docs.len(), "an epoch visits every document once");
    }
    assert_ne!(orders[0], orders[1], "each epoch has its own order");
    assert_ne!(orders[0], (0..docs.len()).collect::<Vec<_>>(), "documents are shuffled");
}

#[test]
fn sampler_is_deterministic_and_resumes_exactly() {
    let Some(ds) = dataset() else { return };
    let stages = vec![
        StageConfig { name: "one".into(), start_step: Some(0), non_english: Some(0.4), ..Default::default() },
        StageConfig {
            name: "two".into(),
            start_step: Some(12),
            subset: Some("hq".into()),
            ..Default::default()
        },
    ];
    let subsets: BTreeMap<String, Vec<String>> =
        [("hq".to_string(), vec!["manpages".to_string(), "debian-handbook".to_string()])].into();
    let make =
        |seed| BatchSampler::new(ds.clone(), Curriculum::new(&stages, &subsets, &ds, 30).unwrap(), 24, seed);
    let run = |s: &mut BatchSampler, from: u64, to: u64| -> Vec<(Vec<u32>, Vec<u32>, usize)> {
        (from..to)
            .map(|step| {
                let b = s.next_batch(6, step, step * 6 * 24).unwrap();
                (b.ids, b.targets, b.stage)
            })
            .collect()
    };
    let mut a = make(5);
    let all = run(&mut a, 0, 30);
    assert_eq!(all[11].2, 0);
    assert_eq!(all[12].2, 1);
    let mut b = make(5);
    assert_eq!(run(&mut b, 0, 30), all, "same seed, same batches");
    let mut c = make(6);
    assert_ne!(run(&mut c, 0, 30), all, "another seed, other batches");

    for cut in [0u64, 7, 12, 20] {
        let mut first = make(5);
        run(&mut first, 0, cut);
        let state = first.state();
        // Through JSON, as in a checkpoint.
        let json = serde_json::to_string(&state).unwrap();
        let back: SamplerState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        let mut resumed = make(5);
        resumed.restore(back).unwrap();
        assert_eq!(run(&mut resumed, cut, 30), &all[cut as usize..], "resume at {cut}");
        assert_eq!(resumed.tokens_seen(), a.tokens_seen());
    }
    // States that do not fit.
    let state = a.state();
    let mut other =
        BatchSampler::new(ds.clone(), Curriculum::new(&stages, &subsets, &ds, 30).unwrap(), 32, 5);
    assert!(matches!(other.restore(state.clone()), Err(DataError::BadState(_))));
    let mut wrong = state.clone();
    if let Some(c) = wrong.streams.values_mut().next() {
        c.position = 1_000_000;
    }
    assert!(matches!(make(5).restore(wrong), Err(DataError::BadState(_))));
    let mut wrong = state;
    wrong.streams.insert("xx".into(), Default::default());
    assert!(matches!(make(5).restore(wrong), Err(DataError::BadState(_))));
}

#[test]
fn validate_tiny_model() {
    let Some(ds) = dataset() else { return };
    let mut cfg = polylm_model::ModelConfig::preset("tiny").unwrap();
    cfg.vocab_size = ds.vocab_size() as usize;
    cfg.layers = 1;
    cfg.hidden = 32;
    cfg.heads = 2;
    cfg.ffn = 64;
    cfg.context = 64;
    let model = polylm_model::Gpt::new(cfg, polylm_engine::DType::F32, 1).unwrap();
    let evals = validate(&model, &ds, "valid", 32, 4, 400).unwrap();
    assert_eq!(evals.iter().map(|e| e.lang.as_str()).collect::<Vec<_>>(), LANGS);
    let ln_v = (ds.vocab_size() as f64).ln();
    for e in &evals {
        assert!(e.loss.is_finite() && e.bpb.is_finite(), "{e:?}");
        assert!(e.tokens >= 400 && e.bytes > 0, "{e:?}");
        // A freshly initialised model is close to uniform.
        assert!((e.loss - ln_v).abs() < 0.5, "{e:?} vs ln V = {ln_v}");
        let bpb = e.loss * e.tokens as f64 / std::f64::consts::LN_2 / e.bytes as f64;
        assert!((e.bpb - bpb).abs() < 1e-9 * bpb, "{e:?}");
    }
    // The tokens counted are exactly the whole documents taken.
    let shard = ds.shard("valid", "en").unwrap();
    let mut n = 0u64;
    let mut i = 0;
    while n < 400 {
        n += u64::from(shard.doc_meta(i).tokens);
        i += 1;
    }
    assert_eq!(evals[1].tokens, n);
    assert!(matches!(validate(&model, &ds, "valid", 128, 2, 100), Err(DataError::Model(_))));
    assert!(matches!(validate(&model, &ds, "nope", 32, 2, 100), Err(DataError::NoData(_))));
}

/// The whole 18-language corpus (manual check of speed: `cargo test --release -p
/// polylm-trainer --test data -- --ignored --nocapture`).
#[test]
#[ignore]
fn full_corpus_prepare_open_and_sample() {
    let Some(data) = shared_data() else { return };
    let out = temp_dir("full");
    let opts = PrepareOptions {
        train: data.join("corpus"),
        valid: Some(data.join("valid")),
        out: out.clone(),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let m = prepare(&opts, tokenizer(), &|s| eprintln!("{s}")).unwrap();
    eprintln!("prepare: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(m.splits["train"].len(), 18);
    let t = std::time::Instant::now();
    let ds = Arc::new(Dataset::open(&out).unwrap());
    eprintln!("open (checksums): {:.3} s", t.elapsed().as_secs_f64());
    let c = Curriculum::new(&Curriculum::default_stages_for(&ds), &BTreeMap::new(), &ds, 100).unwrap();
    for i in 0..c.num_stages() {
        eprintln!("{}: {:?}", c.stage_name(i), c.weights(i));
    }
    let mut s = BatchSampler::new(ds, c, 512, 0);
    let t = std::time::Instant::now();
    for step in 0..100 {
        s.next_batch(32, step, 0).unwrap();
    }
    eprintln!("sampler: {:.0} tokens/ms", (100 * 32 * 512) as f64 / t.elapsed().as_secs_f64() / 1000.0);
    eprintln!("tokens seen: {:?}", s.tokens_seen());
    std::fs::remove_dir_all(&out).ok();
}
