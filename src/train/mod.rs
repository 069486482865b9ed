//! The training stage: fine-tune ResNet-18 (or train a head on its frozen
//! features) on a prepared split, with the seed's recipe as defaults:
//! cross-entropy, Adam (lr 1e-3), 5 epochs, batch 32.
//!
//! After every epoch the run folder gets `last/` (model, optimizer, where the
//! run stands) and, on a better validation accuracy, `best/`; each is replaced
//! as a whole, so a crash leaves the previous complete checkpoint. On CPU the
//! same seed and inputs give the same numbers run after run, and a resumed run
//! the same numbers as an uninterrupted one.

pub mod adam;
mod calibrate;
pub mod config;
pub mod event;
pub mod features;
pub mod lr_find;
pub mod schedule;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;

pub use calibrate::calibrate;
pub use config::{CONFIG_VERSION, ClassWeights, DataSource, Mode, Monitor, RunConfig, TrainConfig};
pub use event::{Event, OnEvent, Step};
pub use lr_find::{LrFind, Sweep, lr_find};
pub use schedule::Schedule;
use state::{Best, OPTIMIZER_FILE, Running, TrainState};

use crate::data::manifest::Sample;
use crate::data::{self, Limits, Manifest, Prepare, Split};
use crate::error::{Error, Result};
use crate::fsio;
use crate::loader::{Loader, LoaderConfig, batch_count, epoch_order};
use crate::model::calibration::ERROR_RATE;
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::fused::{Loss, StepResult, TrainNet, cross_entropy};
use crate::model::weights;
use crate::model::{EvalNet, FEATURES, ResNet18};
use crate::run::{EpochRecord, RunDir, RunLock, Which};
use adam::Adam;
use event::StepProgress;
use features::FeatureCache;
use schedule::Plan;

/// How a run begins.
pub enum Start {
    New(Box<TrainConfig>),
    /// Continue the run in the folder from its `last/` checkpoint.
    Resume,
    /// Continue the run, training on until it has this many epochs in all: a
    /// finished run is extended (its config.json records the new total).
    ResumeUntil(usize),
}

/// Where a call to [`train`] left the run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub config: RunConfig,
    pub epochs_done: usize,
    pub best: Option<Best>,
    /// Stopped on request (Ctrl-C) before the last epoch finished.
    pub stopped: bool,
}

/// Trains in `run`. `stop` is checked after every batch; when it is set, the
/// run saves `last/` and returns. `on` receives what happens ([`Event`]).
pub fn train(run: &RunDir, start: Start, stop: &AtomicBool, on: OnEvent) -> Result<Outcome> {
    let mut session = match start {
        Start::New(config) => Session::begin(run, *config, on)?,
        Start::Resume => Session::resume(run, None, on)?,
        Start::ResumeUntil(epochs) => Session::resume(run, Some(epochs), on)?,
    };
    let outcome = session.run(stop, on)?;
    if !outcome.stopped && outcome.best.is_some() {
        // While the session holds the run's lock: nothing replaces best/ meanwhile.
        calibrate(run, Which::Best, ERROR_RATE, &session.device, on)?;
    }
    Ok(outcome)
}

/// One batch of model input: NCHW photos of `3 x size x size` values, or frozen mode's cached
/// features.
enum Input {
    Images { pixels: Vec<f32>, size: usize },
    Features(Vec<f32>),
}

impl Input {
    /// The logits of burn's model on `device`.
    fn logits(self, model: &ResNet18, device: &Device) -> Tensor<2> {
        match self {
            Input::Images { pixels, size } => {
                let n = pixels.len() / (3 * size * size);
                model.forward(Tensor::from_data(
                    TensorData::new(pixels, [n, 3, size, size]),
                    device,
                ))
            }
            Input::Features(f) => {
                let n = f.len() / FEATURES;
                model.head_forward(Tensor::from_data(TensorData::new(f, [n, FEATURES]), device))
            }
        }
    }
}

