//! `catdog evaluate`, `catdog predict` and `catdog report` on a small run
//! folder made by hand: real photos from ../shared when present (generated
//! ones otherwise), a manifest from the data stage, and a ResNet-18 saved as
//! the run's best checkpoint at a small image size, so that the tests stay fast.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::prelude::Device;
use catdog::data::{self, Limits, Manifest, Prepare, Ratios, Split};
use catdog::evaluate::{BATCH_SIZE, Evaluation, Predictions, RunModel};
use catdog::model::ResNet18;
use catdog::model::checkpoint::{self, CheckpointMeta};
use catdog::model::weights::load_into;
use catdog::preprocess::Preprocessing;
use catdog::progress::Quiet;
use catdog::report::{self, EpochRecord};
use catdog::run::{RunDir, Which};
use serde_json::Value;

/// Photos per class in the fixture's data.
const PER_CLASS: usize = 10;

struct Fixture {
    _tmp: tempfile::TempDir,
    run: RunDir,
    manifest: Manifest,
}

impl Fixture {
    fn root(&self) -> &Path {
        &self.run.root
    }

    fn count(&self, split: Split) -> usize {
        self.manifest.samples(split).len()
    }
}

/// A run folder: manifest.json, best/ (64-pixel inputs), metrics.jsonl, config.json.
/// The run's best checkpoint evaluated on its test split, through the library.
fn best_on_test(f: &Fixture) -> (Evaluation, Predictions) {
    evaluate_test(f).unwrap()
}

fn evaluate_test(f: &Fixture) -> catdog::Result<(Evaluation, Predictions)> {
    RunModel::load(&f.run, Which::Best, &Device::flex(), Default::default())?.evaluate(
        Split::Test,
        BATCH_SIZE,
        &Quiet,
    )
}

fn fixture(test: &str) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Real photos and torchvision's weight layout when present.
    let shared = common::shared_dir();
    match &shared {
        Some(shared) => {
            fs::create_dir_all(&data).unwrap();
            for class in ["cat", "dog"] {
                for i in 0..PER_CLASS {
                    let name = format!("{class}.{i}.jpg");
                    fs::copy(
                        shared.join("data/kaggle-sample").join(&name),
                        data.join(name),
                    )
                    .unwrap();
                }
            }
        }
        None => {
            println!("{test}: ../shared is absent, so the photos are generated ones");
            let set =
                catdog::data::synthetic::write_dataset(&tmp.path().join("demo"), PER_CLASS, 3)
                    .unwrap();
            fs::rename(set.data, &data).unwrap();
        }
    }
    let (manifest, _) = data::prepare(
        &Prepare {
            root: &data,
            layout: None,
            ratios: Ratios {
                train: 0.5,
                val: 0.2,
                test: 0.3,
            },
            seed: 1,
            limits: Limits::default(),
            exclude: None,
            keep_near_conflicts: false,
        },
        &Quiet,
    )
    .unwrap();
    let run = RunDir::new(tmp.path().join("run"));
    manifest.save(&run.manifest()).unwrap();

    let device = Device::flex();
    let mut model = ResNet18::new(2, &device);
    // Torchvision's layout with batch-norm statistics from real photos, when at hand.
    if let Some(shared) = shared {
        load_into(&mut model, &shared.join("golden/resnet18/resnet18.pth")).unwrap();
    }
    let model = model.with_head(2, 11, &device);
    let meta = CheckpointMeta::new(manifest.classes.clone(), Preprocessing::imagenet(64));
    checkpoint::save(&run.checkpoint(Which::Best), &model, &meta).unwrap();

    let history: Vec<String> = (1..=3)
        .map(|epoch| {
            let e = epoch as f64;
            let record = EpochRecord {
                epoch,
                train_loss: 0.7 / e,
                train_acc: 0.5 + 0.1 * e,
                val_loss: 0.75 / e,
                val_acc: 0.5 + 0.08 * e,
                seconds: 12.0,
                lr: None,
            };
            serde_json::to_string(&record).unwrap() + "\n"
        })
        .collect();
    fs::write(run.metrics_jsonl(), history.concat()).unwrap();
    let config = serde_json::json!({"epochs": 3, "optimizer": {"learning_rate": 0.001}});
    fs::write(run.config(), config.to_string()).unwrap();
    Fixture {
        _tmp: tmp,
        run,
        manifest,
    }
}

