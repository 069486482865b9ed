//! Running a model over photos: a manifest's split (every file must load) or
//! any files a user names (each file succeeds or fails on its own).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::data::Sample;
use crate::data::decode::{self, Limits, Rejection};
use crate::error::{Error, Result};
use crate::loader::{Loader, LoaderConfig};
use crate::model::calibration::{Judge, Judgement};
use crate::model::{EvalNet, FEATURES};
use crate::preprocess::Preprocessing;
use crate::progress::Progress;

/// What a model said about a list of labelled photos, one entry per photo in
/// the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictions {
    /// The true class of each photo.
    pub labels: Vec<usize>,
    /// Each photo's softmax probability for every class, in class order (raw: at
    /// temperature 1).
    pub probabilities: Vec<Vec<f32>>,
    /// Each photo's logits.
    pub logits: Vec<Vec<f32>>,
    /// What the model's decision rule says about each photo.
    pub judgements: Vec<Judgement>,
    pub paths: Vec<PathBuf>,
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Runs `model` over `samples` with the eval transform, in order, `batch_size`
/// photos per forward pass while the loader prepares the next batches, and
/// `judge` over its outputs. `progress` counts photos. A file that no longer
/// loads is an error naming it.
pub fn predict_samples(
    net: &EvalNet,
    judge: &Judge,
    samples: &[Sample],
    preprocessing: &Preprocessing,
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<Predictions> {
    progress.set_total(samples.len() as u64);
    let mut out = Predictions::default();
    for batch in eval_batches(samples, preprocessing, batch_size) {
        let batch = batch?;
        let n = batch.len();
        for judgement in judge_batch(net, judge, batch.images, batch.image_size) {
            out.logits.push(judgement.0);
            out.probabilities
                .push(judgement.1.raw_probabilities.clone());
            out.judgements.push(judgement.1);
        }
        out.labels.extend(batch.labels);
        out.paths.extend(batch.paths);
        progress.advance(n as u64);
    }
    Ok(out)
}

/// `samples` in order, in batches of the eval transform.
fn eval_batches(samples: &[Sample], preprocessing: &Preprocessing, batch_size: usize) -> Loader {
    let config = LoaderConfig {
        batch_size: batch_size.max(1),
        shuffle: false,
        augment: false,
        seed: 0,
        preprocessing: preprocessing.clone(),
        prefetch: 2,
        limits: Limits::default(),
    };
    Loader::new(Arc::from(samples), config, 0, 0)
}

/// Test-time augmentation (`evaluate --tta`): each photo's probabilities averaged over its
/// eval crop and the crop's mirror image, given the crop's own probabilities (`plain`, raw, in
/// the order of `samples`). The mirror of the preprocessed crop stands for the crop of the
/// mirrored photo: the centred resize and crop are symmetric (to a pixel where the resized
/// width is odd).
pub fn tta_probabilities(
    net: &EvalNet,
    samples: &[Sample],
    plain: &[Vec<f32>],
    preprocessing: &Preprocessing,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(samples.len());
    for batch in eval_batches(samples, preprocessing, batch_size) {
        let batch = batch?;
        let (size, n) = (batch.image_size, batch.len());
        let mut images = batch.images;
        for row in images.chunks_exact_mut(size) {
            row.reverse();
        }
        let logits = net.head(net.features(images, size));
        let classes = logits.len() / n;
        for z in logits.chunks_exact(classes) {
            let mirrored = crate::model::calibration::softmax(z, 1.0);
            let p = &plain[out.len()];
            out.push(
                p.iter()
                    .zip(&mirrored)
                    .map(|(a, b)| ((f64::from(*a) + f64::from(*b)) / 2.0) as f32)
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Each image's logits and `judge`'s judgement of them, from one forward pass over `batch`
/// (CHW images of `3 x image_size x image_size` values back to back).
pub fn judge_batch(
    net: &EvalNet,
    judge: &Judge,
    batch: Vec<f32>,
    image_size: usize,
) -> Vec<(Vec<f32>, Judgement)> {
    if batch.is_empty() {
        return Vec::new();
    }
    let features = net.features(batch, image_size);
    let logits = net.head(features.clone());
    let classes = logits.len() / (features.len() / FEATURES);
    features
        .chunks_exact(FEATURES)
        .zip(logits.chunks_exact(classes))
        .map(|(f, z)| (z.to_vec(), judge.judge(z, f)))
        .collect()
}

/// Classifies the files at `paths`, `batch_size` per forward pass, decoding
/// each batch in parallel with the same limits and checks as the data stage.
/// Calls `each` once per file, in order, with its logits and `judge`'s judgement
/// of them, or the reason it could not be read; a bad file costs only itself.
pub fn predict_files(
    net: &EvalNet,
    judge: &Judge,
    preprocessing: &Preprocessing,
    paths: &[PathBuf],
    batch_size: usize,
    mut each: impl FnMut(&Path, std::result::Result<(Vec<f32>, Judgement), Rejection>),
) {
    let limits = Limits::default();
    for chunk in paths.chunks(batch_size.max(1)) {
        let tensors: Vec<std::result::Result<Vec<f32>, Rejection>> = chunk
            .par_iter()
            .map(|path| {
                let decoded = decode::decode_file(path, &limits)?;
                let mut tensor = vec![0.0; preprocessing.tensor_len()];
                preprocessing.eval(&decoded.image, &mut tensor);
                Ok(tensor)
            })
            .collect();
        let batch: Vec<f32> = tensors.iter().flatten().flatten().copied().collect();
        let size = preprocessing.image_size as usize;
        let mut rows = judge_batch(net, judge, batch, size).into_iter();
        for (path, tensor) in chunk.iter().zip(tensors) {
            each(
                path,
                tensor.map(|_| rows.next().expect("one row per decoded image")),
            );
        }
    }
}

/// The files that command-line arguments name: a file as it is (whatever it
/// holds, so that a wrong one is reported rather than passed over), a folder
/// walked recursively in sorted order, without hidden files and folders and
/// without following links to folders (which could loop).
pub fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut files)?;
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let listing = fs::read_dir(dir).map_err(|e| Error::io("cannot list folder", dir, e))?;
    let mut entries = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| Error::io("cannot list folder", dir, e))?;
        // The same files the data stage passes over (Thumbs.db, hidden files) are not photos here either.
        if crate::data::scan::system_file_reason(&entry.file_name().to_string_lossy()).is_none() {
            entries.push(entry);
        }
    }
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if path.is_dir() {
            if !is_link {
                walk(&path, files)?;
            }
        } else {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_walked_sorted_without_hidden_or_system_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "b/2.jpg",
            "b/10.jpg",
            "a.jpg",
            ".hidden.jpg",
            ".git/x.jpg",
            "b/c/3.png",
            "b/Thumbs.db",
        ] {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b"x").unwrap();
        }
        let single = root.join("b/2.jpg");
        let missing = root.join("missing.jpg");
        let files = image_files(&[root.to_owned(), single.clone(), missing.clone()]).unwrap();
        let expected: Vec<PathBuf> = ["a.jpg", "b/10.jpg", "b/2.jpg", "b/c/3.png"]
            .iter()
            .map(|rel| root.join(rel))
            .chain([single, missing])
            .collect();
        assert_eq!(files, expected);
    }
}
