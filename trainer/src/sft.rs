//! Supervised fine-tuning (instruction tuning) data: the MultiAlpaca JSON Lines loader, the
//! prompt template of the released PolyLM instruction model, and a packer that lays whole
//! examples into fixed-length rows with the loss on response tokens only.
//!
//! Template (spec, "Instruction tuning"): the query is the instruction, or the instruction and
//! the input joined by a newline when the input is not empty; the prompt is `"{query}\n\n"`;
//! the training text is the prompt, then the response, then the end-of-sequence token. The
//! prompt and the response are tokenized separately, so the prompt's ids are exactly those the
//! model sees at inference (where the prompt is tokenized alone).
//!
//! Packing: each row holds `seq + 1` tokens `[prompt][response][eos][prompt][response][eos]...`
//! (whole examples; a row is closed and padded with `eos` when the next example does not fit);
//! the model reads the first `seq` and the targets are the next tokens, with every target that
//! is a prompt token or padding set to [`IGNORE`]. Each epoch visits every example once in a
//! shuffled order that depends only on the seed and the epoch, and the packer resumes exactly
//! from its [`SftState`].

use std::path::{Path, PathBuf};

use crate::tokenizer::RunTokenizer;
use polylm_engine::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The target id that carries no loss (prompt tokens, padding): pass `Some(IGNORE)` as the
/// model's ignore index.
pub const IGNORE: u32 = u32::MAX;

/// Errors of the SFT data: every file error names the file and the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    /// The file could not be read or a line is not a valid example (names file and line).
    #[error(transparent)]
    Jsonl(#[from] crate::jsonl::JsonlError),
    /// Nothing to pack.
    #[error("no SFT examples to pack")]
    NoExamples,
    /// A folder given as SFT data that holds no `.jsonl` or `.json` file.
    #[error("{} holds no .jsonl or .json file of SFT examples", .0.display())]
    NoFiles(PathBuf),
    /// A sequence length too short to hold a prompt token and a target.
    #[error("sequence length {0} is too short for SFT packing (at least 2)")]
    SeqTooShort(usize),
    /// An end-of-sequence id that is the ignore id.
    #[error("end-of-sequence id {0} is the ignore id")]
    BadEos(u32),
    /// A state that does not belong to this packer's data.
    #[error("SFT state does not match the data: {0}")]
    StateMismatch(String),
}

/// One instruction-tuning example (a MultiAlpaca line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftExample {
    /// The instruction.
    pub instruction: String,
    /// The optional input (context) of the instruction; `null` in the file gives `None`.
    pub input: Option<String>,
    /// The reference response.
    pub output: String,
}

/// Reads MultiAlpaca examples: objects `{"instruction": str, "input": str or null, "output":
/// str}` (other fields are ignored, a missing `input` is `None`), one per line (JSON Lines,
/// blank lines skipped) or as one JSON array (as Alpaca-style data is often released). A folder
/// is read whole: every `.jsonl` and `.json` file in it, in name order (MultiAlpaca comes as one
/// file per language). Errors name the file and the line.
pub fn load_sft(path: &Path) -> Result<Vec<SftExample>, SftError> {
    Ok(load_sft_groups(path)?.into_iter().flat_map(|(_, examples)| examples).collect())
}

/// [`load_sft`] kept apart by file: for a folder, each file's examples under its name without
/// the extension (MultiAlpaca's files are named by language), else one group named `sft`.
/// Validation reports a loss per group.
pub fn load_sft_groups(path: &Path) -> Result<Vec<(String, Vec<SftExample>)>, SftError> {
    let one_file = !path.is_dir();
    let mut groups = Vec::new();
    for file in sft_files(path)? {
        let name = match file.file_stem() {
            Some(stem) if !one_file => stem.to_string_lossy().into_owned(),
            _ => "sft".to_string(),
        };
        groups.push((name, parse_sft(&crate::jsonl::read(&file)?, &file)?));
    }
    Ok(groups)
}

/// The files [`load_sft`] reads for `path`: the file itself, or a folder's `.jsonl` and `.json`
/// files in name order.
fn sft_files(path: &Path) -> Result<Vec<PathBuf>, SftError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let io = |source| crate::jsonl::JsonlError::Io { path: path.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let file = entry.map_err(io)?.path();
        if file.is_file() && file.extension().is_some_and(|e| e == "jsonl" || e == "json") {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(SftError::NoFiles(path.to_path_buf()));
    }
    files.sort();
    Ok(files)
}

/// Parses MultiAlpaca examples of one file from memory, JSON Lines or a JSON array (see
/// [`load_sft`]); `path` only names the source in errors.
pub fn parse_sft(bytes: &[u8], path: &Path) -> Result<Vec<SftExample>, SftError> {
    let records = crate::jsonl::records(bytes, path, r#"{"instruction", "input", "output"}"#)?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let input = match r.object.get("input") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(r.wrong("input", "a string or null").into()),
        };
        out.push(SftExample { instruction: r.string("instruction")?, input, output: r.string("output")? });
    }
    Ok(out)
}

