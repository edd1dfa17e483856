//! The `polylm` subcommands: argument parsing and the glue to the library.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use polylm_engine::DType;
use polylm_model::{Gpt, ModelConfig, SamplingParams};
use polylm_tokenizer::cli as tokcli;
use polylm_trainer::bench::{self, BenchOptions};
use polylm_trainer::checkpoint::TOKENIZER_FILE;
use polylm_trainer::data::{self, Dataset, PrepareOptions};
use polylm_trainer::tokenizer::RunTokenizer;
use polylm_trainer::{choice, dist, setup, sft, train, RunConfig, TrainError};

type Result<T> = std::result::Result<T, TrainError>;

#[derive(Parser, Debug)]
#[command(
    name = "polylm",
    version,
    about = "Train, fine-tune, evaluate and sample PolyLM multilingual language models",
    after_help = "Examples:\n  polylm train --config configs/quickstart.toml\n  \
                  polylm generate --checkpoint runs/quickstart --prompt \"La casa\"\n  \
                  polylm bench --preset small"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train, use and measure BPE tokenizers.
    #[command(subcommand)]
    Tokenizer(tokcli::Command),
    /// Turn text into token shards.
    #[command(subcommand)]
    Data(DataCommand),
    /// Pretrain a model as a run config describes (resumes from the run's latest checkpoint).
    #[command(after_help = "Examples:\n  polylm train --config configs/quickstart.toml\n  \
                            polylm train --config configs/quickstart.toml --steps 200 --set optim.lr=1e-3 --device cpu")]
    Train(RunArgs),
    /// Instruction-tune a model on MultiAlpaca-format JSONL (loss on responses only).
    #[command(after_help = "Example:\n  polylm sft --config configs/sft.toml")]
    Sft(RunArgs),
    /// Validation loss and bits per byte per language, multiple-choice accuracy, tokenizer
    /// compression.
    #[command(
        after_help = "Examples:\n  polylm eval --checkpoint runs/quickstart --data runs/quickstart/data\n  \
                            polylm eval --checkpoint CKPT --choices items.jsonl\n  \
                            polylm eval --checkpoint CKPT --compression ../shared/data/valid\n  \
                            # a model folder downloaded from the Hugging Face Hub, with its tokenizer:\n  \
                            polylm eval --checkpoint ~/hub/polylm-1.7b --choices xcopa.jsonl --compression ../shared/data/valid"
    )]
    Eval(EvalArgs),
    /// Continue prompts with a trained model.
    #[command(
        after_help = "Examples:\n  polylm generate --checkpoint CKPT --prompt \"Die Katze\" --prompt \"El gato\"\n  \
                            polylm generate --checkpoint CKPT --instruct --prompt \"Translate to French: good morning\"\n  \
                            # a model folder downloaded from the Hugging Face Hub, as it is:\n  \
                            polylm generate --checkpoint ~/hub/gpt2 --prompt \"The meaning of life is\" --temperature 0"
    )]
    Generate(GenerateArgs),
    /// Training throughput (tokens/s, model FLOPs utilisation) of a preset on this machine, and
    /// with --ddp the overhead of the data-parallel path against the plain one.
    #[command(after_help = "Examples:\n  polylm bench --preset small\n  \
                            polylm bench --preset polylm-1.7b --batch 4 --seq 2048 --recompute --device cuda --peak-tflops 989\n  \
                            polylm bench --preset small --ddp tcp\n  \
                            polylm launch --nproc-per-node 8 -- bench --preset polylm-1.7b --batch 4 --seq 2048 --recompute --ddp nccl")]
    Bench(BenchArgs),
    /// All-reduce bandwidth of a data-parallel backend: time per all-reduce through the host
    /// buffers the training loop uses and, for NCCL, of buffers already on the GPU; algorithm
    /// and bus bandwidth as nccl-tests count them.
    #[command(after_help = "Examples:\n  polylm bench-allreduce --backend tcp\n  \
                            polylm bench-allreduce --backend nccl --sizes-mib 1,16,256\n  \
                            polylm launch --nproc-per-node 8 -- bench-allreduce --backend nccl")]
    BenchAllreduce(AllReduceArgs),
    /// Start this node's ranks of a data-parallel run: one `polylm` process per GPU (or CPU
    /// rank), with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set.
    #[command(after_help = "Examples:\n  polylm launch --nproc-per-node 8 -- train --config run.toml\n  \
                            polylm launch --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 \
                            --master-port 29500 -- train --config run.toml")]
    Launch(LaunchArgs),
    /// Compile the CUDA kernels ahead of time into the kernel cache (for a GPU architecture,
    /// with NVRTC; needs no GPU), so that the first run on a fresh machine spends no time
    /// compiling them.
    #[command(after_help = "Examples:\n  polylm compile-kernels\n  \
                            polylm compile-kernels --arch sm_90 --cache /shared/polylm-kernels\n  \
                            POLYLM_KERNEL_CACHE=/shared/polylm-kernels polylm train --config run.toml")]
    CompileKernels(CompileKernelsArgs),
}

