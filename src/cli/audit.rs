//! `catdog audit`: near-duplicates, quality flags and suspected label errors of a data
//! folder, as `audit.json` and a page of pictures.

use std::path::PathBuf;

use anyhow::{Result, bail};
use catdog::audit::{self, AuditSettings, Backbone, FOLDS, SuspectSettings, TOP};
use catdog::data::split::DEFAULT_SEED;
use catdog::evaluate::BATCH_SIZE;
use catdog::model::weights::WeightsChoice;
use catdog::report;
use catdog::run::resolve_model;
use catdog::train;

use super::data::DataArgs;
use super::progress::Bar;

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Where audit.json, index.html and the pictures go
    #[arg(long, default_value = "audit")]
    pub out: PathBuf,
    /// Learn from the backbone of this trained model (a run folder, or its best/ or last/)
    /// instead of --weights
    #[arg(long, value_name = "RUN", conflicts_with = "weights")]
    pub model: Option<PathBuf>,
    /// The backbone's weights: auto (our cache, then PyTorch's), none (random: weak
    /// suspects) or a .pth/.safetensors file
    #[arg(long, default_value_t = WeightsChoice::Auto)]
    pub weights: WeightsChoice,
    /// Near-duplicates and quality flags only: no network, no suspected label errors
    #[arg(long, conflicts_with_all = ["model", "weights"])]
    pub no_suspects: bool,
    /// Folds of the heads that score each photo out of sample
    #[arg(long, default_value_t = FOLDS)]
    pub folds: usize,
    /// Suspects drawn on the page (audit.json lists them all)
    #[arg(long, default_value_t = TOP)]
    pub top: usize,
    /// Seed of the folds (and of random weights)
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Where the backbone's features are cached [default: the weights' cache]
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Photos per forward pass
    #[arg(long, default_value_t = BATCH_SIZE)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

pub fn run(args: AuditArgs) -> Result<()> {
    if args.folds < 2 {
        bail!(
            "invalid --folds: {} (each photo needs a head trained without it: 2 or more)",
            args.folds
        );
    }
    let suspects = if args.no_suspects {
        None
    } else {
        let backbone = match &args.model {
            Some(run) => Backbone::Model(resolve_model(run)?),
            // Resolved before any photo is decoded: a missing file is refused at once.
            None => Backbone::Weights(args.weights.resolve()?),
        };
        Some(SuspectSettings {
            backbone,
            folds: args.folds,
            seed: args.seed,
            cache_dir: args.cache_dir.clone().or_else(train::default_cache_dir),
            batch_size: args.batch_size,
            device: args.device.device()?,
        })
    };
    let decoding = Bar::new("decoding");
    let features = Bar::new("features");
    let result = audit::audit(
        &AuditSettings {
            root: &args.data.data,
            layout: args.data.layout,
            limits: args.data.limits(),
            suspects,
        },
        &decoding,
        &features,
    );
    decoding.finish();
    features.finish();
    let audit = result?;
    audit.save(&args.out)?;
    report::write_audit_page(&args.out, &audit, args.top)?;

    let conflicting = audit
        .near_duplicates
        .iter()
        .filter(|g| !g.labels_agree())
        .count();
    println!(
        "{} photos: {} near-duplicate group(s), {conflicting} with different labels; \
         {} with quality flags",
        audit.photos,
        audit.near_duplicates.len(),
        audit.flagged.len()
    );
    if let Some(s) = &audit.suspects {
        println!(
            "suspected label errors: {} (features: {}; {} folds)",
            s.list.len(),
            s.backbone,
            s.folds
        );
        for x in s.list.iter().take(5) {
            println!(
                "  {} labelled {}, looks {} ({:.2})",
                x.path, x.label, x.predicted, x.probability
            );
        }
    }
    println!(
        "audit: {} and {}",
        args.out.join(report::INDEX).display(),
        args.out.join(audit::AUDIT_JSON).display()
    );
    Ok(())
}
