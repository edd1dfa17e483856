//! SFT data: the MultiAlpaca loader (errors name file and line), the prompt template, and the
//! packer (response-only targets, exact epoch coverage, exact resume, truncation).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use polylm_tokenizer::{train, LanguageCorpus, Tokenizer, TrainConfig};
use polylm_trainer::sft::{
    load_sft, load_sft_groups, parse_sft, prompt_text, query_text, training_text, SftError, SftExample,
    SftPacker, SftState, TokenizedExample, IGNORE,
};
use polylm_trainer::tokenizer::RunTokenizer;
use proptest::prelude::*;

mod common;
use common::TempFile;

fn ex(instruction: &str, input: Option<&str>, output: &str) -> SftExample {
    SftExample { instruction: instruction.into(), input: input.map(Into::into), output: output.into() }
}

#[test]
fn loads_multialpaca_lines() {
    let text = concat!(
        "{\"instruction\": \"Translate\", \"input\": \"Hallo\", \"output\": \"Hello\"}\n",
        "\n",
        "   \n",
        "{\"instruction\": \"Say hi\", \"input\": null, \"output\": \"hi\", \"id\": 7}\r\n",
        "{\"output\": \"ok\", \"instruction\": \"No input field\"}"
    );
    let f = TempFile::new(text.as_bytes());
    let got = load_sft(&f.0).unwrap();
    assert_eq!(
        got,
        vec![
            ex("Translate", Some("Hallo"), "Hello"),
            ex("Say hi", None, "hi"),
            ex("No input field", None, "ok")
        ]
    );
}

#[test]
fn loads_json_arrays_and_folders_of_files() {
    // Alpaca-style releases: one pretty-printed JSON array per file, one file per language.
    let dir = common::scratch("sft-folder");
    let array = serde_json::to_string_pretty(&serde_json::json!([
        {"instruction": "Übersetze", "input": "Hello", "output": "Hallo"},
        {"instruction": "Nenne eine Farbe.", "input": "", "output": "Blau", "lang": "de"},
    ]))
    .unwrap();
    std::fs::write(dir.join("de.json"), &array).unwrap();
    std::fs::write(
        dir.join("ar.jsonl"),
        "{\"instruction\": \"سؤال\", \"input\": null, \"output\": \"جواب\"}\n",
    )
    .unwrap();
    std::fs::write(dir.join("README.txt"), "not data").unwrap();
    std::fs::create_dir(dir.join("old.json")).unwrap();
    let want = vec![
        ex("سؤال", None, "جواب"),
        ex("Übersetze", Some("Hello"), "Hallo"),
        ex("Nenne eine Farbe.", Some(""), "Blau"),
    ];
    assert_eq!(load_sft(&dir).unwrap(), want);
    assert_eq!(load_sft(&dir.join("de.json")).unwrap(), want[1..]);
    // Validation keeps the files apart, named by language.
    let groups = load_sft_groups(&dir).unwrap();
    assert_eq!(groups, vec![("ar".to_string(), want[..1].to_vec()), ("de".to_string(), want[1..].to_vec())]);
    assert_eq!(load_sft_groups(&dir.join("de.json")).unwrap(), vec![("sft".to_string(), want[1..].to_vec())]);

    // An error in an array names the file and the line of the bad object.
    let broken = array.replacen("\"Blau\"", "7", 1);
    std::fs::write(dir.join("de.json"), &broken).unwrap();
    let msg = load_sft(&dir).unwrap_err().to_string();
    // The second object starts on the second line that is a lone `{`.
    let line = broken.lines().enumerate().filter(|(_, l)| l.trim() == "{").nth(1).unwrap().0 + 1;
    assert!(
        msg.contains(&format!("de.json:{line}:")) && msg.contains("\"output\" must be a string"),
        "{msg}"
    );

    let empty = common::scratch("sft-empty");
    std::fs::write(empty.join("notes.md"), "").unwrap();
    assert!(matches!(load_sft(&empty), Err(SftError::NoFiles(_))));
    assert!(load_sft(&empty).unwrap_err().to_string().contains("holds no .jsonl or .json file"));
}

fn err_of(text: &[u8]) -> String {
    let f = TempFile::new(text);
    let e = load_sft(&f.0).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&f.0.display().to_string()), "{msg}");
    msg
}

