//! `tokenizer`: train, use and measure PolyLM BPE tokenizers from the command line. The
//! subcommands live in the library ([`polylm_tokenizer::cli`]) so that the `polylm` binary can
//! embed them as `polylm tokenizer <subcommand>`; this binary is a thin wrapper.
//!
//! ```text
//! tokenizer train --corpus ../shared/data/corpus --vocab-size 32000 --out tok.json
//! tokenizer encode --model tok.json --text "Hello world"
//! tokenizer decode --model tok.json --ids "5 6 7"
//! tokenizer stats --model tok.json --udhr ../shared/data/udhr --valid ../shared/data/valid
//! tokenizer export-hf --model tok.json --out tokenizer.json
//! ```
//!
//! Every error (missing file, invalid UTF-8, bad model file, ...) is printed as one line on
//! stderr and the process exits with code 1.

use std::process::ExitCode;

use clap::Parser;
use polylm_tokenizer::cli::{self, CliError};

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
    command: cli::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