#[derive(Args, Debug)]
struct CompileKernelsArgs {
    /// The GPU architecture (sm_80, sm_90; Hopper also gets its sm_90a kernels); default: that
    /// of this machine's first GPU.
    #[arg(long)]
    arch: Option<String>,
    /// The cache folder; default: the one runs use ($POLYLM_KERNEL_CACHE, else
    /// ~/.cache/polylm/kernels).
    #[arg(long)]
    cache: Option<std::path::PathBuf>,
    /// Only these kernel files (comma-separated stems such as layernorm,matmul_tc).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Args, Debug)]
struct LaunchArgs {
    /// Processes (ranks) to start on this node.
    #[arg(long)]
    nproc_per_node: usize,
    /// Nodes in the run (run one launcher per node).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's number, 0..nnodes.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Rank 0's host.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Rank 0's rendezvous port (default: a free port on one node, 29500 on several).
    #[arg(long)]
    master_port: Option<u16>,
    /// The command every rank runs, after `--` (e.g. `-- train --config run.toml`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Tokenize per-language text or JSONL into shards with an index and a manifest.
    #[command(
        after_help = "Example:\n  polylm data prepare --tokenizer tok.json --train ../shared/data/corpus \
                            --valid ../shared/data/valid --out data --langs en,de,zh"
    )]
    Prepare(PrepareArgs),
}

