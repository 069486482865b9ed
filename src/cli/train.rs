//! `catdog train`: prepare the data (unless a manifest is given), train,
//! then evaluate the best checkpoint on the test split.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use catdog::data::Ratios;
use catdog::preprocess::Preprocessing;
use catdog::data::Split;
use catdog::report;
use catdog::run::{self, RunDir, Which};
use catdog::model::weights::WeightsChoice;
use catdog::train::{self, DataSource, Mode, Outcome, Start, TrainConfig};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The data folder (one folder per class, or files named like cat.0.jpg)
    #[arg(long, required_unless_present_any = ["resume", "manifest"])]
    pub data: Option<PathBuf>,
    /// Where the run's files go (config, metrics, checkpoints, report)
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder after its last saved batch
    #[arg(long, value_name = "RUN", conflicts_with_all = ["data", "out", "manifest"])]
    pub resume: Option<PathBuf>,
    /// Use this manifest (from `catdog split`) instead of preparing the data
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// auto (our cache, then PyTorch's), none (random initialisation) or a .pth/.safetensors file
    #[arg(long, default_value_t = TrainConfig::default().weights)]
    pub weights: WeightsChoice,
    /// finetune (every layer) or frozen (the head on cached backbone features);
    /// default: frozen on CPU, finetune on GPU
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    pub lr: f64,
    /// Side of the square model input; the resize before the crop keeps torchvision's 256:224
    #[arg(long, default_value_t = TrainConfig::default().preprocessing.image_size)]
    pub image_size: u32,
    /// Random resized crops and horizontal flips while training
    #[arg(long)]
    pub augment: bool,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Split fractions when preparing the data
    #[arg(long, default_value_t = Ratios::default())]
    pub ratios: Ratios,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Folder for frozen mode's feature cache (default: the weights' cache folder)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // First Ctrl-C: finish the batch and save; a second one: leave at once.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this batch (Ctrl-C again to quit at once)");
    })?;
    let log = |line: &str| println!("{}", line.trim_end());
    let (run, start) = match args.resume {
        Some(run) => (RunDir::new(run), Start::Resume),
        None => {
            let Some(out) = args.out else {
                bail!("--out RUN is required")
            };
            let source = match args.manifest {
                Some(manifest) => DataSource::Manifest(manifest),
                None => DataSource::Folder {
                    root: args.data.unwrap_or_default(),
                    layout: None,
                    ratios: args.ratios,
                },
            };
            let config = TrainConfig {
                source,
                weights: args.weights,
                mode: args.mode.unwrap_or(Mode::default_for(args.device.device)),
                epochs: args.epochs,
                batch_size: args.batch_size,
                lr: args.lr,
                augment: args.augment,
                seed: args.seed,
                device: args.device.device,
                preprocessing: Preprocessing::imagenet(args.image_size),
                cache_dir: args.cache_dir.or_else(train::default_cache_dir),
            };
            (RunDir::new(out), Start::New(Box::new(config)))
        }
    };
    let outcome = train::train(&run, start, &stop, &log)?;
    finish(&run, &outcome, &outcome.config.settings.device.device()?)
}

/// What a person needs after training: where things are.
fn finish(run: &RunDir, outcome: &Outcome, device: &burn::prelude::Device) -> Result<()> {
    if outcome.stopped {
        return Ok(());
    }
    if let Some(best) = outcome.best {
        println!(
            "best: epoch {} (val acc {:.2}%, loss {:.4}); model in {}",
            best.epoch,
            100.0 * best.val_acc,
            best.val_loss,
            run.checkpoint(Which::Best).display()
        );
    }
    let manifest = catdog::data::Manifest::load(&run.manifest())?;
    if manifest.count(Split::Test) == 0 {
        println!("no test split (--ratios gave it nothing): the best model was not evaluated");
    } else {
        // The seed's last step: the best checkpoint on the held-out test split, then the report.
        println!();
        super::evaluate::write_report(run, Which::Best, report::SAMPLES, device)?;
    }
    println!("run: {} ({})", run.root.display(), run::CONTENTS);
    Ok(())
}
