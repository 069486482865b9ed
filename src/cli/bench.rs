//! `catdog bench`: throughput and memory figures, beside PyTorch's when a
//! Python with torch and torchvision is given. Each part runs in a child
//! process, so its peak memory is its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use catdog::bench::{self, Figure};
use clap::ValueEnum;

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
    /// Also time `catdog train` end to end on the photos in both modes, with these weights
    #[arg(long, value_name = "WEIGHTS")]
    pub e2e: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,
    /// Measure one part in this process and print it as JSON (how `catdog bench` runs its parts)
    #[arg(long, value_enum, hide = true)]
    pub part: Option<Part>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Preprocess,
    Inference,
    InferenceBurn,
    TrainStep,
    HeadStep,
}

#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    catdog: Figure,
    peak_rss_mb: Option<f64>,
    pytorch_per_second: Option<f64>,
    ratio: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from("../shared/data/kaggle-sample"));
    if let Some(part) = args.part {
        let figure = measure(part, &args, &data)?;
        println!("{}", serde_json::to_string(&figure)?);
        return Ok(());
    }
    if !data.is_dir() {
        bail!(
            "no photos to measure on: {} is not a folder (pass --data DIR)",
            data.display()
        );
    }
    let peer_pre = args.python.as_ref().and_then(|py| {
        peer(
            py,
            &args.peers.join("peer_preprocess_bench.py"),
            &[data.to_str().unwrap_or_default(), "2"],
        )
    });
    let size = args.image_size.to_string();
    let peer_model = args
        .python
        .as_ref()
        .and_then(|py| peer(py, &args.peers.join("peer_torch_bench.py"), &[&size]));
    // PyTorch's best layout (channels_last) is the one to beat.
    let torch_line = peer_model.as_deref().and_then(|o| {
        o.lines()
            .find(|l| l.contains("channels_last"))
            .map(str::to_owned)
    });
    let torch = |label: &str| {
        torch_line
            .as_deref()
            .and_then(|l| bench::figure_after(l, label))
    };
    let mut rows = Vec::new();
    for (part, pytorch) in [
        (
            Part::Preprocess,
            peer_pre
                .as_deref()
                .and_then(|o| bench::figure_before(o, "img/s")),
        ),
        (Part::Inference, torch("infer")),
        (Part::InferenceBurn, torch("infer")),
        (Part::TrainStep, torch("train-step")),
        (Part::HeadStep, None),
    ] {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench",
            "--part",
            part.to_possible_value()
                .expect("every part has a name")
                .get_name(),
        ]);
        cmd.args([
            "--data",
            data.to_str().unwrap_or_default(),
            "--batch-size",
            &args.batch_size.to_string(),
            "--image-size",
            &size,
        ]);
        let (out, _, rss) = bench::run_measured(&mut cmd).map_err(anyhow::Error::msg)?;
        let figure: Figure =
            serde_json::from_str(out.trim()).context("reading a benchmark part's figure")?;
        rows.push(row(figure, rss, pytorch));
    }
    if let Some(weights) = &args.e2e {
        for mode in ["frozen", "finetune"] {
            rows.push(end_to_end(&data, weights, mode)?);
        }
    }
    print_rows(&rows, args.json)
}

fn measure(part: Part, args: &BenchArgs, data: &Path) -> Result<Figure> {
    Ok(match part {
        Part::Preprocess => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(data)
                .with_context(|| format!("listing {}", data.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
                .collect();
            files.sort();
            bench::preprocess_throughput(&files)?
        }
        Part::Inference => bench::inference(args.batch_size, args.image_size),
        Part::InferenceBurn => bench::inference_burn(args.batch_size, args.image_size),
        Part::TrainStep => bench::train_step(args.batch_size, args.image_size),
        Part::HeadStep => bench::head_step(args.batch_size),
    })
}

/// The seed recipe through `catdog train` in one mode: prepare, 5 epochs, test evaluation.
fn end_to_end(data: &Path, weights: &str, mode: &str) -> Result<Row> {
    let tmp = tempfile_dir()?;
    let out = tmp.join(mode);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "train",
        "--data",
        data.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ]);
    cmd.args([
        "--weights",
        weights,
        "--mode",
        mode,
        "--cache-dir",
        tmp.join("cache").to_str().unwrap_or_default(),
    ]);
    let (_, seconds, rss) = bench::run_measured(&mut cmd).map_err(anyhow::Error::msg)?;
    let images = catdog::data::Manifest::load(&catdog::run::RunDir::new(&out).manifest())?
        .files
        .len();
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(row(
        Figure::new(&format!("end to end, {mode} (s = wall)"), images, seconds),
        rss,
        None,
    ))
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("catdog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn row(catdog: Figure, rss: u64, pytorch: Option<f64>) -> Row {
    Row {
        ratio: pytorch.map(|p| catdog.per_second / p),
        pytorch_per_second: pytorch,
        peak_rss_mb: Some(rss as f64 / (1 << 20) as f64),
        catdog,
    }
}

fn peer(python: &Path, script: &Path, args: &[&str]) -> Option<String> {
    match bench::run_peer(python, script, args) {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("peer benchmark not measured: {e}");
            None
        }
    }
}

fn print_rows(rows: &[Row], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<36} {:>13} {:>10} {:>13} {:>7} {:>10}",
        "benchmark", "catdog", "seconds", "PyTorch", "ratio", "peak RSS"
    );
    let fmt = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.1}{unit}"));
    for r in rows {
        println!(
            "{:<36} {:>13} {:>10} {:>13} {:>7} {:>10}",
            r.catdog.name,
            format!("{:.1} img/s", r.catdog.per_second),
            format!("{:.2}", r.catdog.seconds),
            fmt(r.pytorch_per_second, " img/s"),
            fmt(r.ratio, "x"),
            fmt(r.peak_rss_mb, " MB")
        );
    }
    Ok(())
}