#[derive(Args, Debug)]
struct PrepareArgs {
    /// The tokenizer: ours, a Hugging Face tokenizer.json or a SentencePiece .model (a released
    /// model's own, to train on from its checkpoint).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Folder of `<lang>.jsonl` (`{"text": ...}`), `<lang>.txt` or `<lang>/` folders of such parts
    /// (any of them may be gzip-compressed: `en.jsonl.gz`).
    #[arg(long)]
    train: PathBuf,
    /// Folder of validation text, same layout.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Bilingual pairs JSONL ({"src_lang","tgt_lang","src","tgt"}).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated languages (default: every file in --train).
    #[arg(long, value_delimiter = ',')]
    langs: Option<Vec<String>>,
    /// At most this many documents per language.
    #[arg(long)]
    max_docs_per_lang: Option<usize>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The run config (TOML; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Override a field: --set section.field=value (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    set: Vec<String>,
    /// Shorthand for --set train.steps=N.
    #[arg(long)]
    steps: Option<u64>,
    /// Shorthand for --set run.device=D (auto, cpu, cuda, cuda:N).
    #[arg(long)]
    device: Option<String>,
    /// Shorthand for --set run.out_dir=DIR.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Shorthand for --set run.threads=N.
    #[arg(long)]
    threads: Option<usize>,
}

impl RunArgs {
    fn load(&self) -> Result<RunConfig> {
        let mut sets = self.set.clone();
        if let Some(s) = self.steps {
            sets.push(format!("train.steps={s}"));
        }
        if let Some(d) = &self.device {
            sets.push(format!("run.device=\"{d}\""));
        }
        if let Some(o) = &self.out {
            sets.push(format!("run.out_dir={}", toml_string(&o.display().to_string())));
        }
        if let Some(t) = self.threads {
            sets.push(format!("run.threads={t}"));
        }
        RunConfig::load(&self.config, &sets)
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The model and tokenizer that `eval` and `generate` read.
#[derive(Args, Debug)]
struct CheckpointArgs {
    /// A checkpoint folder (config.json and model.safetensors, pytorch_model.bin or a sharded
    /// index of either, as the Hugging Face Hub ships them), or a run's output folder (its
    /// latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The tokenizer: ours, a Hugging Face tokenizer.json or a SentencePiece .model (default:
    /// the checkpoint's tokenizer.json, else its tokenizer.model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    source: CheckpointArgs,
    /// Prepared shards whose `valid` split gives per-language loss and bits per byte.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Multiple-choice items ({"prompt", "choices", "gold"}) as JSON Lines or a JSON array, scored
    /// by log-likelihood.
    #[arg(long)]
    choices: Vec<PathBuf>,
    /// Folder of `<lang>.jsonl` texts: the tokenizer's bytes per token per language.
    #[arg(long)]
    compression: Option<PathBuf>,
    /// Tokens per validation window (default: the model's context).
    #[arg(long)]
    seq: Option<usize>,
    /// Validation tokens per language.
    #[arg(long, default_value_t = 65536)]
    max_tokens_per_lang: u64,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    source: CheckpointArgs,
    /// A prompt (repeatable; all are generated as one batch).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Wrap each prompt in the instruction template the SFT data was trained with
    /// ("{query}\n\n").
    #[arg(long)]
    instruct: bool,
    /// The most new tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Temperature (0: greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Nucleus threshold.
    #[arg(long, default_value_t = 0.8)]
    top_p: f32,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Repetition penalty (1: none).
    #[arg(long, default_value_t = 1.02)]
    repetition_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// A model preset (tiny, small, polylm-1.7b, polylm-13b).
    #[arg(long, default_value = "small")]
    preset: String,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Micro-batches per optimiser step (gradients accumulate, then one clip and AdamW step).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Tokens per sequence (default: the preset's context).
    #[arg(long)]
    seq: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto (bf16 on a GPU, f32 on the CPU), f32 or bf16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Recompute activations in the backward pass.
    #[arg(long)]
    recompute: bool,
    /// The device's dense peak TFLOP/s for the utilisation (default 989, H100 SXM bf16, on a GPU).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Also time the steps with the gradients summed over the ranks (auto, tcp or nccl), as the
    /// data-parallel training loop does; the ranks come from the launcher's environment (this
    /// process alone without it).
    #[arg(long)]
    ddp: Option<String>,
    /// Gradient bucket size of --ddp, in MiB.
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// After the timed steps, run one more with every GPU kernel timed by CUDA events and print
    /// the device time per kernel family (GPU only).
    #[arg(long)]
    profile: bool,
}

#[derive(Args, Debug)]
struct AllReduceArgs {
    /// auto (NCCL when a GPU and the library are present), tcp or nccl.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Buffer sizes in MiB, comma-separated.
    #[arg(long, default_value = "1,16,64,256", value_delimiter = ',')]
    sizes_mib: Vec<f64>,
    /// Timed calls per size (after one warm-up).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Seconds to wait for the other ranks.
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tokenizer(cmd) => tokcli::run(cmd).map_err(|e| TrainError::Usage(e.0)),
        Command::Data(DataCommand::Prepare(a)) => prepare(a),
        Command::Train(a) => {
            let config = a.load()?;
            train::train(&config).map(|_| ())
        }
        Command::Sft(a) => {
            let config = a.load()?;
            train::sft(&config).map(|_| ())
        }
        Command::Eval(a) => eval(a),
        Command::Generate(a) => generate(a),
        Command::Bench(a) => run_bench(a),
        Command::CompileKernels(a) => compile_kernels(a),
        Command::BenchAllreduce(a) => run_bench_allreduce(a),
        Command::Launch(a) => {
            let opts = dist::launch::LaunchOptions {
                nproc_per_node: a.nproc_per_node,
                nnodes: a.nnodes,
                node_rank: a.node_rank,
                master_addr: a.master_addr,
                master_port: a.master_port,
                command: a.command,
                grace: std::time::Duration::from_secs(10),
            };
            let code = dist::launch::launch(&opts)?;
            if code != 0 {
                eprintln!("error: a rank failed; the launch exits with its status {code}");
                std::process::exit(code);
            }
            Ok(())
        }
    }
}

fn prepare(a: PrepareArgs) -> Result<()> {
    let tokenizer = setup::load_tokenizer(&a.tokenizer)?;
    let opts = PrepareOptions {
        train: a.train,
        valid: a.valid,
        pairs: a.pairs,
        out: a.out.clone(),
        langs: a.langs,
        max_docs_per_lang: a.max_docs_per_lang,
    };
    let manifest = data::prepare(&opts, &tokenizer, &|s: &str| eprintln!("{s}"))?;
    println!("split  lang      docs      tokens       bytes  bytes/token");
    for (split, shards) in &manifest.splits {
        for s in shards {
            println!(
                "{split:<6} {:<6} {:>7} {:>11} {:>11} {:>12.2}",
                s.lang,
                s.docs,
                s.tokens,
                s.bytes,
                s.bytes as f64 / s.tokens.max(1) as f64
            );
        }
    }
    println!("wrote {}", a.out.join("manifest.json").display());
    Ok(())
}

/// The model of a checkpoint folder (or a run's latest), on `device`, and its tokenizer of
/// any format `polylm tokenizer` reads.
fn open_checkpoint(source: &CheckpointArgs, device: &str) -> Result<(Gpt, RunTokenizer)> {
    let dir = polylm_trainer::checkpoint::resolve(&source.checkpoint)?;
    eprintln!("checkpoint {}", dir.display());
    let device = setup::resolve_device(device)?;
    // The tokenizer first: a missing one is an error before minutes of loading weights.
    let tokenizer = open_any_tokenizer(&dir, source.tokenizer.as_deref())?;
    let mut model = polylm_model::checkpoint::load(&dir, DType::F32)?;
    model.config().check_tokenizer_vocab(tokenizer.vocab_size())?;
    model.params_mut().to_device(device)?;
    Ok((model, tokenizer))
}

/// The tokenizer files a checkpoint folder is searched for when none is given: ours or a
/// Hugging Face `tokenizer.json`, else a SentencePiece `tokenizer.model` (as Llama-style Hub
/// repositories ship it).
const TOKENIZER_FILES: [&str; 2] = [TOKENIZER_FILE, "tokenizer.model"];

/// A tokenizer of any format `polylm tokenizer` reads, for a checkpoint in `dir`.
fn open_any_tokenizer(dir: &Path, given: Option<&Path>) -> Result<RunTokenizer> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => TOKENIZER_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()).ok_or_else(|| {
            TrainError::Usage(format!(
                "{} holds no tokenizer ({}); give one with --tokenizer",
                dir.display(),
                TOKENIZER_FILES.join(" or ")
            ))
        })?,
    };
    RunTokenizer::load(&path)
}

/// The token a prompt starts with and the one that ends generation. Our tokenizers separate
/// documents with `</s>`, so it is both; a foreign model starts at its `<s>` (or GPT-2's
/// `<|endoftext|>`) and stops at the config's `eos_token_id` or the tokenizer's `</s>`.
fn boundary_tokens(model: &Gpt, tokenizer: &RunTokenizer) -> Result<(u32, u32)> {
    if tokenizer.as_ours().is_some() {
        let eos = train::eos_of(tokenizer)?;
        return Ok((eos, eos));
    }
    let tokenizer = tokenizer.any();
    let eos = model.config().eos_token_id.or_else(|| tokenizer.boundary_id(false)).ok_or_else(|| {
        TrainError::Usage(
            "neither the config (eos_token_id) nor the tokenizer names an end-of-text token".into(),
        )
    })?;
    Ok((tokenizer.boundary_id(true).unwrap_or(eos), eos))
}

fn eval(a: EvalArgs) -> Result<()> {
    for (flag, value) in [
        ("--seq", a.seq.unwrap_or(1) as u64),
        ("--batch", a.batch as u64),
        ("--max-tokens-per-lang", a.max_tokens_per_lang),
    ] {
        if value == 0 {
            return Err(TrainError::Usage(format!("{flag} must be at least 1")));
        }
    }
    let (model, tokenizer) = open_checkpoint(&a.source, &a.device)?;
    let mut report = serde_json::Map::new();
    let mut did_something = false;
    if let Some(dir) = &a.data {
        did_something = true;
        let dataset = Dataset::open(dir)?;
        dataset.check_tokenizer(&tokenizer)?;
        let context = model.config().context;
        let seq = a.seq.unwrap_or(context);
        if seq > context {
            return Err(TrainError::Usage(format!(
                "--seq {seq} exceeds the model's context of {context} tokens"
            )));
        }
        let evals = data::validate(&model, &dataset, "valid", seq, a.batch, a.max_tokens_per_lang)?;
        println!("lang   tokens      bytes    loss  bits/byte");
        for e in &evals {
            println!("{:<5} {:>7} {:>10} {:>7.4} {:>10.4}", e.lang, e.tokens, e.bytes, e.loss, e.bpb);
        }
        report.insert("validation".into(), serde_json::to_value(&evals).unwrap_or_default());
    }
    for path in &a.choices {
        did_something = true;
        let items = choice::load_choices(path)?;
        let r = choice::score_choices(&model, tokenizer.any(), &items)?;
        println!(
            "{}: {} items, accuracy {:.4} (length-normalised {:.4})",
            path.display(),
            items.len(),
            r.accuracy,
            r.accuracy_norm
        );
        report.insert(
            path.display().to_string(),
            serde_json::json!({"items": items.len(),
            "accuracy": r.accuracy, "accuracy_norm": r.accuracy_norm}),
        );
    }
    if let Some(dir) = &a.compression {
        did_something = true;
        let rows = tokcli::compression(tokenizer.any(), dir, None).map_err(|e| TrainError::Usage(e.0))?;
        println!("lang   docs      bytes     tokens  bytes/token");
        for r in &rows {
            println!(
                "{:<5} {:>5} {:>10} {:>10} {:>12.3}",
                r.lang, r.docs, r.bytes, r.tokens, r.bytes_per_token
            );
        }
        report.insert("compression".into(), serde_json::to_value(&rows).unwrap_or_default());
    }
    if !did_something {
        return Err(TrainError::Usage("nothing to evaluate: give --data, --choices or --compression".into()));
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(report)).unwrap_or_default();
        polylm_model::safetensors::write_text_atomic(path, &text)?;
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let (model, tokenizer) = open_checkpoint(&a.source, &a.device)?;
    let (start, eos) = boundary_tokens(&model, &tokenizer)?;
    let context = model.config().context;
    let prompts: Vec<Vec<u32>> = a
        .prompt
        .iter()
        .map(|p| {
            let text = if a.instruct { sft::prompt_text(p) } else { p.clone() };
            let mut ids = vec![start];
            ids.extend(tokenizer.encode(&text));
            if ids.len() > context {
                ids.drain(..ids.len() - context);
            }
            ids
        })
        .collect();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        max_new_tokens: a.max_new_tokens.min(context.saturating_sub(longest)),
        eos_token_id: Some(eos),
        seed: a.seed,
    };
    let outs = model.generate(&prompts, &params)?;
    for (ids, g) in prompts.iter().zip(outs) {
        // Decoded with the prompt (less the start token), so the word boundary comes out right.
        let mut all = ids[usize::from(ids.first() == Some(&start))..].to_vec();
        all.extend(&g.tokens);
        println!("{}", tokenizer.decode(&all)?);
        println!("---");
    }
    Ok(())
}

