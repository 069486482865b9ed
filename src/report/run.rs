//! The whole report of a training run, from the files the run left behind.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use burn::prelude::Device;
use image::RgbImage;
use rayon::prelude::*;
use serde_json::{Value, json};

use super::{
    CONFUSION, CURVES, EpochRecord, GRADCAM, INDEX, PREDICTIONS, RELIABILITY, ROC, TOP_LOSSES,
    Tile, overlay, write_confusion, write_curves, write_grid, write_index, write_reliability,
    write_roc,
};
use crate::data::Split;
use crate::data::decode::{self, Limits};
use crate::error::{Error, Result};
use crate::evaluate::calibration::{ece, reliability};
use crate::evaluate::{
    BATCH_SIZE, Evaluation, Predictions, RunModel, Verdict, instructive, predicted, top_losses,
};
use crate::fsio;
use crate::model::Precision;
use crate::model::calibration::{Calibration, softmax};
use crate::model::gradcam::gradcam_maps;
use crate::progress::Progress;
use crate::run::{RunDir, Which, best_epoch};
use crate::train::Monitor;
use chrono::{DateTime, Utc};

/// Writes `RUN/report/`: the training curves (from `metrics.jsonl`, left out
/// when the run has none), and, from one pass of checkpoint `which` over the
/// test split, the confusion matrix, `samples` test photos with their
/// predictions, the `samples` highest losses, Grad-CAM maps of as many
/// instructive photos (confident right, confident wrong, uncertain), and `index.html` with the metrics and the run's `config.json`.
/// Also writes `RUN/eval-test.json`. Returns the path of `index.html`.
pub fn write_run_report(
    run: &RunDir,
    which: Which,
    samples: usize,
    (device, precision): (&Device, Precision),
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let loaded = RunModel::load(run, which, device, precision)?;
    let (evaluation, predictions) = loaded.evaluate(Split::Test, BATCH_SIZE, progress)?;
    let metrics = &evaluation.metrics;
    let dir = run.report_dir();
    write_calibration_pictures(&dir, &evaluation, &predictions, loaded.judge.calibration())?;

    let mut settings = if run.config().is_file() {
        fsio::read_json(&run.config(), "run configuration")?
    } else {
        json!({})
    };
    // The rule that chose best/ (a config.json from before --monitor: accuracy).
    let monitor: Monitor = settings
        .get("monitor")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    let curves = dir.join(CURVES);
    let history = read_history(&run.metrics_jsonl())?;
    match &history {
        Some(history) => write_curves(&curves, history, monitor)?,
        // A picture left from an earlier report would show another run's history.
        None => match fs::remove_file(&curves) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(Error::io("cannot remove", &curves, e));
            }
            _ => {}
        },
    }
    write_confusion(&dir.join(CONFUSION), metrics)?;

    let n = predictions.len();
    let sample = spread(n, samples);
    let photos = decode_all(&predictions, &sample)?;
    let tile = |i: usize, image: RgbImage| {
        let mut tile = Tile::prediction(
            image,
            &metrics.classes,
            predictions.labels[i],
            &predictions.probabilities[i],
        );
        // Relative to the data folder: `2002.jpg` may be a Cat and a Dog.
        let path = &predictions.paths[i];
        let shown = path.strip_prefix(&loaded.manifest.root).unwrap_or(path);
        tile.caption.push(shown.to_string_lossy().into_owned());
        tile
    };
    let tiles: Vec<Tile> = sample
        .iter()
        .zip(&photos)
        .map(|(&i, photo)| tile(i, photo.clone()))
        .collect();
    let title = format!("Predictions on {} of {n} test photos", sample.len());
    write_grid(&dir.join(PREDICTIONS), &title, &tiles)?;

    let worst = top_losses(&predictions.labels, &predictions.probabilities, samples);
    let tiles: Vec<Tile> = worst
        .iter()
        .zip(decode_all(&predictions, &worst)?)
        .map(|(&i, photo)| tile(i, photo))
        .collect();
    let wrong = (0..n)
        .filter(|&i| predicted(&predictions.probabilities[i]) != predictions.labels[i])
        .count();
    let title = format!("Top losses: {wrong} of {n} test photos are wrong; worst first");
    write_grid(&dir.join(TOP_LOSSES), &title, &tiles)?;

    // Grad-CAM maps are aligned with the model's input, so they go over its centre crop.
    let preprocessing = &loaded.meta.preprocessing;
    let size = preprocessing.image_size as usize;
    let chosen = instructive(&predictions.labels, &predictions.probabilities, samples);
    let (sample, verdicts): (Vec<usize>, Vec<Verdict>) = chosen.into_iter().unzip();
    let photos = decode_all(&predictions, &sample)?;
    let mut tiles = Vec::with_capacity(sample.len());
    for (indices, photos) in sample.chunks(BATCH_SIZE).zip(photos.chunks(BATCH_SIZE)) {
        let mut batch = vec![0.0; photos.len() * preprocessing.tensor_len()];
        batch
            .par_chunks_mut(preprocessing.tensor_len())
            .zip(photos)
            .for_each(|(out, photo)| preprocessing.eval(photo, out));
        let classes: Vec<usize> = indices
            .iter()
            .map(|&i| predicted(&predictions.probabilities[i]))
            .collect();
        let maps = gradcam_maps(&loaded.model, batch, size, &classes, &loaded.device);
        for ((&i, photo), map) in indices.iter().zip(photos).zip(maps) {
            let crop = preprocessing.eval_crop(photo);
            tiles.push(tile(i, overlay(&crop, &map.values, map.height, map.width)));
        }
    }
    for (tile, verdict) in tiles.iter_mut().zip(verdicts) {
        tile.caption.push(verdict.describe().to_owned());
    }
    // Each tile's last line says which of the three it is.
    let title = "Grad-CAM of layer4: confident right, confident wrong, uncertain";
    write_grid(&dir.join(GRADCAM), title, &tiles)?;

    let history = history.unwrap_or_default();
    let epoch = match which {
        Which::Best => best_epoch(&history, monitor).map(|r| r.epoch),
        Which::Last => history.last().map(|r| r.epoch),
    };
    let checkpoint = run.checkpoint(which);
    // When the checkpoint was written (as `catdog serve` reports it), not when
    // this page was: the same run gives the same page.
    let trained = fs::metadata(checkpoint.join(crate::model::checkpoint::META_FILE))
        .and_then(|m| m.modified())
        .ok()
        .map(|t| {
            DateTime::<Utc>::from(t)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        });
    let name = run
        .root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let report = json!({
        "run": name,
        "checkpoint": format!("{which}/"),
        "epoch": epoch,
        "trained": trained,
        "split": Split::Test,
    });
    match &mut settings {
        Value::Object(fields) => {
            fields.insert("report".to_owned(), report);
        }
        other => *other = json!({ "config": other.clone(), "report": report }),
    }
    write_index(&dir, &settings, &evaluation)?;
    Ok(dir.join(INDEX))
}

