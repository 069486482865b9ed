//! `catdog train`: prepare the data (unless a manifest is given), train,
//! then evaluate the best checkpoint on the test split.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use catdog::data::Ratios;
use catdog::data::Split;
use catdog::data::manifest::{conflicts_text, near_text};
use catdog::model::Precision;
use catdog::model::weights::WeightsChoice;
use catdog::preprocess::Preprocessing;
use catdog::report;
use catdog::run::{self, RunDir, Which};
use catdog::train::{
    self, ClassWeights, DataSource, Event, Mode, Monitor, Outcome, Schedule, Start, Step,
    TrainConfig,
};

use super::progress::Bar;

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
        "augment", "seed", "ratios", "device", "precision", "cache_dir", "schedule", "warmup",
        "weight_decay", "label_smoothing", "class_weights", "patience", "monitor",
        "freeze_epochs", "lr_backbone",
    ])]
    pub resume: Option<PathBuf>,
    /// Use this manifest (from `catdog split`) instead of preparing the data; the data
    /// folder is the one the manifest names
    #[arg(long, conflicts_with = "data")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Passes over the training photos [default: 5]; with --resume, the total to reach
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Adam's learning rate: the peak of a schedule, the head's with --lr-backbone
    #[arg(long, default_value_t = TrainConfig::default().lr, allow_negative_numbers = true)]
    pub lr: f64,
    /// How the rate moves, stepped per batch: constant, one-cycle (PyTorch's OneCycleLR) or
    /// cosine (to 0); with --freeze-epochs, over each phase
    #[arg(long, default_value_t = TrainConfig::default().schedule)]
    pub schedule: Schedule,
    /// Epochs (fractions too) of linear warmup at the start of each phase; for one-cycle, its
    /// rise [default: none; one-cycle: 30% of the phase]
    #[arg(long, value_name = "EPOCHS", allow_negative_numbers = true)]
    pub warmup: Option<f64>,
    /// Stop after N epochs without a better --monitor [default: never early]
    #[arg(long, value_name = "N")]
    pub patience: Option<usize>,
    /// What best/ keeps and --patience watches: val-acc or val-loss
    #[arg(long, default_value_t = TrainConfig::default().monitor)]
    pub monitor: Monitor,
    /// With --mode finetune: first train only the head for N epochs, on the frozen
    /// backbone's cached features, then every layer
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().freeze_epochs)]
    pub freeze_epochs: usize,
    /// With --mode finetune: the backbone's learning rate [default: --lr]
    #[arg(long, value_name = "LR", allow_negative_numbers = true)]
    pub lr_backbone: Option<f64>,
}

/// The options `catdog train` and `catdog lr-find` share: how the data is prepared, the
/// model's start, the batches and the loss.
#[derive(clap::Args)]
pub struct SetupArgs {
    /// auto (our cache, then PyTorch's), none (random initialisation) or a .pth/.safetensors file
    #[arg(long, default_value_t = TrainConfig::default().weights)]
    pub weights: WeightsChoice,
    /// finetune (every layer) or frozen (the head on cached backbone features);
    /// default: frozen on CPU, finetune on GPU
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Photos per training step
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// AdamW's decoupled weight decay, as torch.optim.AdamW (0: Adam)
    #[arg(long, default_value_t = TrainConfig::default().weight_decay, allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// Share of the training target spread over all classes
    #[arg(long, default_value_t = TrainConfig::default().label_smoothing, allow_negative_numbers = true)]
    pub label_smoothing: f64,
    /// Weights of the classes in the training loss: equal, auto (from the training split's
    /// counts) or one per class, e.g. 1,2.5
    #[arg(long, default_value_t = TrainConfig::default().class_weights)]
    pub class_weights: ClassWeights,
    /// Side of the square model input; the resize before the crop keeps torchvision's 256:224
    #[arg(long, default_value_t = TrainConfig::default().preprocessing.image_size)]
    pub image_size: u32,
    /// Random resized crops and horizontal flips while training
    #[arg(long)]
    pub augment: bool,
    /// Seed of the split, the initial head, the shuffling and the augmentation
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Split fractions when preparing the data
    #[arg(long, default_value_t = Ratios::default())]
    pub ratios: Ratios,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
    /// Folder for frozen mode's feature cache (default: the weights' cache folder)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl SetupArgs {
    /// The settings these options give, from `--data` or `--manifest`; the others at train's
    /// defaults.
    pub fn config(self, data: Option<PathBuf>, manifest: Option<PathBuf>) -> TrainConfig {
        let source = match manifest {
            Some(manifest) => DataSource::Manifest(manifest),
            None => DataSource::Folder {
                root: data.unwrap_or_default(),
                layout: None,
                ratios: self.ratios,
            },
        };
        TrainConfig {
            source,
            weights: self.weights,
            mode: self.mode.unwrap_or(Mode::default_for(self.device.device)),
            batch_size: self.batch_size,
            augment: self.augment,
            seed: self.seed,
            device: self.device.device,
            precision: self.precision.resolve(self.device.device),
            preprocessing: Preprocessing::imagenet(self.image_size),
            cache_dir: self.cache_dir.or_else(train::default_cache_dir),
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights,
            ..TrainConfig::default()
        }
    }
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
                epochs: args.epochs.unwrap_or(TrainConfig::default().epochs),
                lr: args.lr,
                schedule: args.schedule,
                warmup: args.warmup,
                patience: args.patience,
                monitor: args.monitor,
                freeze_epochs: args.freeze_epochs,
                lr_backbone: args.lr_backbone,
                ..args.setup.config(args.data, args.manifest)
            };
            (RunDir::new(out), Start::New(Box::new(config)))
        }
    };
    let show = Show::new(&run);
    let outcome = train::train(&run, start, &stop, &|event| show.event(event))?;
    if outcome.stopped {
        // As after SIGINT, so that a script can tell a stopped run from a finished one.
        return Err(Stopped.into());
    }
    let s = &outcome.config.settings;
    finish(&run, &outcome, (&s.device.device()?, s.precision))
}

