//! Training end to end on small generated photos: it learns, it is
//! reproducible, frozen mode caches features, and a stopped run resumes to
//! exactly the numbers of an uninterrupted one (killed runs and full disks:
//! tests/interruptions.rs).

use crate::common;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use crate::common::{demo_data, history, random_weights};
use catdog::data::{Ratios, Split};
use catdog::preprocess::Preprocessing;
use catdog::run::RunDir;
use catdog::train::{self, DataSource, Event, Mode, Start, TrainConfig};

fn config(data: &Path, mode: Mode, weights: &str, epochs: usize) -> TrainConfig {
    TrainConfig {
        source: folder(data, Ratios::default()),
        weights: weights.parse().unwrap(),
        mode,
        epochs,
        batch_size: 8,
        preprocessing: Preprocessing::imagenet(32),
        ..TrainConfig::default()
    }
}

fn folder(data: &Path, ratios: Ratios) -> DataSource {
    DataSource::Folder {
        root: data.to_owned(),
        layout: None,
        ratios,
    }
}

/// What the tests look at in training's events.
#[derive(Debug, PartialEq)]
enum Seen {
    Resumed {
        epochs_done: usize,
        batches_done: usize,
    },
    Features {
        split: Split,
        hits: usize,
        computed: usize,
    },
    Saved {
        epoch: usize,
    },
    Stopped {
        epoch: usize,
        batches_done: usize,
    },
}

/// Trains, collecting the events; panics with them on failure.
fn train(run: &Path, start: Start, stop: bool) -> (train::Outcome, Vec<Seen>) {
    let seen = Mutex::new(Vec::new());
    let on = |event: Event| {
        let event = match event {
            Event::Resumed {
                epochs_done,
                batches_done,
            } => Seen::Resumed {
                epochs_done,
                batches_done,
            },
            Event::Features {
                split,
                hits,
                computed,
            } => Seen::Features {
                split,
                hits,
                computed,
            },
            Event::Saved { record, .. } => Seen::Saved {
                epoch: record.epoch,
            },
            Event::Stopped {
                epoch,
                batches_done,
            } => Seen::Stopped {
                epoch,
                batches_done,
            },
            _ => return,
        };
        seen.lock().unwrap().push(event);
    };
    let outcome = train::train(&RunDir::new(run), start, &AtomicBool::new(stop), &on);
    let seen = seen.into_inner().unwrap();
    (outcome.unwrap_or_else(|e| panic!("{e}\n{seen:?}")), seen)
}

#[test]
fn learns_the_classes_and_repeats_itself_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 30);
    let a = dir.path().join("a");
    let (outcome, _) = train(
        &a,
        Start::New(Box::new(config(&data, Mode::Finetune, "none", 4))),
        false,
    );
    assert_eq!(outcome.epochs_done, 4);
    let h = history(&a);
    assert!(h[3][0] < h[0][0], "training loss did not fall: {h:?}");
    assert!(
        outcome.best.unwrap().val_acc >= 0.75,
        "validation accuracy near chance: {h:?}"
    );
    let run = RunDir::new(&a);
    for path in [
        run.config(),
        run.manifest(),
        run.metrics_csv(),
        run.checkpoint(catdog::run::Which::Best)
            .join("model.safetensors"),
    ] {
        assert!(path.is_file(), "{} missing", path.display());
    }
    let csv = std::fs::read_to_string(run.metrics_csv()).unwrap();
    assert!(
        csv.starts_with("epoch,train_loss,train_acc,val_loss,val_acc,seconds,lr\n")
            && csv.lines().count() == 5,
        "{csv}"
    );

    let b = dir.path().join("b");
    train(
        &b,
        Start::New(Box::new(config(&data, Mode::Finetune, "none", 4))),
        false,
    );
    assert_eq!(history(&a), history(&b), "same seed, different numbers");
    // The same weights make the same file, so its SHA-256 (serve's weights_sha256) names them.
    for which in [catdog::run::Which::Best, catdog::run::Which::Last] {
        let file = |run: &Path| {
            let path = RunDir::new(run).checkpoint(which).join("model.safetensors");
            catdog::fsio::sha256_file(&path).unwrap()
        };
        assert_eq!(file(&a), file(&b), "{which:?}/model.safetensors differs");
    }
}

