//! `catdog bench`: throughput and memory figures, beside PyTorch's when a
//! Python with torch and torchvision is given. Each part runs in a child
//! process, so its peak memory is its own.

use std::path::{Path, PathBuf};
use std::process::Command;

mod peer;
mod process;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use catdog::bench::{self, Figure};
use catdog::data::{Manifest, Split, synthetic};
use catdog::device::DeviceChoice;
use catdog::evaluate::Metrics;
use catdog::model::Precision;
use catdog::model::checkpoint::{self, CheckpointMeta};
use catdog::model::weights::WeightsChoice;
use catdog::preprocess::Preprocessing;
use catdog::run::RunDir;
use catdog::train::Mode;
use clap::ValueEnum;

/// Our PyTorch version of the seed recipe, carried in the binary so that
/// `catdog bench` runs it from anywhere.
const PYTORCH_RECIPE: &str = include_str!("../../../bench/pytorch_recipe.py");

/// Cold `catdog predict` runs counted, after one uncounted.
const PREDICT_RUNS: usize = 5;

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
    /// Also run the seed recipe end to end on the photos (`catdog train` per mode, and
    /// with --python the same recipe in PyTorch), with these weights (auto, or a .pth file)
    #[arg(long, value_name = "WEIGHTS")]
    pub e2e: Option<String>,
    /// Which catdog modes --e2e trains (catdog finetune is the slow one)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "frozen,finetune",
        requires = "e2e"
    )]
    pub e2e_modes: Vec<Mode>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,
    /// Where the network parts run: on the CPU catdog's own kernels (with burn's operations
    /// as reference rows), elsewhere burn's operations on that device
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Precisions of catdog's CPU inference and fine-tuning rows (bf16 needs AVX512_BF16),
    /// each beside PyTorch's in the same precision (bf16: its CPU autocast)
    #[arg(long, value_delimiter = ',', default_value = "fp32,bf16")]
    pub precision: Vec<Precision>,
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
    TrainStepBurn,
    HeadStep,
}

#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    catdog: Figure,
    peak_rss_mb: Option<f64>,
    pytorch_per_second: Option<f64>,
    ratio: Option<f64>,
    #[serde(flatten)]
    end_to_end: Option<EndToEndColumns>,
}

/// What an end-to-end row adds: both sides' test accuracy, and PyTorch's run.
#[derive(serde::Serialize)]
struct EndToEndColumns {
    mode: Mode,
    /// `None` when PyTorch was not measured.
    pytorch_mode: Option<Mode>,
    pytorch_seconds: Option<f64>,
    pytorch_peak_rss_mb: Option<f64>,
    /// The best checkpoint on the test split (`RUN/eval-test.json`).
    test_accuracy: f64,
    pytorch_test_accuracy: Option<f64>,
    /// Mean cross-entropy on the test split (catdog's definition, on both sides).
    test_loss: f64,
    pytorch_test_loss: Option<f64>,
}

