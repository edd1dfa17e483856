//! The language curriculum: a list of stages, each with its own language mixture.
//!
//! A stage starts at a step (`start_step`), a fraction of the run's steps (`start_fraction`)
//! or a count of training tokens (`start_tokens`); the stage in force is the last one whose
//! start has been reached. Its mixture is either explicit (`weights`, per language, normalised;
//! the key `"pairs"` names the bilingual split) or derived:
//!
//! - with `non_english = p`: English (`en`) gets `1 - p`, and the other languages share `p` in
//!   proportion to `tokens^alpha` (`alpha` 0.3 by default; 1 keeps natural sizes, 0 makes them
//!   equal);
//! - with neither: every language ∝ `tokens^alpha` (temperature sampling).
//!
//! `bilingual = b` then gives the `pairs` split (all language pairs together) a share `b`, the
//! rest being scaled by `1 - b`. `tokens` is always a language's whole training split.
//! `subset` restricts each language to the documents whose source is in the named set
//! (`[data.subsets]` in the run's TOML) without changing the language shares; a language with
//! no document in the subset keeps all its documents, so that no language disappears from the
//! mixture. The subset `hq` ([`DEFAULT_HQ_SOURCES`]) is built in unless the config defines its
//! own.
//!
//! In TOML:
//!
//! ```toml
//! [data.subsets]
//! hq = ["debian-handbook", "gnome-help", "installation-guide"]
//!
//! [[curriculum.stages]]
//! name = "stage1"
//! start_step = 0
//! non_english = 0.3
//!
//! [[curriculum.stages]]
//! name = "final"
//! start_fraction = 0.8
//! non_english = 0.6
//! subset = "hq"
//! bilingual = 0.05
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::error::{DataError, Result};

/// The language code treated as English by `non_english`.
pub const ENGLISH: &str = "en";
/// The split (and weight key) of bilingual pairs.
pub const PAIRS: &str = "pairs";
/// The split sampled for training.
pub const TRAIN: &str = "train";
/// Default language-balancing exponent.
pub const DEFAULT_ALPHA: f64 = 0.3;
/// Name of the built-in high-quality subset.
pub const HQ_SUBSET: &str = "hq";
/// Sources of the built-in `hq` subset (edited manuals rather than UI strings, man pages or
/// fortunes).
pub const DEFAULT_HQ_SOURCES: &[&str] = &["debian-handbook", "gnome-help", "installation-guide"];

/// One curriculum stage as written in the run's config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Stage name (unique; used in logs and errors).
    pub name: String,
    /// Starts at this optimiser step (exactly one `start_*` per stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_step: Option<u64>,
    /// Starts once this many training tokens have been seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_tokens: Option<u64>,
    /// Starts at this fraction (0..=1) of the run's total steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_fraction: Option<f64>,
    /// Share of non-English languages (0..=1); English gets the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_english: Option<f64>,
    /// Exponent of the `tokens^alpha` spread (default 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Explicit per-language weights (normalised); exclusive with `non_english` and `alpha`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, f64>>,
    /// Restrict documents to this subset's sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Share of bilingual pairs (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bilingual: Option<f64>,
}

/// Where a stage starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageStart {
    /// At this step.
    Step(u64),
    /// Once this many tokens have been seen.
    Tokens(u64),
}

#[derive(Clone, Debug)]
struct Stage {
    name: String,
    start: StageStart,
    weights: Vec<(String, f64)>,
    subset: Option<String>,
}

/// A validated curriculum: stages with their effective per-language probabilities.
#[derive(Clone, Debug)]
pub struct Curriculum {
    stages: Vec<Stage>,
    subsets: BTreeMap<String, Vec<u16>>,
}

/// The documents of `shard` whose source is in `sources` (all documents when `sources` is
/// `None` or no document matches).
pub(crate) fn subset_docs(shard: &super::shard::Shard, sources: Option<&[u16]>) -> Vec<u32> {
    let all = || (0..shard.num_docs() as u32).collect::<Vec<u32>>();
    match sources {
        None => all(),
        Some(src) => {
            let picked: Vec<u32> = (0..shard.num_docs() as u32)
                .filter(|&i| src.contains(&shard.doc_meta(i as usize).source))
                .collect();
            if picked.is_empty() {
                all()
            } else {
                picked
            }
        }
    }
}