#[test]
fn stop_mid_epoch_then_resume_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 20);
    let whole = dir.path().join("whole");
    train(
        &whole,
        Start::New(Box::new(config(&data, Mode::Finetune, "none", 2))),
        false,
    );
    // A stop requested before the start takes effect after the first batch.
    let cut = dir.path().join("cut");
    let (stopped, seen) = train(
        &cut,
        Start::New(Box::new(config(&data, Mode::Finetune, "none", 2))),
        true,
    );
    assert!(stopped.stopped && stopped.epochs_done == 0);
    assert_eq!(
        seen,
        [Seen::Stopped {
            epoch: 1,
            batches_done: 1
        }]
    );
    let (resumed, seen) = train(&cut, Start::Resume, false);
    assert_eq!(
        seen,
        [
            Seen::Resumed {
                epochs_done: 0,
                batches_done: 1
            },
            Seen::Saved { epoch: 1 },
            Seen::Saved { epoch: 2 }
        ]
    );
    assert_eq!(resumed.epochs_done, 2);
    assert_eq!(history(&whole), history(&cut));
}

#[test]
fn frozen_mode_computes_features_once_then_reads_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 12);
    let weights = random_weights(dir.path());
    let mut c = config(&data, Mode::Frozen, weights.to_str().unwrap(), 3);
    c.cache_dir = Some(dir.path().join("cache"));
    let (_, first) = train(
        &dir.path().join("r1"),
        Start::New(Box::new(c.clone())),
        false,
    );
    let (_, second) = train(&dir.path().join("r2"), Start::New(Box::new(c)), false);
    // (split, hits, computed) of each extraction.
    let features = |seen: &[Seen]| -> Vec<(Split, usize, usize)> {
        seen.iter()
            .filter_map(|s| match *s {
                Seen::Features {
                    split,
                    hits,
                    computed,
                } => Some((split, hits, computed)),
                _ => None,
            })
            .collect()
    };
    let (first, second) = (features(&first), features(&second));
    // Train and val once each: computed the first time, read from the cache the second.
    assert_eq!(
        first.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
        [(Split::Train, 0), (Split::Val, 0)],
        "{first:?}"
    );
    assert!(first.iter().all(|f| f.2 > 0), "{first:?}");
    assert_eq!(
        second,
        first.iter().map(|f| (f.0, f.2, 0)).collect::<Vec<_>>()
    );
    assert_eq!(
        history(&dir.path().join("r1")),
        history(&dir.path().join("r2"))
    );
}

#[test]
fn bad_runs_and_data_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 6);
    let fail = |run: &Path, start: Start| {
        train::train(&RunDir::new(run), start, &AtomicBool::new(false), &|_| {})
            .unwrap_err()
            .to_string()
    };
    let err = fail(dir.path(), Start::Resume);
    assert!(err.contains("not a training run"), "{err}");

    let mut empty_val = config(&data, Mode::Finetune, "none", 1);
    empty_val.source = folder(&data, "1,0,0".parse().unwrap());
    let err = fail(&dir.path().join("e"), Start::New(Box::new(empty_val)));
    assert!(err.contains("val split is empty"), "{err}");

    let run = dir.path().join("r");
    train(
        &run,
        Start::New(Box::new(config(&data, Mode::Finetune, "none", 1))),
        false,
    );
    let err = fail(
        &run,
        Start::New(Box::new(config(&data, Mode::Finetune, "none", 1))),
    );
    assert!(
        err.contains("already holds a training run") && err.contains("--resume"),
        "{err}"
    );
    std::fs::remove_file(data.join("Cat/0.jpg")).unwrap();
    let mut from_manifest = config(&data, Mode::Finetune, "none", 1);
    from_manifest.source = DataSource::Manifest(RunDir::new(&run).manifest());
    let err = fail(&dir.path().join("m"), Start::New(Box::new(from_manifest)));
    assert!(
        err.contains("Cat/0.jpg") && err.contains("missing"),
        "{err}"
    );
}

/// `catdog train` on `data` into `run`: frozen head on a random backbone, 32 px, batch 8.
fn cli_train(data: &Path, run: &Path, epochs: &str) -> (bool, String, String) {
    common::run_catdog(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--weights",
        "none",
        "--mode",
        "frozen",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        epochs,
    ])
}

fn config_json(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(RunDir::new(run).config()).unwrap()).unwrap()
}