/// `reliability.png` (raw, and calibrated where the model is) and `roc.png` of the second
/// class against the others, with the operating point of the most probable class.
fn write_calibration_pictures(
    dir: &Path,
    evaluation: &Evaluation,
    predictions: &Predictions,
    calibration: Option<&Calibration>,
) -> Result<()> {
    let labels = &predictions.labels;
    let before = reliability(labels, &predictions.probabilities);
    let calibrated: Option<Vec<Vec<f32>>> = calibration.map(|c| {
        predictions
            .logits
            .iter()
            .map(|z| softmax(z, c.temperature))
            .collect()
    });
    let after = calibrated.as_ref().map(|p| reliability(labels, p));
    let mut title = format!(
        "Reliability · ECE {:.3}",
        ece(labels, &predictions.probabilities)
    );
    if let Some(p) = &calibrated {
        title += &format!(" raw, {:.3} calibrated", ece(labels, p));
    }
    write_reliability(&dir.join(RELIABILITY), &title, &before, after.as_deref())?;

    let m = &evaluation.metrics;
    let positive = 1.min(m.classes.len() - 1);
    let scores: Vec<f32> = predictions
        .probabilities
        .iter()
        .map(|p| p[positive])
        .collect();
    let is_positive: Vec<bool> = labels.iter().map(|&l| l == positive).collect();
    // Where the most probable class puts the photos: recall of the positive class, and the
    // share of the others taken for it.
    let negatives: u64 = (0..m.classes.len())
        .filter(|&k| k != positive)
        .map(|k| m.confusion_matrix[k].iter().sum::<u64>())
        .sum();
    let false_positives: u64 = (0..m.classes.len())
        .filter(|&k| k != positive)
        .map(|k| m.confusion_matrix[k][positive])
        .sum();
    let operating = (negatives > 0).then(|| {
        (
            false_positives as f64 / negatives as f64,
            m.recall[positive],
        )
    });
    let auc = m.roc_auc.map_or("n/a".to_owned(), |a| format!("{a:.3}"));
    let title = format!("ROC · {} against the rest · AUC {auc}", m.classes[positive]);
    write_roc(&dir.join(ROC), &title, &scores, &is_positive, operating)
}

