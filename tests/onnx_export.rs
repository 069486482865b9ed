//! `catdog export --format onnx`, checked by running the files in a real ONNX runtime (tract):
//! logits against catdog's own, batch sizes, the in-graph preprocessing against catdog's,
//! metadata, determinism and errors.

use std::path::{Path, PathBuf};

use burn::prelude::Device;
use catdog::data::decode::{Limits, decode_file};
use catdog::model::checkpoint::{self, CheckpointMeta};
use catdog::model::weights::load_into;
use catdog::model::{EvalNet, Precision, ResNet18, imagenet_classes};
use catdog::preprocess::{Preprocessing, eval_tensor_from_path};
use tract_onnx::prelude::*;

use crate::common::{self, read_npy_f32, run_catdog};

/// How close the runtime's logits must come to catdog's (relative L2, per photo).
const LOGIT_TOLERANCE: f64 = 1e-4;

/// `catdog export MODEL --format onnx [extra]` into `out`; panics with catdog's message on
/// failure.
fn export(model: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "export",
        path(model),
        "--format",
        "onnx",
        "--out",
        path(out),
    ];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = run_catdog(&args);
    assert!(ok, "catdog export: {stderr}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The runtime's outputs named `outputs` for one input tensor.
fn tract_run(file: &Path, input: Tensor, outputs: &[&str]) -> Vec<Vec<f32>> {
    let fact = InferenceFact::dt_shape_from_tensor(&input);
    let model = tract_onnx::onnx()
        .model_for_path(file)
        .unwrap()
        .with_input_fact(0, fact)
        .unwrap()
        .with_outputs_by_name(outputs)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    model
        .run(tvec!(input.into()))
        .unwrap()
        .iter()
        .map(|t| {
            t.to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

/// Logits from the runtime for `n` preprocessed images of `size`, all in one batch.
fn tract_logits(file: &Path, images: &[f32], size: usize) -> Vec<f32> {
    let n = images.len() / (3 * size * size);
    let input = Tensor::from_shape(&[n, 3, size, size], images).unwrap();
    tract_run(file, input, &["logits"]).remove(0)
}

/// catdog's own logits (the predict path, f32) for the model in `dir`.
fn catdog_logits(dir: &Path, images: &[f32], size: usize) -> Vec<f32> {
    let (model, _) = checkpoint::load(dir, &Device::flex()).unwrap();
    EvalNet::new(&model, &Device::flex(), Precision::Fp32).logits(images.to_vec(), size)
}

/// The largest relative L2 difference of one photo's logits.
fn worst_photo(got: &[f32], want: &[f32], classes: usize) -> f64 {
    assert_eq!(got.len(), want.len());
    got.chunks(classes)
        .zip(want.chunks(classes))
        .map(|(g, w)| common::relative_l2(g, w))
        .fold(0.0, f64::max)
}

/// Runs the export of `dir` on `images` in one batch and one photo at a time; returns the
/// worst relative difference from catdog's logits.
fn compare(dir: &Path, onnx: &Path, images: &[f32], size: usize, classes: usize) -> f64 {
    let want = catdog_logits(dir, images, size);
    let batched = tract_logits(onnx, images, size);
    let one_by_one: Vec<f32> = images
        .chunks(3 * size * size)
        .flat_map(|image| tract_logits(onnx, image, size))
        .collect();
    worst_photo(&batched, &want, classes).max(worst_photo(&one_by_one, &want, classes))
}

/// The eight photos of the golden outputs, then eight more of the sample.
fn photos(shared: &Path) -> Vec<PathBuf> {
    let golden = std::fs::read_to_string(shared.join("golden/resnet18/images.txt")).unwrap();
    let sample = shared.join("data/kaggle-sample");
    golden
        .lines()
        .map(str::to_owned)
        .chain((500..504).flat_map(|i| [format!("cat.{i}.jpg"), format!("dog.{i}.jpg")]))
        .map(|name| sample.join(name))
        .collect()
}

fn preprocessed(photos: &[PathBuf], size: u32) -> Vec<f32> {
    photos
        .iter()
        .flat_map(|p| eval_tensor_from_path(p, size).unwrap())
        .collect()
}

/// torchvision's golden ResNet-18 as a catdog checkpoint: its 1000 ImageNet classes, or a
/// seeded two-class head.
fn golden_checkpoint(shared: &Path, dir: &Path, classes: usize) -> PathBuf {
    let device = Device::flex();
    let mut model = ResNet18::zeroed(1000, &device);
    load_into(&mut model, &shared.join("golden/resnet18/resnet18.pth")).unwrap();
    let names: Vec<String> = if classes == 1000 {
        imagenet_classes::NAMES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        model = model.with_head(2, 3, &device);
        vec!["cat".into(), "dog".into()]
    };
    let folder = dir.join(format!("golden-{classes}"));
    checkpoint::save(
        &folder,
        &model,
        &CheckpointMeta::new(names, Preprocessing::default()),
    )
    .unwrap();
    folder
}

#[test]
#[ignore = "needs ../shared"]
fn golden_network_runs_in_tract_as_in_torchvision_and_catdog() {
    let shared = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = golden_checkpoint(&shared, tmp.path(), 1000);
    let onnx = tmp.path().join("golden.onnx");
    export(&dir, &onnx, &[]);
    // torchvision's own preprocessing of the golden photos, and its logits.
    let (_, input) = read_npy_f32(&shared.join("golden/resnet18/input.npy"));
    let (_, torchvision) = read_npy_f32(&shared.join("golden/resnet18/logits.npy"));
    let tract = tract_logits(&onnx, &input, 224);
    let vs_torchvision = worst_photo(&tract, &torchvision, 1000);
    let vs_catdog = compare(&dir, &onnx, &input, 224, 1000);
    eprintln!(
        "golden, 1000 classes: tract vs torchvision {vs_torchvision:.2e}, vs catdog {vs_catdog:.2e}"
    );
    assert!(vs_torchvision < LOGIT_TOLERANCE, "{vs_torchvision}");
    assert!(vs_catdog < LOGIT_TOLERANCE, "{vs_catdog}");
}

/// A tiny training run on real photos at 64 pixels in `mode`; returns the run folder.
fn train(shared: &Path, tmp: &Path, mode: &str) -> PathBuf {
    let data = tmp.join("data");
    if !data.exists() {
        std::fs::create_dir_all(&data).unwrap();
        for class in ["cat", "dog"] {
            for i in 0..12 {
                let name = format!("{class}.{i}.jpg");
                std::fs::copy(
                    shared.join("data/kaggle-sample").join(&name),
                    data.join(name),
                )
                .unwrap();
            }
        }
    }
    let run = tmp.join(mode);
    let weights = shared.join("golden/resnet18/resnet18.pth");
    let cache = tmp.join("cache");
    let (ok, _, stderr) = run_catdog(&[
        "train",
        "--data",
        path(&data),
        "--out",
        path(&run),
        "--weights",
        path(&weights),
        "--mode",
        mode,
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--ratios",
        "0.5,0.25,0.25",
        "--cache-dir",
        path(&cache),
    ]);
    assert!(ok, "catdog train --mode {mode}: {stderr}");
    run
}

#[test]
#[ignore = "needs ../shared"]
fn trained_models_run_in_tract_as_in_catdog_in_both_modes() {
    let shared = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let photos = photos(&shared);
    let images = preprocessed(&photos, 64);
    for mode in ["finetune", "frozen"] {
        let run = train(&shared, tmp.path(), mode);
        let onnx = tmp.path().join(format!("{mode}.onnx"));
        export(&run, &onnx, &[]);
        let best = run.join("best");
        let golden = compare(&best, &onnx, &images[..8 * 3 * 64 * 64], 64, 2);
        let sample = compare(&best, &onnx, &images[8 * 3 * 64 * 64..], 64, 2);
        eprintln!("{mode}: golden photos {golden:.2e}, sample photos {sample:.2e}");
        assert!(
            golden < LOGIT_TOLERANCE && sample < LOGIT_TOLERANCE,
            "{mode}: {golden} {sample}"
        );
    }
}

#[test]
#[ignore = "needs ../shared"]
fn preprocessing_in_the_graph_matches_catdogs_to_two_levels() {
    let shared = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = golden_checkpoint(&shared, tmp.path(), 2);
    let onnx = tmp.path().join("rgb8.onnx");
    export(&dir, &onnx, &["--input", "rgb8"]);
    let p = Preprocessing::default();
    let plane = 224 * 224;
    // A photo smaller than the resize (upscaled, no antialias) beside the usual shrinking.
    let mut photos = photos(&shared);
    let small = tmp.path().join("small.png");
    let img = decode_file(&photos[0], &Limits::default()).unwrap().image;
    image::imageops::resize(&img, 200, 150, image::imageops::FilterType::Triangle)
        .save(&small)
        .unwrap();
    photos.push(small);
    let (mut worst_pixel, mut worst_logits, mut over_one) = (0.0f32, 0.0f64, 0usize);
    for photo in &photos {
        let rgb = decode_file(photo, &Limits::default()).unwrap().image;
        let (w, h) = rgb.dimensions();
        let input = Tensor::from_shape(&[h as usize, w as usize, 3], rgb.as_raw()).unwrap();
        let out = tract_run(&onnx, input, &["pre.normalised", "logits"]);
        let want = eval_tensor_from_path(photo, 224).unwrap();
        // In 8-bit levels: the normalised difference times std times 255.
        for (i, (g, w)) in out[0].iter().zip(&want).enumerate() {
            let levels = (g - w).abs() * p.std[i / plane] * 255.0;
            worst_pixel = worst_pixel.max(levels);
            over_one += usize::from(levels > 1.01);
        }
        let catdog = catdog_logits(&dir, &want, 224);
        worst_logits = worst_logits.max(common::relative_l2(&out[1], &catdog));
    }
    eprintln!(
        "rgb8 variant on {} photos: worst pixel {worst_pixel:.3} levels, {over_one} values over one level; logits {worst_logits:.2e} relative",
        photos.len()
    );
    assert!(worst_pixel <= 2.01, "{worst_pixel} levels");
}

/// A random two-class model at 32 pixels (no ../shared needed).
fn random_model(dir: &Path) -> PathBuf {
    let folder = dir.join("model");
    let meta = CheckpointMeta::new(
        vec!["cat".into(), "dog".into()],
        Preprocessing::imagenet(32),
    );
    checkpoint::save_random(&folder, &meta, 5).unwrap();
    folder
}

#[test]
fn any_batch_size_runs_and_gives_catdogs_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let model = random_model(tmp.path());
    let onnx = tmp.path().join("m.onnx");
    export(&model, &onnx, &[]);
    let images: Vec<f32> = (0..3 * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let worst = compare(&model, &onnx, &images, 32, 2);
    assert!(worst < LOGIT_TOLERANCE, "{worst}");
}

#[test]
fn exports_repeat_byte_for_byte_and_describe_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = random_model(tmp.path());
    let (a, b) = (tmp.path().join("a.onnx"), tmp.path().join("b.onnx"));
    export(&model, &a, &[]);
    export(&model, &b, &[]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let proto = tract_onnx::onnx().proto_model_for_path(&a).unwrap();
    assert_eq!(proto.opset_import[0].version, 18);
    let meta = |key: &str| {
        proto
            .metadata_props
            .iter()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .value
            .clone()
    };
    assert_eq!(meta("class_names"), r#"["cat","dog"]"#);
    assert_eq!(meta("catdog_version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(meta("temperature"), "1");
    let p: Preprocessing = serde_json::from_str(&meta("preprocessing")).unwrap();
    assert_eq!(p, Preprocessing::imagenet(32));
    assert!(
        meta("input").starts_with("input: float32 [batch, 3, 32, 32], RGB"),
        "{}",
        meta("input")
    );
    let graph = proto.graph.unwrap();
    // Batch norm is folded: no BatchNormalization node, one Conv per convolution.
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!((count("Conv"), count("BatchNormalization")), (20, 0));
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(!ops.contains(&"Resize"));

    let rgb8 = tmp.path().join("rgb8.onnx");
    export(&model, &rgb8, &["--input", "rgb8"]);
    let proto = tract_onnx::onnx().proto_model_for_path(&rgb8).unwrap();
    let graph = proto.graph.unwrap();
    assert_eq!(graph.input[0].name, "image");
    assert!(graph.node.iter().any(|n| n.op_type == "Resize"));
}

#[test]
fn export_errors_say_what_is_wrong_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-run");
    let (ok, _, stderr) = run_catdog(&["export", path(&missing), "--format", "onnx"]);
    assert!(!ok);
    assert!(
        stderr.contains("no-such-run")
            && stderr.contains("does not exist")
            && stderr.contains("catdog train --out"),
        "{stderr}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, stderr) = run_catdog(&["export", path(&empty), "--format", "onnx"]);
    assert!(!ok && stderr.contains("neither a model folder"), "{stderr}");
    let model = random_model(tmp.path());
    let (ok, _, stderr) = run_catdog(&["export", path(&model), "--format", "tflite"]);
    assert!(
        !ok && stderr.contains("'tflite' is not one of onnx"),
        "{stderr}"
    );
}
