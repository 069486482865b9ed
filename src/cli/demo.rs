//! `catdog demo`: every stage on a generated data set, offline.

use std::path::PathBuf;

use anyhow::Result;
use catdog::data::Ratios;
use catdog::demo;

use super::data::{self, DataArgs};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo's data and outputs
    #[arg(long, default_value = "catdog-demo")]
    pub out: PathBuf,
    /// Generated photos per class
    #[arg(long, default_value_t = 60)]
    pub per_class: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let set = demo::write_dataset(&args.out, args.per_class, args.seed)?;
    println!(
        "wrote {} synthetic photos to {}, with these odd files planted:",
        set.photos,
        set.data.display()
    );
    for (path, what) in &set.planted {
        println!("  {path}: {what}");
    }
    println!();
    let manifest_path = args.out.join("manifest.json");
    let data_args = DataArgs {
        data: set.data.clone(),
        layout: None,
        max_pixels: catdog::data::Limits::default().max_pixels,
        max_file_bytes: catdog::data::Limits::default().max_file_bytes,
    };
    let report_path = args.out.join("clean-report.json");
    let manifest = data::prepare(
        &data_args,
        Ratios::default(),
        args.seed,
        &manifest_path,
        Some(&report_path),
    )?;
    println!("clean report: {}", report_path.display());
    data::print_split(&manifest, &manifest_path);
    Ok(())
}