/// One whole training process: prepare, train, test evaluation.
struct Trained {
    images: usize,
    seconds: f64,
    /// Bytes, of the largest single process (PyTorch's loader workers are not added).
    peak_rss: u64,
    test_accuracy: f64,
    test_loss: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let shared = PathBuf::from("../shared/data/kaggle-sample");
    let data = args.data.clone().unwrap_or_else(|| shared.clone());
    if let Some(part) = args.part {
        let figure = measure(part, &args, &data)?;
        println!("{}", serde_json::to_string(&figure)?);
        return Ok(());
    }
    let tmp = tempfile_dir()?;
    let data = if args.data.is_none() && !shared.is_dir() {
        let dir = tmp.join("synthetic");
        eprintln!(
            "{} is absent: measuring on {SYNTHETIC_PER_CLASS} generated photos per class instead",
            shared.display()
        );
        synthetic::write_kaggle_like(&dir, SYNTHETIC_PER_CLASS, 0)?;
        dir
    } else {
        data
    };
    if !data.is_dir() {
        bail!(
            "no photos to measure on: {} is not a folder (pass --data DIR)",
            data.display()
        );
    }
    // Checked once, so that a Python without torch costs one clear message, not one per peer.
    let python = args
        .python
        .as_deref()
        .filter(|py| match peer::check_python(py) {
            Ok(version) => {
                eprintln!("PyTorch {version} from {}", py.display());
                true
            }
            Err(e) => {
                eprintln!("PyTorch not measured: {e}");
                false
            }
        });
    let rows = measure_all(&args, &data, python, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    print_rows(&rows?, args.json)
}

fn measure_all(
    args: &BenchArgs,
    data: &Path,
    python: Option<&Path>,
    tmp: &Path,
) -> Result<Vec<Row>> {
    let peer_pre = python.and_then(|py| {
        peer(
            py,
            &args.peers.join("peer_preprocess_bench.py"),
            &[data.to_str().unwrap_or_default(), "2"],
        )
    });
    let size = args.image_size.to_string();
    let peer_model =
        python.and_then(|py| peer(py, &args.peers.join("peer_torch_bench.py"), &[&size]));
    // PyTorch's best layout (channels_last) is the one to beat: its fp32 line first, then
    // the same under bf16 autocast.
    let torch_line = |precision: Precision| {
        let tag = match precision {
            Precision::Fp32 => "channels_last",
            Precision::Bf16 => "bf16",
        };
        peer_model
            .as_deref()
            .and_then(|o| o.lines().find(|l| l.contains(tag)).map(str::to_owned))
    };
    let cpu = args.device.device.is_cpu();
    if !cpu && peer_model.is_some() {
        eprintln!(
            "PyTorch's figures are its CPU's; not put beside {} (bench/gpu-check.sh measures PyTorch on a GPU)",
            args.device.device
        );
    }
    // The peer measures PyTorch on the CPU: a ratio to a GPU figure would mean nothing.
    let torch = |label: &str, precision| {
        torch_line(precision)
            .filter(|_| cpu)
            .and_then(|l| peer::figure_after(&l, label))
    };
    // bf16 runs on the CPU's kernels only, and only where the CPU has it.
    let precisions: Vec<Precision> = args
        .precision
        .iter()
        .copied()
        .filter(|&p| {
            let runs = p == Precision::Fp32 || (cpu && p.on_this_cpu() == p);
            if !runs {
                eprintln!("no {p} rows: they need catdog's CPU kernels on a CPU with AVX512_BF16");
            }
            runs
        })
        .collect();
    let fp32 = Precision::Fp32;
    let mut parts = vec![(
        Part::Preprocess,
        fp32,
        peer_pre
            .as_deref()
            .and_then(|o| peer::figure_before(o, "img/s")),
    )];
    for (part, burn, label) in [
        (Part::Inference, Part::InferenceBurn, "infer"),
        (Part::TrainStep, Part::TrainStepBurn, "train-step"),
    ] {
        for &p in &precisions {
            parts.push((part, p, torch(label, p)));
        }
        // burn's operations on the CPU are references for catdog's kernels, which only run
        // there.
        if cpu {
            parts.push((burn, fp32, torch(label, fp32)));
        }
    }
    parts.push((Part::HeadStep, fp32, None));
    let mut rows = Vec::new();
    for (part, precision, pytorch) in parts {
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
            "--device",
            &args.device.device.to_string(),
            "--precision",
            &precision.to_string(),
        ]);
        let (out, _, rss) = process::run_measured(&mut cmd).map_err(anyhow::Error::msg)?;
        let figure: Figure =
            serde_json::from_str(out.trim()).context("reading a benchmark part's figure")?;
        rows.push(row(figure, rss, pytorch));
    }
    let (e2e_rows, trained) = match &args.e2e {
        Some(weights) => {
            let (rows, run) = end_to_end(args, data, weights, python, tmp)?;
            (rows, Some(run))
        }
        None => (Vec::new(), None),
    };
    rows.push(predict_cold(data, trained, tmp, args.device.device)?);
    rows.extend(e2e_rows);
    Ok(rows)
}

