//! End-to-end tests of the `tokenizer` binary on a tiny temporary corpus.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_tokenizer");

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "polylm-tok-cli-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run tokenizer binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn jsonl(texts: &[String]) -> String {
    texts.iter().map(|t| format!("{}\n", serde_json::json!({ "text": t }))).collect()
}

const LANGS: [(&str, &str, &str); 3] = [
    ("en", "Article", "the quick brown fox jumps over the lazy dog and all human beings are born free"),
    (
        "de",
        "Artikel",
        "alle Menschen sind frei und gleich an Würde und Rechten geboren und mit Vernunft begabt",
    ),
    ("ru", "Статья", "все люди рождаются свободными и равными в своем достоинстве и правах"),
];

/// corpus/, valid/ and udhr/ folders for three languages.
fn write_data(root: &Path) {
    for sub in ["corpus", "valid", "udhr"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for (lang, heading, sentence) in LANGS {
        let texts: Vec<String> = (0..40).map(|i| format!("{sentence} {i}. {sentence}!")).collect();
        std::fs::write(root.join("corpus").join(format!("{lang}.jsonl")), jsonl(&texts)).unwrap();
        std::fs::write(root.join("valid").join(format!("{lang}.jsonl")), jsonl(&texts[..5])).unwrap();
        let mut udhr = format!("Title\n\nPreamble\n{sentence}\n\n");
        for i in 1..=12 {
            udhr.push_str(&format!("{heading} {i}\n{sentence}.\n\n"));
        }
        std::fs::write(root.join("udhr").join(format!("{lang}.txt")), udhr).unwrap();
    }
}

fn train(root: &Path) -> PathBuf {
    let model = root.join("tok.json");
    let o = run(&[
        "train",
        "--corpus",
        root.join("corpus").to_str().unwrap(),
        "--vocab-size",
        "400",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("reading") && err.contains("merges done") && err.contains("vocab size"), "{err}");
    assert!(model.is_file());
    model
}

#[test]
fn train_encode_decode_stats() {
    let dir = TempDir::new("main");
    write_data(&dir.0);
    let model = train(&dir.0);
    let m = model.to_str().unwrap();

    // Encode two lines, decode each back.
    let text = "all human beings are born free\nalle Menschen sind frei";
    let o = run(&["encode", "--model", m, "--text", text]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (ids, original) in lines.iter().zip(text.lines()) {
        assert!(ids.split(' ').all(|t| t.parse::<u32>().is_ok()), "{ids}");
        let o = run(&["decode", "--model", m, "--ids", ids]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim_end_matches('\n'), original);
    }

    // Encode from a file gives the same ids.
    let input = dir.0.join("input.txt");
    std::fs::write(&input, format!("{text}\n")).unwrap();
    let o = run(&["encode", "--model", m, "--file", input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), out);

    // Stats with the model twice (side by side).
    let o = run(&[
        "stats",
        "--model",
        m,
        "--model",
        m,
        "--udhr",
        dir.0.join("udhr").to_str().unwrap(),
        "--valid",
        dir.0.join("valid").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    for (lang, _, _) in LANGS {
        let row = table.lines().find(|l| l.starts_with(lang)).unwrap_or_else(|| panic!("{lang}: {table}"));
        assert!(row.contains(" 12 "), "12 articles expected: {row}");
        assert_eq!(row.matches('|').count(), 2, "{row}");
    }
    assert!(table.contains("total"), "{table}");
}

#[test]
fn errors_exit_with_code_1() {
    let dir = TempDir::new("err");
    let missing = dir.0.join("no-such-model.json");
    let o = run(&["encode", "--model", missing.to_str().unwrap(), "--text", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no-such-model.json") && err.lines().count() == 1, "{err}");

    // A malformed model file.
    let bad = dir.0.join("bad.json");
    std::fs::write(&bad, "{\"format\": \"polylm-bpe\"").unwrap();
    let o = run(&["decode", "--model", bad.to_str().unwrap(), "--ids", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.json"), "{}", stderr(&o));

    // Files that are neither of the formats say which format they were taken for and why.
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "format.json",
            b"{\"format\": \"polylm-bpe-v9\", \"version\": 1}",
            "unknown tokenizer format \"polylm-bpe-v9\"",
        ),
        ("empty.json", b"", "is empty"),
        ("text.json", b"vocab = [1, 2]\n", "not JSON, and not a SentencePiece model either"),
        (
            "noise.model",
            &[0x0f, 0xff, 0x13, 0x07, 0x99, 0x01],
            "not JSON, and not a SentencePiece model either",
        ),
    ];
    for (file, bytes, want) in cases {
        let path = dir.0.join(file);
        std::fs::write(&path, bytes).unwrap();
        let o = run(&["encode", "--model", path.to_str().unwrap(), "--text", "hi"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains(file) && stderr(&o).contains(want), "{file}: {}", stderr(&o));
    }

    // A tokenizer.json whose ids have a gap: decoding the missing id says so.
    let gappy = dir.0.join("gappy.json");
    std::fs::write(&gappy, r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}, "merges": []}}"#).unwrap();
    let o = run(&["decode", "--model", gappy.to_str().unwrap(), "--ids", "0 1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("token id 1 names no token"), "{}", stderr(&o));
    let o = run(&["decode", "--model", gappy.to_str().unwrap(), "--ids", "3"]);
    assert!(stderr(&o).contains("token id 3 is out of range (vocab size 3)"), "{}", stderr(&o));

    // Invalid UTF-8 in a corpus file names the file and the line.
    let corpus = dir.0.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("xx.jsonl"), b"{\"text\": \"ok\"}\n\xff\xfe\n").unwrap();
    let out = dir.0.join("m.json");
    let train_to = |out: &Path| {
        let args = [
            "train",
            "--corpus",
            corpus.to_str().unwrap(),
            "--vocab-size",
            "300",
            "--out",
            out.to_str().unwrap(),
        ];
        run(&args)
    };
    let o = train_to(&out);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("xx.jsonl") && err.contains("line 2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());

    // An output path that is a folder is refused before any training.
    let o = train_to(&dir.0);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("it is a folder"), "{}", stderr(&o));
}

#[test]
fn skip_invalid_utf8_flag_trains_and_reports_lines() {
    let dir = TempDir::new("skip");
    let corpus = dir.0.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut data = Vec::new();
    for i in 0..30 {
        data.extend_from_slice(format!("{{\"text\": \"hello world number {i}\"}}\n").as_bytes());
        if i == 4 {
            data.extend_from_slice(b"\xff\xfe broken\n");
        }
    }
    std::fs::write(corpus.join("xx.jsonl"), data).unwrap();
    let out = dir.0.join("m.json");
    let (c, o) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    let r = run(&["train", "--corpus", c, "--vocab-size", "300", "--skip-invalid-utf8", "--out", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    let err = stderr(&r);
    assert!(err.contains("skipped invalid UTF-8") && err.contains("xx.jsonl at line 6"), "{err}");
    assert!(out.exists());
}

/// `encode`/`decode` read SentencePiece `.model` and Hugging Face `tokenizer.json` files, and
/// `export-hf` writes a `tokenizer.json` that encodes like the model it came from.
#[test]
fn other_model_formats_and_export() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = "Hello world 2024, привет мир";
    let sp_path = fixtures.join("sentencepiece/bpe.model");
    let sp = polylm_tokenizer::SentencePieceModel::load(&sp_path).unwrap();
    let o = run(&["encode", "--model", sp_path.to_str().unwrap(), "--text", text]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: Vec<String> = sp.encode(text).iter().map(u32::to_string).collect();
    assert_eq!(stdout(&o).trim(), want.join(" "));
    let o = run(&["decode", "--model", sp_path.to_str().unwrap(), "--ids", &want.join(" ")]);
    assert_eq!(stdout(&o).trim_end_matches('\n'), text);

    let hf_path = fixtures.join("hf/bytelevel.json");
    let hf = polylm_tokenizer::HfTokenizer::load(&hf_path).unwrap();
    let o = run(&["encode", "--model", hf_path.to_str().unwrap(), "--text", text]);
    let want: Vec<String> = hf.encode(text).iter().map(u32::to_string).collect();
    assert_eq!(stdout(&o).trim(), want.join(" "));

    // --whole keeps newlines inside one text.
    let ours = fixtures.join("hf/ours.json");
    let o = run(&["encode", "--model", ours.to_str().unwrap(), "--whole", "--text", "a\nb"]);
    assert_eq!(stdout(&o).lines().count(), 1);
    let ids = stdout(&o).trim().to_string();
    let o = run(&["decode", "--model", ours.to_str().unwrap(), "--ids", &ids]);
    assert_eq!(stdout(&o), "a\nb\n");

    let dir = TempDir::new("export");
    let out = dir.0.join("tokenizer.json");
    let o = run(&["export-hf", "--model", ours.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = run(&["encode", "--model", ours.to_str().unwrap(), "--text", text]);
    let b = run(&["encode", "--model", out.to_str().unwrap(), "--text", text]);
    assert_eq!(stdout(&a), stdout(&b));
    assert!(!stdout(&a).trim().is_empty());
}
