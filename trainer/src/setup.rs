//! What a run needs before its first step: threads, the device and precision, the tokenizer
//! (trained when missing and asked for), the prepared shards (prepared when missing), and the
//! model's config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polylm_engine::{DType, Device};
use polylm_model::ModelConfig;
use polylm_tokenizer::{json as tokjson, LanguageCorpus, Tokenizer, TrainConfig};

use crate::tokenizer::RunTokenizer;

use crate::config::{parse_device_name, DeviceChoice, RunConfig};
use crate::data::input::{list_inputs, DocReader};
use crate::data::{self, Dataset, PrepareOptions};
use crate::error::{io_err, Result, TrainError};

/// More CPU threads, or ranks on one node, than this many per core are refused: they only slow
/// a run down, and a mistyped count (100000) would spend minutes starting threads or processes.
pub const MAX_WORKERS_PER_CORE: usize = 8;

/// The machine's cores (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets the size of the global rayon pool (0: leave it at the number of cores). Only the
/// first call in a process has an effect. A count over [`MAX_WORKERS_PER_CORE`] times the
/// machine's cores is an error.
pub fn set_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Ok(());
    }
    let cores = cores();
    if threads > MAX_WORKERS_PER_CORE * cores {
        return Err(TrainError::Usage(format!(
            "run.threads = {threads} is more than {MAX_WORKERS_PER_CORE}× this machine's {cores} cores \
             (0 uses every core)"
        )));
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    Ok(())
}

/// Bytes per parameter that training holds whatever the batch: the weights and their gradients
/// in the training precision, and AdamW's f32 master weights and two moments.
pub fn training_bytes_per_param(dtype: DType) -> u64 {
    2 * dtype.size_in_bytes() as u64 + 12
}