/// The photos of train and val, or (frozen mode) their features.
enum Source {
    Photos {
        train: Arc<[Sample]>,
        val: Arc<[Sample]>,
    },
    Features {
        train: Vec<f32>,
        train_labels: Vec<usize>,
        val: Vec<f32>,
        val_labels: Vec<usize>,
    },
}

impl Source {
    /// The photos of the manifest's train and val splits.
    fn photos(manifest: &Manifest) -> Source {
        Source::Photos {
            train: manifest.samples(Split::Train).into(),
            val: manifest.samples(Split::Val).into(),
        }
    }

    /// Training examples: photos or feature rows.
    fn train_len(&self) -> usize {
        match self {
            Source::Photos { train, .. } => train.len(),
            Source::Features { train_labels, .. } => train_labels.len(),
        }
    }
}

/// What a training step changes: the model (or catdog's CPU training pass, while it holds
/// the model's values) and Adam, with the objective they minimise. A run and
/// [`lr_find`]'s sweep take the same steps.
struct Learner {
    /// On the autodiff device. While `engine` trains, it holds the model's values and this
    /// is brought up to date after each epoch's training (see [`Learner::sync_model`]).
    model: ResNet18,
    /// The training objective, its class weights resolved from the training split.
    loss: Loss,
    /// catdog's own training pass, for full fine-tuning on the CPU.
    engine: Option<TrainNet>,
    adam: Adam,
    classes: usize,
}

impl Learner {
    /// A new run's: the run's weights with a fresh head, a fresh Adam, the run's objective.
    fn new(config: &RunConfig, manifest: &Manifest, device: &Device, on: OnEvent) -> Result<Self> {
        Ok(Learner {
            model: initial_model(config, device, on)?,
            loss: objective(config, manifest, on)?,
            engine: None,
            adam: optimizer(&config.settings),
            classes: config.classes.len(),
        })
    }

    /// Only the head trains, on the fixed backbone.
    fn freeze(&mut self) {
        self.model = self.model.clone().freeze_backbone();
    }

    /// Every layer trains: on the CPU, by catdog's own training pass.
    fn unfreeze(&mut self, precision: crate::model::Precision, device: &Device) {
        self.model = self.model.clone().unfreeze();
        if device.clone().without_autodiff() == Device::flex() {
            self.engine = Some(TrainNet::new(&self.model, precision.on_this_cpu()));
        }
    }

    /// One Adam step at rate `lr` on a batch (`ad`: the autodiff device): the batch's mean
    /// loss and the images it got right, before the step.
    fn step(&mut self, input: Input, labels: &[usize], lr: f64, ad: &Device) -> StepResult {
        self.adam.lr = lr;
        match (&mut self.engine, input) {
            (Some(engine), Input::Images { pixels, size }) => {
                let step = engine.step(&pixels, size, labels, &self.loss);
                self.adam.step_slices(
                    engine
                        .slots_mut()
                        .into_iter()
                        .map(|s| (s.name.as_str(), &mut s.value[..], &s.grad[..])),
                );
                step
            }
            (_, input) => {
                let logits = input.logits(&self.model, ad);
                let values: Vec<f32> = logits
                    .clone()
                    .into_data()
                    .try_into_vec()
                    .expect("the model computes in f32");
                let (step, dlogits) = self.loss.evaluate(&values, labels, self.classes);
                // The loss's gradient comes from the one definition of the loss: seeded
                // into autodiff as the gradient of sum(logits * dlogits).
                let seed = Tensor::<2>::from_data(
                    TensorData::new(dlogits, [labels.len(), self.classes]),
                    ad,
                );
                let grads = logits.mul(seed).sum().backward();
                let grads = GradientsParams::from_grads(grads, &self.model);
                self.model = self.adam.step(self.model.clone(), grads);
                step
            }
        }
    }

    /// Brings `model` up to date with the engine's parameters and batch-norm statistics.
    fn sync_model(&mut self) {
        if let Some(engine) = &self.engine {
            self.model = engine.write_to(self.model.clone());
        }
    }
}

struct Session {
    run: RunDir,
    config: RunConfig,
    learner: Learner,
    state: TrainState,
    device: Device,
    manifest: Manifest,
    /// Held while the session lives: no other process trains in the same folder.
    _lock: RunLock,
}

