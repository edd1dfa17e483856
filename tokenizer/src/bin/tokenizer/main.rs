//! `tokenizer`: train, use and measure PolyLM BPE tokenizers from the command line (until the
//! `polylm` CLI exists).
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
//! and Hugging Face `tokenizer.json` (BPE).
//!
//! Every error (missing file, invalid UTF-8, bad model file, ...) is printed as one line on
//! stderr and the process exits with code 1.

mod io;
mod stats;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A one-line error message for the user.
#[derive(Debug)]
pub struct CliError(pub String);

impl From<polylm_tokenizer::TokenizerError> for CliError {
    fn from(e: polylm_tokenizer::TokenizerError) -> Self {
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

#[derive(Parser, Debug)]
#[command(
    name = "tokenizer",
    version,
    about = "Train, use and measure PolyLM multilingual BPE tokenizers",
    after_help = "Example:\n  tokenizer train --corpus ../shared/data/corpus --vocab-size 32000 --out tok.json\n  \
                  tokenizer encode --model tok.json --text \"Hello world\"\n  \
                  tokenizer stats --model tok.json --udhr ../shared/data/udhr --valid ../shared/data/valid"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a BPE model on a folder of <lang>.jsonl files and save it as JSON.
    #[command(after_help = "Example:\n  tokenizer train --corpus ../shared/data/corpus --langs en,de,zh \
                            --vocab-size 32000 --alpha 0.3 --coverage 0.9995 --out tok.json")]
    Train(train::TrainArgs),
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
    Stats(stats::StatsArgs),
    /// Write one of our models as a Hugging Face tokenizer.json (loads in the `tokenizers` library).
    #[command(after_help = "Example:\n  tokenizer export-hf --model tok.json --out tokenizer.json")]
    ExportHf(ExportHfArgs),
}

#[derive(Args, Debug)]
struct ExportHfArgs {
    /// Our model file (JSON, as written by `tokenizer train`).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the tokenizer.json (written atomically).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct EncodeArgs {
    /// The model file: ours (JSON), a SentencePiece .model or a Hugging Face tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Text to encode (each line is encoded separately).
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    /// A UTF-8 text file to encode line by line (stdin when neither --text nor --file is given).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Encode the whole input as one text (newlines are then ordinary characters) instead of
    /// line by line.
    #[arg(long)]
    whole: bool,
    /// Put the <s> id before each line.
    #[arg(long)]
    bos: bool,
    /// Put the </s> id after each line.
    #[arg(long)]
    eos: bool,
}

#[derive(Args, Debug)]
struct DecodeArgs {
    /// The model file: ours (JSON), a SentencePiece .model or a Hugging Face tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Space- (or comma-) separated token ids.
    #[arg(long, allow_hyphen_values = true)]
    ids: String,
}

fn encode(args: EncodeArgs) -> CliResult<()> {
    let tok = io::load_any(&args.model)?;
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
        (None, Some(f)) => io::read_utf8_file(f)?,
        (None, None) => io::read_stdin()?,
    };
    let lines: Vec<&str> = if args.whole { vec![text.as_str()] } else { text.lines().collect() };
    let encoded: Vec<Vec<u32>> =
        lines.iter().map(|l| bos.into_iter().chain(tok.encode(l)).chain(eos).collect()).collect();
    let mut out = io::Stdout::new();
    for ids in encoded {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        out.line(&line.join(" "))?;
    }
    out.finish()
}

fn decode(args: DecodeArgs) -> CliResult<()> {
    let tok = io::load_any(&args.model)?;
    let ids = args
        .ids
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| CliError(format!("--ids: {s:?} is not a token id"))))
        .collect::<CliResult<Vec<u32>>>()?;
    let text = tok.decode(&ids)?;
    let mut out = io::Stdout::new();
    out.line(&text)?;
    out.finish()
}

fn export_hf(args: ExportHfArgs) -> CliResult<()> {
    let tok = io::load_tokenizer(&args.model)?;
    polylm_tokenizer::HfTokenizer::from_bpe_model(tok.model())?.save(&args.out)?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Encode(a) => encode(a),
        Command::Decode(a) => decode(a),
        Command::Stats(a) => stats::run(a),
        Command::ExportHf(a) => export_hf(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
