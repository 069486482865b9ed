//! `catdog bench`: throughput figures, beside PyTorch's when a Python with
//! torch and torchvision is given.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use catdog::bench::{self, Figure};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Photos to measure on (default: ../shared/data/kaggle-sample)
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A Python with torch and torchvision, to run the peer benchmarks in ../shared/peers
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Folder of the peer scripts
    #[arg(long, default_value = "../shared/peers")]
    pub peers: PathBuf,
    /// Print the figures as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    catdog: Figure,
    pytorch_per_second: Option<f64>,
    ratio: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from("../shared/data/kaggle-sample"));
    if !data.is_dir() {
        bail!(
            "no photos to measure on: {} is not a folder (pass --data DIR)",
            data.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&data)
        .with_context(|| format!("listing {}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .collect();
    files.sort();
    let ours = bench::preprocess_throughput(&files)?;
    let peer = args.python.as_ref().map(|py| {
        let script = args.peers.join("peer_preprocess_bench.py");
        bench::run_peer(py, &script, &[data.to_str().unwrap_or_default(), "2"])
    });
    let pytorch = match &peer {
        Some(Ok(out)) => bench::figure_before(out, "img/s"),
        Some(Err(e)) => {
            eprintln!("peer benchmark not measured: {e}");
            None
        }
        None => None,
    };
    let rows = vec![Row {
        ratio: pytorch.map(|p| ours.per_second / p),
        pytorch_per_second: pytorch,
        catdog: ours,
    }];
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<28} {:>12} {:>14} {:>8}",
        "benchmark", "catdog", "PyTorch", "ratio"
    );
    for r in &rows {
        let fmt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.1}{unit}"));
        println!(
            "{:<28} {:>12} {:>14} {:>8}",
            r.catdog.name,
            format!("{:.1} img/s", r.catdog.per_second),
            fmt(r.pytorch_per_second, " img/s"),
            fmt(r.ratio, "x")
        );
    }
    Ok(())
}