impl Session {
    fn begin(run: &RunDir, settings: TrainConfig, on: OnEvent) -> Result<Session> {
        check_settings(&settings)?;
        let device = settings.device.device()?;
        std::fs::create_dir_all(&run.root)
            .map_err(|e| Error::io("cannot create the run folder", &run.root, e))?;
        let lock = RunLock::acquire(run)?;
        if run.config().exists() {
            return Err(Error::data(
                &run.root,
                "already holds a training run",
                format!(
                    "continue it with `catdog train --resume {}`, or choose another --out",
                    run.root.display()
                ),
            ));
        }
        let (config, manifest) = start(settings, &run.root, &device, on)?;
        manifest.save(&run.manifest())?;
        check_splits(&manifest, &[Split::Train, Split::Val], &run.manifest())?;
        let learner = Learner::new(&config, &manifest, &device, on)?;
        fsio::write_json(&run.config(), &config)?;
        Ok(Session {
            run: run.clone(),
            learner,
            state: TrainState::default(),
            device,
            manifest,
            config,
            _lock: lock,
        })
    }

    fn resume(run: &RunDir, epochs: Option<usize>, on: OnEvent) -> Result<Session> {
        let hint = "start a new run with `catdog train --data DIR --out RUN`";
        if !run.config().is_file() {
            return Err(Error::data(
                &run.root,
                "is not a training run (no config.json)",
                hint,
            ));
        }
        let lock = RunLock::acquire(run)?;
        let mut config: RunConfig = fsio::read_json(&run.config(), "run configuration")?;
        let last = run.checkpoint(Which::Last);
        fsio::recover_dir(&last)?;
        fsio::recover_dir(&run.checkpoint(Which::Best))?;
        for dir in [run.root.clone(), run.report_dir()] {
            fsio::remove_stale_temps(&dir)?;
        }
        let device = config.settings.device.device()?;
        let manifest = Manifest::load(&run.manifest())?;
        manifest.verify(&run.manifest())?;
        if !last.join(state::STATE_FILE).is_file() {
            // Stopped before the first epoch ended: start again from the saved settings,
            // which gives the model and the numbers a new run would have.
            on(Event::Restarted);
            if let (Some(path), Some(expected)) = (&config.weights_file, &config.weights_sha256)
                && &fsio::sha256_file(path)? != expected
            {
                return Err(Error::weights(
                    path,
                    "changed since the run began (its SHA-256 differs from config.json's)",
                    "put the original file back, or start a new run",
                ));
            }
            set_epochs(run, &mut config, epochs, 0, on)?;
            return Ok(Session {
                run: run.clone(),
                learner: Learner::new(&config, &manifest, &device, on)?,
                state: TrainState::default(),
                device,
                manifest,
                config,
                _lock: lock,
            });
        }
        let ad = device.clone().autodiff();
        let (model, _) = checkpoint::load(&last, &ad)?;
        let mut adam = Adam::load(&last.join(OPTIMIZER_FILE))?;
        let fresh = optimizer(&config.settings);
        (adam.weight_decay, adam.backbone_scale) = (fresh.weight_decay, fresh.backbone_scale);
        let state = TrainState::load(&last)?;
        set_epochs(run, &mut config, epochs, state.epochs_done, on)?;
        on(Event::Resumed {
            epochs_done: state.epochs_done,
            batches_done: state.batches_done,
        });
        let learner = Learner {
            model,
            loss: objective(&config, &manifest, on)?,
            engine: None,
            adam,
            classes: config.classes.len(),
        };
        let session = Session {
            run: run.clone(),
            config,
            learner,
            state,
            device,
            manifest,
            _lock: lock,
        };
        // A kill between saving last/ and writing the metrics leaves them an epoch behind.
        session.write_metrics()?;
        Ok(session)
    }