fn catdog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_catdog"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn evaluate_writes_the_metrics_of_the_split_and_prints_them() {
    let f = fixture("evaluate_writes_the_metrics_of_the_split_and_prints_them");
    let tests = f.count(Split::Test);
    assert!(
        tests >= 4 && f.count(Split::Val) >= 2,
        "{:?}",
        f.manifest.counts
    );

    let out = catdog(&["evaluate", arg(f.root())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let table = stdout.lines().find(|l| l.contains("accuracy")).unwrap();
    assert!(
        table.starts_with(&format!("{tests} images   accuracy ")) && table.contains("loss"),
        "{stdout}"
    );
    assert!(stdout.contains("confusion matrix"), "{stdout}");

    let file = read_json(&f.run.eval(Which::Best, Split::Test));
    let keys: BTreeSet<&str> = file
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let expected = [
        "accuracy",
        "classes",
        "confusion_matrix",
        "decision_names",
        "decision_rule",
        "decisions",
        "f1",
        "images",
        "loss",
        "precision",
        "recall",
        "roc_auc",
    ];
    assert_eq!(keys, BTreeSet::from(expected));
    assert_eq!(file["images"], tests);
    assert_eq!(file["classes"], serde_json::json!(f.manifest.classes));
    let counted: u64 = file["confusion_matrix"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, tests);

    // The library gives the same numbers, photo by photo in manifest order.
    let (metrics, predictions) = best_on_test(&f);
    assert_eq!(serde_json::to_value(&metrics).unwrap(), file);
    let samples = f.manifest.samples(Split::Test);
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let labels: Vec<usize> = samples.iter().map(|s| s.label).collect();
    assert_eq!((predictions.paths, predictions.labels), (paths, labels));
    for row in &predictions.probabilities {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }

    let out = catdog(&["evaluate", arg(f.root()), "--split", "val", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Evaluation = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed.metrics.images, f.count(Split::Val));
    assert_eq!(
        serde_json::to_value(&printed).unwrap(),
        read_json(&f.run.eval(Which::Best, Split::Val))
    );
}

#[test]
fn evaluating_last_keeps_the_figures_of_best() {
    let f = fixture("evaluating_last_keeps_the_figures_of_best");
    let out = catdog(&["evaluate", arg(f.root())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let best_file = f.run.eval(Which::Best, Split::Test);
    let best_bytes = fs::read(&best_file).unwrap();

    // last/: another model, so that its figures differ from best's.
    let device = Device::flex();
    device.seed(5);
    let other = ResNet18::new(2, &device).with_head(2, 99, &device);
    let meta = CheckpointMeta::new(f.manifest.classes.clone(), Preprocessing::imagenet(64));
    checkpoint::save(&f.run.checkpoint(Which::Last), &other, &meta).unwrap();
    let out = catdog(&["evaluate", arg(f.root()), "--checkpoint", "last"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last_file = f.run.eval(Which::Last, Split::Test);
    assert!(
        text(&out.stdout).contains(&format!("metrics: {}", last_file.display())),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        fs::read(&best_file).unwrap(),
        best_bytes,
        "best's figures changed"
    );
    assert_ne!(read_json(&last_file), read_json(&best_file));
}

#[test]
fn an_empty_split_or_a_folder_that_is_no_run_is_refused() {
    let f = fixture("an_empty_split_or_a_folder_that_is_no_run_is_refused");
    let mut manifest = f.manifest.clone();
    for file in &mut manifest.files {
        if file.split == Split::Test {
            file.split = Split::Train;
        }
    }
    manifest.save(&f.run.manifest()).unwrap();
    let err = evaluate_test(&f).unwrap_err().to_string();
    assert!(
        err.contains("test split") && err.contains(arg(&f.run.manifest())),
        "{err}"
    );
    let out = catdog(&["evaluate", arg(f.root())]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("the test split has no photos"));
    assert!(!f.run.eval(Which::Best, Split::Test).exists());

    let out = catdog(&["evaluate", arg(&f.run.checkpoint(Which::Best))]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not a training run"));
}

#[test]
fn predict_classifies_each_photo_and_reports_unreadable_files() {
    let f = fixture("predict_classifies_each_photo_and_reports_unreadable_files");
    let photos = f.root().join("photos");
    let test = f.manifest.samples(Split::Test);
    fs::create_dir_all(photos.join("more")).unwrap();
    fs::copy(&test[0].path, photos.join("a.jpg")).unwrap();
    fs::copy(&test[1].path, photos.join("more/c.jpg")).unwrap();
    fs::copy(&test[1].path, photos.join(".hidden.jpg")).unwrap();
    fs::write(photos.join("b.jpg"), b"<html>not a photo</html>").unwrap();
    let missing = f.root().join("missing.jpg");

    let out = catdog(&[
        "predict",
        arg(f.root()),
        arg(&photos),
        arg(&missing),
        "--json",
    ]);
    assert!(
        !out.status.success(),
        "a file failed, so the exit code says so"
    );
    assert!(
        text(&out.stderr).contains("2 of 4 files"),
        "{}",
        text(&out.stderr)
    );
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let paths: Vec<PathBuf> = lines
        .iter()
        .map(|l| l["path"].as_str().unwrap().into())
        .collect();
    let expected = [
        photos.join("a.jpg"),
        photos.join("b.jpg"),
        photos.join("more/c.jpg"),
        missing,
    ];
    assert_eq!(paths, expected);
    assert!(
        lines[1]["error"].as_str().unwrap().contains("not an image"),
        "{:?}",
        lines[1]
    );
    let missing_error = lines[3]["error"].as_str().unwrap();
    assert!(
        missing_error.contains("does not exist") && !missing_error.contains("gone"),
        "{missing_error}"
    );

    // The probabilities are those that evaluation computes for the same photos.
    let (_, predictions) = best_on_test(&f);
    for (line, i) in [(&lines[0], 0), (&lines[2], 1)] {
        let by_class = line["probabilities"].as_object().unwrap();
        let names: Vec<&str> = by_class.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, f.manifest.classes);
        let p: Vec<f64> = by_class.values().map(|v| v.as_f64().unwrap()).collect();
        for (got, want) in p.iter().zip(&predictions.probabilities[i]) {
            assert!(
                (got - f64::from(*want)).abs() < 1e-5,
                "{line} vs {:?}",
                predictions.probabilities[i]
            );
        }
        let best = usize::from(p[1] > p[0]);
        assert_eq!(line["label"], names[best]);
        assert_eq!(line["probability"].as_f64().unwrap(), p[best]);
    }

    // Text output, from a checkpoint folder: one line per photo, errors on stderr.
    let best = f.run.checkpoint(Which::Best);
    let bad = photos.join("b.jpg");
    let out = catdog(&["predict", arg(&best), arg(&photos.join("a.jpg")), arg(&bad)]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let first_class = format!("({} ", f.manifest.classes[0]);
    assert!(
        stdout.contains("a.jpg: ") && stdout.contains(&first_class),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains(&format!("error: {}: not an image", bad.display())));

    let out = catdog(&["predict", arg(f.root()), arg(&photos.join("a.jpg"))]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A model path that does not exist says so, not that it is the wrong kind of folder.
    let nowhere = f.root().join("no-such-run");
    let out = catdog(&["predict", arg(&nowhere), arg(&photos.join("a.jpg"))]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}: does not exist", nowhere.display()))
            && !stderr.contains("neither"),
        "{stderr}"
    );
}

#[test]
fn report_writes_every_picture_and_the_page_that_shows_them() {
    let f = fixture("report_writes_every_picture_and_the_page_that_shows_them");
    let out = catdog(&["report", arg(f.root()), "--samples", "4"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = f.run.report_dir();
    let index = dir.join(report::INDEX);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("accuracy") && stdout.contains(arg(&index)),
        "{stdout}"
    );
    for name in common::REPORT_PICTURES {
        let path = dir.join(name);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            image::guess_format(&bytes).unwrap(),
            image::ImageFormat::Png
        );
        let picture = image::load_from_memory(&bytes).unwrap();
        assert!(
            picture.width() >= 400 && picture.height() >= 300,
            "{name} is {}x{}",
            picture.width(),
            picture.height()
        );
    }
    let page = fs::read_to_string(&index).unwrap();
    for name in common::REPORT_PICTURES {
        assert!(
            page.contains(&format!("<img src=\"{name}\"")),
            "{name} is not shown"
        );
    }
    assert!(
        page.contains("optimizer.learning_rate"),
        "the run's settings are shown"
    );
    let metrics = read_json(&f.run.eval(Which::Best, Split::Test));
    assert_eq!(metrics["images"], f.count(Split::Test));
    let accuracy = format!(
        "<b>{:.2}%</b>",
        100.0 * metrics["accuracy"].as_f64().unwrap()
    );
    assert!(
        page.contains(&accuracy),
        "the page shows the test accuracy {accuracy}"
    );
    // Named after the run, with the checkpoint's epoch (the fixture's validation
    // accuracy rises, so best/ is epoch 3) and the split the figures are on.
    for part in [
        "<title>catdog report: run</title>",
        "model <code>best/</code>, from epoch 3",
        "<h2>Metrics on the test split</h2>",
    ] {
        assert!(page.contains(part), "{part} is missing");
    }

    // Without a training history there are no curves, not the old picture.
    fs::remove_file(f.run.metrics_jsonl()).unwrap();
    let out = catdog(&["report", arg(f.root()), "--samples", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.join(report::CURVES).exists());
    let page = fs::read_to_string(&index).unwrap();
    assert!(!page.contains(report::CURVES) && page.contains(report::GRADCAM));
}

/// `evaluate --tta` against its definition: each test photo's eval crop mirrored (burn's
/// `flip` along the width) through burn's model, its probabilities averaged with the plain
/// ones; the plain figures stay what they were. (Mirroring the photo before the crop differs
/// by a pixel's shift where the resized width is odd: 0.2% of this loss.)
#[test]
fn tta_averages_each_photo_with_its_mirror_image() {
    let f = fixture("tta_averages_each_photo_with_its_mirror_image");
    let (plain, predictions) = best_on_test(&f);
    let mut loaded =
        RunModel::load(&f.run, Which::Best, &Device::flex(), Default::default()).unwrap();
    loaded.tta = true;
    let (with_tta, _) = loaded.evaluate(Split::Test, BATCH_SIZE, &Quiet).unwrap();
    assert_eq!(with_tta.metrics, plain.metrics);
    let tta = with_tta.tta.expect("--tta scores");

    let pre = &loaded.meta.preprocessing;
    let size = pre.image_size as usize;
    let mut loss = 0.0;
    for ((path, p), &label) in predictions
        .paths
        .iter()
        .zip(&predictions.probabilities)
        .zip(&predictions.labels)
    {
        let photo = image::open(path).unwrap().to_rgb8();
        let mut pixels = vec![0.0f32; pre.tensor_len()];
        pre.eval(&photo, &mut pixels);
        let input = burn::prelude::Tensor::<4>::from_data(
            burn::prelude::TensorData::new(pixels, [1, 3, size, size]),
            &loaded.device,
        )
        .flip([3]);
        let z: Vec<f32> = loaded
            .model
            .forward(input)
            .into_data()
            .try_into_vec()
            .unwrap();
        let e: Vec<f64> = z.iter().map(|&v| f64::from(v).exp()).collect();
        let mirrored = e[label] / e.iter().sum::<f64>();
        loss -= ((f64::from(p[label]) + mirrored) / 2.0).ln();
    }
    loss /= predictions.len() as f64;
    assert!(
        (tta.loss - loss).abs() < 1e-3,
        "TTA loss {} vs by hand {loss}",
        tta.loss
    );

    let out = catdog(&["evaluate", arg(f.root()), "--tta"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("test-time augmentation (eval crop and its mirror image")
            && stdout.contains("(plain "),
        "{stdout}"
    );
}