fn measure(part: Part, args: &BenchArgs, data: &Path) -> Result<Figure> {
    let (batch, size) = (args.batch_size, args.image_size);
    let device = args.device.device()?;
    let cpu = args.device.device.is_cpu();
    let precision = args.precision.first().copied().unwrap_or_default();
    Ok(match part {
        Part::Preprocess => bench::preprocess_throughput(&photos(data)?)?,
        Part::Inference if cpu => bench::inference(batch, size, precision),
        Part::Inference => bench::inference_burn(batch, size, &device),
        Part::InferenceBurn => bench::inference_burn(batch, size, &Device::flex()),
        Part::TrainStep if cpu => bench::train_step(batch, size, precision),
        Part::TrainStep => bench::train_step_burn(batch, size, &device),
        Part::TrainStepBurn => bench::train_step_burn(batch, size, &Device::flex()),
        Part::HeadStep => bench::head_step(batch, &device),
    })
}

/// The .jpg files directly in `data`, sorted.
fn photos(data: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data)
        .with_context(|| format!("listing {}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .collect();
    files.sort();
    Ok(files)
}

/// The seed recipe end to end: `catdog train` in each of `--e2e-modes`, a
/// whole process each (clean, split, training, test evaluation), then, with a
/// Python, the PyTorch recipe on the manifest catdog made, in both modes.
/// Returns the rows and the first catdog run's folder, for the predict row.
fn end_to_end(
    args: &BenchArgs,
    data: &Path,
    weights: &str,
    python: Option<&Path>,
    tmp: &Path,
) -> Result<(Vec<Row>, PathBuf)> {
    // Frozen first: its run has the cold feature cache, and it is the default mode.
    let modes: Vec<Mode> = [Mode::Frozen, Mode::Finetune]
        .into_iter()
        .filter(|m| args.e2e_modes.contains(m))
        .collect();
    let mut catdog = Vec::new();
    for &mode in &modes {
        catdog.push((
            mode,
            train_catdog(data, weights, mode, tmp, args.device.device)?,
        ));
    }
    let Some(first) = modes.first().map(|&m| run_dir(tmp, m)) else {
        bail!("--e2e-modes names no mode: give frozen, finetune or both");
    };
    // PyTorch cannot search catdog's cache, so it gets the file catdog resolved.
    let weights_file = weights
        .parse::<WeightsChoice>()
        .unwrap_or_else(|never| match never {})
        .resolve()?;
    let mut pytorch = Vec::new();
    match (python, weights_file) {
        (Some(py), Some(file)) => {
            let script = tmp.join("pytorch_recipe.py");
            std::fs::write(&script, PYTORCH_RECIPE)
                .with_context(|| format!("writing {}", script.display()))?;
            for mode in [Mode::Finetune, Mode::Frozen] {
                if let Some(t) = train_pytorch(py, &script, &first.manifest(), &file, mode) {
                    pytorch.push((mode, t));
                }
            }
        }
        (Some(_), None) => {
            eprintln!("PyTorch recipe not run: it needs a weights file, and --e2e none gives none")
        }
        (None, _) => {}
    }
    let mut rows = Vec::new();
    for (mode, ours) in &catdog {
        // Every mode against PyTorch's full fine-tuning (the usual notebook, and
        // the speed target for the default mode), and against PyTorch in the same mode.
        let peers: Vec<_> = pytorch
            .iter()
            .filter(|(m, _)| *m == Mode::Finetune || m == mode)
            .collect();
        if peers.is_empty() {
            rows.push(e2e_row(*mode, ours, None));
        }
        rows.extend(peers.into_iter().map(|p| e2e_row(*mode, ours, Some(p))));
    }
    Ok((rows, first.root))
}

fn run_dir(tmp: &Path, mode: Mode) -> RunDir {
    RunDir::new(tmp.join(format!("run-{mode}")))
}

/// `catdog train` with the seed's defaults, a cold feature cache and its own
/// run folder; the test accuracy is the one it wrote to `eval-test.json`.
fn train_catdog(
    data: &Path,
    weights: &str,
    mode: Mode,
    tmp: &Path,
    device: DeviceChoice,
) -> Result<Trained> {
    let run = run_dir(tmp, mode);
    let mode = mode.to_string();
    eprintln!("end to end: catdog train --mode {mode} ...");
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("train").arg("--data").arg(data);
    cmd.arg("--out").arg(&run.root);
    cmd.args(["--weights", weights, "--mode", &mode]);
    cmd.arg("--cache-dir").arg(tmp.join("cache"));
    cmd.args(["--device", &device.to_string()]);
    let (_, seconds, rss) = process::run_measured(&mut cmd).map_err(anyhow::Error::msg)?;
    let test: Metrics = catdog::fsio::read_json(
        &run.eval(catdog::run::Which::Best, Split::Test),
        "test evaluation",
    )?;
    Ok(Trained {
        images: Manifest::load(&run.manifest())?.files.len(),
        seconds,
        peak_rss: rss,
        test_accuracy: test.accuracy,
        test_loss: test.loss,
    })
}

/// The PyTorch recipe in one mode, or `None` (saying why) when it fails: the
/// bench goes on without it.
fn train_pytorch(
    python: &Path,
    script: &Path,
    manifest: &Path,
    weights: &Path,
    mode: Mode,
) -> Option<Trained> {
    let mode = mode.to_string();
    eprintln!("end to end: PyTorch recipe --mode {mode} ...");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(manifest).arg(weights);
    cmd.args(["--mode", &mode]);
    let trained = process::run_measured(&mut cmd).and_then(|(out, seconds, rss)| {
        let result: peer::RecipeResult = peer::recipe_result(&out)?;
        Ok(Trained {
            images: result.images.values().sum(),
            seconds,
            peak_rss: rss,
            test_accuracy: result.test_accuracy,
            test_loss: result.test_loss,
        })
    });
    trained
        .map_err(|e| eprintln!("PyTorch recipe ({mode}) not measured: {e}"))
        .ok()
}

fn e2e_row(mode: Mode, ours: &Trained, peer: Option<&(Mode, Trained)>) -> Row {
    let name = match peer {
        Some((m, _)) => format!("end to end, {mode} vs PyTorch {m}"),
        None => format!("end to end, {mode}"),
    };
    let theirs = peer.map(|(_, t)| t);
    Row {
        end_to_end: Some(EndToEndColumns {
            mode,
            pytorch_mode: peer.map(|(m, _)| *m),
            pytorch_seconds: theirs.map(|t| t.seconds),
            pytorch_peak_rss_mb: theirs.map(|t| mb(t.peak_rss)),
            test_accuracy: ours.test_accuracy,
            pytorch_test_accuracy: theirs.map(|t| t.test_accuracy),
            test_loss: ours.test_loss,
            pytorch_test_loss: theirs.map(|t| t.test_loss),
        }),
        ..row(
            Figure::new(&name, ours.images, ours.seconds),
            ours.peak_rss,
            theirs.map(|t| t.images as f64 / t.seconds),
        )
    }
}

/// `catdog predict MODEL one.jpg` as a person runs it: a fresh process each
/// time, the median of [`PREDICT_RUNS`] after one uncounted run (which leaves
/// the binary, the model and the photo in the page cache). MODEL is the e2e
/// run's, else random weights, which cost the same to load and run.
fn predict_cold(
    data: &Path,
    model: Option<PathBuf>,
    tmp: &Path,
    device: DeviceChoice,
) -> Result<Row> {
    let model = match model {
        Some(run) => run,
        None => random_model(tmp)?,
    };
    let photo = photos(data)?
        .into_iter()
        .next()
        .with_context(|| format!("no .jpg in {} to predict", data.display()))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("predict").arg(&model).arg(&photo);
    cmd.args(["--device", &device.to_string()]);
    let (seconds, rss) =
        process::run_repeated(&mut cmd, 1, PREDICT_RUNS).map_err(anyhow::Error::msg)?;
    Ok(row(
        Figure::new("predict 1 photo, cold process", 1, seconds),
        rss,
        None,
    ))
}

fn random_model(tmp: &Path) -> Result<PathBuf> {
    let dir = tmp.join("random-model");
    let classes = vec!["cat".to_owned(), "dog".to_owned()];
    checkpoint::save_random(
        &dir,
        &CheckpointMeta::new(classes, Preprocessing::default()),
        0,
    )?;
    Ok(dir)
}

/// Generated photos per class where `../shared` is absent: enough for a split with 10 test
/// photos per class.
const SYNTHETIC_PER_CLASS: usize = 100;

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("catdog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn row(catdog: Figure, rss: u64, pytorch: Option<f64>) -> Row {
    Row {
        ratio: pytorch.map(|p| catdog.per_second / p),
        pytorch_per_second: pytorch,
        peak_rss_mb: Some(mb(rss)),
        catdog,
        end_to_end: None,
    }
}

fn peer(python: &Path, script: &Path, args: &[&str]) -> Option<String> {
    match peer::run_peer(python, script, args) {
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
    let table: Vec<&Row> = rows.iter().filter(|r| r.end_to_end.is_none()).collect();
    // As wide as the longest name, so that the precision in a row's name keeps the columns.
    let width = table
        .iter()
        .map(|r| r.catdog.name.chars().count())
        .max()
        .unwrap_or(0)
        .max("benchmark".len());
    println!(
        "{:<width$} {:>13} {:>10} {:>13} {:>7} {:>10}",
        "benchmark", "catdog", "seconds", "PyTorch", "ratio", "peak RSS"
    );
    let fmt = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.1}{unit}"));
    for r in table {
        println!(
            "{:<width$} {:>13} {:>10} {:>13} {:>7} {:>10}",
            r.catdog.name,
            format!("{:.1} img/s", r.catdog.per_second),
            format!("{:.2}", r.catdog.seconds),
            fmt(r.pytorch_per_second, " img/s"),
            // Two decimals: the targets are ratios, and 0.8x could be 0.75 or 0.84.
            r.ratio.map_or("-".to_owned(), |v| format!("{v:.2}x")),
            fmt(r.peak_rss_mb, " MB")
        );
    }
    let e2e: Vec<(&Row, &EndToEndColumns)> = rows
        .iter()
        .filter_map(|r| Some((r, r.end_to_end.as_ref()?)))
        .collect();
    if e2e.is_empty() {
        return Ok(());
    }
    println!(
        "\nend to end: prepare + train + test evaluation, whole process, wall seconds; ratio = PyTorch s / catdog s"
    );
    println!(
        "{:<9} {:<10} {:>9} {:>10} {:>7} {:>10} {:>11} {:>10} {:>11}",
        "catdog",
        "PyTorch",
        "catdog s",
        "PyTorch s",
        "ratio",
        "catdog RSS",
        "PyTorch RSS",
        "catdog acc",
        "PyTorch acc"
    );
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1}%", 100.0 * v));
    for (r, e) in e2e {
        println!(
            "{:<9} {:<10} {:>9.1} {:>10} {:>7} {:>10} {:>11} {:>10} {:>11}",
            e.mode.to_string(),
            e.pytorch_mode.map_or("-".to_owned(), |m| m.to_string()),
            r.catdog.seconds,
            e.pytorch_seconds
                .map_or("-".to_owned(), |s| format!("{s:.1}")),
            fmt(r.ratio, "x"),
            fmt(r.peak_rss_mb, " MB"),
            fmt(e.pytorch_peak_rss_mb, " MB"),
            pct(Some(e.test_accuracy)),
            pct(e.pytorch_test_accuracy)
        );
    }
    Ok(())
}
