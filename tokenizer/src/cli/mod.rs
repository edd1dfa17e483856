//! The tokenizer command line as a library: the subcommands `train`, `encode`, `decode`,
//! `stats` and `export-hf`, shared by the `tokenizer` binary and any other binary that embeds
//! them (the `polylm` binary runs them as `polylm tokenizer <subcommand>`).
//!
//! ```text
//! tokenizer train --corpus ../shared/data/corpus --vocab-size 32000 --out tok.json
//! tokenizer encode --model tok.json --text "Hello world"
//! tokenizer decode --model tok.json --ids "5 6 7"
//! tokenizer stats --model tok.json --udhr ../shared/data/udhr --valid ../shared/data/valid
//! tokenizer export-hf --model tok.json --out tokenizer.json
//! ```
//!
//! `encode`, `decode` and `stats` read any model format: ours (JSON), SentencePiece `.model`
//! and Hugging Face `tokenizer.json` (BPE), through [`AnyModel`].
//!
//! Embedding the subcommands in another clap program:
//!
//! ```
//! use clap::Parser;
//! use polylm_tokenizer::cli;
//!
//! #[derive(Parser)]
//! struct Top {
//!     #[command(subcommand)]
//!     command: cli::Command,
//! }
//!
//! let top = Top::parse_from(["prog", "decode", "--model", "missing.json", "--ids", "1 2"]);
//! let err = cli::run(top.command).unwrap_err();
//! assert!(err.to_string().contains("missing.json"));
//! ```
//!
//! Every error (missing file, invalid UTF-8, bad model file, ...) is one line of text in a
//! [`CliError`]; the binaries print it on stderr and exit with code 1.

// The argument docs are the command line's help text, where `<lang>`, `<s>` ... are literal.
#![allow(rustdoc::invalid_html_tags)]

mod io;
mod stats;
mod train;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use io::{any_from_bytes, load_any, load_tokenizer, read_stdin, read_utf8_file, utf8, AnyModel, Stdout};
pub use stats::{article_spans, compression, LangCompression, StatsArgs};
pub use train::{languages_in, TrainArgs};

/// A one-line error message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<crate::TokenizerError> for CliError {
    fn from(e: crate::TokenizerError) -> Self {
        CliError(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

/// Result type of the subcommands.
pub type CliResult<T> = std::result::Result<T, CliError>;

/// The tokenizer subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a BPE model on a folder of <lang>.jsonl files and save it as JSON.
    #[command(after_help = "Example:\n  tokenizer train --corpus ../shared/data/corpus --langs en,de,zh \
                            --vocab-size 32000 --alpha 0.5 --coverage 0.9995 --out tok.json")]
    Train(TrainArgs),
    /// Encode text into token ids: one line of space-separated ids per input line (or one for
    /// the whole input with --whole).
    #[command(after_help = "Examples:\n  tokenizer encode --model tok.json --text \"Hello world\"\n  \
                            tokenizer encode --model tok.json --file input.txt\n  \
                            echo \"Hello\" | tokenizer encode --model tok.json")]
    Encode(EncodeArgs),
    /// Decode space-separated token ids back into text.
    #[command(after_help = "Example:\n  tokenizer decode --model tok.json --ids \"5 6 7\"")]
    Decode(DecodeArgs),
    /// Print bytes per token on a validation split and tokens per UDHR article, per language.
    #[command(after_help = "Example:\n  tokenizer stats --model a.json --model b.json \
                            --udhr ../shared/data/udhr --valid ../shared/data/valid")]
    Stats(StatsArgs),
    /// Write one of our models as a Hugging Face tokenizer.json (loads in the `tokenizers` library).
    #[command(after_help = "Example:\n  tokenizer export-hf --model tok.json --out tokenizer.json")]
    ExportHf(ExportHfArgs),
}

/// Arguments of `tokenizer export-hf`.
#[derive(Args, Debug)]
pub struct ExportHfArgs {
    /// Our model file (JSON, as written by `tokenizer train`).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the tokenizer.json (written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `tokenizer encode`.
#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// The model file: ours (JSON), a SentencePiece .model or a Hugging Face tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to encode (each line is encoded separately).
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// A UTF-8 text file to encode line by line (stdin when neither --text nor --file is given).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Encode the whole input as one text (newlines are then ordinary characters) instead of
    /// line by line.
    #[arg(long)]
    pub whole: bool,
    /// Put the <s> id before each line.
    #[arg(long)]
    pub bos: bool,
    /// Put the </s> id after each line.
    #[arg(long)]
    pub eos: bool,
}

/// Arguments of `tokenizer decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// The model file: ours (JSON), a SentencePiece .model or a Hugging Face tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Space- (or comma-) separated token ids.
    #[arg(long, allow_hyphen_values = true)]
    pub ids: String,
}

/// Run one subcommand; results go to stdout, progress to stderr.
pub fn run(cmd: Command) -> CliResult<()> {
    match cmd {
        Command::Train(a) => train::run(a),
        Command::Encode(a) => encode(a),
        Command::Decode(a) => decode(a),
        Command::Stats(a) => stats::run(a),
        Command::ExportHf(a) => export_hf(a),
    }
}

fn encode(args: EncodeArgs) -> CliResult<()> {
    let tok = load_any(&args.model)?;
    let boundary = |bos: bool, wanted: bool| -> CliResult<Option<u32>> {
        if !wanted {
            return Ok(None);
        }
        let name = if bos { "<s>" } else { "</s>" };
        tok.boundary_id(bos)
            .map(Some)
            .ok_or_else(|| CliError(format!("{} has no {name} token", args.model.display())))
    };
    let (bos, eos) = (boundary(true, args.bos)?, boundary(false, args.eos)?);
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => read_utf8_file(f)?,
        (None, None) => read_stdin()?,
    };
    let lines: Vec<&str> = if args.whole { vec![text.as_str()] } else { text.lines().collect() };
    let encoded: Vec<Vec<u32>> =
        lines.iter().map(|l| bos.into_iter().chain(tok.encode(l)).chain(eos).collect()).collect();
    let mut out = Stdout::new();
    for ids in encoded {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        out.line(&line.join(" "))?;
    }
    out.finish()
}

fn decode(args: DecodeArgs) -> CliResult<()> {
    let tok = load_any(&args.model)?;
    let ids = args
        .ids
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| CliError(format!("--ids: {s:?} is not a token id"))))
        .collect::<CliResult<Vec<u32>>>()?;
    let text = tok.decode(&ids)?;
    let mut out = Stdout::new();
    out.line(&text)?;
    out.finish()
}

fn export_hf(args: ExportHfArgs) -> CliResult<()> {
    let tok = load_tokenizer(&args.model)?;
    crate::HfTokenizer::from_bpe_model(tok.model())?.save(&args.out)?;
    Ok(())
}
