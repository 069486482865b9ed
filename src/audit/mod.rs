//! The audit: what to look at in a data folder before trusting the numbers a model
//! trained on it gets. Near-duplicates and quality flags come from the clean step
//! ([`crate::data::near`], [`crate::data::quality`]); this adds suspected label errors:
//! out-of-sample probabilities from k-fold heads ([`heads`]) on the frozen backbone's
//! cached features, ranked by confident learning ([`confident`]).
//! [`crate::report::write_audit_page`] draws the result.

pub mod confident;
pub mod heads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::module::Module;
use burn::prelude::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::manifest::{Conflict, NearGroup, Sample};
use crate::data::quality::Flag;
use crate::data::{self, CleanReport, Layout, Limits};
use crate::error::{Error, Result};
use crate::fsio;
use crate::loader::LoaderConfig;
use crate::model::{EvalNet, FEATURES, Precision, checkpoint, weights};
use crate::preprocess::Preprocessing;
use crate::progress::Progress;
use crate::train::features::{self, FeatureCache};

/// Folds of the k-fold heads by default.
pub const FOLDS: usize = 5;
/// Suspects shown on the audit page by default (audit.json lists them all).
pub const TOP: usize = 24;
/// The audit's JSON file in its folder.
pub const AUDIT_JSON: &str = "audit.json";

/// Which network's features the heads learn from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backbone {
    /// A torchvision weight file, or random initialisation from the seed (`None`).
    Weights(Option<PathBuf>),
    /// A trained model's folder (a run's `best/`): its backbone.
    Model(PathBuf),
}

/// How suspected label errors are looked for.
#[derive(Clone, Debug)]
pub struct SuspectSettings {
    pub backbone: Backbone,
    pub folds: usize,
    pub seed: u64,
    /// Where features are cached (not for random weights).
    pub cache_dir: Option<PathBuf>,
    pub batch_size: usize,
    pub device: Device,
}

/// What to audit.
pub struct AuditSettings<'a> {
    pub root: &'a Path,
    pub layout: Option<Layout>,
    pub limits: Limits,
    /// `None`: near-duplicates and quality flags only.
    pub suspects: Option<SuspectSettings>,
}

/// The audit's result, written as `audit.json`: the same inputs give the same bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditReport {
    pub catdog_version: String,
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// Usable photos.
    pub photos: usize,
    pub near_threshold: u32,
    /// Near-duplicate groups; those whose labels differ are what `catdog split` leaves out.
    pub near_duplicates: Vec<NearGroup>,
    /// Identical files with different labels.
    pub conflicts: Vec<Conflict>,
    /// Photos per quality flag.
    pub quality: BTreeMap<Flag, usize>,
    /// Every photo with a quality flag.
    pub flagged: Vec<FlaggedPhoto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspects: Option<Suspects>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlaggedPhoto {
    pub path: String,
    pub label: String,
    pub flags: Vec<Flag>,
}

/// Suspected label errors and how they were found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Suspects {
    /// The backbone, as a person reads it (a file, a model, random initialisation).
    pub backbone: String,
    pub folds: usize,
    /// Photos scored: the usable ones, less identical files with different labels.
    pub scored: usize,
    /// Confident learning's per-class thresholds.
    pub thresholds: BTreeMap<String, f32>,
    /// Most suspect first.
    pub list: Vec<Suspect>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    pub path: String,
    pub label: String,
    pub predicted: String,
    /// Out-of-sample probability of `predicted`.
    pub probability: f32,
    /// Out-of-sample probability of `label`.
    pub self_confidence: f32,
}

/// Runs the audit. `decoding` counts photos cleaned, `extracting` photos whose features
/// are computed (not those from the cache).
pub fn audit(
    settings: &AuditSettings<'_>,
    decoding: &dyn Progress,
    extracting: &dyn Progress,
) -> Result<AuditReport> {
    let scan = data::scan::scan(settings.root, settings.layout, None)?;
    let report = data::clean::clean(&scan, &settings.limits, decoding);
    let suspects = settings
        .suspects
        .as_ref()
        .map(|s| suspects(&report, s, extracting))
        .transpose()?;
    let flagged = report
        .usable()
        .filter(|f| !f.quality.is_empty())
        .map(|f| FlaggedPhoto {
            path: f.path.clone(),
            label: f.class.clone().unwrap_or_default(),
            flags: f.quality.clone(),
        })
        .collect();
    Ok(AuditReport {
        catdog_version: env!("CARGO_PKG_VERSION").to_owned(),
        root: report
            .root
            .canonicalize()
            .unwrap_or_else(|_| report.root.clone()),
        classes: report.classes.clone(),
        photos: report.usable().count(),
        near_threshold: report.near_threshold,
        quality: report.quality_counts().1,
        flagged,
        near_duplicates: report.near_duplicates.clone(),
        conflicts: report.conflicts.clone(),
        suspects,
    })
}

