//! `catdog clean` and `catdog split`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use catdog::data::manifest::{conflicts_text, near_text};
use catdog::data::split::DEFAULT_SEED;
use catdog::data::{self, Layout, Limits, Manifest, Prepare, Ratios, Split};
use catdog::fsio;

use super::progress::Bar;

#[derive(clap::Args)]
pub struct DataArgs {
    /// The data folder: one folder per class (Cat/, Dog/) or files named like cat.0.jpg
    pub data: PathBuf,
    /// Force the layout instead of detecting it: folders or flat
    #[arg(long)]
    pub layout: Option<Layout>,
    /// Refuse images with more pixels than this (decompression bombs)
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    pub max_pixels: u64,
    /// Refuse files larger than this many bytes
    #[arg(long, default_value_t = Limits::default().max_file_bytes)]
    pub max_file_bytes: u64,
}

impl DataArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_pixels: self.max_pixels,
            max_file_bytes: self.max_file_bytes,
        }
    }
}

#[derive(clap::Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the per-file report (JSON)
    #[arg(long, default_value = "clean-report.json")]
    pub report: PathBuf,
    /// Move rejected files under this folder, keeping their relative paths
    #[arg(long)]
    pub quarantine: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Seed of the split: the same seed and files give the same split
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Fractions for train, validation and test
    #[arg(long, default_value_t = Ratios::default())]
    pub ratios: Ratios,
    /// Where to write the manifest (JSON)
    #[arg(long, default_value = "manifest.json")]
    pub out: PathBuf,
    /// Split near-duplicates whose labels differ like the others, instead of leaving them out
    #[arg(long)]
    pub keep_near_conflicts: bool,
}

pub fn clean(args: CleanArgs) -> Result<()> {
    let scan = data::scan::scan(
        &args.data.data,
        args.data.layout,
        args.quarantine.as_deref(),
    )?;
    let bar = Bar::new("decoding");
    let mut report = data::clean::clean(&scan, &args.data.limits(), &bar);
    bar.finish();
    print!("{}", report.table());
    print!("{}", conflicts_text(&report.conflicts));
    print!("{}", report.quality_text());
    print!("{}", near_text(&report.near_duplicates, None));
    let moved = args
        .quarantine
        .as_ref()
        .map(|dir| data::clean::quarantine(&mut report, dir).map(|n| (n, dir)));
    // Written even when the quarantine failed: it records what was found and what was moved.
    fsio::write_json(&args.report, &report)?;
    if let Some(moved) = moved {
        let (n, dir) = moved?;
        println!("moved {n} rejected file(s) to {}", dir.display());
    }
    println!("report: {}", args.report.display());
    print!("{}", where_to_look(&report, &args.data.data));
    Ok(())
}

/// Where the details of the quality flags and near-duplicates are, when there are any.
fn where_to_look(report: &data::CleanReport, data: &Path) -> String {
    if report.quality_counts().0 == 0 && report.near_duplicates.is_empty() {
        return String::new();
    }
    format!(
        "to see them: `catdog audit {}` (pictures, and suspected label errors)\n",
        data.display()
    )
}

pub fn split(args: SplitArgs) -> Result<()> {
    let (manifest, report) = prepare(
        &args.data,
        args.ratios,
        args.seed,
        args.keep_near_conflicts,
        &args.out,
        None,
    )?;
    print_split(&manifest, &args.out);
    print!("{}", where_to_look(&report, &args.data.data));
    Ok(())
}

/// Clean + split with a progress bar, printing the clean summary; writes the
/// manifest, and the clean report when `report` names a file.
pub fn prepare(
    args: &DataArgs,
    ratios: Ratios,
    seed: u64,
    keep_near_conflicts: bool,
    out: &Path,
    report_path: Option<&Path>,
) -> Result<(Manifest, data::CleanReport)> {
    let bar = Bar::new("decoding");
    let (manifest, report) = data::prepare(
        &Prepare {
            root: &args.data,
            layout: args.layout,
            ratios,
            seed,
            limits: args.limits(),
            exclude: None,
            keep_near_conflicts,
        },
        &bar,
    )?;
    bar.finish();
    print!("{}", report.table());
    print!("{}", report.quality_text());
    if let Some(path) = report_path {
        fsio::write_json(path, &report)?;
    }
    manifest.save(out).with_context(|| "saving the manifest")?;
    Ok((manifest, report))
}

pub fn print_split(manifest: &Manifest, path: &Path) {
    println!();
    print!("{}", manifest.table());
    if !manifest.duplicates.is_empty() {
        println!(
            "{} group(s) of identical files kept in one split each",
            manifest.duplicates.len()
        );
    }
    print!("{}", conflicts_text(&manifest.conflicts));
    print!(
        "{}",
        near_text(
            &manifest.near_duplicates,
            Some(manifest.near_conflicts_kept)
        )
    );
    println!("seed {}; manifest: {}", manifest.seed, path.display());
    for split in manifest.empty_splits() {
        let consequence = match split {
            Split::Test => "the trained model cannot be evaluated on held-out photos",
            _ => "`catdog train` will refuse this manifest",
        };
        eprintln!(
            "warning: the {split} split is empty, so {consequence}; give it a share with --ratios, or add photos"
        );
    }
}
