//! `catdog demo`: every stage on a generated data set, offline.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use burn::prelude::Device;
use catdog::data::{Limits, Ratios, synthetic};
use catdog::model::weights::WeightsChoice;
use catdog::preprocess::Preprocessing;
use catdog::report;
use catdog::run::{self, RunDir, Which};
use catdog::train::{self, DataSource, Mode, Start, TrainConfig};

use super::data::{self, DataArgs};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo's data and outputs
    #[arg(long, default_value = "catdog-demo")]
    pub out: PathBuf,
    /// Generated photos per class
    #[arg(long, default_value_t = 60)]
    pub per_class: usize,
    /// Training epochs
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let set = synthetic::write_dataset(&args.out, args.per_class, args.seed)?;
    println!(
        "== data: {} synthetic photos in {}, with these odd files planted:",
        set.photos,
        set.data.display()
    );
    for (path, what) in &set.planted {
        println!("  {path}: {what}");
    }
    println!("\n== clean + split");
    let manifest_path = args.out.join("manifest.json");
    let data_args = DataArgs {
        data: set.data.clone(),
        layout: None,
        max_pixels: Limits::default().max_pixels,
        max_file_bytes: Limits::default().max_file_bytes,
    };
    let report_path = args.out.join("clean-report.json");
    let (manifest, _) = data::prepare(
        &data_args,
        Ratios::default(),
        args.seed,
        false,
        &manifest_path,
        Some(&report_path),
    )?;
    println!("clean report: {}", report_path.display());
    data::print_split(&manifest, &manifest_path);

    // No download here: the demo trains from random initialisation on small
    // images, which these synthetic classes allow in seconds.
    println!("\n== train (ResNet-18 from random initialisation, 64 px, fine-tuning every layer)");
    let run = RunDir::new(args.out.join("run"));
    if run.root.exists() {
        std::fs::remove_dir_all(&run.root)?;
    }
    let config = TrainConfig {
        source: DataSource::Manifest(manifest_path),
        weights: WeightsChoice::None,
        mode: Mode::Finetune,
        epochs: args.epochs,
        seed: args.seed,
        preprocessing: Preprocessing::imagenet(64),
        ..TrainConfig::default()
    };
    let show = super::train::Show::new(&run);
    train::train(
        &run,
        Start::New(Box::new(config)),
        &AtomicBool::new(false),
        &|event| show.event(event),
    )?;
    println!("\n== evaluate on the test split + report");
    super::evaluate::write_report(
        &run,
        Which::Best,
        report::SAMPLES,
        (&Device::flex(), Default::default()),
    )?;
    println!("\nrun folder: {} ({})", run.root.display(), run::CONTENTS);
    println!(
        "open the report: {}",
        run.report_dir().join("index.html").display()
    );
    println!(
        "next: `catdog weights download`, then `catdog train --data DIR --out RUN` for the reference recipe on your photos"
    );
    Ok(())
}
