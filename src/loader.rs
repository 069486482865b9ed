//! Batches for the model: decoding and preprocessing in parallel on a
//! background thread, a few batches ahead, so the model never waits on JPEG
//! decoding. The order is shuffled per epoch from the seed, and augmentation
//! draws from a random stream per (seed, epoch, sample), so a batch's content
//! does not depend on thread timing.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::decode::{self, Limits};
use crate::data::manifest::Sample;
use crate::error::{Error, Result};
use crate::preprocess::Preprocessing;

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Shuffle the order every epoch (training); else keep manifest order.
    pub shuffle: bool,
    /// Random resized crop + flip instead of the eval transform.
    pub augment: bool,
    pub seed: u64,
    pub preprocessing: Preprocessing,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    pub limits: Limits,
}

/// A batch: `images` is N x 3 x S x S floats, row-major.
#[derive(Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// Indices into the sample list the loader was given.
    pub indices: Vec<usize>,
    pub paths: Vec<PathBuf>,
    pub image_size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The order in which an epoch visits the samples.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            seed,
            epoch as u64,
            u64::MAX,
        )));
    }
    order
}

/// Number of batches an epoch over `len` samples has (the last may be short).
pub fn batch_count(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size)
}

/// Iterates over one epoch's batches; stops at the first file that fails.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Batches of `epoch`, beginning at batch `start` (a resumed epoch skips
    /// the batches it already trained on).
    pub fn new(samples: Arc<[Sample]>, config: LoaderConfig, epoch: usize, start: usize) -> Loader {
        let (tx, rx) = bounded(config.prefetch.max(1));
        let worker = std::thread::Builder::new()
            .name("catdog-loader".into())
            .spawn(move || {
                let order = epoch_order(samples.len(), config.seed, epoch, config.shuffle);
                for chunk in order.chunks(config.batch_size.max(1)).skip(start) {
                    let batch = make_batch(&samples, chunk, &config, epoch);
                    let failed = batch.is_err();
                    // A closed channel means the consumer stopped early: nothing more to do.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("the OS can start a thread");
        Loader {
            rx,
            worker: Some(worker),
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the worker (its sends fail once the receiver is gone), then wait for it.
        let (_, dead) = bounded(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn make_batch(
    samples: &[Sample],
    indices: &[usize],
    config: &LoaderConfig,
    epoch: usize,
) -> Result<Batch> {
    let p = &config.preprocessing;
    let mut images = vec![0.0f32; indices.len() * p.tensor_len()];
    images
        .par_chunks_mut(p.tensor_len())
        .zip(indices.par_iter())
        .try_for_each(|(out, &i)| -> Result<()> {
            let sample = &samples[i];
            let decoded = decode::decode_file(&sample.path, &config.limits).map_err(|r| {
                Error::data(
                    &sample.path,
                    format!("cannot be loaded: {r}"),
                    "the file changed since the manifest was made; run `catdog split` again",
                )
            })?;
            if config.augment {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed, epoch as u64, i as u64));
                p.train(&decoded.image, Some(&mut rng), out);
            } else {
                p.eval(&decoded.image, out);
            }
            Ok(())
        })?;
    Ok(Batch {
        images,
        labels: indices.iter().map(|&i| samples[i].label).collect(),
        indices: indices.to_vec(),
        paths: indices.iter().map(|&i| samples[i].path.clone()).collect(),
        image_size: p.image_size as usize,
    })
}

/// One well-spread 64-bit seed from three numbers (splitmix64 steps).
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let step = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    step(step(step(a) ^ b) ^ c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_seeded_permutation_that_changes_per_epoch() {
        let a = epoch_order(100, 42, 0, true);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 42, 0, true));
        assert_ne!(a, epoch_order(100, 42, 1, true));
        assert_eq!(epoch_order(5, 42, 3, false), [0, 1, 2, 3, 4]);
        assert_eq!(batch_count(65, 32), 3);
    }
}