    fn run(&mut self, stop: &AtomicBool, on: OnEvent) -> Result<Outcome> {
        let s = self.config.settings.clone();
        let plan = self.plan();
        let ad = self.device.clone().autodiff();
        if self.patience_spent(on) {
            return Ok(self.outcome(false));
        }
        // The head alone on the fixed backbone: all of frozen mode, fine-tuning's first
        // --freeze-epochs.
        let head_epochs = match s.mode {
            Mode::Frozen => s.epochs,
            Mode::Finetune => s.freeze_epochs,
        };
        if self.state.epochs_done < head_epochs {
            self.learner.freeze();
            let Some(source) = head_source(
                &self.config,
                &self.manifest,
                &self.learner.model,
                &self.device,
                stop,
                on,
            )?
            else {
                // Nothing of the model changed since last/ (if any) was saved; the
                // features computed so far are in the cache.
                on(Event::StoppedExtracting);
                return Ok(self.outcome(true));
            };
            if let Some(ended) = self.epochs(&source, head_epochs, &plan, &ad, stop, on)? {
                return Ok(ended);
            }
        }
        if self.state.epochs_done < s.epochs {
            self.learner.unfreeze(s.precision, &self.device);
            if s.freeze_epochs > 0
                && self.state.epochs_done == s.freeze_epochs
                && self.state.batches_done == 0
            {
                // The backbone joins with moments of its own from zero, as a new fit starts
                // (one step count serves every parameter, see [`Adam`]).
                self.learner.adam = optimizer(&s);
            }
            let source = Source::photos(&self.manifest);
            if let Some(ended) = self.epochs(&source, s.epochs, &plan, &ad, stop, on)? {
                return Ok(ended);
            }
        }
        Ok(self.outcome(false))
    }

    /// Trains on `source` until `until` epochs are done. `Some` when the run ends early:
    /// stopped on request, or by `--patience`.
    fn epochs(
        &mut self,
        source: &Source,
        until: usize,
        plan: &Plan,
        ad: &Device,
        stop: &AtomicBool,
        on: OnEvent,
    ) -> Result<Option<Outcome>> {
        let s = self.config.settings.clone();
        while self.state.epochs_done < until {
            let epoch = self.state.epochs_done;
            let started = Instant::now();
            let (train, stopped) = self.train_epoch(source, epoch, plan, ad, stop, on)?;
            if stopped {
                self.save_last()?;
                on(Event::Stopped {
                    epoch: epoch + 1,
                    batches_done: self.state.batches_done,
                });
                return Ok(Some(self.outcome(true)));
            }
            let val = self.validate(source)?;
            let record = EpochRecord {
                epoch: epoch + 1,
                train_loss: train.loss(),
                train_acc: train.accuracy(),
                val_loss: val.loss(),
                val_acc: val.accuracy(),
                seconds: started.elapsed().as_secs_f64(),
                lr: Some(plan.epoch_rate(epoch)),
            };
            let best = self
                .state
                .best
                .is_none_or(|b| b.beaten_by(&record, s.monitor));
            if best {
                self.state.best = Some(Best {
                    epoch: record.epoch,
                    val_acc: record.val_acc,
                    val_loss: record.val_loss,
                });
                let meta = self.meta();
                fsio::replace_dir(&self.run.checkpoint(Which::Best), |dir| {
                    checkpoint::save(dir, &self.learner.model, &meta)
                })?;
            }
            self.state.history.push(record);
            self.state.epochs_done += 1;
            self.state.batches_done = 0;
            self.state.partial = Running::default();
            self.save_last()?;
            self.write_metrics()?;
            on(Event::Saved {
                record: self.state.history.last().expect("just pushed"),
                epochs: s.epochs,
                best,
            });
            if self.patience_spent(on) {
                return Ok(Some(self.outcome(false)));
            }
        }
        Ok(None)
    }

    /// Whether `--patience` epochs have passed without a better monitored value, before the
    /// last epoch (said by [`Event::EarlyStopped`]). A resumed run that had stopped early
    /// stops again here: its state is the same.
    fn patience_spent(&self, on: OnEvent) -> bool {
        let s = &self.config.settings;
        let (Some(patience), Some(best)) = (s.patience, self.state.best) else {
            return false;
        };
        let done = self.state.epochs_done;
        let spent = done < s.epochs && done - best.epoch >= patience;
        if spent {
            on(Event::EarlyStopped {
                epoch: done,
                best,
                monitor: s.monitor,
                patience,
            });
        }
        spent
    }

