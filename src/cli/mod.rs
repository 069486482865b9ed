//! Subcommands. Each file holds one group of commands and only turns
//! arguments into library calls and results into text.

mod audit;
mod bench;
mod data;
mod demo;
mod evaluate;
mod export;
mod imagenet;
mod lr_find;
mod predict;
mod progress;
mod serve;
mod train;
mod weights;

use std::process::ExitCode;

use catdog::device::DeviceChoice;
use catdog::model::Precision;
use clap::{Parser, Subcommand};

/// `--device`, as every command that runs the network takes it.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or wgpu (GPUs need a build with that feature)
    #[arg(long, default_value_t = DeviceChoice::default())]
    pub device: DeviceChoice,
}

impl DeviceArgs {
    pub fn device(&self) -> catdog::Result<burn::prelude::Device> {
        self.device.device()
    }
}

/// `--precision`, as every command that runs the network takes it.
#[derive(clap::Args)]
pub struct PrecisionArgs {
    /// fp32, or bf16: matrix products on bf16 operands with f32 sums, on CPUs with
    /// AVX512_BF16
    #[arg(long, default_value_t = Precision::default())]
    pub precision: Precision,
}

impl PrecisionArgs {
    /// The precision that runs on `device`: what was asked (or the default) where it can run,
    /// else fp32, said once.
    pub fn resolve(&self, device: DeviceChoice) -> Precision {
        let asked = self.precision;
        let runs = if device.is_cpu() {
            asked.on_this_cpu()
        } else {
            Precision::Fp32
        };
        if runs != asked {
            eprintln!(
                "note: --precision {asked} runs on catdog's CPU kernels on a CPU with AVX512_BF16; this runs {runs}"
            );
        }
        runs
    }
}

#[derive(Parser)]
#[command(
    name = "catdog",
    version,
    about = "Photos in, a trained and explained cat-vs-dog classifier out (ResNet-18 transfer learning)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on a generated data set (works offline)
    Demo(demo::DemoArgs),
    /// Decode every photo and report the usable, rejected and ignored files
    Clean(data::CleanArgs),
    /// Clean, then split into train/val/test and write the manifest
    Split(data::SplitArgs),
    /// Look for near-duplicates, quality problems and suspected label errors; writes audit.json and a page
    Audit(audit::AuditArgs),
    /// Manage the pretrained ImageNet weights
    Weights(weights::WeightsArgs),
    /// Classify photos into the 1000 ImageNet classes with the pretrained network
    Imagenet(imagenet::ImagenetArgs),
    /// Fine-tune ResNet-18 (or train a head on its frozen features) and evaluate it
    Train(Box<train::TrainArgs>),
    /// Sweep the learning rate up over a short run and suggest one for `catdog train` (fastai's lr_find)
    LrFind(Box<lr_find::LrFindArgs>),
    /// Measure throughput, beside PyTorch's when --python is given
    Bench(bench::BenchArgs),
    /// Score a training run's checkpoint on a split of its data; writes RUN/eval-SPLIT.json (eval-last-SPLIT.json for last/)
    Evaluate(evaluate::EvaluateArgs),
    /// Fit a run's calibration again (temperature, unsure and neither thresholds); train does it at its end
    Calibrate(evaluate::CalibrateArgs),
    /// Classify photos with a trained model
    Predict(predict::PredictArgs),
    /// Write a training run's report: pictures and index.html in RUN/report/
    Report(evaluate::ReportArgs),
    /// Serve a trained model: HTTP API and a web page to drop photos on
    Serve(serve::ServeArgs),
    /// Write a trained model as an ONNX file, for ONNX Runtime, OpenVINO, TensorRT, tract...
    Export(export::ExportArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Clean(args) => data::clean(args),
        Command::Split(args) => data::split(args),
        Command::Audit(args) => audit::run(args),
        Command::Weights(args) => weights::run(args),
        Command::Imagenet(args) => imagenet::run(args),
        Command::Train(args) => train::run(*args),
        Command::LrFind(args) => lr_find::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Evaluate(args) => evaluate::evaluate(args),
        Command::Calibrate(args) => evaluate::calibrate(args),
        Command::Predict(args) => predict::run(args),
        Command::Report(args) => evaluate::report(args),
        Command::Serve(args) => serve::run(args),
        Command::Export(args) => export::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The run said why and how to resume; 130 is the shell's code for a SIGINT.
        Err(e) if e.is::<train::Stopped>() => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
