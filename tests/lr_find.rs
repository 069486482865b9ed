//! `catdog lr-find` end to end: the sweep's rates, curve files and suggestion, on generated
//! photos and (with ../shared) on real ones, frozen and fine-tuning; bad settings refused.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::common::demo_data;
use catdog::preprocess::Preprocessing;
use catdog::train::lr_find::{self, End, LrFind, Point};
use catdog::train::{self, DataSource, Event, Mode, TrainConfig};

/// `catdog lr-find` with `args` after `--out out --cache-dir cache`; panics with its output
/// when it fails.
fn cli(out: &Path, cache: &Path, args: &[&str]) -> String {
    let mut all = vec![
        "lr-find",
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    all.extend(args);
    let (ok, stdout, stderr) = common::run_catdog(&all);
    assert!(ok, "catdog {all:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The CSV's rows: step, lr, loss, smoothed.
fn rows(out: &Path) -> Vec<Point> {
    let text = std::fs::read_to_string(out.join(lr_find::CSV)).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("step,lr,loss,smoothed"));
    lines
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            Point {
                step: v[0].parse().unwrap(),
                lr: v[1].parse().unwrap(),
                loss: v[2].parse().unwrap(),
                smoothed: v[3].parse().unwrap(),
            }
        })
        .collect()
}

/// What every sweep's files must show: the rates of the exponential schedule from
/// `find.start_lr`, to `find.end_lr` when it ran to the end; the smoothing's formula; the
/// PNG a picture; the suggestion printed, inside the swept range, with the train command.
/// Returns the suggested rate.
fn check_sweep(out: &Path, find: LrFind, stdout: &str) -> f64 {
    let points = rows(out);
    assert!(points.len() >= 2, "{points:?}");
    let mut average = 0.0;
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p.step, i);
        let rate = find.start_lr
            * (find.end_lr / find.start_lr).powf(i as f64 / (find.iterations - 1) as f64);
        assert!(
            (p.lr - rate).abs() <= 1e-12 * rate,
            "step {i}: {} vs {rate}",
            p.lr
        );
        average = 0.98 * average + 0.02 * p.loss;
        let smoothed = average / (1.0 - 0.98f64.powi(i as i32 + 1));
        assert!(
            (p.smoothed - smoothed).abs() <= 1e-12 * smoothed,
            "step {i}: smoothed {} vs {smoothed}",
            p.smoothed
        );
    }
    let lowest = points
        .iter()
        .map(|p| p.smoothed)
        .fold(f64::INFINITY, f64::min);
    let last = points.last().unwrap();
    if points.len() < find.iterations {
        assert!(
            last.smoothed > 4.0 * lowest && stdout.contains("diverged"),
            "stopped early without diverging: {last:?}\n{stdout}"
        );
    } else {
        assert!((last.lr - find.end_lr).abs() <= 1e-12 * find.end_lr);
    }
    let png = image::open(out.join(lr_find::PNG)).unwrap();
    assert!(png.width() >= 600 && png.height() >= 400);

    let line = stdout
        .lines()
        .find(|l| l.starts_with("suggested learning rate: "))
        .unwrap_or_else(|| panic!("no suggestion printed:\n{stdout}"));
    let lr: f64 = line["suggested learning rate: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        lr >= points[0].lr && lr <= last.lr,
        "{lr} outside the sweep"
    );
    assert!(stdout.contains("only a suggestion"), "{stdout}");
    let command = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("catdog train "))
        .unwrap_or_else(|| panic!("no train command:\n{stdout}"));
    assert!(
        command.ends_with(&format!("--lr {lr:.1e}")),
        "{command} vs {lr}"
    );
    lr
}

/// `n` photos of each class of kaggle-sample in a folder of their own (the flat layout).
fn kaggle(dir: &Path, n: usize) -> PathBuf {
    let shared = common::shared();
    let data = dir.join("photos");
    std::fs::create_dir_all(&data).unwrap();
    for class in ["cat", "dog"] {
        for i in 0..n {
            let name = format!("{class}.{i}.jpg");
            std::fs::copy(
                shared.join("data/kaggle-sample").join(&name),
                data.join(&name),
            )
            .unwrap();
        }
    }
    data
}