fn run_bench(a: BenchArgs) -> Result<()> {
    let config = ModelConfig::preset(&a.preset)?;
    let device = setup::resolve_device(&a.device)?;
    let dtype = setup::resolve_dtype(&a.dtype, device)?;
    let seq = a.seq.unwrap_or(config.context);
    if seq > config.context || seq == 0 || a.batch == 0 || a.accum == 0 || a.steps == 0 {
        return Err(TrainError::Usage(format!(
            "--seq must be in 1..={} and --batch, --accum and --steps at least 1",
            config.context
        )));
    }
    if let Some(p) = a.peak_tflops.filter(|p| !(p.is_finite() && *p > 0.0)) {
        return Err(TrainError::Usage(format!("--peak-tflops must be a positive number, not {p}")));
    }
    let peak = a.peak_tflops.or(if device.is_cpu() { None } else { Some(989.0) });
    if a.profile && device.is_cpu() {
        return Err(TrainError::Usage(
            "--profile times GPU kernels with CUDA events; this run is on the CPU (use --device cuda)".into(),
        ));
    }
    let data_parallel = match &a.ddp {
        Some(backend) => {
            if a.bucket_mb.is_nan() || a.bucket_mb <= 0.0 {
                return Err(TrainError::Usage(format!("--bucket-mb must be positive, not {}", a.bucket_mb)));
            }
            let choice = dist::BackendChoice::parse(backend)?;
            let world = dist::World::from_env()?;
            let comm = dist::connect(&world, choice, !device.is_cpu(), std::time::Duration::from_secs(120))?;
            Some((comm, (a.bucket_mb * 1024.0 * 1024.0 / 4.0) as usize))
        }
        None => None,
    };
    let opts = BenchOptions {
        config: config.clone(),
        batch: a.batch,
        accum: a.accum,
        seq,
        steps: a.steps,
        device,
        dtype,
        recompute: a.recompute,
        peak_tflops: peak,
        data_parallel,
        profile: a.profile,
    };
    eprintln!(
        "bench: {} ({} parameters), batch {} × seq {}{}, {:?} on {:?}{}, {} steps after one warm-up",
        a.preset,
        config.param_count(),
        a.batch,
        seq,
        if a.accum > 1 { format!(" × {} micro-batches per step", a.accum) } else { String::new() },
        dtype,
        device,
        if a.recompute { ", recompute" } else { "" },
        a.steps.max(1)
    );
    let steps = opts.steps;
    let r = bench::run(opts)?;
    println!("tokens/s        {:.1}", r.tokens_per_s);
    println!("step time       {:.3} s", r.step_s);
    println!("GFLOP/token     {:.3}", r.flops_per_token / 1e9);
    println!("TFLOP/s         {:.3}", r.tflops);
    if let Some(m) = r.mfu {
        println!("MFU             {:.1}% (of {:.0} TFLOP/s)", m * 100.0, peak.unwrap_or(0.0));
    }
    if let Some(b) = r.peak_memory {
        println!("peak memory     {:.2} GB", b as f64 / 1e9);
    }
    println!(
        "setup           {:.1} s (initial weights, to the device, optimiser state), warm-up step {:.1} s",
        r.setup_s, r.warmup_s
    );
    if let Some(d) = r.data_parallel {
        println!(
            "data parallel   {} × {}: {:.1} tokens/s per rank, step {:.3} s, {:+.1}% against the plain step \
             (gradient buckets per step: {}, {} of them sent during the backward pass; {steps} steps)",
            d.world,
            d.backend,
            d.tokens_per_s,
            d.step_s,
            d.overhead * 100.0,
            d.buckets.0,
            d.buckets.1
        );
    }
    if let Some(rows) = &r.profile {
        print!("{}", bench::profile_table(rows, r.step_s));
    }
    Ok(())
}

