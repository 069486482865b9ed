//! `catdog train`: prepare the data (unless a manifest is given), train,
//! then evaluate the best checkpoint on the test split.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use catdog::data::Ratios;
use catdog::device::DeviceChoice;
use catdog::preprocess::Preprocessing;
use catdog::run::RunDir;
use catdog::train::{self, Mode, Outcome, Start, TrainConfig};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The data folder (one folder per class, or files named like cat.0.jpg);
    /// required unless --manifest or --resume is given
    #[arg(long, required_unless_present_any = ["resume", "manifest"])]
    pub data: Option<PathBuf>,
    /// Where the run's files go (config, metrics, checkpoints, report); required
    /// unless --resume is given
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder after its last saved batch, with its own settings
    /// (only --epochs may be given: train on until that many epochs in all)
    #[arg(long, value_name = "RUN", conflicts_with_all = [
        "data", "out", "manifest", "weights", "mode", "batch_size", "lr", "image_size",
        "augment", "seed", "ratios", "device", "cache_dir",
    ])]
    pub resume: Option<PathBuf>,
    /// Use this manifest (from `catdog split`) instead of preparing the data; the data
    /// folder is the one the manifest names
    #[arg(long, conflicts_with = "data")]
    pub manifest: Option<PathBuf>,
    /// auto (our cache, then PyTorch's), none (random initialisation) or a .pth/.safetensors file
    #[arg(long, default_value = "auto")]
    pub weights: String,
    /// finetune (every layer) or frozen (the head on cached backbone features);
    /// default: frozen on CPU, finetune on GPU
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Passes over the training photos [default: 5]; with --resume, the total to reach
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Photos per training step
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Adam's learning rate
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    pub lr: f64,
    /// Side of the square model input; the resize before the crop keeps torchvision's 256:224
    #[arg(long, default_value_t = 224)]
    pub image_size: u32,
    /// Random resized crops and horizontal flips while training
    #[arg(long)]
    pub augment: bool,
    /// Seed of the split, the initial head, the shuffling and the augmentation
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Split fractions when preparing the data
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub ratios: Ratios,
    /// cpu, cuda, cuda:N or wgpu (GPUs need a build with that feature)
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
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
        Some(run) => (
            RunDir::new(run),
            args.epochs.map_or(Start::Resume, Start::ResumeUntil),
        ),
        None => {
            let Some(out) = args.out else {
                bail!("--out RUN is required")
            };
            let config = TrainConfig {
                data: args.data.unwrap_or_default(),
                manifest: args.manifest,
                layout: None,
                ratios: args.ratios,
                weights: args.weights,
                mode: args.mode.unwrap_or(Mode::default_for(args.device)),
                epochs: args.epochs.unwrap_or(DEFAULT_EPOCHS),
                batch_size: args.batch_size,
                lr: args.lr,
                augment: args.augment,
                seed: args.seed,
                device: args.device,
                preprocessing: Preprocessing::imagenet(args.image_size),
                cache_dir: args.cache_dir.or_else(train::default_cache_dir),
            };
            (RunDir::new(out), Start::New(Box::new(config)))
        }
    };
    let outcome = train::train(&run, start, &stop, &log)?;
    if outcome.stopped {
        // As after SIGINT, so that a script can tell a stopped run from a finished one.
        return Err(Stopped.into());
    }
    finish(&run, &outcome)
}

/// The seed recipe's epochs.
const DEFAULT_EPOCHS: usize = 5;

/// Training stopped on Ctrl-C, with `last/` saved: the process exits with 130.
#[derive(Debug, thiserror::Error)]
#[error("stopped on request")]
pub struct Stopped;

/// What a person needs after training: where things are.
fn finish(run: &RunDir, outcome: &Outcome) -> Result<()> {
    if let Some(best) = outcome.best {
        println!(
            "best: epoch {} (val acc {:.2}%, loss {:.4}); model in {}",
            best.epoch,
            100.0 * best.val_acc,
            best.val_loss,
            run.checkpoint(catdog::run::Which::Best).display()
        );
    }
    let manifest = catdog::data::Manifest::load(&run.manifest())?;
    if manifest
        .files
        .iter()
        .all(|f| f.split != catdog::data::Split::Test)
    {
        println!("no test split (--ratios gave it nothing): the best model was not evaluated");
    } else {
        // The seed's last step: the best checkpoint on the held-out test split, then the report.
        println!();
        super::evaluate::report(super::evaluate::ReportArgs {
            run: run.root.clone(),
            checkpoint: catdog::run::Which::Best,
            samples: 16,
        })?;
    }
    println!(
        "run: {} (config.json, metrics.jsonl, metrics.csv, best/, last/, eval-test.json, report/)",
        run.root.display()
    );
    Ok(())
}
