//! The inference thread. The network is CPU-bound work that would stall the async runtime, and
//! a batch of images costs little more than one, so one thread owns the model: it takes a
//! request from the queue, gathers whatever else is waiting (up to `max_batch`, waiting at most
//! `batch_wait` for more), runs one forward pass and answers each request through its oneshot.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::prelude::Device;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use tokio::sync::oneshot;

use super::Config;
use crate::error::{Error, Result};
use crate::evaluate::judge_batch;
use crate::model::calibration::{DecisionRule, Judge, Judgement};
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::gradcam::{HeatMap, gradcam_maps};
use crate::model::{EvalNet, ResNet18};

/// One image for the model.
pub(super) struct Job {
    /// The preprocessed image, CHW, `3 x image_size x image_size`.
    pub input: Vec<f32>,
    /// Whether the answer needs a Grad-CAM map.
    pub explain: bool,
    pub reply: oneshot::Sender<Answer>,
}

/// The model's answer for one image.
pub(super) struct Answer {
    /// The decision, with the calibrated and raw probabilities in the model's class order.
    pub judgement: Judgement,
    /// Where the model looked for its most probable class, when asked for.
    pub gradcam: Option<HeatMap>,
    /// Time the model took for the whole batch (with Grad-CAM's pass when one image asked).
    pub model_ms: f64,
    /// Images in that batch.
    pub batch_size: usize,
}

/// Why a job was not queued.
pub(super) enum Refused {
    /// The queue is full.
    Busy,
    /// The inference thread is gone.
    Stopped,
}

/// The handle the HTTP side keeps: the queue into the inference thread and its counters.
#[derive(Clone)]
pub(super) struct Engine {
    jobs: Sender<Job>,
    stats: Arc<Stats>,
    image_size: usize,
}

impl Engine {
    /// Loads the checkpoint in `dir` and starts the inference thread; it ends when the last
    /// `Engine` clone is dropped. Returns the checkpoint's description too.
    pub fn load(dir: &Path, config: &Config) -> Result<(Engine, CheckpointMeta)> {
        let device = config.device.device()?;
        let (model, meta) = checkpoint::load(dir, &device)?;
        let judge = Judge::load(dir, &meta, DecisionRule::Calibrated)?;
        let (jobs, queue) = crossbeam_channel::bounded(config.max_queue);
        let stats = Arc::new(Stats::new(config.max_batch));
        let image_size = meta.preprocessing.image_size as usize;
        let worker = Worker {
            net: EvalNet::new(&model, &device, config.precision),
            judge,
            model,
            device,
            image_size,
            max_batch: config.max_batch,
            batch_wait: config.batch_wait,
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("catdog-inference".into())
            .spawn(move || worker.run(queue))
            .map_err(|e| Error::io("cannot start the inference thread for", dir, e))?;
        let engine = Engine {
            jobs,
            stats,
            image_size,
        };
        Ok((engine, meta))
    }

    /// Queues a job without waiting: a full queue is refused at once.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Refused> {
        debug_assert_eq!(job.input.len(), 3 * self.image_size * self.image_size);
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Busy,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }

    /// The counters, now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot(self.jobs.len())
    }
}

/// Counters of the inference thread's work.
struct Stats {
    images: AtomicU64,
    /// `batch_sizes[n - 1]`: batches of `n` images.
    batch_sizes: Vec<AtomicU64>,
    /// Batches whose forward pass panicked (their requests got a 500).
    failed_batches: AtomicU64,
    busy: AtomicBool,
}

/// [`Stats`] as `/healthz` shows them.
#[derive(Clone, Debug, Serialize)]
pub(super) struct StatsSnapshot {
    /// Images the model has answered.
    pub images: u64,
    /// Forward passes run.
    pub batches: u64,
    /// `batch_sizes[n - 1]` forward passes had `n` images.
    pub batch_sizes: Vec<u64>,
    pub largest_batch: usize,
    pub failed_batches: u64,
    /// Requests waiting for the model.
    pub queued: usize,
    /// Whether a forward pass is running now.
    pub busy: bool,
}