#[test]
fn errors_name_file_and_line() {
    let good = "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n";
    let msg = err_of(format!("{good}\n{{\"instruction\": \"a\", \"output\": \n").as_bytes());
    assert!(msg.contains(":3:") && msg.contains("malformed JSON"), "{msg}");
    let msg = err_of(format!("{good}{{\"instruction\": \"a\"}}\n").as_bytes());
    assert!(msg.contains(":2:") && msg.contains("missing field \"output\""), "{msg}");
    let msg = err_of(format!("{good}{good}{{\"instruction\": 5, \"output\": \"x\"}}\n").as_bytes());
    assert!(msg.contains(":3:") && msg.contains("\"instruction\" must be a string"), "{msg}");
    let msg = err_of(b"{\"instruction\": \"a\", \"input\": [1], \"output\": \"x\"}\n");
    assert!(msg.contains(":1:") && msg.contains("\"input\" must be a string or null"), "{msg}");
    let msg = err_of(b"[1, 2]\n");
    assert!(msg.contains(":1:") && msg.contains("JSON object"), "{msg}");
    let mut bad = good.as_bytes().to_vec();
    bad.extend_from_slice(b"{\"instruction\": \"\xff\", \"output\": \"x\"}\n");
    let msg = err_of(&bad);
    assert!(msg.contains(":2:") && msg.contains("invalid UTF-8"), "{msg}");
    let missing = Path::new("/definitely/not/here.jsonl");
    assert!(matches!(load_sft(missing), Err(SftError::Jsonl(polylm_trainer::jsonl::JsonlError::Io { .. }))));
}

#[test]
fn template_matches_the_spec() {
    let a = ex("Translate to English", Some("Guten Tag"), "Good day");
    assert_eq!(query_text(&a), "Translate to English\nGuten Tag");
    assert_eq!(prompt_text(&query_text(&a)), "Translate to English\nGuten Tag\n\n");
    assert_eq!(training_text(&a), "Translate to English\nGuten Tag\n\nGood day");
    for input in [None, Some(""), Some("  ")] {
        let b = ex("Write a poem", input, "Roses");
        assert_eq!(query_text(&b), "Write a poem");
        assert_eq!(training_text(&b), "Write a poem\n\nRoses");
    }
    let parsed =
        parse_sft(b"{\"instruction\":\"q\",\"input\":null,\"output\":\"r\"}", Path::new("x")).unwrap();
    assert_eq!(prompt_text(&query_text(&parsed[0])), "q\n\n");
}

const EOS: u32 = 2;

/// Examples whose response ids are unique over the whole set (from 10_000 up) and whose prompt
/// ids are below 1000, so every target can be traced back.
fn synthetic(lens: &[(usize, usize)]) -> Vec<TokenizedExample> {
    let mut next = 10_000u32;
    lens.iter()
        .enumerate()
        .map(|(i, &(p, r))| {
            let prompt = (0..p).map(|k| 100 + ((i * 7 + k) % 800) as u32).collect();
            let response = (0..r)
                .map(|_| {
                    next += 1;
                    next
                })
                .collect();
            TokenizedExample { prompt, response }
        })
        .collect()
}

/// Drains one epoch with batches of one row; returns every (input, target) pair with a counted
/// target, and checks rows on the way.
fn one_epoch(packer: &mut SftPacker) -> Vec<(u32, u32)> {
    let n = packer.len();
    let mut pairs = Vec::new();
    // At the start, or at the end of the previous epoch (the next row starts the new one).
    let at = packer.state().cursor;
    assert!(at == 0 || at == n, "cursor {at} of {n}");
    loop {
        let b = packer.next_batch(1);
        assert_eq!((b.ids.len(), b.targets.len(), b.batch), (b.seq, b.seq, 1));
        let counted: Vec<(u32, u32)> =
            b.ids.iter().zip(&b.targets).filter(|(_, &t)| t != IGNORE).map(|(&i, &t)| (i, t)).collect();
        assert_eq!(counted.len(), b.response_tokens);
        // A counted target is the next input token (inside the row).
        for t in 0..b.seq - 1 {
            if b.targets[t] != IGNORE {
                assert_eq!(b.targets[t], b.ids[t + 1]);
            }
        }
        pairs.extend(counted);
        if packer.state().cursor == n {
            return pairs;
        }
    }
}

