//! `catdog evaluate` and `catdog report`: a training run's checkpoint on its own data.

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::Device;
use catdog::data::Split;
use catdog::evaluate::{Metrics, RunModel};
use catdog::report::write_run_report;
use catdog::run::{RunDir, Which};
use catdog::{fsio, progress};

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// The training run's folder (what `catdog train --out` wrote)
    pub run: PathBuf,
    /// The split of the run's manifest to evaluate on
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// The checkpoint: best (highest validation accuracy) or last
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// Print the metrics as JSON on stdout (what the evaluation file holds) instead of a table
    #[arg(long)]
    pub json: bool,
    /// Photos per forward pass
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The training run's folder (what `catdog train --out` wrote)
    pub run: PathBuf,
    /// The checkpoint: best (highest validation accuracy) or last
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// Test photos in each picture of photos (predictions, top losses, Grad-CAM)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub samples: u16,
}

pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    let run = RunDir::new(&args.run);
    let loaded = RunModel::load(&run, args.checkpoint, &Device::flex())?;
    let bar = progress::bar(0, "evaluating");
    let (metrics, _) = loaded.evaluate(args.split, usize::from(args.batch_size), &bar)?;
    bar.finish_and_clear();
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

pub fn report(args: ReportArgs) -> Result<()> {
    let run = RunDir::new(&args.run);
    let bar = progress::bar(0, "evaluating");
    let index = write_run_report(
        &run,
        args.checkpoint,
        usize::from(args.samples),
        &Device::flex(),
        &bar,
    )?;
    bar.finish_and_clear();
    let metrics: Metrics = fsio::read_json(&run.eval(args.checkpoint, Split::Test), "evaluation")?;
    print_metrics(&run, args.checkpoint, Split::Test, &metrics);
    println!("report: {}", index.display());
    Ok(())
}

/// Which checkpoint on which split, the metrics table, and where it is saved.
fn print_metrics(run: &RunDir, which: Which, split: Split, metrics: &Metrics) {
    println!("{} on the {split} split\n", run.checkpoint(which).display());
    print!("{metrics}");
    println!("\nmetrics: {}", run.eval(which, split).display());
}