/// Host memory a new allocation can get: Linux's `MemAvailable` plus free swap, from
/// `/proc/meminfo`; `None` where that file is missing or unreadable.
pub fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// Refuses, before anything is allocated, to train on the CPU a model whose weights, gradients
/// and optimiser state alone ([`training_bytes_per_param`]) need more memory than the machine
/// has available, instead of running until the kernel kills the process (or the allocator
/// aborts it). Activations come on top, so passing is no promise that a run fits. On a GPU the
/// allocator's out-of-memory error says it.
pub fn check_model_fits(mc: &ModelConfig, dtype: DType, device: Device) -> Result<()> {
    if !device.is_cpu() {
        return Ok(());
    }
    let Some(available) = host_memory_available() else { return Ok(()) };
    let per_param = training_bytes_per_param(dtype);
    let needed = mc.param_count().saturating_mul(per_param);
    if needed <= available {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(TrainError::Usage(format!(
        "the model ({:.3}B parameters: {} layers, hidden {}, vocabulary {}) needs at least {:.1} GiB \
         on the CPU for its {} weights, gradients and AdamW state ({per_param} bytes per parameter), \
         but this machine has {:.1} GiB available; use a smaller model, or a GPU",
        mc.param_count() as f64 / 1e9,
        mc.layers,
        mc.hidden,
        mc.vocab_size,
        gib(needed),
        dtype.name(),
        gib(available)
    )))
}

/// The device named by `name` (`auto`, `cpu`, `cuda`, `cuda:N`).
pub fn resolve_device(name: &str) -> Result<Device> {
    match parse_device_name(name).map_err(TrainError::Usage)? {
        DeviceChoice::Auto => Ok(Device::best_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => Ok(Device::cuda(n)?),
    }
}

/// The parameters' precision for `name` on `device`: bf16 on a GPU and f32 on the CPU for
/// `auto`.
pub fn resolve_dtype(name: &str, device: Device) -> Result<DType> {
    match name {
        "auto" if device.is_cpu() => Ok(DType::F32),
        "auto" | "bf16" => Ok(DType::BF16),
        "f32" => Ok(DType::F32),
        other => Err(TrainError::Usage(format!("unknown precision {other:?} (auto, f32 or bf16)"))),
    }
}

/// Loads the tokenizer at `path`: ours, a Hugging Face `tokenizer.json` or a SentencePiece
/// `.model`.
pub fn load_tokenizer(path: &Path) -> Result<RunTokenizer> {
    if !path.exists() {
        return Err(TrainError::Usage(format!(
            "tokenizer {} does not exist (train one with `polylm tokenizer train`, or set \
             `tokenizer.train_if_missing = true`)",
            path.display()
        )));
    }
    RunTokenizer::load(path)
}

/// The tokenizer of `config`, trained on `data.train` first when it is missing and
/// `tokenizer.train_if_missing` is set.
pub fn ensure_tokenizer(config: &RunConfig, log: &dyn Fn(&str)) -> Result<RunTokenizer> {
    let t = &config.tokenizer;
    if t.path.exists() || !t.train_if_missing {
        return load_tokenizer(&t.path);
    }
    let corpus_dir = config.data.train.as_deref().ok_or_else(|| TrainError::Config {
        path: config.source.clone(),
        reason: "`tokenizer.train_if_missing` needs `data.train` (the text to train on)".into(),
    })?;
    config_folder("data.train", corpus_dir)?;
    let inputs = language_inputs(corpus_dir, config.data.langs.as_deref())?;
    log(&format!(
        "training a {}-token tokenizer on {} languages from {}",
        t.vocab_size,
        inputs.len(),
        corpus_dir.display()
    ));
    let start = std::time::Instant::now();
    // The documents `data prepare` will read, so the tokenizer learns the text it will encode.
    let mut corpora = Vec::with_capacity(inputs.len());
    for (lang, files) in inputs {
        let texts = DocReader::open(files, t.max_docs_per_lang)?
            .map(|doc| doc.map(|d| d.text))
            .collect::<std::result::Result<Vec<String>, _>>()?;
        corpora.push(LanguageCorpus::new(lang, texts));
    }
    let train_config = TrainConfig { vocab_size: t.vocab_size, alpha: t.alpha, ..TrainConfig::default() };
    let model = polylm_tokenizer::train(&corpora, &train_config)?;
    if let Some(parent) = t.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    tokjson::save(&model, &t.path)?;
    log(&format!("tokenizer written to {} in {:.1} s", t.path.display(), start.elapsed().as_secs_f64()));
    Ok(RunTokenizer::ours(Tokenizer::new(model)))
}

/// The inputs of a corpus folder by language (`<lang>.jsonl`, `<lang>.txt` or a `<lang>/` folder
/// of parts, as `data prepare` reads them): all of them, or those of `wanted` after checking
/// each is there.
pub fn language_inputs(dir: &Path, wanted: Option<&[String]>) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut found = list_inputs(dir)?;
    match wanted {
        None if found.is_empty() => Err(TrainError::Usage(format!(
            "{} holds no <lang>.jsonl or <lang>.txt files (or <lang>/ folders of them)",
            dir.display()
        ))),
        None => Ok(found),
        Some(w) => {
            let mut picked = BTreeMap::new();
            for lang in w {
                let Some(files) = found.remove(lang) else {
                    return Err(TrainError::Usage(format!(
                        "language {lang:?} has no input in {} (found: {})",
                        dir.display(),
                        found.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                };
                picked.insert(lang.clone(), files);
            }
            Ok(picked)
        }
    }
}

/// The prepared shards of `config`, prepared from `data.train` (and `data.valid`,
/// `data.pairs`) first when `data.dir` holds none. Checks that they were made with
/// `tokenizer`.
pub fn ensure_dataset(
    config: &RunConfig,
    tokenizer: &RunTokenizer,
    log: &dyn Fn(&str),
) -> Result<Arc<Dataset>> {
    let d = &config.data;
    if !d.dir.join("manifest.json").exists() {
        let Some(train) = &d.train else {
            return Err(TrainError::Usage(format!(
                "{} holds no prepared data (run `polylm data prepare`, or set `data.train` so the \
                 run prepares it)",
                d.dir.display()
            )));
        };
        config_folder("data.train", train)?;
        if let Some(valid) = &d.valid {
            config_folder("data.valid", valid)?;
        }
        log(&format!("preparing token shards from {} into {}", train.display(), d.dir.display()));
        let start = std::time::Instant::now();
        let opts = PrepareOptions {
            train: train.clone(),
            valid: d.valid.clone(),
            pairs: d.pairs.clone(),
            out: d.dir.clone(),
            langs: d.langs.clone(),
            max_docs_per_lang: d.max_docs_per_lang,
        };
        let manifest = data::prepare(&opts, tokenizer, log)?;
        let tokens: u64 = manifest.splits.get("train").map_or(0, |s| s.iter().map(|i| i.tokens).sum());
        log(&format!("{tokens} training tokens prepared in {:.1} s", start.elapsed().as_secs_f64()));
    }
    let dataset = Dataset::open(&d.dir)?;
    dataset.check_tokenizer(tokenizer)?;
    Ok(Arc::new(dataset))
}

/// Checks that the folder a config field names exists; the error says where a relative path
/// was looked for (the current folder, not the config file's).
fn config_folder(field: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let whence = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => {
            format!(" (relative paths are read from the current folder, {})", cwd.display())
        }
        _ => String::new(),
    };
    let what = if path.exists() { "is not a folder" } else { "does not exist" };
    Err(TrainError::Usage(format!("{field} = {}: {what}{whence}", path.display())))
}

/// The model config of `config.model` with the tokenizer's vocabulary and end-of-sequence id.
pub fn model_config(config: &RunConfig, vocab_size: usize, eos: Option<u32>) -> Result<ModelConfig> {
    let m = &config.model;
    let mut c = match (&m.preset, &m.config) {
        (Some(p), _) => ModelConfig::preset(p)?,
        (None, Some(path)) if path.extension().is_some_and(|e| e == "json") => {
            let text = std::fs::read_to_string(path).map_err(io_err(path))?;
            polylm_model::hf_config::from_hf_json(&text)?
        }
        (None, Some(path)) => ModelConfig::from_file(path)?,
        (None, None) => {
            return Err(TrainError::Config {
                path: config.source.clone(),
                reason: "give `model.preset` or `model.config`".into(),
            })
        }
    };
    if let Some(v) = m.layers {
        c.layers = v;
    }
    if let Some(v) = m.hidden {
        c.hidden = v;
        c.ffn = 4 * v;
    }
    if let Some(v) = m.heads {
        c.heads = v;
    }
    if let Some(v) = m.context {
        c.context = v;
    }
    c.vocab_size = vocab_size;
    c.eos_token_id = eos;
    c.validate()?;
    if config.train.seq_len > c.context {
        return Err(TrainError::Config {
            path: config.source.clone(),
            reason: format!(
                "`train.seq_len` ({}) exceeds the model's context ({})",
                config.train.seq_len, c.context
            ),
        });
    }
    Ok(c)
}