/// The query of an example: the instruction, or `instruction + "\n" + input` when the input
/// is present and not blank.
pub fn query_text(ex: &SftExample) -> String {
    match &ex.input {
        Some(input) if !input.trim().is_empty() => format!("{}\n{}", ex.instruction, input),
        _ => ex.instruction.clone(),
    }
}

/// The inference prompt of the released instruction model for a query: `"{query}\n\n"`; the
/// response follows it.
pub fn prompt_text(query: &str) -> String {
    format!("{query}\n\n")
}

/// The whole training text of an example (without the end-of-sequence token, which is an id):
/// the prompt followed by the response.
pub fn training_text(ex: &SftExample) -> String {
    prompt_text(&query_text(ex)) + &ex.output
}

/// An example as token ids: the prompt's and the response's, tokenized separately (the packer
/// appends the end-of-sequence id to the response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedExample {
    /// Ids of [`prompt_text`]`(`[`query_text`]`(ex))`: no loss is taken on them.
    pub prompt: Vec<u32>,
    /// Ids of the response (without the end-of-sequence id).
    pub response: Vec<u32>,
}

/// Tokenizes examples (in parallel): the prompt and the response separately.
pub fn tokenize_examples(examples: &[SftExample], tokenizer: &RunTokenizer) -> Vec<TokenizedExample> {
    let prompts: Vec<String> = examples.iter().map(|e| prompt_text(&query_text(e))).collect();
    let responses: Vec<&str> = examples.iter().map(|e| e.output.as_str()).collect();
    let p = tokenizer.encode_batch(&prompts);
    let r = tokenizer.encode_batch(&responses);
    p.into_iter().zip(r).map(|(prompt, response)| TokenizedExample { prompt, response }).collect()
}

/// One packed batch, `[batch, seq]` row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftBatch {
    /// Input ids, `batch·seq`.
    pub ids: Vec<u32>,
    /// Next-token targets, `batch·seq`; [`IGNORE`] on prompt and padding positions.
    pub targets: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Targets that carry loss (response tokens and the end-of-sequence ids ending them).
    pub response_tokens: usize,
}

/// Where a packer stands: enough to resume exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftState {
    /// Epochs completed.
    pub epoch: u64,
    /// Position of the next example in this epoch's shuffled order.
    pub cursor: usize,
    /// The shuffle seed.
    pub seed: u64,
    /// Number of examples (checked on restore).
    pub examples: usize,
    /// Tokens per row, `seq` (checked on restore).
    pub seq: usize,
}

/// Packs tokenized SFT examples into rows of `seq + 1` tokens with response-only targets.
#[derive(Debug, Clone)]
pub struct SftPacker {
    /// Per example: the ids (prompt, response, eos; truncated to `seq + 1`) and where the
    /// response starts.
    examples: Vec<(Vec<u32>, usize)>,
    eos: u32,
    seq: usize,
    seed: u64,
    truncated: usize,
    epoch: u64,
    cursor: usize,
    order: Vec<usize>,
}

/// Cuts an example (prompt ids, response ids ending with the end-of-sequence id) to at most
/// `row` ids, as training and validation both do; returns whether it cut. The end of the
/// response goes first, except that when the prompt would leave less than half the row to the
/// response, the prompt is cut from the left instead (keeping its end, next to the response) so
/// that the response keeps at least half of the row.
pub fn fit_row(prompt: &mut Vec<u32>, response: &mut Vec<u32>, row: usize) -> bool {
    if prompt.len() + response.len() <= row {
        return false;
    }
    let keep_response = response.len().min(row / 2).max(row.saturating_sub(prompt.len())).min(row);
    response.truncate(keep_response);
    let keep_prompt = row - keep_response;
    prompt.drain(..prompt.len() - keep_prompt);
    true
}

impl SftPacker {
    /// Tokenizes `examples` with `tokenizer` (see [`tokenize_examples`]) and makes a packer of
    /// rows of `seq` input tokens, shuffling each epoch from `seed`.
    pub fn new(
        examples: &[SftExample],
        tokenizer: &RunTokenizer,
        eos_id: u32,
        seq: usize,
        seed: u64,
    ) -> Result<SftPacker, SftError> {
        SftPacker::from_tokenized(tokenize_examples(examples, tokenizer), eos_id, seq, seed)
    }