fn check_unit(stage: &str, field: &str, v: f64, max_inclusive: bool) -> Result<()> {
    let ok = v.is_finite() && v >= 0.0 && (if max_inclusive { v <= 1.0 } else { v < 1.0 });
    if !ok {
        let range = if max_inclusive { "[0, 1]" } else { "[0, 1)" };
        return Err(DataError::BadCurriculum(format!("stage {stage:?}: {field} = {v} is not in {range}")));
    }
    Ok(())
}

impl Curriculum {
    /// Validates `stages` against `dataset` and computes each stage's mixture.
    ///
    /// Checks (errors name the stage and field): at least one stage; unique, non-empty names;
    /// exactly one of `start_step` / `start_tokens` / `start_fraction`; the first stage starts
    /// at 0; step starts (with fractions of `total_steps`) and token starts each strictly
    /// increase in order; `weights` ≥ 0 with a positive sum, over languages of the train split
    /// (or `pairs`), and not combined with `non_english`/`alpha`; `non_english` in [0, 1] with
    /// `en` present; `alpha` ≥ 0; `bilingual` in [0, 1) with a `pairs` split; a known subset
    /// whose sources exist in the dataset.
    pub fn new(
        stages: &[StageConfig],
        subsets: &BTreeMap<String, Vec<String>>,
        dataset: &Dataset,
        total_steps: u64,
    ) -> Result<Curriculum> {
        if stages.is_empty() {
            return Err(DataError::BadCurriculum("no stages".into()));
        }
        let langs = dataset.langs(TRAIN);
        if langs.is_empty() {
            return Err(DataError::NoData(format!(
                "the dataset in {} has no train split",
                dataset.dir().display()
            )));
        }
        // Subsets → source ids.
        let mut subset_ids: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for (name, names) in subsets {
            let mut ids = Vec::new();
            for s in names {
                match dataset.source_id(s) {
                    Some(id) => ids.push(id),
                    None => {
                        return Err(DataError::BadCurriculum(format!(
                            "subset {name:?}: source {s:?} is not in the dataset (sources: {})",
                            dataset.manifest().sources.join(", ")
                        )))
                    }
                }
            }
            subset_ids.insert(name.clone(), ids);
        }
        if !subset_ids.contains_key(HQ_SUBSET) {
            let ids = DEFAULT_HQ_SOURCES.iter().filter_map(|s| dataset.source_id(s)).collect();
            subset_ids.insert(HQ_SUBSET.to_string(), ids);
        }
        let has_pairs = dataset.split_tokens(PAIRS) > 0;

        let mut out = Vec::with_capacity(stages.len());
        let mut last_step: Option<u64> = None;
        let mut last_tokens: Option<u64> = None;
        for (i, st) in stages.iter().enumerate() {
            let name = st.name.as_str();
            let bad = |msg: String| Err(DataError::BadCurriculum(format!("stage {name:?}: {msg}")));
            if name.is_empty() {
                return Err(DataError::BadCurriculum(format!("stage {} has an empty name", i + 1)));
            }
            if stages[..i].iter().any(|s| s.name == st.name) {
                return bad("the name is used by another stage".into());
            }
            let n_starts = st.start_step.is_some() as u8
                + st.start_tokens.is_some() as u8
                + st.start_fraction.is_some() as u8;
            if n_starts != 1 {
                return bad(format!(
                    "give exactly one of start_step, start_tokens, start_fraction ({n_starts} given)"
                ));
            }
            let start = if let Some(s) = st.start_step {
                StageStart::Step(s)
            } else if let Some(t) = st.start_tokens {
                StageStart::Tokens(t)
            } else {
                let f = st.start_fraction.unwrap_or(0.0);
                check_unit(name, "start_fraction", f, true)?;
                StageStart::Step((f * total_steps as f64).round() as u64)
            };
            match start {
                StageStart::Step(s) => {
                    if i == 0 && s != 0 {
                        return bad(format!("the first stage must start at step 0, not {s}"));
                    }
                    if let Some(prev) = last_step {
                        if s <= prev {
                            return bad(format!(
                                "starts at step {s}, not after the previous stage's step {prev} (of {total_steps} steps)"
                            ));
                        }
                    }
                    last_step = Some(s);
                }
                StageStart::Tokens(t) => {
                    if i == 0 && t != 0 {
                        return bad(format!("the first stage must start at 0 tokens, not {t}"));
                    }
                    if let Some(prev) = last_tokens {
                        if t <= prev {
                            return bad(format!(
                                "starts at {t} tokens, not after the previous stage's {prev}"
                            ));
                        }
                    }
                    last_tokens = Some(t);
                }
            }
            if let Some(s) = &st.subset {
                if !subset_ids.contains_key(s) {
                    let known: Vec<&str> = subset_ids.keys().map(String::as_str).collect();
                    return bad(format!("unknown subset {s:?} (known: {})", known.join(", ")));
                }
            }
            // Language shares use each language's whole training split, so that a subset
            // changes which documents are read, not how often each language is.
            let tokens = |lang: &str| -> Result<u64> { Ok(dataset.shard(TRAIN, lang)?.total_tokens()) };
            let alpha = st.alpha.unwrap_or(DEFAULT_ALPHA);
            if !alpha.is_finite() || alpha < 0.0 {
                return bad(format!("alpha = {alpha} must be a finite number ≥ 0"));
            }
            let mut weights: Vec<(String, f64)> = Vec::new();
            if let Some(w) = &st.weights {
                if st.non_english.is_some() || st.alpha.is_some() {
                    return bad("weights cannot be combined with non_english or alpha".into());
                }
                if w.contains_key(PAIRS) && st.bilingual.is_some() {
                    return bad(
                        "give the pairs share either as weights.pairs or as bilingual, not both".into()
                    );
                }
                for (lang, &v) in w {
                    if !v.is_finite() || v < 0.0 {
                        return bad(format!("weights.{lang} = {v} must be a finite number ≥ 0"));
                    }
                    if lang == PAIRS {
                        if !has_pairs && v > 0.0 {
                            return bad("weights.pairs > 0 but the dataset has no bilingual pairs".into());
                        }
                    } else if !langs.contains(lang) {
                        return bad(format!(
                            "weights.{lang}: language not in the train split (languages: {})",
                            langs.join(", ")
                        ));
                    }
                    weights.push((lang.clone(), v));
                }
            } else if let Some(p) = st.non_english {
                check_unit(name, "non_english", p, true)?;
                if !langs.iter().any(|l| l == ENGLISH) {
                    return bad(format!(
                        "non_english is set but the train split has no English ({ENGLISH:?}); use weights"
                    ));
                }
                let mut others = Vec::new();
                for l in langs.iter().filter(|l| l.as_str() != ENGLISH) {
                    others.push((l.clone(), (tokens(l)? as f64).powf(alpha)));
                }
                let sum: f64 = others.iter().map(|(_, v)| v).sum();
                if p > 0.0 && sum <= 0.0 {
                    return bad(format!("non_english = {p} but the train split has no non-English tokens"));
                }
                weights.push((ENGLISH.to_string(), 1.0 - p));
                for (l, v) in others {
                    weights.push((l, if sum > 0.0 { p * v / sum } else { 0.0 }));
                }
            } else {
                for l in &langs {
                    weights.push((l.clone(), (tokens(l)? as f64).powf(alpha)));
                }
            }
            // Languages without tokens can never be sampled.
            for (l, v) in weights.iter_mut() {
                if l.as_str() != PAIRS && tokens(l.as_str())? == 0 {
                    *v = 0.0;
                }
            }
            let sum: f64 = weights.iter().map(|(_, v)| v).sum();
            if sum <= 0.0 || !sum.is_finite() {
                return bad("the weights sum to 0 (no language with tokens has a positive weight)".into());
            }
            for (_, v) in weights.iter_mut() {
                *v /= sum;
            }
            if let Some(b) = st.bilingual {
                check_unit(name, "bilingual", b, false)?;
                if b > 0.0 {
                    if !has_pairs {
                        return bad(format!("bilingual = {b} but the dataset has no bilingual pairs"));
                    }
                    for (_, v) in weights.iter_mut() {
                        *v *= 1.0 - b;
                    }
                    weights.push((PAIRS.to_string(), b));
                }
            }
            weights.retain(|(_, v)| *v > 0.0);
            weights.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(Stage { name: st.name.clone(), start, weights, subset: st.subset.clone() });
        }
        Ok(Curriculum { stages: out, subsets: subset_ids })
    }