/// The epochs in `metrics.jsonl` (one [`EpochRecord`] per line), or `None`
/// when the file is absent or holds none.
fn read_history(path: &Path) -> Result<Option<Vec<EpochRecord>>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let mut history = Vec::new();
    for (number, line) in (1..).zip(text.lines()) {
        if line.trim().is_empty() {
            continue;
        }
        history.push(serde_json::from_str(line).map_err(|e| {
            Error::data(
                path,
                format!("line {number} is not an epoch record: {e}"),
                "it is written by `catdog train`; train again or remove the line",
            )
        })?);
    }
    Ok((!history.is_empty()).then_some(history))
}

/// `k` of the indices `0..n`, evenly spread (all of them when `k >= n`): the
/// test split is in manifest order, class by class, so every class shows up.
fn spread(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|j| j * n / k).collect()
}

/// The photos at `indices`, decoded in parallel as the model's loader does.
fn decode_all(predictions: &Predictions, indices: &[usize]) -> Result<Vec<RgbImage>> {
    indices
        .par_iter()
        .map(|&i| {
            let path = &predictions.paths[i];
            decode::decode_file(path, &Limits::default())
                .map(|d| d.image)
                .map_err(|r| {
                    Error::data(
                        path,
                        format!("cannot be loaded: {r}"),
                        "the file changed while the report was being made; run it again",
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_evenly_from_first_to_last_part() {
        assert_eq!(spread(10, 4), [0, 2, 5, 7]);
        assert_eq!(spread(3, 16), [0, 1, 2]);
        assert!(spread(5, 0).is_empty());
        assert!(spread(0, 4).is_empty());
    }

    #[test]
    fn history_is_read_line_by_line_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        assert_eq!(read_history(&path).unwrap(), None);
        let record = |epoch| EpochRecord {
            epoch,
            train_loss: 0.5,
            train_acc: 0.8,
            val_loss: 0.6,
            val_acc: 0.75,
            seconds: 10.0,
            lr: None,
        };
        let lines: Vec<String> = [record(1), record(2)]
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        fs::write(&path, lines.join("\n") + "\n\n").unwrap();
        assert_eq!(
            read_history(&path).unwrap(),
            Some(vec![record(1), record(2)])
        );
        fs::write(&path, "").unwrap();
        assert_eq!(read_history(&path).unwrap(), None);
        fs::write(&path, format!("{}\n{{\"epoch\": 2", lines[0])).unwrap();
        let err = read_history(&path).unwrap_err().to_string();
        assert!(
            err.contains("metrics.jsonl") && err.contains("line 2"),
            "{err}"
        );
    }
}
