//! The report's files: every picture is written, decodes as a PNG of a
//! sensible size, and `index.html` shows each one.
//!
//! To look at the pictures, keep them in a folder of your choice:
//! `CATDOG_REPORT_OUT=/tmp/report cargo test --test report_files`.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use catdog::evaluate::calibration::reliability;
use catdog::evaluate::{Evaluation, Metrics, Predictions, top_losses};
use catdog::model::calibration::{DecisionRule, Judge};
use catdog::model::gradcam::gradcam_map;
use catdog::report::{self, EpochRecord, Tile, overlay};
use catdog::train::Monitor;
use image::{Rgb, RgbImage};

/// The folder to write into: `$CATDOG_REPORT_OUT/name` when set, kept after
/// the test; a temporary folder otherwise.
fn out_dir(name: &str) -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("CATDOG_REPORT_OUT") {
        Some(root) => {
            let dir = Path::new(&root).join(name);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            (dir, None)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            (tmp.path().to_owned(), Some(tmp))
        }
    }
}

/// 16 photos, 8 cats then 8 dogs: real ones from ../shared when present,
/// generated gradients otherwise.
fn photos() -> Vec<RgbImage> {
    let sample = common::shared_dir().map(|dir| dir.join("data/kaggle-sample"));
    let Some(dir) = sample.filter(|dir| dir.is_dir()) else {
        println!("../shared is absent: the grids use generated images instead of photos");
        return (0..16u32)
            .map(|i| {
                RgbImage::from_fn(320, 240, |x, y| {
                    Rgb([(x * 255 / 320) as u8, (y * 255 / 240) as u8, (i * 16) as u8])
                })
            })
            .collect();
    };
    ["cat", "dog"]
        .iter()
        .flat_map(|class| (0..8).map(move |i| format!("{class}.{i}.jpg")))
        .map(|name| dir.join(name))
        .map(|path| {
            image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgb8()
        })
        .collect()
}

fn classes() -> Vec<String> {
    vec!["cat".to_owned(), "dog".to_owned()]
}

/// Labels and [p(cat), p(dog)] for the 16 photos: mostly right, with a few
/// confident mistakes.
fn predictions() -> (Vec<usize>, Vec<Vec<f32>>) {
    let p_dog = [
        0.02, 0.10, 0.05, 0.93, 0.30, 0.01, 0.55, 0.20, // cats
        0.97, 0.88, 0.12, 0.99, 0.70, 0.45, 0.91, 0.80, // dogs
    ];
    let labels = (0..16).map(|i| usize::from(i >= 8)).collect();
    (labels, p_dog.iter().map(|&d| vec![1.0 - d, d]).collect())
}

/// The evaluation of these predictions by a model without calibration.
fn evaluation(labels: &[usize], probabilities: &[Vec<f32>], classes: &[String]) -> Evaluation {
    let judge = Judge::new(DecisionRule::Argmax, None);
    let logits: Vec<Vec<f32>> = probabilities
        .iter()
        .map(|p| p.iter().map(|x| x.ln()).collect())
        .collect();
    let predictions = Predictions {
        labels: labels.to_vec(),
        probabilities: probabilities.to_vec(),
        judgements: logits.iter().map(|z| judge.judge(z, &[])).collect(),
        logits,
        paths: Vec::new(),
    };
    Evaluation::compute(&predictions, &judge, classes)
}

fn history() -> Vec<EpochRecord> {
    (1..=8)
        .map(|epoch| {
            let e = epoch as f64;
            EpochRecord {
                epoch,
                train_loss: 0.65 / e.sqrt(),
                train_acc: 1.0 - 0.3 / e.sqrt(),
                val_loss: 0.45 / e.sqrt() + 0.01 * e,
                val_acc: 0.97 - 0.2 / e,
                seconds: 97.5,
                lr: Some(1e-3 * (0.5 + 0.5 * (std::f64::consts::PI * e / 8.0).cos())),
            }
        })
        .collect()
}

/// A Grad-CAM overlay from made-up activations: one bump, somewhere different
/// for each photo, on a 7 x 7 map like ResNet-18's last block.
fn gradcam_overlay(photo: &RgbImage, i: usize) -> RgbImage {
    let (c, h, w) = (2, 7, 7);
    let centre = ((i * 3 % 7) as f32, (i * 5 % 7) as f32);
    let mut activations = Vec::new();
    for channel in 0..c {
        for y in 0..h {
            for x in 0..w {
                let d2 = (y as f32 - centre.0).powi(2) + (x as f32 - centre.1).powi(2);
                activations.push(if channel == 0 { (-d2 / 3.0).exp() } else { 0.2 });
            }
        }
    }
    let map = gradcam_map(&activations, &vec![1.0; c * h * w], c, h, w);
    overlay(photo, &map, h, w)
}

/// Width and height of the PNG at `path`, which must decode.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Png,
        "{}",
        path.display()
    );
    let picture = image::load_from_memory(&bytes).unwrap();
    (picture.width(), picture.height())
}

fn settings() -> serde_json::Value {
    serde_json::json!({
        "data": "photos/", "epochs": 8, "batch_size": 32, "seed": 42,
        "optimizer": {"name": "adam", "learning_rate": 0.001}, "note": "<script>alert(1)</script>"
    })
}

