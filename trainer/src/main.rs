//! `polylm`: train, fine-tune, evaluate and sample PolyLM models.
//!
//! ```text
//! polylm train --config configs/quickstart.toml
//! polylm tokenizer train --corpus ../shared/data/corpus --vocab-size 8192 --out tok.json
//! polylm data prepare --tokenizer tok.json --train ../shared/data/corpus --valid ../shared/data/valid --out data
//! polylm eval --checkpoint runs/quickstart --data runs/quickstart/data
//! polylm generate --checkpoint runs/quickstart --prompt "Die Katze"
//! polylm sft --config configs/sft.toml
//! polylm bench --preset small
//! ```
//!
//! Every error is printed as one line on stderr and the process exits with code 1.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Keep glibc's large freed blocks for the next step instead of returning them to the
    // system (a page fault per 4 KiB of every large tensor otherwise).
    polylm_engine::tune_host_allocator();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
