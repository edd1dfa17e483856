//! Prints every preset's exact parameter count (tied LM head counted once).
//!
//! ```sh
//! cargo run --release -p polylm-model --example param_counts
//! ```

use polylm_model::{ModelConfig, PRESETS};

fn main() -> Result<(), polylm_model::ModelError> {
    println!(
        "{:<12} {:>8} {:>6} {:>6} {:>6} {:>7} {:>8} {:>16} {:>16}",
        "preset", "vocab", "layers", "hidden", "heads", "ffn", "context", "parameters", "embedding"
    );
    for name in PRESETS {
        let c = ModelConfig::preset(name)?;
        println!(
            "{:<12} {:>8} {:>6} {:>6} {:>6} {:>7} {:>8} {:>16} {:>16}",
            name,
            c.vocab_size,
            c.layers,
            c.hidden,
            c.heads,
            c.ffn,
            c.context,
            c.param_count(),
            c.embedding_params()
        );
    }
    Ok(())
}