#[test]
fn every_picture_is_a_sensible_png_and_the_page_shows_it() {
    let (dir, _keep) = out_dir("full");
    let (labels, probabilities) = predictions();
    let classes = classes();
    let metrics = Metrics::compute(&labels, &probabilities, &classes);
    let photos = photos();
    let tile =
        |i: usize, image: RgbImage| Tile::prediction(image, &classes, labels[i], &probabilities[i]);

    report::write_curves(&dir.join(report::CURVES), &history(), Monitor::ValAcc).unwrap();
    report::write_confusion(&dir.join(report::CONFUSION), &metrics).unwrap();
    let all: Vec<Tile> = photos
        .iter()
        .enumerate()
        .map(|(i, p)| tile(i, p.clone()))
        .collect();
    report::write_grid(
        &dir.join(report::PREDICTIONS),
        "Predictions on test photos",
        &all,
    )
    .unwrap();
    let worst: Vec<Tile> = top_losses(&labels, &probabilities, 8)
        .into_iter()
        .map(|i| tile(i, photos[i].clone()))
        .collect();
    assert!(!worst[0].correct, "the top loss is a mistake");
    report::write_grid(
        &dir.join(report::TOP_LOSSES),
        "Top losses: the most confidently wrong",
        &worst,
    )
    .unwrap();
    let cams: Vec<Tile> = (0..8)
        .map(|i| tile(i * 2, gradcam_overlay(&photos[i * 2], i)))
        .collect();
    report::write_grid(
        &dir.join(report::GRADCAM),
        "Grad-CAM: where the model looked",
        &cams,
    )
    .unwrap();
    let bins = reliability(&labels, &probabilities);
    report::write_reliability(
        &dir.join(report::RELIABILITY),
        "Reliability",
        &bins,
        Some(bins.as_slice()),
    )
    .unwrap();
    let scores: Vec<f32> = probabilities.iter().map(|p| p[1]).collect();
    let dogs: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
    report::write_roc(
        &dir.join(report::ROC),
        "ROC",
        &scores,
        &dogs,
        Some((0.25, 0.75)),
    )
    .unwrap();
    report::write_index(
        &dir,
        &settings(),
        &evaluation(&labels, &probabilities, &classes),
    )
    .unwrap();

    for name in common::REPORT_PICTURES {
        let (width, height) = png_size(&dir.join(name));
        assert!(
            width >= 400 && height >= 300,
            "{name} is {width} x {height}"
        );
    }
    let page = fs::read_to_string(dir.join(report::INDEX)).unwrap();
    for name in common::REPORT_PICTURES {
        assert!(
            page.contains(&format!("<img src=\"{name}\"")),
            "index.html does not show {name}"
        );
    }
    assert!(
        page.contains("<td>75.00%</td>") || page.contains("<b>75.00%</b>"),
        "accuracy 12/16 is shown"
    );
    assert!(
        page.contains("optimizer.learning_rate") && page.contains("&lt;script&gt;"),
        "settings are shown, escaped"
    );
    assert!(
        !page.contains("http"),
        "the page needs nothing from the network"
    );
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn page_shows_only_the_pictures_beside_it() {
    let (dir, _keep) = out_dir("curves-only");
    let (labels, probabilities) = predictions();
    report::write_curves(&dir.join(report::CURVES), &history(), Monitor::ValAcc).unwrap();
    report::write_index(
        &dir,
        &settings(),
        &evaluation(&labels, &probabilities, &classes()),
    )
    .unwrap();
    let page = fs::read_to_string(dir.join(report::INDEX)).unwrap();
    assert!(page.contains("<img src=\"curves.png\""));
    assert_eq!(page.matches("<img").count(), 1, "{page}");
}

#[test]
fn edge_cases_still_draw() {
    let (dir, _keep) = out_dir("edge-cases");
    // One epoch; many epochs near 100 %; a diverged run; an empty grid; one photo; three classes, one with a long
    // name, one never predicted.
    report::write_curves(&dir.join("one-epoch.png"), &history()[..1], Monitor::ValAcc).unwrap();
    let long_run: Vec<EpochRecord> = (1..=40)
        .map(|epoch| {
            let e = epoch as f64;
            let (train_acc, val_acc) = (1.0 - 0.05 / e, 0.99 - 0.03 / e);
            EpochRecord {
                epoch,
                train_loss: 0.2 / e,
                train_acc,
                val_loss: 0.1 / e.sqrt(),
                val_acc,
                seconds: 400.0,
                lr: None,
            }
        })
        .collect();
    report::write_curves(&dir.join("long-run.png"), &long_run, Monitor::ValAcc).unwrap();
    let mut diverged = history();
    diverged[5].train_loss = f64::INFINITY;
    (diverged[6].train_loss, diverged[6].val_loss) = (f64::NAN, f64::NAN);
    report::write_curves(&dir.join("diverged.png"), &diverged, Monitor::ValAcc).unwrap();
    report::write_grid(
        &dir.join("empty.png"),
        "Top losses: the most confidently wrong",
        &[],
    )
    .unwrap();
    let photo = RgbImage::from_pixel(90, 300, Rgb([200, 180, 150]));
    let long = "a class with a very long name indeed".to_owned();
    let classes = vec!["cat".to_owned(), "dog".to_owned(), long];
    let one = Tile::prediction(photo, &classes, 2, &[0.1, 0.2, 0.7]);
    report::write_grid(&dir.join("one.png"), "One photo", &[one]).unwrap();
    let probabilities = vec![
        vec![0.8, 0.1, 0.1],
        vec![0.3, 0.6, 0.1],
        vec![0.5, 0.4, 0.1],
        vec![0.2, 0.7, 0.1],
    ];
    let metrics = Metrics::compute(&[0, 1, 2, 2], &probabilities, &classes);
    report::write_confusion(&dir.join("three-classes.png"), &metrics).unwrap();
    for name in [
        "one-epoch.png",
        "long-run.png",
        "diverged.png",
        "empty.png",
        "one.png",
        "three-classes.png",
    ] {
        let (width, height) = png_size(&dir.join(name));
        assert!(
            width >= 400 && height >= 100,
            "{name} is {width} x {height}"
        );
    }
}
