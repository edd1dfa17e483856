//! Every example run config in `configs/` parses and passes the config checks, so the
//! documented examples stay true to the code.

use std::path::Path;

use polylm_trainer::RunConfig;

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(config.train.steps > 0 && !config.run.name.is_empty(), "{}", path.display());
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, ["polylm-1.7b.toml", "polylm-13b.toml", "quickstart.toml", "sft.toml"]);
}

#[test]
fn the_quickstart_follows_polylm_s_curriculum() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/quickstart.toml");
    let c = RunConfig::load(&path, &[]).expect("loads");
    let shares: Vec<Option<f64>> = c.curriculum.stages.iter().map(|s| s.non_english).collect();
    assert_eq!(shares, [Some(0.3), Some(0.6)]);
    assert_eq!((c.optim.beta1, c.optim.beta2, c.optim.eps), (0.9, 0.95, 1e-8));
}