    /// The rate of every batch of the run.
    fn plan(&self) -> Plan {
        let s = &self.config.settings;
        Plan {
            schedule: s.schedule,
            lr: s.lr,
            warmup: s.warmup,
            epochs: s.epochs,
            freeze_epochs: s.freeze_epochs,
            batches_per_epoch: batch_count(self.manifest.count(Split::Train), s.batch_size),
        }
    }

    fn outcome(&self, stopped: bool) -> Outcome {
        Outcome {
            config: self.config.clone(),
            epochs_done: self.state.epochs_done,
            best: self.state.best,
            stopped,
        }
    }

    fn meta(&self) -> CheckpointMeta {
        CheckpointMeta::new(
            self.config.classes.clone(),
            self.config.settings.preprocessing.clone(),
        )
    }

    /// Trains one epoch (from `batches_done`, when resumed mid-epoch). Returns
    /// the epoch's running loss and accuracy, and whether it was stopped.
    fn train_epoch(
        &mut self,
        source: &Source,
        epoch: usize,
        plan: &Plan,
        ad: &Device,
        stop: &AtomicBool,
        on: OnEvent,
    ) -> Result<(Running, bool)> {
        let n = source.train_len();
        let s = &self.config.settings;
        let (bs, epochs) = (s.batch_size, s.epochs);
        let mut running = self.state.partial;
        let batches = batches(s, source, Split::Train, epoch, self.state.batches_done);
        for item in batches {
            let (input, labels) = item?;
            let lr = plan.rate(epoch, self.state.batches_done);
            let step = self.learner.step(input, &labels, lr, ad);
            running.add(step.loss, step.correct, labels.len());
            self.state.batches_done += 1;
            self.state.partial = running;
            on(Event::Batch {
                epoch: epoch + 1,
                epochs,
                images: (self.state.batches_done * bs).min(n),
                total: n,
                loss: running.loss(),
                accuracy: running.accuracy(),
            });
            if stop.load(Ordering::SeqCst) && self.state.batches_done < batch_count(n, bs) {
                self.learner.sync_model();
                return Ok((running, true));
            }
        }
        self.learner.sync_model();
        Ok((running, false))
    }

    /// Loss and accuracy on the validation split, batch norm in eval mode.
    fn validate(&self, source: &Source) -> Result<Running> {
        let model = self.learner.model.clone().valid();
        let net = EvalNet::new(&model, &self.device, self.config.settings.precision);
        let classes = self.config.classes.len();
        let mut running = Running::default();
        for item in batches(&self.config.settings, source, Split::Val, 0, 0) {
            let (input, labels) = item?;
            let logits = match input {
                Input::Images { pixels, size } => net.logits(pixels, size),
                features => features
                    .logits(&model, &self.device)
                    .into_data()
                    .try_into_vec()
                    .expect("the model computes in f32"),
            };
            let (step, _) = cross_entropy(&logits, &labels, classes);
            running.add(step.loss, step.correct, labels.len());
        }
        Ok(running)
    }

    fn save_last(&self) -> Result<()> {
        let meta = self.meta();
        fsio::replace_dir(&self.run.checkpoint(Which::Last), |dir| {
            checkpoint::save(dir, &self.learner.model, &meta)?;
            self.learner.adam.save(&dir.join(OPTIMIZER_FILE))?;
            // Written last: its presence marks the folder complete.
            self.state.save(dir)
        })
    }

    fn write_metrics(&self) -> Result<()> {
        let mut jsonl = String::new();
        let mut csv = String::from("epoch,train_loss,train_acc,val_loss,val_acc,seconds,lr\n");
        for r in &self.state.history {
            jsonl.push_str(&serde_json::to_string(r).expect("serialisable"));
            jsonl.push('\n');
            let lr = r.lr.map(|lr| lr.to_string()).unwrap_or_default();
            csv.push_str(&format!(
                "{},{},{},{},{},{:.3},{lr}\n",
                r.epoch, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.seconds
            ));
        }
        fsio::write_atomic(&self.run.metrics_jsonl(), jsonl.as_bytes())?;
        fsio::write_atomic(&self.run.metrics_csv(), csv.as_bytes())
    }
}

