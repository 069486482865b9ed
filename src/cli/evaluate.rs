//! `catdog evaluate` and `catdog report`: a training run's checkpoint on its own data.

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::Device;
use catdog::data::Split;
use catdog::evaluate::calibration::FalseRateLimit;
use catdog::evaluate::{BATCH_SIZE, Evaluation, RunModel};
use catdog::fsio;
use catdog::model::Precision;
use catdog::model::calibration::{DecisionRule, ERROR_RATE};
use catdog::report::{self, write_run_report};
use catdog::run::{RunDir, RunLock, Which};

use super::progress::Bar;

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// The training run's folder (what `catdog train --out` wrote)
    pub run: PathBuf,
    /// The split of the run's manifest to evaluate on: train, val or test
    #[arg(long, default_value_t = Split::Test)]
    pub split: Split,
    /// The checkpoint: best (highest validation accuracy) or last
    #[arg(long, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// Print the metrics as JSON on stdout (what the evaluation file holds) instead of a table
    #[arg(long)]
    pub json: bool,
    /// calibrated (a class, unsure or neither, from the model's calibration) or argmax (always
    /// the most probable class)
    #[arg(long, default_value_t = DecisionRule::default())]
    pub decision: DecisionRule,
    /// CLASS=RATE: choose on the validation split the threshold on CLASS's probability that
    /// takes at most RATE of the other photos for CLASS (e.g. dog=0.01), and report its rates
    #[arg(long, value_name = "CLASS=RATE")]
    pub max_false_rate: Option<FalseRateLimit>,
    /// Photos per forward pass
    #[arg(long, default_value_t = BATCH_SIZE as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,
    /// Also score test-time augmentation: each photo's eval crop and its mirror image,
    /// probabilities averaged (twice the time), reported beside the plain figures
    #[arg(long)]
    pub tta: bool,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The training run's folder (what `catdog train --out` wrote)
    pub run: PathBuf,
    /// The checkpoint: best (highest validation accuracy) or last
    #[arg(long, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// Test photos in each picture of photos (predictions, top losses, Grad-CAM)
    #[arg(long, default_value_t = report::SAMPLES as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub samples: u16,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
}

#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// The training run's folder (what `catdog train --out` wrote)
    pub run: PathBuf,
    /// The checkpoint: best (highest validation accuracy) or last
    #[arg(long, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// The share of photos whose true class the prediction sets may miss
    #[arg(long, default_value_t = ERROR_RATE)]
    pub error_rate: f64,
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    let run = RunDir::new(&args.run);
    let precision = args.precision.resolve(args.device.device);
    let mut loaded = RunModel::load(&run, args.checkpoint, &args.device.device()?, precision)?;
    loaded.judge.rule = args.decision;
    loaded.false_rate = args.max_false_rate;
    loaded.tta = args.tta;
    if loaded.judge.calibration().is_none() && args.decision == DecisionRule::Calibrated {
        eprintln!(
            "note: {} has no calibration, so every answer is the most probable class; fit one with `catdog calibrate {}`",
            run.checkpoint(args.checkpoint).display(),
            run.root.display()
        );
    }
    let bar = Bar::new("evaluating");
    let (metrics, _) = loaded.evaluate(args.split, usize::from(args.batch_size), &bar)?;
    bar.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
        eprintln!(
            "metrics: {}",
            run.eval(args.checkpoint, args.split).display()
        );
    } else {
        print_metrics(&run, args.checkpoint, args.split, &metrics);
    }
    Ok(())
}

/// `catdog calibrate`: fits the checkpoint's calibration again and stores it with the model.
pub fn calibrate(args: CalibrateArgs) -> Result<()> {
    let run = RunDir::new(&args.run);
    // A training process replaces best/ and last/ as wholes: not while this writes into one.
    let _lock = RunLock::acquire(&run)?;
    let show = super::train::Show::new(&run);
    let device = args.device.device()?;
    catdog::train::calibrate(&run, args.checkpoint, args.error_rate, &device, &|event| {
        show.event(event)
    })?;
    let dir = run.checkpoint(args.checkpoint);
    println!(
        "stored in {} (calibration) and {}",
        dir.join(catdog::model::checkpoint::META_FILE).display(),
        dir.join(catdog::model::calibration::OOD_FILE).display()
    );
    Ok(())
}

pub fn report(args: ReportArgs) -> Result<()> {
    let device = args.device.device()?;
    write_report(
        &RunDir::new(&args.run),
        args.checkpoint,
        usize::from(args.samples),
        (&device, args.precision.resolve(args.device.device)),
    )
}

/// Checkpoint `which` on the test split, the report, and what a person reads of them: `catdog
/// report`, and the last step of `catdog train` and `catdog demo`.
pub fn write_report(
    run: &RunDir,
    which: Which,
    samples: usize,
    compute: (&Device, Precision),
) -> Result<()> {
    let bar = Bar::new("evaluating");
    let index = write_run_report(run, which, samples, compute, &bar)?;
    bar.finish();
    let metrics: Evaluation = fsio::read_json(&run.eval(which, Split::Test), "evaluation")?;
    print_metrics(run, which, Split::Test, &metrics);
    println!("report: {}", index.display());
    Ok(())
}

/// Which checkpoint on which split, the metrics table, and where it is saved.
fn print_metrics(run: &RunDir, which: Which, split: Split, metrics: &Evaluation) {
    println!("{} on the {split} split\n", run.checkpoint(which).display());
    print!("{metrics}");
    println!("\nmetrics: {}", run.eval(which, split).display());
}