    /// A packer over already tokenized examples.
    ///
    /// An example longer than `seq + 1` tokens (with its end-of-sequence id) is cut by
    /// [`fit_row`] and counted in [`SftPacker::truncated`].
    pub fn from_tokenized(
        examples: Vec<TokenizedExample>,
        eos_id: u32,
        seq: usize,
        seed: u64,
    ) -> Result<SftPacker, SftError> {
        if seq < 2 {
            return Err(SftError::SeqTooShort(seq));
        }
        if eos_id == IGNORE {
            return Err(SftError::BadEos(eos_id));
        }
        if examples.is_empty() {
            return Err(SftError::NoExamples);
        }
        let row = seq + 1;
        let mut truncated = 0;
        let packed = examples
            .into_iter()
            .map(|TokenizedExample { mut prompt, mut response }| {
                response.push(eos_id);
                if fit_row(&mut prompt, &mut response, row) {
                    truncated += 1;
                }
                let start = prompt.len();
                prompt.extend(response);
                (prompt, start)
            })
            .collect();
        let mut p = SftPacker {
            examples: packed,
            eos: eos_id,
            seq,
            seed,
            truncated,
            epoch: 0,
            cursor: 0,
            order: Vec::new(),
        };
        p.order = p.epoch_order(0);
        Ok(p)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples (never: construction refuses an empty set).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Number of examples that were truncated to fit a row.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// Total tokens of the examples as packed (prompt, response and eos, after truncation).
    pub fn total_tokens(&self) -> usize {
        self.examples.iter().map(|(ids, _)| ids.len()).sum()
    }

    /// Tokens per row of input, `seq`.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Epochs completed so far.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The shuffled example order of `epoch`: a Fisher–Yates permutation from a generator
    /// seeded by the seed and the epoch.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        let mut rng = Rng::new(self.seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }

    fn next_epoch(&mut self) {
        self.epoch += 1;
        self.cursor = 0;
        self.order = self.epoch_order(self.epoch);
    }

    /// Fills one row of `seq + 1` tokens into `ids` / `targets` (each `seq` long); returns the
    /// number of counted targets. Rows never span two epochs.
    fn fill_row(&mut self, ids: &mut [u32], targets: &mut [u32]) -> usize {
        if self.cursor >= self.order.len() {
            self.next_epoch();
        }
        let row_len = self.seq + 1;
        let mut tokens: Vec<u32> = Vec::with_capacity(row_len);
        // Whether each token of the row is a response token (a counted target).
        let mut counted: Vec<bool> = Vec::with_capacity(row_len);
        while self.cursor < self.order.len() {
            let (ex, start) = &self.examples[self.order[self.cursor]];
            if tokens.len() + ex.len() > row_len {
                break;
            }
            tokens.extend_from_slice(ex);
            // An example's first token has no context of its own: never a target.
            counted.extend((0..ex.len()).map(|k| k >= (*start).max(1)));
            self.cursor += 1;
        }
        let mut n = 0;
        for t in 0..self.seq {
            ids[t] = tokens.get(t).copied().unwrap_or(self.eos);
            targets[t] = if counted.get(t + 1).copied().unwrap_or(false) {
                n += 1;
                tokens[t + 1]
            } else {
                IGNORE
            };
        }
        n
    }

    /// The next `batch` rows.
    pub fn next_batch(&mut self, batch: usize) -> SftBatch {
        let seq = self.seq;
        let mut ids = vec![self.eos; batch * seq];
        let mut targets = vec![IGNORE; batch * seq];
        let mut response_tokens = 0;
        for (i, t) in ids.chunks_mut(seq).zip(targets.chunks_mut(seq)) {
            response_tokens += self.fill_row(i, t);
        }
        SftBatch { ids, targets, batch, seq, response_tokens }
    }

    /// Where the packer stands (save it with a checkpoint).
    pub fn state(&self) -> SftState {
        SftState {
            epoch: self.epoch,
            cursor: self.cursor,
            seed: self.seed,
            examples: self.examples.len(),
            seq: self.seq,
        }
    }

    /// Resumes from a saved state: the following batches are exactly those that followed it.
    /// The state must come from a packer over the same number of examples and `seq`.
    pub fn restore(&mut self, state: SftState) -> Result<(), SftError> {
        if state.examples != self.examples.len() {
            return Err(SftError::StateMismatch(format!(
                "saved for {} examples, loaded {}",
                state.examples,
                self.examples.len()
            )));
        }
        if state.seq != self.seq {
            return Err(SftError::StateMismatch(format!(
                "saved for seq {}, packing {}",
                state.seq, self.seq
            )));
        }
        if state.cursor > self.examples.len() {
            return Err(SftError::StateMismatch(format!(
                "cursor {} past {} examples",
                state.cursor,
                self.examples.len()
            )));
        }
        self.seed = state.seed;
        self.epoch = state.epoch;
        self.cursor = state.cursor;
        self.order = self.epoch_order(state.epoch);
        Ok(())
    }
}