/// How the loader batches `s`'s photos.
fn loader_config(s: &TrainConfig, shuffle: bool, augment: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size: s.batch_size,
        shuffle,
        augment,
        seed: s.seed,
        preprocessing: s.preprocessing.clone(),
        prefetch: 3,
        limits: Limits::default(),
    }
}

/// What the head trains on while the backbone is fixed: the photos' (cached) features,
/// or with augmentation the photos; `None` when stopped while extracting the features.
fn head_source(
    config: &RunConfig,
    manifest: &Manifest,
    model: &ResNet18,
    device: &Device,
    stop: &AtomicBool,
    on: OnEvent,
) -> Result<Option<Source>> {
    let s = &config.settings;
    let train: Arc<[Sample]> = manifest.samples(Split::Train).into();
    let val: Arc<[Sample]> = manifest.samples(Split::Val).into();
    if s.augment {
        on(Event::Uncached);
        return Ok(Some(Source::Photos { train, val }));
    }
    let cache = match (&s.cache_dir, &config.weights_sha256) {
        (Some(dir), Some(sha)) => Some(FeatureCache::new(
            dir,
            sha,
            &s.preprocessing,
            s.precision.on_this_cpu(),
        )),
        _ => None,
    };
    let backbone = EvalNet::new(&model.clone().valid(), device, s.precision);
    let extract = |samples: &[Sample], split: Split| -> Result<Option<Vec<f32>>> {
        let Some((features, stats)) = features::extract(
            &backbone,
            samples,
            cache.as_ref(),
            &loader_config(s, false, false),
            &StepProgress::new(Step::Features(split), on),
            stop,
        )?
        else {
            return Ok(None);
        };
        on(Event::Features {
            split,
            hits: stats.hits,
            computed: stats.computed,
        });
        Ok(Some(features))
    };
    let Some(train_features) = extract(&train, Split::Train)? else {
        return Ok(None);
    };
    let Some(val_features) = extract(&val, Split::Val)? else {
        return Ok(None);
    };
    Ok(Some(Source::Features {
        train: train_features,
        val: val_features,
        train_labels: train.iter().map(|s| s.label).collect(),
        val_labels: val.iter().map(|s| s.label).collect(),
    }))
}

/// Batches of one epoch, as model inputs on `device` with their labels.
fn batches<'a>(
    s: &TrainConfig,
    source: &'a Source,
    split: Split,
    epoch: usize,
    start: usize,
) -> Box<dyn Iterator<Item = Result<(Input, Vec<usize>)>> + 'a> {
    let train = split == Split::Train;
    match source {
        Source::Photos { train: t, val: v } => {
            let samples = if train { t.clone() } else { v.clone() };
            let config = loader_config(s, train, train && s.augment);
            Box::new(Loader::new(samples, config, epoch, start).map(move |b| {
                let b = b?;
                let input = Input::Images {
                    pixels: b.images,
                    size: b.image_size,
                };
                Ok((input, b.labels))
            }))
        }
        Source::Features {
            train: tf,
            train_labels,
            val: vf,
            val_labels,
        } => {
            let (feats, labels) = if train {
                (tf, train_labels)
            } else {
                (vf, val_labels)
            };
            let order = epoch_order(labels.len(), s.seed, epoch, train);
            let chunks: Vec<Vec<usize>> = order
                .chunks(s.batch_size)
                .skip(start)
                .map(<[usize]>::to_vec)
                .collect();
            Box::new(chunks.into_iter().map(move |idx| {
                let mut rows = Vec::with_capacity(idx.len() * FEATURES);
                for &i in &idx {
                    rows.extend_from_slice(&feats[i * FEATURES..(i + 1) * FEATURES]);
                }
                Ok((
                    Input::Features(rows),
                    idx.iter().map(|&i| labels[i]).collect(),
                ))
            }))
        }
    }
}