fn lens_strategy() -> impl Strategy<Value = (usize, Vec<(usize, usize)>, u64)> {
    (4usize..48).prop_flat_map(|seq| {
        // prompt + response + eos <= seq + 1: no truncation.
        let ex = (0usize..=seq / 2, 1usize..=seq / 2);
        (Just(seq), prop::collection::vec(ex, 1..30), any::<u64>())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_response_token_is_a_target_once_per_epoch((seq, lens, seed) in lens_strategy()) {
        let data = synthetic(&lens);
        // Expected predecessor of each response id; the ids that end each response.
        let mut pred: HashMap<u32, u32> = HashMap::new();
        let mut last_tokens: HashSet<u32> = HashSet::new();
        let mut with_context = 0; // eos targets whose example has at least one earlier token
        for ex in &data {
            let seqn: Vec<u32> = ex.prompt.iter().chain(&ex.response).copied().collect();
            for (k, &r) in ex.response.iter().enumerate() {
                let pos = ex.prompt.len() + k;
                if pos > 0 {
                    pred.insert(r, seqn[pos - 1]);
                }
            }
            last_tokens.insert(*seqn.last().unwrap());
            with_context += 1;
        }
        let mut packer = SftPacker::from_tokenized(data.clone(), EOS, seq, seed).unwrap();
        prop_assert_eq!(packer.truncated(), 0);
        for epoch in 0..2u64 {
            let pairs = one_epoch(&mut packer);
            let mut seen: HashMap<u32, usize> = HashMap::new();
            let mut eos_targets = 0;
            for &(input, target) in &pairs {
                prop_assert!(!(100..=10_000).contains(&target), "prompt token {} is a target", target);
                if target == EOS {
                    eos_targets += 1;
                    prop_assert!(last_tokens.contains(&input), "eos predicted after {}", input);
                } else {
                    *seen.entry(target).or_default() += 1;
                    prop_assert_eq!(Some(&input), pred.get(&target), "wrong context for {}", target);
                }
            }
            prop_assert_eq!(eos_targets, with_context, "epoch {}", epoch);
            // Every response token that has a predecessor in its example: exactly once.
            prop_assert_eq!(seen.len(), pred.len());
            prop_assert!(seen.values().all(|&c| c == 1));
            prop_assert!(pred.keys().all(|k| seen.contains_key(k)));
            prop_assert_eq!(packer.epoch(), epoch);
        }
    }

    #[test]
    fn resume_gives_identical_batches(
        (seq, lens, seed) in lens_strategy(),
        before in 0usize..40,
        batch in 1usize..4,
    ) {
        let data = synthetic(&lens);
        let mut a = SftPacker::from_tokenized(data.clone(), EOS, seq, seed).unwrap();
        for _ in 0..before {
            a.next_batch(batch);
        }
        let saved = serde_json::to_string(&a.state()).unwrap();
        let state: SftState = serde_json::from_str(&saved).unwrap();
        let mut b = SftPacker::from_tokenized(data, EOS, seq, seed).unwrap();
        b.restore(state).unwrap();
        for _ in 0..10 {
            prop_assert_eq!(a.next_batch(batch), b.next_batch(batch));
        }
        prop_assert_eq!(a.state(), b.state());
    }
}

#[test]
fn rows_are_padded_with_eos_and_ignored() {
    // Two examples of 4 tokens (with eos) in rows of 6: one example per row, two pads each.
    let data = vec![
        TokenizedExample { prompt: vec![100, 101], response: vec![10_001] },
        TokenizedExample { prompt: vec![102, 103], response: vec![10_002] },
    ];
    let mut p = SftPacker::from_tokenized(data, EOS, 5, 1).unwrap();
    let b = p.next_batch(2);
    assert_eq!(b.response_tokens, 4);
    for row in 0..2 {
        let ids = &b.ids[row * 5..row * 5 + 5];
        let t = &b.targets[row * 5..row * 5 + 5];
        assert_eq!(&ids[3..], &[EOS, EOS], "{ids:?}");
        assert_eq!(t[0], IGNORE);
        assert!(t[1] > 10_000 && t[2] == EOS, "{t:?}");
        assert_eq!(&t[3..], &[IGNORE, IGNORE]);
    }
}

#[test]
fn shuffle_is_deterministic_and_changes_per_epoch() {
    let lens: Vec<(usize, usize)> = (0..60).map(|i| (1 + i % 3, 1 + i % 2)).collect();
    let data = synthetic(&lens);
    let order = |seed: u64, epochs: usize| -> Vec<Vec<u32>> {
        let mut p = SftPacker::from_tokenized(data.clone(), EOS, 16, seed).unwrap();
        (0..epochs)
            .map(|_| one_epoch(&mut p).into_iter().map(|(_, t)| t).filter(|&t| t != EOS).collect())
            .collect()
    };
    let a = order(7, 2);
    assert_eq!(a, order(7, 2));
    assert_ne!(a[0], a[1], "epochs must be shuffled differently");
    assert_ne!(a[0], order(8, 1)[0], "seeds must shuffle differently");
    let mut sorted = a[0].clone();
    sorted.sort_unstable();
    let mut sorted1 = a[1].clone();
    sorted1.sort_unstable();
    assert_eq!(sorted, sorted1);
}

#[test]
fn long_examples_are_truncated_and_counted() {
    let data = vec![
        // Fits.
        TokenizedExample { prompt: vec![100; 3], response: vec![10_001, 10_002] },
        // Long response: its end is cut.
        TokenizedExample { prompt: vec![101; 2], response: (20_000..20_030).collect() },
        // Long prompt: cut from the left, the response keeps half the row.
        TokenizedExample { prompt: (200..260).collect(), response: (30_000..30_020).collect() },
    ];
    let seq = 9; // rows of 10 tokens
    let mut p = SftPacker::from_tokenized(data, EOS, seq, 3).unwrap();
    assert_eq!(p.truncated(), 2);
    let mut targets: Vec<u32> = Vec::new();
    let mut inputs: Vec<u32> = Vec::new();
    for _ in 0..3 {
        let b = p.next_batch(1);
        targets.extend(b.targets.iter().filter(|&&t| t != IGNORE));
        inputs.extend(&b.ids);
    }
    assert_eq!(p.state().cursor, 3);
    // Long response: 2 prompt + 8 response tokens; 8 counted targets (the first has context).
    let long_r: Vec<u32> = targets.iter().copied().filter(|t| (20_000..20_100).contains(t)).collect();
    assert_eq!(long_r, (20_000..20_008).collect::<Vec<_>>());
    // Long prompt: the last 5 prompt tokens, then 5 response tokens.
    let long_p: Vec<u32> = targets.iter().copied().filter(|t| (30_000..30_100).contains(t)).collect();
    assert_eq!(long_p, (30_000..30_005).collect::<Vec<_>>());
    assert!(inputs.windows(2).any(|w| w == [259, 30_000]));
    assert!(!inputs.contains(&254));
    assert!(inputs.contains(&255));
}

#[test]
fn bad_arguments_and_states_are_refused() {
    let data = synthetic(&[(2, 2), (1, 1)]);
    assert!(matches!(SftPacker::from_tokenized(data.clone(), EOS, 1, 0), Err(SftError::SeqTooShort(1))));
    assert!(matches!(SftPacker::from_tokenized(Vec::new(), EOS, 8, 0), Err(SftError::NoExamples)));
    assert!(matches!(SftPacker::from_tokenized(data.clone(), IGNORE, 8, 0), Err(SftError::BadEos(_))));
    let mut p = SftPacker::from_tokenized(data.clone(), EOS, 8, 0).unwrap();
    let other = SftPacker::from_tokenized(synthetic(&[(1, 1)]), EOS, 8, 0).unwrap();
    assert!(matches!(p.restore(other.state()), Err(SftError::StateMismatch(_))));
    let other = SftPacker::from_tokenized(data, EOS, 9, 0).unwrap();
    assert!(matches!(p.restore(other.state()), Err(SftError::StateMismatch(_))));
    let mut s = p.state();
    s.cursor = 3;
    assert!(matches!(p.restore(s), Err(SftError::StateMismatch(_))));
}

fn tiny_tokenizer() -> RunTokenizer {
    let texts: Vec<String> = (0..200)
        .map(|i| format!("translate the sentence number {i} into english please. the answer is yes or no."))
        .collect();
    let config = TrainConfig { vocab_size: 400, ..TrainConfig::default() };
    RunTokenizer::ours(Tokenizer::new(train(&[LanguageCorpus::new("en", texts)], &config).unwrap()))
}

#[test]
fn packs_real_tokenized_examples() {
    let tok = tiny_tokenizer();
    let eos = tok.eos().unwrap();
    let example = ex("translate the sentence", Some("number 5"), "the answer is yes.");
    let mut p = SftPacker::new(std::slice::from_ref(&example), &tok, eos, 64, 0).unwrap();
    let prompt = tok.encode(&prompt_text(&query_text(&example)));
    let response = tok.encode(&example.output);
    let b = p.next_batch(1);
    assert_eq!(&b.ids[..prompt.len()], &prompt[..]);
    assert_eq!(&b.ids[prompt.len()..prompt.len() + response.len()], &response[..]);
    assert_eq!(b.response_tokens, response.len() + 1);
    let counted: Vec<u32> = b.targets.iter().copied().filter(|&t| t != IGNORE).collect();
    let mut expected = response.clone();
    expected.push(eos);
    assert_eq!(counted, expected);
    // The prompt's targets (all but the last prompt position, which predicts the response) are
    // ignored.
    assert!(b.targets[..prompt.len() - 1].iter().all(|&t| t == IGNORE));
    assert_eq!(b.targets[prompt.len() - 1], response[0]);
    assert_eq!(tok.decode(&response).unwrap(), example.output);
}