/// Frozen mode on real photos from the golden weights: the files, the rates, the start's
/// loss near ln 2 (a fresh head knows nothing), the suggestion; and a second sweep (its
/// features from the cache the first one filled) writes the same bytes.
#[test]
#[ignore = "needs ../shared"]
fn frozen_sweep_on_real_photos_is_sound_and_repeats_itself() {
    let dir = tempfile::tempdir().unwrap();
    // 240 training photos: batches of 32 run out after 8, so the sweep cycles through them.
    let data = kaggle(dir.path(), 150);
    let weights = common::shared().join("golden/resnet18/resnet18.pth");
    let cache = dir.path().join("cache");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--mode",
        "frozen",
        "--image-size",
        "64",
    ];
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let started = std::time::Instant::now();
    let stdout = cli(&a, &cache, &args);
    eprintln!("{stdout}(frozen sweep: {:.1?})", started.elapsed());
    let lr = check_sweep(&a, LrFind::default(), &stdout);
    let points = rows(&a);
    // The first batches train at ~1e-7: nothing moves, the loss is a fresh head's.
    let start = points[0].loss;
    assert!(
        (start - 2f64.ln()).abs() < 0.25,
        "first loss {start}, far from ln 2"
    );
    assert!(
        points[..10].iter().all(|p| (p.loss - start).abs() < 0.2),
        "{points:?}"
    );
    assert!(stdout.contains("--mode frozen") && stdout.contains("--image-size 64"));

    let again = cli(&b, &cache, &args);
    for file in [lr_find::CSV, lr_find::PNG] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{file} differs between two sweeps"
        );
    }
    assert!(again.contains(&format!("suggested learning rate: {lr:.1e}")));
}

/// A short fine-tuning sweep (every layer, catdog's CPU training pass) on real photos, by
/// the library: events as it goes, the same rates, a fresh head's loss at the start.
#[test]
#[ignore = "needs ../shared"]
fn finetune_sweep_on_real_photos_trains_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let data = kaggle(dir.path(), 40);
    let weights = common::shared().join("golden/resnet18/resnet18.pth");
    let settings = TrainConfig {
        source: DataSource::Folder {
            root: data,
            layout: None,
            ratios: Default::default(),
        },
        weights: weights.to_str().unwrap().parse().unwrap(),
        mode: Mode::Finetune,
        batch_size: 16,
        preprocessing: Preprocessing::imagenet(64),
        ..TrainConfig::default()
    };
    let find = LrFind {
        start_lr: 1e-6,
        end_lr: 1.0,
        iterations: 24,
    };
    let seen = Mutex::new(Vec::new());
    let on = |event: Event| {
        if let Event::Sweep { point, iterations } = event {
            assert_eq!(iterations, 24);
            seen.lock().unwrap().push(point);
        }
    };
    let out = dir.path().join("out");
    let started = std::time::Instant::now();
    let sweep = train::lr_find(settings, find, &out, &on).unwrap();
    eprintln!(
        "finetune sweep, {} batches in {:.1?}: {:?}",
        sweep.points.len(),
        started.elapsed(),
        sweep
            .points
            .iter()
            .map(|p| (p.lr, p.loss))
            .collect::<Vec<_>>()
    );
    assert_eq!(seen.into_inner().unwrap(), sweep.points);
    assert_eq!(rows(&out), sweep.points, "the CSV holds the sweep exactly");
    assert!((sweep.points[0].loss - 2f64.ln()).abs() < 0.25);
    for (i, p) in sweep.points.iter().enumerate() {
        assert!((p.lr - find.rate(i)).abs() <= 1e-12 * p.lr);
    }
    match sweep.end {
        End::Completed => assert_eq!(sweep.points.len(), 24),
        End::Diverged | End::NotFinite => assert!(sweep.points.len() < 24),
    }
    // 64 px batches of 16 through every layer: the backbone trained, its batch norm too, so
    // the loss moves off a fresh head's well before the sweep's end.
    let moved = sweep
        .points
        .iter()
        .any(|p| (p.loss - sweep.points[0].loss).abs() > 0.05);
    assert!(moved, "{:?}", sweep.points);
    image::open(&sweep.png).unwrap();
}

/// Without ../shared: a sweep on generated photos (random backbone, frozen, 32 px), and the
/// settings a sweep cannot run with, refused saying what to do.
#[test]
fn sweeps_generated_photos_and_refuses_what_cannot_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 12);
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--weights",
        "none",
        "--mode",
        "frozen",
        "--image-size",
        "32",
    ];
    let stdout = cli(&out, &cache, &[&args[..], &["--batch-size", "4"]].concat());
    check_sweep(&out, LrFind::default(), &stdout);

    let fail = |extra: &[&str]| {
        let mut all: Vec<&str> = vec!["lr-find", "--out", out.to_str().unwrap()];
        all.extend(args);
        all.extend(extra);
        let (ok, _, stderr) = common::run_catdog(&all);
        assert!(!ok, "{all:?} succeeded");
        stderr
    };
    let err = fail(&["--start-lr", "1", "--end-lr", "1e-3"]);
    assert!(
        err.contains("invalid --start-lr: 1 is not below --end-lr (0.001)"),
        "{err}"
    );
    // 12 photos a class: 19 or so for training, fewer than one batch of 64.
    let err = fail(&["--batch-size", "64"]);
    assert!(
        err.contains(data.to_str().unwrap())
            && err.contains("fewer than one batch of 64")
            && err.contains("smaller --batch-size"),
        "{err}"
    );
}
