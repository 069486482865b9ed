//! The inference thread. The network is CPU-bound work that would stall the async runtime, and
//! a batch of images costs little more than one, so one thread owns the model: it takes a
//! request from the queue, gathers whatever else is waiting (up to `max_batch`, waiting at most
//! `batch_wait` for more), runs one forward pass and answers each request through its oneshot.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::activation::softmax;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use tokio::sync::oneshot;

use super::Config;
use crate::error::{Error, Result};
use crate::model::ResNet18;
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::predict::top_k;
use crate::report::gradcam_map;

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
    /// Softmax probabilities, in the model's class order.
    pub probabilities: Vec<f32>,
    /// Where the model looked for its most probable class, when asked for.
    pub gradcam: Option<GradCam>,
    /// Time of the forward (and backward) pass of the whole batch.
    pub model_ms: f64,
    /// Images in that batch.
    pub batch_size: usize,
}

/// A Grad-CAM map (see [`gradcam_map`]): `height x width` values in [0, 1], row-major.
pub(super) struct GradCam {
    pub map: Vec<f32>,
    pub height: usize,
    pub width: usize,
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
        let (model, meta) = checkpoint::load(dir, &Device::flex().autodiff())?;
        // Grad-CAM needs gradients, so the model lives on an autodiff device; frozen, its batch
        // norms use their running statistics there, as in evaluation. valid() is the same
        // network without autodiff, for the batches that need no explanation.
        let explaining = model.freeze_backbone();
        let plain = explaining.valid();
        let (jobs, queue) = crossbeam_channel::bounded(config.max_queue);
        let stats = Arc::new(Stats::new(config.max_batch));
        let image_size = meta.preprocessing.image_size as usize;
        let worker = Worker {
            plain,
            explaining,
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
    plain: ResNet18,
    explaining: ResNet18,
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
        let explain = batch.iter().any(|job| job.explain);
        let mut inputs = Vec::with_capacity(size * 3 * self.image_size * self.image_size);
        let mut replies = Vec::with_capacity(size);
        for job in batch {
            inputs.extend_from_slice(&job.input);
            replies.push((job.explain, job.reply));
        }
        self.stats.busy.store(true, Ordering::Relaxed);
        let started = Instant::now();
        // A panic in the model's code must cost this batch only, not every later request.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.forward(inputs, size, explain)));
        let model_ms = started.elapsed().as_secs_f64() * 1e3;
        self.stats.busy.store(false, Ordering::Relaxed);
        let Ok((probabilities, maps)) = outcome else {
            // Dropping the replies answers each request with an error.
            self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.stats.images.fetch_add(size as u64, Ordering::Relaxed);
        self.stats.batch_sizes[size - 1].fetch_add(1, Ordering::Relaxed);
        let mut maps = maps.map(Vec::into_iter);
        for ((wants_map, reply), probabilities) in replies.into_iter().zip(probabilities) {
            let gradcam = maps.as_mut().and_then(Iterator::next);
            // The client may have gone meanwhile; nothing to do then.
            let _ = reply.send(Answer {
                probabilities,
                gradcam: gradcam.filter(|_| wants_map),
                model_ms,
                batch_size: size,
            });
        }
    }

    /// Each image's probabilities, and with `explain` each image's Grad-CAM map for its most
    /// probable class.
    fn forward(
        &self,
        inputs: Vec<f32>,
        batch: usize,
        explain: bool,
    ) -> (Vec<Vec<f32>>, Option<Vec<GradCam>>) {
        let (model, device) = if explain {
            (&self.explaining, Device::flex().autodiff())
        } else {
            (&self.plain, Device::flex())
        };
        let s = self.image_size;
        let x = Tensor::<4>::from_data(TensorData::new(inputs, [batch, 3, s, s]), &device);
        let (activations, logits) = model.forward_with_activations(x);
        let probabilities: Vec<f32> = softmax(logits.clone(), 1)
            .into_data()
            .try_into_vec()
            .expect("the model computes in f32");
        let classes = probabilities.len() / batch;
        let maps = explain.then(|| gradcam(activations, logits, &probabilities, classes));
        let probabilities = probabilities.chunks(classes).map(<[f32]>::to_vec).collect();
        (probabilities, maps)
    }
}

/// Grad-CAM maps for each image's most probable class, from one backward pass.
fn gradcam(
    activations: Tensor<4>,
    logits: Tensor<2>,
    probabilities: &[f32],
    classes: usize,
) -> Vec<GradCam> {
    let [batch, channels, height, width] = activations.dims();
    // The score to explain is the top class's logit. The images in a batch do not interact
    // (batch norm uses running statistics), so the gradient of the sum of their scores gives
    // each image the gradient of its own score.
    let one_hot: Vec<f32> = probabilities
        .chunks(classes)
        .flat_map(|row| {
            let top = top_k(row, 1)[0].index;
            (0..classes).map(move |c| f32::from(u8::from(c == top)))
        })
        .collect();
    let mask = Tensor::<2>::from_data(TensorData::new(one_hot, [batch, classes]), &logits.device());
    let grads = (logits * mask).sum().backward();
    let values = |t: Tensor<4>| -> Vec<f32> {
        t.into_data()
            .try_into_vec()
            .expect("the model computes in f32")
    };
    let gradients = values(
        activations
            .grad(&grads)
            .expect("forward_with_activations makes the activations require gradients"),
    );
    let activations = values(activations);
    let per_image = channels * height * width;
    activations
        .chunks(per_image)
        .zip(gradients.chunks(per_image))
        .map(|(a, g)| GradCam {
            map: gradcam_map(a, g, channels, height, width),
            height,
            width,
        })
        .collect()
}