/// A resumed run's new total of epochs, if one was asked for: it may extend a
/// run (recorded in config.json, which says how the run was trained), never cut
/// off epochs already done.
fn set_epochs(
    run: &RunDir,
    config: &mut RunConfig,
    epochs: Option<usize>,
    done: usize,
    on: OnEvent,
) -> Result<()> {
    let Some(epochs) = epochs else {
        return Ok(());
    };
    if epochs < done.max(1) {
        return Err(Error::setting(
            "--epochs",
            format!(
                "{epochs} is fewer than the {done} epoch(s) {} has done already; give {} or more",
                run.root.display(),
                done.max(1)
            ),
        ));
    }
    if epochs != config.settings.epochs && config.settings.schedule != Schedule::Constant {
        return Err(Error::setting(
            "--epochs",
            format!(
                "{} runs --schedule {}, whose rates follow from its {} epochs: more would change the rates of the epochs it has trained. Resume without --epochs, or start a new run",
                run.root.display(),
                config.settings.schedule,
                config.settings.epochs
            ),
        ));
    }
    if epochs != config.settings.epochs {
        on(Event::EpochsChanged {
            from: config.settings.epochs,
            to: epochs,
        });
        config.settings.epochs = epochs;
        fsio::write_json(&run.config(), config)?;
    }
    Ok(())
}

/// A new run's start, shared by [`train`] and [`lr_find`]: the weights file checked (before
/// minutes of decoding, leaving no manifest behind), the data prepared (a folder cleaned and
/// split, leaving out `exclude`, the command's own output folder; or a manifest as it is),
/// and what that found: the layout (recorded in the settings), classes, the weights' SHA-256.
fn start(
    mut settings: TrainConfig,
    exclude: &Path,
    device: &Device,
    on: OnEvent,
) -> Result<(RunConfig, Manifest)> {
    let weights_file = settings.weights.resolve()?;
    if let Some(path) = &weights_file {
        weights::load_into(&mut ResNet18::zeroed(2, device), path)?;
    }
    let manifest = match &settings.source {
        DataSource::Manifest(path) => {
            let m = Manifest::load(path)?;
            m.verify(path)?;
            m
        }
        DataSource::Folder {
            root,
            layout,
            ratios,
        } => {
            let (m, report) = data::prepare(
                &Prepare {
                    root,
                    layout: *layout,
                    ratios: *ratios,
                    seed: settings.seed,
                    limits: Limits::default(),
                    exclude: Some(exclude),
                    keep_near_conflicts: false,
                },
                &StepProgress::new(Step::Decoding, on),
            )?;
            on(Event::Prepared(&report));
            if !m.conflicts.is_empty() {
                on(Event::Conflicts(&m.conflicts));
            }
            m
        }
    };
    // Record the layout found, not the `None` that asked for detection.
    if let DataSource::Folder { layout, .. } = &mut settings.source {
        *layout = Some(manifest.layout);
    }
    let weights_sha256 = weights_file.as_deref().map(fsio::sha256_file).transpose()?;
    let config = RunConfig {
        config_version: CONFIG_VERSION,
        catdog_version: env!("CARGO_PKG_VERSION").to_owned(),
        weights_file,
        weights_sha256,
        classes: manifest.classes.clone(),
        device_name: format!("{device:?}"),
        settings,
    };
    Ok((config, manifest))
}

/// Refuses a manifest with any of `splits` empty; `path` is where the user finds it.
fn check_splits(manifest: &Manifest, splits: &[Split], path: &Path) -> Result<()> {
    for &split in splits {
        if manifest.count(split) == 0 {
            return Err(Error::data(
                path,
                format!("the {split} split is empty"),
                "use more photos, or --ratios that give every split some",
            ));
        }
    }
    Ok(())
}

/// The model a run starts from: seeded initialisation, the run's weights, a new head.
fn initial_model(config: &RunConfig, device: &Device, on: OnEvent) -> Result<ResNet18> {
    let s = &config.settings;
    let ad = device.clone().autodiff();
    let classes = config.classes.len();
    // Seeded, so that a run from random initialisation is reproducible too.
    let (model, origin) =
        weights::load_model(config.weights_file.as_deref(), classes, s.seed, &ad)?;
    on(Event::Weights(&origin));
    Ok(model.with_head(classes, s.seed, &ad))
}