impl Stats {
    fn new(max_batch: usize) -> Self {
        Stats {
            images: AtomicU64::new(0),
            batch_sizes: (0..max_batch).map(|_| AtomicU64::new(0)).collect(),
            failed_batches: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }

    fn snapshot(&self, queued: usize) -> StatsSnapshot {
        let batch_sizes: Vec<u64> = self
            .batch_sizes
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        StatsSnapshot {
            images: self.images.load(Ordering::Relaxed),
            batches: batch_sizes.iter().sum(),
            largest_batch: batch_sizes
                .iter()
                .rposition(|&n| n > 0)
                .map_or(0, |i| i + 1),
            batch_sizes,
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            queued,
            busy: self.busy.load(Ordering::Relaxed),
        }
    }
}

/// What the inference thread owns.
struct Worker {
    /// For the predictions; `model` (with gradients, for Grad-CAM) for the explanations.
    net: EvalNet,
    judge: Judge,
    model: ResNet18,
    device: Device,
    image_size: usize,
    max_batch: usize,
    batch_wait: Duration,
    stats: Arc<Stats>,
}

impl Worker {
    fn run(self, queue: Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            let deadline = Instant::now() + self.batch_wait;
            while batch.len() < self.max_batch {
                match queue.recv_deadline(deadline) {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // A client that gave up (time-out, closed connection) needs no answer.
            batch.retain(|job| !job.reply.is_closed());
            if !batch.is_empty() {
                self.answer(batch);
            }
        }
    }

    fn answer(&self, batch: Vec<Job>) {
        let size = batch.len();
        let mut inputs = Vec::with_capacity(size * 3 * self.image_size * self.image_size);
        let mut explain = Vec::with_capacity(size);
        let mut replies = Vec::with_capacity(size);
        for job in batch {
            inputs.extend_from_slice(&job.input);
            explain.push(job.explain);
            replies.push(job.reply);
        }
        self.stats.busy.store(true, Ordering::Relaxed);
        let started = Instant::now();
        // A panic in the model's code must cost this batch only, not every later request.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.forward(inputs, &explain)));
        let model_ms = started.elapsed().as_secs_f64() * 1e3;
        self.stats.busy.store(false, Ordering::Relaxed);
        let Ok((judgements, maps)) = outcome else {
            // Dropping the replies answers each request with an error.
            self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.stats.images.fetch_add(size as u64, Ordering::Relaxed);
        self.stats.batch_sizes[size - 1].fetch_add(1, Ordering::Relaxed);
        for ((reply, judgement), gradcam) in replies.into_iter().zip(judgements).zip(maps) {
            // The client may have gone meanwhile; nothing to do then.
            let _ = reply.send(Answer {
                judgement,
                gradcam,
                model_ms,
                batch_size: size,
            });
        }
    }

    /// Each image's judgement, and for the images with `explain` set their Grad-CAM map
    /// for their most probable class.
    fn forward(
        &self,
        inputs: Vec<f32>,
        explain: &[bool],
    ) -> (Vec<Judgement>, Vec<Option<HeatMap>>) {
        let per_image = inputs.len() / explain.len();
        // Grad-CAM runs its images again, with gradients; the plain pass says which class each
        // map is for.
        let again: Vec<f32> = inputs
            .chunks(per_image)
            .zip(explain)
            .filter(|(_, wanted)| **wanted)
            .flat_map(|(image, _)| image)
            .copied()
            .collect();
        let judgements: Vec<Judgement> =
            judge_batch(&self.net, &self.judge, inputs, self.image_size)
                .into_iter()
                .map(|(_, judgement)| judgement)
                .collect();
        let top: Vec<usize> = judgements
            .iter()
            .zip(explain)
            .filter(|(_, wanted)| **wanted)
            .map(|(j, _)| j.label)
            .collect();
        let mut maps =
            gradcam_maps(&self.model, again, self.image_size, &top, &self.device).into_iter();
        let maps = explain
            .iter()
            .map(|&wanted| if wanted { maps.next() } else { None })
            .collect();
        (judgements, maps)
    }
}