#[test]
fn resume_with_more_epochs_extends_a_finished_run_and_other_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 12);
    let straight = dir.path().join("straight");
    let (ok, _, stderr) = cli_train(&data, &straight, "3");
    assert!(ok, "{stderr}");
    let run = dir.path().join("run");
    let (ok, _, stderr) = cli_train(&data, &run, "2");
    assert!(ok, "{stderr}");

    let resume = |extra: &[&str]| {
        let mut args = vec!["train", "--resume", run.to_str().unwrap()];
        args.extend(extra);
        common::run_catdog(&args)
    };
    // A flag the run would not use is refused, not ignored.
    let (ok, _, stderr) = resume(&["--lr", "0.5"]);
    assert!(!ok && stderr.contains("--lr"), "{stderr}");
    let (ok, _, stderr) = resume(&["--epochs", "1"]);
    assert!(
        !ok && stderr.contains("--epochs") && stderr.contains("2 epoch(s)"),
        "{stderr}"
    );
    assert_eq!(history(&run).len(), 2);

    let (ok, stdout, stderr) = resume(&["--epochs", "3"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(config_json(&run)["epochs"], 3);
    // Extending is training on: the numbers of a run that asked for 3 epochs from the start.
    assert_eq!(history(&run), history(&straight));
}

/// A cosine or one-cycle run's rates follow from its total, so extending it is refused rather
/// than silently changing the schedule of the epochs already trained.
#[test]
fn a_scheduled_run_refuses_more_epochs_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 6);
    let run = dir.path().join("run");
    let mut args = vec!["train", "--data", data.to_str().unwrap(), "--out"];
    args.extend([
        run.to_str().unwrap(),
        "--weights",
        "none",
        "--mode",
        "frozen",
    ]);
    args.extend(["--image-size", "32", "--batch-size", "8", "--epochs", "1"]);
    args.extend(["--schedule", "cosine"]);
    let (ok, _, stderr) = common::run_catdog(&args);
    assert!(ok, "{stderr}");
    let before = history(&run);
    let (ok, _, stderr) =
        common::run_catdog(&["train", "--resume", run.to_str().unwrap(), "--epochs", "2"]);
    assert!(
        !ok && stderr.contains("--epochs") && stderr.contains("--schedule cosine"),
        "{stderr}"
    );
    assert_eq!(config_json(&run)["epochs"], 1);
    assert_eq!(history(&run), before);
}

#[test]
fn a_run_from_a_manifest_records_the_data_it_used() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 6);
    let first = dir.path().join("first");
    let (ok, _, stderr) = cli_train(&data, &first, "1");
    assert!(ok, "{stderr}");
    assert_eq!(config_json(&first)["layout"], "folders");
    let manifest = RunDir::new(&first).manifest();

    // --data beside --manifest would be ignored: refused.
    let elsewhere = dir.path().join("elsewhere");
    let (ok, _, stderr) = common::run_catdog(&[
        "train",
        "--manifest",
        manifest.to_str().unwrap(),
        "--data",
        elsewhere.to_str().unwrap(),
        "--out",
        dir.path().join("both").to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("--data") && stderr.contains("--manifest"),
        "{stderr}"
    );

    // The library records the manifest alone: its data folder and split are the manifest's.
    let mut c = config(&elsewhere, Mode::Frozen, "none", 1);
    c.source = DataSource::Manifest(manifest.clone());
    let run = dir.path().join("run");
    train(&run, Start::New(Box::new(c)), false);
    let recorded = config_json(&run);
    assert_eq!(recorded["manifest"], serde_json::json!(manifest));
    assert!(recorded.get("data").is_none(), "{recorded}");
    assert!(recorded.get("ratios").is_none(), "{recorded}");
}

#[test]
fn a_bad_weights_file_is_refused_before_the_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 6);
    let weights = dir.path().join("resnet18.pth");
    std::fs::write(&weights, b"not a weights file").unwrap();
    let run = dir.path().join("run");
    let (ok, stdout, stderr) = common::run_catdog(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains(weights.to_str().unwrap()),
        "{stderr}"
    );
    // The clean summary would come from decoding every photo first.
    assert!(!stdout.contains("usable"), "{stdout}");
    assert!(!RunDir::new(&run).manifest().exists());
}

#[test]
fn a_negative_learning_rate_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = common::run_catdog(&[
        "train",
        "--data",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().join("run").to_str().unwrap(),
        "--lr",
        "-1",
    ]);
    // Not "unexpected argument '-1'": the value is read, then refused.
    assert!(
        !ok && stderr.contains("invalid --lr: -1 is not a positive number"),
        "{stderr}"
    );
}