fn compile_kernels(a: CompileKernelsArgs) -> Result<()> {
    use polylm_kernels::cuda::{nvrtc, source, CudaDevice};
    let sources: Vec<_> = source::all_sources()
        .into_iter()
        .filter(|s| a.only.is_empty() || a.only.iter().any(|o| o == s.name))
        .collect();
    if let Some(unknown) = a.only.iter().find(|o| !sources.iter().any(|s| s.name == o.as_str())) {
        let names: Vec<_> = source::all_sources().iter().map(|s| s.name).collect();
        return Err(TrainError::Usage(format!(
            "--only: no kernel file `{unknown}` (there are {})",
            names.join(", ")
        )));
    }
    let arch = match &a.arch {
        Some(text) => text.parse::<nvrtc::Arch>().map_err(|e| TrainError::Usage(format!("--arch: {e}")))?,
        None if polylm_kernels::cuda::device_count() > 0 => CudaDevice::new(0)?.arch(),
        None => {
            return Err(TrainError::Usage(
                "no GPU on this machine to take the architecture from: name it with --arch (sm_80, sm_90)"
                    .into(),
            ))
        }
    };
    let Some(dir) = a.cache.or_else(nvrtc::cache_dir) else {
        return Err(TrainError::Usage(
            "the kernel cache is off (POLYLM_KERNEL_CACHE=off): name a folder with --cache".into(),
        ));
    };
    let (major, minor) = nvrtc::nvrtc_version()?;
    eprintln!(
        "compiling {} kernel file(s) for {arch} with NVRTC {major}.{minor} into {}",
        sources.len(),
        dir.display()
    );
    let start = std::time::Instant::now();
    let warmed = nvrtc::warm_cache(&dir, arch, &sources);
    let mut first_error = None;
    let (mut compiled, mut reused) = (0, 0);
    for m in warmed {
        match m.result {
            Ok((bytes, was_cached)) => {
                let how = if was_cached { "already cached" } else { "compiled" };
                if was_cached {
                    reused += 1;
                } else {
                    compiled += 1;
                }
                println!(
                    "{:<24} {:<7} {how:<14} {:>6.1} s {:>8} KB",
                    m.source,
                    m.arch.to_string(),
                    m.seconds,
                    bytes / 1024
                );
            }
            Err(e) => {
                println!("{:<24} {:<7} FAILED", m.source, m.arch.to_string());
                first_error.get_or_insert(e);
            }
        }
    }
    println!(
        "{compiled} compiled, {reused} already cached, in {:.1} s; runs use them with POLYLM_KERNEL_CACHE={}",
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn run_bench_allreduce(a: AllReduceArgs) -> Result<()> {
    if a.sizes_mib.is_empty() || a.sizes_mib.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
        return Err(TrainError::Usage("--sizes-mib needs positive sizes".into()));
    }
    if a.iters == 0 {
        return Err(TrainError::Usage("--iters must be at least 1".into()));
    }
    if !(a.timeout_s.is_finite() && a.timeout_s > 0.0) {
        return Err(TrainError::Usage(format!(
            "--timeout-s must be a positive number of seconds, not {}",
            a.timeout_s
        )));
    }
    // One buffer of the largest size lives at a time (plus the backend's copies of it).
    let largest = a.sizes_mib.iter().fold(0.0f64, |m, &s| m.max(s)) * 1024.0 * 1024.0;
    if let Some(available) = setup::host_memory_available() {
        if 2.0 * largest > available as f64 {
            return Err(TrainError::Usage(format!(
                "--sizes-mib: a {:.0} MiB buffer (and the backend's copy of it) does not fit the {:.0} MiB \
                 of memory this machine has available",
                largest / 1048576.0,
                available as f64 / 1048576.0
            )));
        }
    }
    let choice = dist::BackendChoice::parse(&a.backend)?;
    let world = dist::World::from_env()?;
    let on_gpu = !matches!(choice, dist::BackendChoice::Tcp) && dist::nccl::available();
    let mut comm = dist::connect(&world, choice, on_gpu, std::time::Duration::from_secs_f64(a.timeout_s))?;
    let sizes: Vec<usize> = a.sizes_mib.iter().map(|&m| (m * 1024.0 * 1024.0) as usize).collect();
    let rows = bench::all_reduce(comm.as_mut(), &sizes, a.iters)?;
    if !world.is_root() {
        return Ok(());
    }
    let n = world.world_size;
    println!(
        "all-reduce over {n} rank(s), {} backend, f32, {} calls per size after a warm-up; bus bandwidth = \
         algorithm bandwidth × 2(n−1)/n (0 with one rank)",
        comm.backend(),
        a.iters.max(1)
    );
    println!("| size | host path ms | host algbw GB/s | host busbw GB/s | device path ms | device algbw GB/s | device busbw GB/s |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let device = match r.device_s {
            Some(s) => format!("{:.3} | {:.1} | {:.1}", s * 1e3, r.algbw(s), r.busbw(s, n)),
            None => "– | – | –".to_string(),
        };
        println!(
            "| {:.1} MiB | {:.3} | {:.2} | {:.2} | {device} |",
            r.bytes as f64 / (1024.0 * 1024.0),
            r.host_s * 1e3,
            r.algbw(r.host_s),
            r.busbw(r.host_s, n)
        );
    }
    Ok(())
}