/// Training stopped on Ctrl-C, with `last/` saved: the process exits with 130.
#[derive(Debug, thiserror::Error)]
#[error("stopped on request")]
pub struct Stopped;

/// What a person needs after training: where things are.
fn finish(
    run: &RunDir,
    outcome: &Outcome,
    compute: (&burn::prelude::Device, Precision),
) -> Result<()> {
    if let Some(best) = outcome.best {
        println!(
            "best: epoch {} (val acc {:.2}%, loss {:.4}); model in {}",
            best.epoch,
            100.0 * best.val_acc,
            best.val_loss,
            run.checkpoint(Which::Best).display()
        );
    }
    let manifest = catdog::data::Manifest::load(&run.manifest())?;
    if manifest.count(Split::Test) == 0 {
        println!("no test split (--ratios gave it nothing): the best model was not evaluated");
    } else {
        // The seed's last step: the best checkpoint on the held-out test split, then the report.
        println!();
        super::evaluate::write_report(run, Which::Best, report::SAMPLES, compute)?;
    }
    println!("run: {} ({})", run.root.display(), run::CONTENTS);
    Ok(())
}

/// What a bar shows.
#[derive(Clone, Copy, PartialEq)]
enum Showing {
    Step(Step),
    /// Epoch `.0` of `.1`.
    Epoch(usize, usize),
    /// The learning-rate finder's sweep.
    Sweep,
}

/// Draws training's events for a person: a bar for each long step and each epoch, a line for
/// everything else.
pub struct Show {
    run: PathBuf,
    bar: Mutex<Option<(Showing, Bar)>>,
}

impl Show {
    pub fn new(run: &RunDir) -> Show {
        Show {
            run: run.root.clone(),
            bar: Mutex::new(None),
        }
    }

    pub fn event(&self, event: Event<'_>) {
        match event {
            Event::Progress { step, done, total } => self.draw(Showing::Step(step), done, total),
            Event::Batch {
                epoch,
                epochs,
                images,
                total,
                loss,
                accuracy,
            } => {
                self.draw(Showing::Epoch(epoch, epochs), images as u64, total as u64);
                if let Some((_, bar)) = &*self.bar.lock().expect("not poisoned") {
                    // Beside the label (`epoch 2/5`), which stays.
                    bar.set_message(format!("loss {loss:.4} acc {:.1}%", 100.0 * accuracy));
                }
            }
            Event::Sweep { point, iterations } => {
                self.draw(Showing::Sweep, point.step as u64 + 1, iterations as u64);
                if let Some((_, bar)) = &*self.bar.lock().expect("not poisoned") {
                    bar.set_message(format!(
                        "lr {:.1e} loss {:.4} smoothed {:.4}",
                        point.lr, point.loss, point.smoothed
                    ));
                }
            }
            other => {
                self.finish();
                println!("{}", self.line(&other).trim_end());
            }
        }
    }

    /// Ends the bar being drawn, if any, before lines of one's own.
    pub fn finish(&self) {
        if let Some((_, bar)) = self.bar.lock().expect("not poisoned").take() {
            bar.finish();
        }
    }