/// On real photos. Without ImageNet weights (they cannot be downloaded here)
/// validation stays near chance, so this shows what can be shown: fine-tuning
/// from torchvision-format weights fits the training photos.
#[test]
#[ignore = "needs ../shared"]
fn fine_tuning_fits_real_photos() {
    let shared = common::shared();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("photos");
    std::fs::create_dir_all(&data).unwrap();
    for class in ["cat", "dog"] {
        for i in 0..60 {
            let name = format!("{class}.{i}.jpg");
            std::fs::copy(
                shared.join("data/kaggle-sample").join(&name),
                data.join(&name),
            )
            .unwrap();
        }
    }
    let weights = shared.join("golden/resnet18/resnet18.pth");
    let mut c = config(&data, Mode::Finetune, weights.to_str().unwrap(), 5);
    c.batch_size = 16;
    c.preprocessing = Preprocessing::imagenet(64);
    let run = dir.path().join("run");
    train(&run, Start::New(Box::new(c)), false);
    let h = history(&run);
    eprintln!(
        "real photos, train loss/acc per epoch: {:?}",
        h.iter().map(|e| (e[0], e[1])).collect::<Vec<_>>()
    );
    assert!(h[4][0] < 0.5 * h[0][0], "training loss did not fall: {h:?}");
    assert!(h[4][1] >= 0.85, "training accuracy stayed low: {h:?}");
}

/// Trains, setting the stop flag once batch `batch` (from 1) of epoch `epoch` ends; returns
/// the outcome and the early stop, if any, as (epoch, best epoch).
fn train_stopping_at(
    run: &Path,
    start: Start,
    at: Option<(usize, usize)>,
) -> (train::Outcome, Option<(usize, usize)>) {
    let stop = AtomicBool::new(false);
    let early = Mutex::new(None);
    let on = |event: Event| match event {
        Event::Batch { epoch, images, .. }
            if at.is_some_and(|(e, b)| e == epoch && images >= b * 8) =>
        {
            stop.store(true, std::sync::atomic::Ordering::SeqCst)
        }
        Event::EarlyStopped { epoch, best, .. } => {
            *early.lock().unwrap() = Some((epoch, best.epoch));
        }
        _ => {}
    };
    let outcome = train::train(&RunDir::new(run), start, &stop, &on).unwrap();
    (outcome, early.into_inner().unwrap())
}

fn rates(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(RunDir::new(run).metrics_jsonl())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<catdog::report::EpochRecord>(l)
                .unwrap()
                .lr
                .unwrap()
        })
        .collect()
}

/// A cosine schedule with warmup (and AdamW, label smoothing, class weights) stopped in the
/// middle of its second epoch resumes to exactly the numbers of an uninterrupted run, and
/// metrics.jsonl records each epoch's last rate as the schedule's definition gives it.
#[test]
fn a_schedule_resumes_mid_run_exactly_and_records_its_rates() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 20);
    let settings = TrainConfig {
        schedule: train::Schedule::Cosine,
        warmup: Some(0.5),
        weight_decay: 0.01,
        label_smoothing: 0.1,
        class_weights: "1,3".parse().unwrap(),
        ..config(&data, Mode::Finetune, "none", 3)
    };
    let whole = dir.path().join("whole");
    train_stopping_at(&whole, Start::New(Box::new(settings.clone())), None);
    let cut = dir.path().join("cut");
    let (stopped, _) = train_stopping_at(&cut, Start::New(Box::new(settings)), Some((2, 1)));
    assert!(stopped.stopped && stopped.epochs_done == 1);
    let (resumed, _) = train_stopping_at(&cut, Start::Resume, None);
    assert_eq!(resumed.epochs_done, 3);
    assert_eq!(history(&whole), history(&cut));
    assert_eq!(rates(&whole), rates(&cut));

    // By hand: B batches an epoch, B/2 of warmup, then cosine over the 3B - B/2 steps left.
    let manifest = catdog::data::Manifest::load(&RunDir::new(&whole).manifest()).unwrap();
    let b = manifest.count(Split::Train).div_ceil(8) as f64;
    let expected: Vec<f64> = (0..3)
        .map(|e| {
            let (t, warm) = (e as f64 * b + b - 1.0, b / 2.0);
            let factor = if t < warm {
                (t + 1.0) / warm
            } else {
                0.5 * (1.0 + (std::f64::consts::PI * (t - warm) / (3.0 * b - warm)).cos())
            };
            1e-3 * factor
        })
        .collect();
    for (ours, theirs) in rates(&whole).iter().zip(&expected) {
        assert!(
            (ours - theirs).abs() < 1e-15,
            "{:?} vs {expected:?}",
            rates(&whole)
        );
    }
    let config = config_json(&whole);
    assert_eq!(
        (
            &config["schedule"],
            &config["warmup"],
            &config["class_weights"]
        ),
        (
            &serde_json::json!("cosine"),
            &serde_json::json!(0.5),
            &serde_json::json!("1,3")
        )
    );
}