    /// A curriculum of one stage with the given weights (tests, simple runs).
    pub fn fixed(weights: &BTreeMap<String, f64>, dataset: &Dataset) -> Result<Curriculum> {
        let stage = StageConfig {
            name: "fixed".into(),
            start_step: Some(0),
            weights: Some(weights.clone()),
            ..Default::default()
        };
        Curriculum::new(&[stage], &BTreeMap::new(), dataset, 1)
    }

    /// The index of the stage in force at `step` after `tokens` training tokens: the last
    /// stage whose start has been reached.
    pub fn stage_at(&self, step: u64, tokens: u64) -> usize {
        let mut current = 0;
        for (i, s) in self.stages.iter().enumerate() {
            let reached = match s.start {
                StageStart::Step(x) => step >= x,
                StageStart::Tokens(x) => tokens >= x,
            };
            if reached {
                current = i;
            }
        }
        current
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    /// The name of stage `i`.
    ///
    /// # Panics
    /// If `i >= self.num_stages()`.
    pub fn stage_name(&self, i: usize) -> &str {
        &self.stages[i].name
    }

    /// Where stage `i` starts (fractions already turned into steps).
    ///
    /// # Panics
    /// If `i >= self.num_stages()`.
    pub fn stage_start(&self, i: usize) -> StageStart {
        self.stages[i].start
    }

    /// The subset stage `i` samples from, if any.
    ///
    /// # Panics
    /// If `i >= self.num_stages()`.
    pub fn stage_subset(&self, i: usize) -> Option<&str> {
        self.stages[i].subset.as_deref()
    }

    /// The source ids of a subset (those of its names present in the dataset).
    pub fn subset_sources(&self, name: &str) -> Option<&[u16]> {
        self.subsets.get(name).map(Vec::as_slice)
    }

    /// The effective sampling probabilities of stage `i`, sorted by language, summing to 1,
    /// zero entries left out; `"pairs"` is the bilingual share.
    ///
    /// # Panics
    /// If `i >= self.num_stages()`.
    pub fn weights(&self, i: usize) -> &[(String, f64)] {
        &self.stages[i].weights
    }

    /// The PolyLM schedule: 30% non-English from step 0, then 60% non-English on the `hq`
    /// subset from 80% of the steps (no bilingual share; see [`Curriculum::default_stages_for`]).
    pub fn default_stages() -> Vec<StageConfig> {
        vec![
            StageConfig {
                name: "stage1".into(),
                start_step: Some(0),
                non_english: Some(0.3),
                alpha: Some(DEFAULT_ALPHA),
                ..Default::default()
            },
            StageConfig {
                name: "final".into(),
                start_fraction: Some(0.8),
                non_english: Some(0.6),
                alpha: Some(DEFAULT_ALPHA),
                subset: Some(HQ_SUBSET.into()),
                ..Default::default()
            },
        ]
    }

    /// [`Curriculum::default_stages`] adapted to a dataset: a 5% bilingual share in the final
    /// stage when it has pairs; plain `tokens^0.3` sampling (same shares in both stages) when
    /// it lacks English or has English only.
    pub fn default_stages_for(dataset: &Dataset) -> Vec<StageConfig> {
        let mut stages = Curriculum::default_stages();
        let langs = dataset.langs(TRAIN);
        let has_en = langs.iter().any(|l| l == ENGLISH);
        let has_other = langs.iter().any(|l| l != ENGLISH);
        if !(has_en && has_other) {
            for s in &mut stages {
                s.non_english = None;
            }
        }
        if dataset.split_tokens(PAIRS) > 0 {
            if let Some(last) = stages.last_mut() {
                last.bilingual = Some(0.05);
            }
        }
        stages
    }
}
