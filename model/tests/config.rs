//! Config presets, parameter counts, the TOML and `config.json` forms, and their errors.

mod common;

use polylm_engine::DType;
use polylm_model::hf_config::{from_hf_json, to_hf_json};
use polylm_model::{Gpt, ModelConfig, ModelError, PRESETS};

#[test]
fn polylm_presets_have_the_spec_parameter_counts() {
    // Counted by hand from the spec (tied head counted once):
    // 1.7B: 256000·2048 + 2048·2048 + 24·(4·2048 + 2048·6144 + 6144 + 2048² + 2048
    //        + 2048·8192 + 8192 + 8192·2048 + 2048) + 2·2048
    let c17 = ModelConfig::preset("polylm-1.7b").unwrap();
    assert_eq!(c17.param_count(), 1_737_084_928);
    assert_eq!(c17.embedding_params(), 524_288_000);
    // (≈ 13.91B, the spec's figure)
    // 13B: 256000·5120 + 2048·5120 + 40·(4·5120 + 5120·15360 + 15360 + 5120² + 5120
    //       + 5120·20480 + 20480 + 20480·5120 + 5120) + 2·5120
    let c13 = ModelConfig::preset("polylm-13b").unwrap();
    assert_eq!(c13.param_count(), 13_906_790_400);
    assert_eq!(c13.embedding_params(), 1_310_720_000);
    assert_eq!((c17.heads, c17.head_dim(), c13.heads, c13.head_dim()), (16, 128, 40, 128));
}

#[test]
fn built_models_have_as_many_elements_as_counted() {
    for name in ["tiny", "small"] {
        let cfg = ModelConfig::preset(name).unwrap();
        let model = Gpt::new(cfg.clone(), DType::F32, 1).unwrap();
        assert_eq!(model.params().numel(), cfg.param_count(), "{name}");
    }
    let cfg = common::small_config(37, 3, 12, 3, 20, 9);
    assert_eq!(Gpt::new(cfg.clone(), DType::F32, 2).unwrap().params().numel(), cfg.param_count());
}

