//! Calibrated answers end to end on real photos: `catdog train` fits the calibration at its end,
//! `evaluate`, `predict` and `calibrate` use it, and the answers keep the most probable class.
//! Few photos at 64 pixels, so that it stays quick; the figures of the whole sample are in the
//! README.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn catdog(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_catdog"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "catdog {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
#[ignore = "needs ../shared"]
fn training_calibrates_and_every_answer_uses_it() {
    let shared = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).unwrap();
    for class in ["cat", "dog"] {
        for i in 0..24 {
            let name = format!("{class}.{i}.jpg");
            fs::copy(
                shared.join("data/kaggle-sample").join(&name),
                data.join(name),
            )
            .unwrap();
        }
    }
    let run = tmp.path().join("run");
    let weights = shared.join("golden/resnet18/resnet18.pth");
    let cache = tmp.path().join("cache");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let out = catdog(&[
        "train",
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--weights",
        &s(&weights),
        "--mode",
        "frozen",
        "--image-size",
        "64",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--ratios",
        "0.5,0.25,0.25",
        "--cache-dir",
        &s(&cache),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("calibrated on the validation split"),
        "{stdout}"
    );

    let best = run.join("best");
    let meta = read_json(&best.join("model.json"));
    let calibration = &meta["calibration"];
    assert_eq!(calibration["error_rate"], 0.05, "{meta}");
    assert!(calibration["temperature"].as_f64().unwrap() > 0.0);
    assert!(best.join("ood.safetensors").is_file());

    // evaluate: the figures, the answers per true class, argmax's accuracy unchanged.
    let calibrated = read_json(&run.join("eval-test.json"));
    let images = calibrated["images"].as_u64().unwrap();
    let report = &calibrated["calibration"];
    for key in [
        "temperature",
        "ece_before",
        "ece_after",
        "nll_before",
        "nll_after",
        "brier_before",
        "brier_after",
    ] {
        assert!(report[key].as_f64().is_some(), "{key}: {calibrated}");
    }
    assert_eq!(calibrated["conformal"]["promised_coverage"], 0.95);
    let answered: u64 = calibrated["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(answered, images);
    assert_eq!(
        calibrated["decision_names"],
        serde_json::json!(["cat", "dog", "unsure", "neither"])
    );
    catdog(&["evaluate", &s(&run), "--decision", "argmax"]);
    let argmax = read_json(&run.join("eval-test.json"));
    assert_eq!(argmax["confusion_matrix"], calibrated["confusion_matrix"]);
    assert_eq!(argmax["decision_rule"], "argmax");
    // Under argmax the answers are the confusion matrix, with no unsure and no neither.
    for (row, confusion) in argmax["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(argmax["confusion_matrix"].as_array().unwrap())
    {
        let row = row.as_array().unwrap();
        assert_eq!(&row[..2], confusion.as_array().unwrap().as_slice());
        assert_eq!((row[2].as_u64(), row[3].as_u64()), (Some(0), Some(0)));
    }

    // predict: a decision, both probabilities and the score on each line; the most probable
    // class is the same with and without calibration.
    let blank = tmp.path().join("blank.png");
    image::RgbImage::from_pixel(200, 150, image::Rgb([128, 128, 128]))
        .save(&blank)
        .unwrap();
    let photo = data.join("cat.0.jpg");
    let lines = |decision: &str| -> Vec<Value> {
        let out = catdog(&[
            "predict",
            &s(&run),
            &s(&photo),
            &s(&blank),
            "--json",
            "--decision",
            decision,
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (with, without) = (lines("calibrated"), lines("argmax"));
    for (a, b) in with.iter().zip(&without) {
        assert!(a["ood_score"].as_f64().unwrap() >= 0.0, "{a}");
        assert_eq!(a["label"], b["label"]);
        assert_eq!(a["raw_probability"], b["probability"]);
        assert!(["cat", "dog", "unsure", "neither"].contains(&a["decision"].as_str().unwrap()));
        assert_eq!(b["decision"], b["label"]);
        assert!(b["ood_score"].is_null());
    }

    // calibrate: a higher error rate promises less, so its threshold keeps fewer classes.
    let before = calibration["conformal_threshold"].as_f64().unwrap();
    catdog(&["calibrate", &s(&run), "--error-rate", "0.4"]);
    let meta = read_json(&best.join("model.json"));
    assert_eq!(meta["calibration"]["error_rate"], 0.4);
    assert!(meta["calibration"]["conformal_threshold"].as_f64().unwrap() <= before);
    let report = run.join("report");
    for name in ["reliability.png", "roc.png"] {
        assert!(report.join(name).is_file(), "{name}");
    }
}
