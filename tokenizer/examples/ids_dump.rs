//! Reads a JSON array of texts on stdin, prints a JSON array of our model's ids per text.
//! `cargo run --release -p polylm-tokenizer --example ids_dump -- MODEL < texts.json`
//! (for `benches/tokenizer_vs_hf.py --check-export`: ours against the exported `tokenizer.json`
//! loaded by Hugging Face `tokenizers`).

use std::io::Read;

use polylm_tokenizer::{json, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: ids_dump MODEL < texts.json")?;
    let tok = Tokenizer::new(json::load(&path)?);
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let texts: Vec<String> = serde_json::from_str(&input)?;
    let ids = tok.encode_batch(&texts);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