#[test]
fn init_follows_the_spec() {
    let cfg = ModelConfig::preset("small").unwrap();
    let model = Gpt::new(cfg.clone(), DType::F32, 3).unwrap();
    let std = |t: &polylm_engine::Tensor| {
        let v = t.to_vec_f64();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    let p = model.params();
    let resid = 0.006 / (2.0 * cfg.layers as f64).sqrt();
    assert!((std(&p.wte) / 0.006 - 1.0).abs() < 0.01, "wte std {}", std(&p.wte));
    assert!((std(&p.blocks[0].attn_weight) / 0.006 - 1.0).abs() < 0.02);
    assert!((std(&p.blocks[1].fc_weight) / 0.006 - 1.0).abs() < 0.02);
    assert!((std(&p.blocks[0].attn_proj_weight) / resid - 1.0).abs() < 0.02);
    assert!((std(&p.blocks[2].mlp_proj_weight) / resid - 1.0).abs() < 0.02);
    assert!(p.blocks[0].ln_1_weight.to_vec_f64().iter().all(|&x| x == 1.0));
    assert!(p.blocks[0].attn_bias.to_vec_f64().iter().all(|&x| x == 0.0));
}

#[test]
fn every_preset_validates_and_unknown_names_fail() {
    for name in PRESETS {
        ModelConfig::preset(name).unwrap().validate().unwrap();
    }
    assert!(matches!(ModelConfig::preset("polylm-7b"), Err(ModelError::UnknownPreset(_))));
}

#[test]
fn toml_round_trips_and_defaults_apply() {
    let cfg = ModelConfig::preset("small").unwrap();
    assert_eq!(ModelConfig::from_toml_str(&cfg.to_toml_string()).unwrap(), cfg);
    let short = "vocab_size = 100\nlayers = 2\nhidden = 32\nheads = 4\nffn = 96\ncontext = 64\n";
    let c = ModelConfig::from_toml_str(short).unwrap();
    assert_eq!((c.layer_norm_eps, c.init_std, c.eos_token_id), (1e-5, 0.006, None));
}

#[test]
fn bad_configs_are_typed_errors() {
    let base = "vocab_size = 100\nlayers = 2\nhidden = 32\nffn = 96\ncontext = 64\n";
    let cases = [
        (format!("{base}heads = 5\n"), "heads"),
        (format!("{base}heads = 0\n"), "heads"),
        (format!("{base}heads = 4\nlayer_norm_eps = -1.0\n"), "layer_norm_eps"),
        (format!("{base}heads = 4\ninit_std = 0.0\n"), "init_std"),
        (format!("{base}heads = 4\neos_token_id = 100\n"), "eos_token_id"),
    ];
    for (text, field) in cases {
        match ModelConfig::from_toml_str(&text) {
            Err(ModelError::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: expected InvalidConfig({field}), got {other:?}"),
        }
    }
    assert!(matches!(ModelConfig::from_toml_str("vocab_size = 'x'"), Err(ModelError::ConfigParse { .. })));
    assert!(matches!(
        ModelConfig::from_toml_str(&format!("{base}heads = 4\nbogus = 1\n")),
        Err(ModelError::ConfigParse { .. })
    ));
    let cfg = ModelConfig::preset("tiny").unwrap();
    assert!(matches!(
        cfg.check_tokenizer_vocab(8000),
        Err(ModelError::VocabMismatch { tokenizer: 8000, model: 8192 })
    ));
    cfg.check_tokenizer_vocab(8192).unwrap();
}

#[test]
fn hf_config_json_round_trips_and_refuses_other_architectures() {
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    cfg.eos_token_id = Some(7);
    assert_eq!(from_hf_json(&to_hf_json(&cfg, "float32")).unwrap(), cfg);
    // OpenAI's gpt2 config.json (n_inner null means 4·n_embd).
    let gpt2 = r#"{"activation_function": "gelu_new", "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768,
        "n_head": 12, "n_layer": 12, "n_positions": 1024, "n_inner": null, "layer_norm_epsilon": 1e-05,
        "initializer_range": 0.02, "vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256}"#;
    let c = from_hf_json(gpt2).unwrap();
    assert_eq!(
        (c.vocab_size, c.layers, c.hidden, c.heads, c.ffn, c.context),
        (50257, 12, 768, 12, 3072, 1024)
    );
    assert_eq!(c.param_count(), 124_439_808); // GPT-2 small, the well-known figure
    for tanh in ["gelu_pytorch_tanh", "gelu_fast", "gelu_accurate"] {
        assert_eq!(from_hf_json(&gpt2.replace("gelu_new", tanh)).unwrap(), c, "{tanh}");
    }
    for other in ["relu", "gelu", "quick_gelu"] {
        assert!(matches!(
            from_hf_json(&gpt2.replace("gelu_new", other)),
            Err(ModelError::InvalidConfig { field: "activation_function", .. })
        ));
    }
    let untied = gpt2.replace("\"n_ctx\"", "\"tie_word_embeddings\": false, \"n_ctx\"");
    assert!(matches!(from_hf_json(&untied), Err(ModelError::InvalidConfig { .. })));
    assert!(matches!(from_hf_json("[1, 2]"), Err(ModelError::ConfigParse { .. })));
    assert!(matches!(from_hf_json(r#"{"n_embd": 8}"#), Err(ModelError::ConfigParse { .. })));
    assert!(matches!(from_hf_json(r#"{"n_embd": -8}"#), Err(ModelError::ConfigParse { .. })));
}

#[test]
fn config_files_load_by_extension() {
    let dir = common::TempDir::new("config-files");
    let cfg = common::small_config(100, 3, 48, 6, 150, 64);
    let toml_path = dir.join("model.toml");
    std::fs::write(&toml_path, cfg.to_toml_string()).unwrap();
    assert_eq!(ModelConfig::from_file(&toml_path).unwrap(), cfg);
    let json_path = dir.join("config.json");
    std::fs::write(&json_path, to_hf_json(&cfg, "float32")).unwrap();
    assert_eq!(ModelConfig::from_file(&json_path).unwrap(), cfg);
    std::fs::write(&json_path, "{ not json").unwrap();
    match ModelConfig::from_file(&json_path) {
        Err(ModelError::ConfigParse { path, .. }) => assert!(path.ends_with("config.json"), "{path}"),
        other => panic!("expected a parse error naming the file, got {other:?}"),
    }
    assert!(matches!(ModelConfig::from_file(&dir.join("absent.toml")), Err(ModelError::Io { .. })));
}