    /// Moves the bar of `showing` (a new one when something else was shown) to `done` of `total`.
    fn draw(&self, showing: Showing, done: u64, total: u64) {
        let mut current = self.bar.lock().expect("not poisoned");
        if current.as_ref().is_none_or(|(s, _)| *s != showing) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            let what = match showing {
                Showing::Step(Step::Decoding) => "decoding".to_owned(),
                Showing::Step(Step::Features(split)) => format!("features ({split})"),
                Showing::Epoch(epoch, epochs) => format!("epoch {epoch}/{epochs}"),
                Showing::Sweep => "lr sweep".to_owned(),
            };
            *current = Some((showing, Bar::new(&what)));
        }
        let (_, bar) = current.as_ref().expect("just set");
        bar.0.set_length(total);
        bar.0.set_position(done);
    }

    fn line(&self, event: &Event<'_>) -> String {
        let run = self.run.display();
        match event {
            Event::Prepared(report) => format!(
                "{}{}{}",
                report.table(),
                report.quality_text(),
                near_text(&report.near_duplicates, Some(false))
            )
            .trim_end()
            .to_owned(),
            Event::Conflicts(conflicts) => conflicts_text(conflicts),
            Event::Weights(origin) => format!("weights: {origin}"),
            Event::EpochsChanged { from, to } => {
                format!("epochs: {from} -> {to} (config.json updated)")
            }
            Event::Resumed {
                epochs_done,
                batches_done,
            } => {
                let batches = if *batches_done > 0 {
                    format!(" and {batches_done} batch(es) of the next")
                } else {
                    String::new()
                };
                format!("resuming {run} after epoch {epochs_done}{batches}")
            }
            Event::Restarted => {
                format!("resuming {run}: no epoch was complete, starting from the beginning")
            }
            Event::Uncached => "frozen mode with --augment: every step runs the backbone on a new random crop, so features are not cached".to_owned(),
            Event::Features {
                split,
                hits,
                computed,
            } => format!("features ({split}): {hits} from the feature cache, {computed} computed"),
            Event::Saved { record, epochs, .. } => format!(
                "epoch {}/{epochs}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% | lr {:.2e} | {:.1}s",
                record.epoch,
                record.train_loss,
                100.0 * record.train_acc,
                record.val_loss,
                100.0 * record.val_acc,
                record.lr.unwrap_or(f64::NAN),
                record.seconds
            ),
            Event::Classes {
                names,
                counts,
                weights,
            } => {
                let each: Vec<String> = names
                    .iter()
                    .zip(counts.iter())
                    .enumerate()
                    .map(|(i, (name, count))| match weights.get(i) {
                        Some(w) => format!("{name} {count} (weight {w:.3})"),
                        None => format!("{name} {count}"),
                    })
                    .collect();
                let advice = if weights.is_empty() {
                    "; unbalanced: --class-weights auto weighs each class equally in the loss"
                } else {
                    ""
                };
                format!("training photos per class: {}{advice}", each.join(", "))
            }
            Event::EarlyStopped {
                epoch,
                best,
                monitor,
                patience,
            } => format!(
                "stopped early after epoch {epoch}: {monitor} has not improved for {patience} epoch(s) since epoch {} (--patience {patience}); best/ holds epoch {} (val acc {:.2}%, loss {:.4})",
                best.epoch,
                best.epoch,
                100.0 * best.val_acc,
                best.val_loss
            ),
            Event::Calibrated(fitted) => calibrated_text(fitted),
            Event::Stopped {
                epoch,
                batches_done,
            } => format!(
                "stopped after batch {batches_done} of epoch {epoch}; last/ saved. Resume with: catdog train --resume {run}"
            ),
            Event::StoppedExtracting => format!(
                "stopped during feature extraction; the features computed are cached. Resume with: catdog train --resume {run}"
            ),
            Event::Progress { .. } | Event::Batch { .. } | Event::Sweep { .. } => {
                unreachable!("drawn as bars")
            }
        }
    }
}

/// What a fitted calibration means, in a few lines.
fn calibrated_text(fitted: &catdog::evaluate::calibration::Fitted) -> String {
    let c = &fitted.calibration;
    let v = &fitted.validation;
    format!(
        "calibrated on the validation split: temperature {:.3} (ECE {:.4} -> {:.4}, NLL {:.4} -> {:.4})\n\
         prediction sets: the true class is kept for at least {:.0}% of photos; two classes kept: unsure\n\
         out-of-distribution score above {:.1} (beyond 95% of real photos): neither",
        c.temperature,
        v.ece_before,
        v.ece_after,
        v.nll_before,
        v.nll_after,
        100.0 * (1.0 - c.error_rate),
        c.ood_threshold
    )
}