impl AuditReport {
    pub fn save(&self, dir: &Path) -> Result<()> {
        fsio::write_json(&dir.join(AUDIT_JSON), self)
    }
}

fn suspects(
    report: &CleanReport,
    settings: &SuspectSettings,
    progress: &dyn Progress,
) -> Result<Suspects> {
    // Identical files under two labels would each be scored against the other's label.
    let conflicted: std::collections::BTreeSet<&str> = report
        .conflicts
        .iter()
        .flat_map(|c| c.files.iter().map(|f| f.path.as_str()))
        .collect();
    let photos: Vec<&data::clean::FileReport> = report
        .usable()
        .filter(|f| !conflicted.contains(f.path.as_str()))
        .collect();
    let class_of = |f: &data::clean::FileReport| {
        let name = f.class.as_deref().unwrap_or_default();
        report.classes.iter().position(|c| c == name)
    };
    let samples: Vec<Sample> = photos
        .iter()
        .map(|f| Sample {
            path: report.root.join(&f.path),
            label: class_of(f).expect("usable files have a class"),
            hash: f.hash.clone().expect("usable files have a hash"),
        })
        .collect();
    let folds = fold_of_each(report, &photos, settings.folds, settings.seed);
    let k = folds.iter().max().map_or(0, |m| m + 1);
    if k < 2 {
        return Err(Error::data(
            &report.root,
            format!(
                "{} photo(s) are too few to score each one with heads that did not see it",
                samples.len()
            ),
            "audit a folder with more photos, or pass --no-suspects",
        ));
    }

    let device = settings.device.clone().without_autodiff();
    let classes = report.classes.len();
    let (model, preprocessing, sha, backbone) = match &settings.backbone {
        Backbone::Weights(file) => {
            let (model, origin) =
                weights::load_model(file.as_deref(), classes, settings.seed, &device)?;
            let sha = file.as_deref().map(fsio::sha256_file).transpose()?;
            (model, Preprocessing::default(), sha, origin.to_string())
        }
        Backbone::Model(dir) => {
            let (model, meta) = checkpoint::load(dir, &device)?;
            let sha = fsio::sha256_file(&dir.join(checkpoint::WEIGHTS_FILE))?;
            let name = format!("the backbone of {}", dir.display());
            (model, meta.preprocessing, Some(sha), name)
        }
    };
    // fp32: the features the training runs of the same photos cache (and share).
    let net = EvalNet::new(&model.valid(), &device, Precision::Fp32);
    let cache = match (&settings.cache_dir, &sha) {
        (Some(dir), Some(sha)) => {
            Some(FeatureCache::new(dir, sha, &preprocessing, Precision::Fp32))
        }
        _ => None,
    };
    let loader = LoaderConfig {
        batch_size: settings.batch_size.max(1),
        shuffle: false,
        augment: false,
        seed: settings.seed,
        preprocessing,
        prefetch: 3,
        limits: report.limits,
    };
    let (features, _) = features::extract(
        &net,
        &samples,
        cache.as_ref(),
        &loader,
        progress,
        &AtomicBool::new(false),
    )?
    .expect("never asked to stop");
    let labels: Vec<usize> = samples.iter().map(|s| s.label).collect();
    let probabilities = heads::out_of_fold(&features, FEATURES, &labels, classes, &folds, k);
    let thresholds = confident::thresholds(&labels, &probabilities, classes);
    let list = confident::label_issues(&labels, &probabilities, &thresholds)
        .into_iter()
        .map(|issue| Suspect {
            path: photos[issue.index].path.clone(),
            label: report.classes[issue.given].clone(),
            predicted: report.classes[issue.predicted].clone(),
            probability: issue.probability,
            self_confidence: issue.self_confidence,
        })
        .collect();
    Ok(Suspects {
        backbone,
        folds: k,
        scored: samples.len(),
        thresholds: report.classes.iter().cloned().zip(thresholds).collect(),
        list,
    })
}

/// The fold of each photo: near-duplicates and identical copies share one (a copy in
/// the training folds would score its twin in-sample), groups dealt out in a seeded order.
fn fold_of_each(
    report: &CleanReport,
    photos: &[&data::clean::FileReport],
    folds: usize,
    seed: u64,
) -> Vec<usize> {
    let mut group_of: BTreeMap<&str, &str> = BTreeMap::new();
    for g in &report.near_duplicates {
        for f in &g.files {
            group_of.insert(&f.path, &g.files[0].path);
        }
    }
    let key = |f: &&data::clean::FileReport| -> String {
        match group_of.get(f.path.as_str()) {
            Some(first) => format!("near:{first}"),
            None => f.hash.clone().unwrap_or_default(),
        }
    };
    let mut keys: Vec<String> = photos.iter().map(key).collect();
    keys.sort();
    keys.dedup();
    keys.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let folds = folds.min(keys.len());
    let fold: BTreeMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i % folds.max(1)))
        .collect();
    photos.iter().map(|f| fold[key(f).as_str()]).collect()
}