/// A fresh optimizer with the run's settings (its rate is set before every step).
fn optimizer(s: &TrainConfig) -> Adam {
    let mut adam = Adam::new(s.lr);
    adam.weight_decay = s.weight_decay;
    adam.backbone_scale = s.lr_backbone.map_or(1.0, |b| b / s.lr);
    adam
}

/// The run's loss, with its class weights resolved from the training split's counts, which
/// [`Event::Classes`] reports when they are unbalanced or weighted.
fn objective(config: &RunConfig, manifest: &Manifest, on: OnEvent) -> Result<Loss> {
    let s = &config.settings;
    let counts: Vec<usize> = (0..config.classes.len())
        .map(|c| {
            manifest
                .samples(Split::Train)
                .iter()
                .filter(|x| x.label == c)
                .count()
        })
        .collect();
    let weights = s.class_weights.resolve(&counts)?;
    let (most, fewest) = (
        counts.iter().max().copied().unwrap_or(0),
        counts.iter().min().copied().unwrap_or(0),
    );
    if !weights.is_empty() || most as f64 > UNBALANCED * fewest as f64 {
        on(Event::Classes {
            names: &config.classes,
            counts: &counts,
            weights: &weights,
        });
    }
    Ok(Loss {
        label_smoothing: s.label_smoothing,
        class_weights: weights,
    })
}

/// Classes whose training counts differ by more than this factor are unbalanced.
const UNBALANCED: f64 = 1.5;

fn check_settings(s: &TrainConfig) -> Result<()> {
    if s.epochs == 0 {
        return Err(Error::setting("--epochs", "must be at least 1"));
    }
    if s.batch_size == 0 {
        return Err(Error::setting("--batch-size", "must be at least 1"));
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return Err(Error::setting(
            "--lr",
            format!("{} is not a positive number", s.lr),
        ));
    }
    let non_negative = |value: f64| value.is_finite() && value >= 0.0;
    if let Some(w) = s.warmup
        && !non_negative(w)
    {
        return Err(Error::setting(
            "--warmup",
            format!("{w} is not a number of epochs of 0 or more"),
        ));
    }
    if !non_negative(s.weight_decay) {
        return Err(Error::setting(
            "--weight-decay",
            format!("{} is not a number of 0 or more", s.weight_decay),
        ));
    }
    if !(non_negative(s.label_smoothing) && s.label_smoothing < 1.0) {
        return Err(Error::setting(
            "--label-smoothing",
            format!("{} is not in [0, 1)", s.label_smoothing),
        ));
    }
    if s.patience == Some(0) {
        return Err(Error::setting("--patience", "must be at least 1 epoch"));
    }
    if s.freeze_epochs > 0 && (s.mode != Mode::Finetune || s.freeze_epochs >= s.epochs) {
        return Err(Error::setting(
            "--freeze-epochs",
            format!(
                "{} needs --mode finetune and fewer than --epochs ({}): the epochs after them train every layer",
                s.freeze_epochs, s.epochs
            ),
        ));
    }
    if let Some(b) = s.lr_backbone {
        if !(b.is_finite() && b > 0.0) {
            return Err(Error::setting(
                "--lr-backbone",
                format!("{b} is not a positive number"),
            ));
        }
        if s.mode != Mode::Finetune {
            return Err(Error::setting(
                "--lr-backbone",
                "needs --mode finetune: frozen mode never trains the backbone",
            ));
        }
    }
    if s.preprocessing.image_size < 32 {
        return Err(Error::setting(
            "--image-size",
            "must be at least 32 (ResNet-18 downsamples 32 times)",
        ));
    }
    Ok(())
}

/// The default cache folder for frozen mode's features (the weights' cache).
pub fn default_cache_dir() -> Option<PathBuf> {
    weights::WeightLocations::from_env().ok().map(|l| l.cache)
}