/// `--freeze-epochs 1`: the first epoch is a frozen-mode epoch on the cached features (the
/// same numbers), the second trains the backbone too; stopped inside the second, the run
/// resumes to the uninterrupted numbers.
#[test]
fn freeze_epochs_train_the_head_first_then_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 16);
    let weights = random_weights(dir.path());
    let mut frozen = config(&data, Mode::Frozen, weights.to_str().unwrap(), 1);
    frozen.cache_dir = Some(dir.path().join("cache"));
    let staged = TrainConfig {
        mode: Mode::Finetune,
        epochs: 2,
        freeze_epochs: 1,
        lr_backbone: Some(5e-4),
        ..frozen.clone()
    };
    train_stopping_at(
        &dir.path().join("frozen"),
        Start::New(Box::new(frozen)),
        None,
    );
    let whole = dir.path().join("whole");
    let (_, seen) = train(&whole, Start::New(Box::new(staged.clone())), false);
    assert!(
        matches!(
            seen[..],
            [
                Seen::Features { .. },
                Seen::Features { .. },
                Seen::Saved { epoch: 1 },
                Seen::Saved { epoch: 2 }
            ]
        ),
        "{seen:?}"
    );
    assert_eq!(history(&whole)[0], history(&dir.path().join("frozen"))[0]);
    let conv1 = |run: &Path| -> Vec<f32> {
        let device = burn::prelude::Device::flex();
        let (model, _) = catdog::model::checkpoint::load(
            &RunDir::new(run).checkpoint(catdog::run::Which::Last),
            &device,
        )
        .unwrap();
        model.conv1.weight.val().into_data().try_into_vec().unwrap()
    };
    assert_ne!(
        conv1(&whole),
        conv1(&dir.path().join("frozen")),
        "the backbone never trained"
    );

    let cut = dir.path().join("cut");
    let (stopped, _) = train_stopping_at(&cut, Start::New(Box::new(staged)), Some((2, 1)));
    assert!(stopped.stopped && stopped.epochs_done == 1);
    train_stopping_at(&cut, Start::Resume, None);
    assert_eq!(history(&whole), history(&cut));
    assert_eq!(conv1(&whole), conv1(&cut));
}

/// `--patience 1` on the validation loss: a head trained at a rate far too high swings, the
/// run stops one epoch after its lowest validation loss so far is not beaten, says so, best/
/// holds that epoch, and a resume of the stopped run trains nothing more.
#[test]
fn patience_stops_when_the_monitor_stops_improving() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 16);
    let weights = random_weights(dir.path());
    let mut c = config(&data, Mode::Frozen, weights.to_str().unwrap(), 6);
    c.cache_dir = Some(dir.path().join("cache"));
    c.lr = 5.0;
    c.patience = Some(1);
    c.monitor = train::Monitor::ValLoss;
    let run = dir.path().join("run");
    let (outcome, early) = train_stopping_at(&run, Start::New(Box::new(c)), None);
    let h = history(&run);
    let (stopped, best) = early.unwrap_or_else(|| panic!("never stopped early: {h:?}"));
    assert!(
        stopped < 6 && stopped == h.len() && stopped - best == 1,
        "{early:?} {h:?}"
    );
    let lowest = h[best - 1][2];
    assert!(h.iter().all(|r| r[2] >= lowest), "{h:?}");
    assert!(h[..best - 1].iter().all(|r| r[2] > lowest), "{h:?}");
    assert_eq!(
        (outcome.epochs_done, outcome.best.unwrap().epoch),
        (stopped, best)
    );
    let (again, early) = train_stopping_at(&run, Start::Resume, None);
    assert_eq!((again.epochs_done, early), (stopped, Some((stopped, best))));
}
