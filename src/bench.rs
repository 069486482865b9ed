//! Benchmarks that print figures (never timed tests): catdog's throughput,
//! and the PyTorch peer scripts in ../shared/peers run in the same invocation
//! so that ratios are measured side by side on the same machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::decode::{self, Limits};
use crate::error::{Error, Result};
use crate::model::fused::{FusedResNet18, TrainNet};
use crate::model::{FEATURES, ResNet18};
use crate::preprocess::Preprocessing;
use crate::run::EpochRecord;
use crate::train::adam::Adam;

/// One measured figure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub items: usize,
    pub seconds: f64,
    pub per_second: f64,
}

impl Figure {
    pub fn new(name: &str, items: usize, seconds: f64) -> Self {
        Figure {
            name: name.to_owned(),
            items,
            seconds,
            per_second: items as f64 / seconds,
        }
    }
}

/// Decode + eval transform of every file, in parallel on all cores, as the
/// loader does it. Two passes; the first warms the page cache and is not counted.
pub fn preprocess_throughput(files: &[PathBuf]) -> Result<Figure> {
    let p = Preprocessing::default();
    let limits = Limits::default();
    let mut seconds = 0.0;
    for _pass in 0..2 {
        let start = Instant::now();
        files.par_iter().try_for_each_init(
            || vec![0.0f32; p.tensor_len()],
            |out, path| -> Result<()> {
                let d = decode::decode_file(path, &limits).map_err(|r| {
                    Error::data(path, r.to_string(), "benchmark photos must decode")
                })?;
                p.eval(&d.image, out);
                Ok(())
            },
        )?;
        seconds = start.elapsed().as_secs_f64();
    }
    Ok(Figure::new("decode + eval transform", files.len(), seconds))
}

/// The median time of `reps` calls of `f`, after `warm` uncounted ones.
fn median_seconds(warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn random_images(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    device.seed(0);
    Tensor::random(
        [batch, 3, size, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    )
}

/// Pooled features (the frozen mode's forward pass) of a batch, eval mode, img/s, through
/// catdog's CPU kernels ([`FusedResNet18`]) as prediction and feature extraction run them.
pub fn inference(batch: usize, size: usize) -> Figure {
    let device = Device::flex();
    let fused = FusedResNet18::new(&ResNet18::new(2, &device));
    let x: Vec<f32> = random_images(batch, size, &device)
        .into_data()
        .try_into_vec()
        .expect("f32 images");
    let t = median_seconds(1, 5, || {
        let _ = fused.features(&x, size);
    });
    Figure::new(&format!("inference {size} px, batch {batch}"), batch, t)
}

/// The same through burn's generic operations, the reference the fused kernels are measured
/// against (PERFORMANCE.md).
pub fn inference_burn(batch: usize, size: usize) -> Figure {
    let device = Device::flex();
    let model = ResNet18::new(2, &device);
    let x = random_images(batch, size, &device);
    let t = median_seconds(1, 3, || {
        let _ = model.features(x.clone()).into_data();
    });
    Figure::new("  same, burn operations (reference)", batch, t)
}

/// The median time of an Adam step (forward by `logits`, cross-entropy,
/// backward, update) of `model` on one batch with alternating labels.
fn adam_step_seconds(
    mut model: ResNet18,
    batch: usize,
    warm: usize,
    reps: usize,
    logits: impl Fn(&ResNet18) -> Tensor<2>,
) -> f64 {
    let device = model.fc.weight.val().device();
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 2).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut adam = Adam::new(1e-3);
    median_seconds(warm, reps, || {
        let loss = loss_fn.forward(logits(&model), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = adam.step(model.clone(), grads);
        let _ = model.fc.weight.val().into_data();
    })
}

/// A full fine-tuning step (batch norm in training mode, forward, cross-entropy, backward,
/// Adam), img/s, through catdog's CPU training pass ([`TrainNet`]) as `catdog train` runs it.
pub fn train_step(batch: usize, size: usize) -> Figure {
    let device = Device::flex();
    let mut net = TrainNet::new(&ResNet18::new(2, &device));
    let x: Vec<f32> = random_images(batch, size, &device)
        .into_data()
        .try_into_vec()
        .expect("f32 images");
    let labels: Vec<usize> = (0..batch).map(|i| i % 2).collect();
    let mut adam = Adam::new(1e-3);
    let t = median_seconds(1, 3, || {
        net.step(&x, size, &labels);
        adam.step_slices(
            net.slots_mut()
                .into_iter()
                .map(|s| (s.name.as_str(), &mut s.value[..], &s.grad[..])),
        );
    });
    Figure::new(
        &format!("fine-tuning step {size} px, batch {batch}"),
        batch,
        t,
    )
}

/// The same through burn's autodiff over its generic operations (the reference).
pub fn train_step_burn(batch: usize, size: usize) -> Figure {
    let device = Device::flex().autodiff();
    let x = random_images(batch, size, &device);
    let t = adam_step_seconds(ResNet18::new(2, &device), batch, 1, 3, |m| {
        m.forward(x.clone())
    });
    Figure::new("  same, burn operations (reference)", batch, t)
}

/// A step of frozen mode's head on cached features, img/s.
pub fn head_step(batch: usize) -> Figure {
    let device = Device::flex().autodiff();
    device.seed(0);
    let f = Tensor::<2>::random(
        [batch, FEATURES],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let model = ResNet18::new(2, &device).freeze_backbone();
    let t = adam_step_seconds(model, batch, 5, 21, |m| m.head_forward(f.clone()));
    Figure::new(&format!("frozen head step, batch {batch}"), batch, t)
}

/// Runs a command to completion; returns its stdout, wall seconds and peak
/// resident memory in bytes (from the kernel's accounting of that child).
#[cfg(unix)]
pub fn run_measured(cmd: &mut Command) -> std::result::Result<(String, f64, u64), String> {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child's, not yet waited for; both pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(format!(
            "cannot wait for {cmd:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{cmd:?} failed (status {status})"));
    }
    // Linux reports ru_maxrss in KiB.
    Ok((
        out,
        start.elapsed().as_secs_f64(),
        usage.ru_maxrss as u64 * 1024,
    ))
}

/// Runs `cmd` as a fresh process `reps` times after `warm` uncounted runs;
/// returns the median wall seconds and the largest peak resident memory in bytes.
pub fn run_repeated(
    cmd: &mut Command,
    warm: usize,
    reps: usize,
) -> std::result::Result<(f64, u64), String> {
    let mut rss = 0;
    let mut failure = None;
    let seconds = median_seconds(warm, reps, || {
        if failure.is_none() {
            match run_measured(cmd) {
                Ok((_, _, r)) => rss = rss.max(r),
                Err(e) => failure = Some(e),
            }
        }
    });
    failure.map_or(Ok((seconds, rss)), Err)
}

/// Checks that `python` imports torch and torchvision; returns torch's version.
pub fn check_python(python: &Path) -> std::result::Result<String, String> {
    let out = Command::new(python)
        .args(["-c", "import torch, torchvision; print(torch.__version__)"])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e}; pass a Python interpreter with --python",
                python.display()
            )
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{py} cannot import torch and torchvision ({}); install them with `{py} -m pip install torch torchvision`, or pass another --python",
            stderr.trim().lines().last().unwrap_or("no message"),
            py = python.display()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The result `bench/pytorch_recipe.py` prints as its last line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipeResult {
    pub mode: String,
    /// From the script's start to its test result, imports excluded.
    pub seconds: f64,
    /// Photos per split.
    pub images: BTreeMap<String, usize>,
    pub best_epoch: usize,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub history: Vec<EpochRecord>,
}

/// Reads the recipe's result from its standard output: the last line that is a JSON object.
pub fn recipe_result(stdout: &str) -> std::result::Result<RecipeResult, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("it printed no JSON result")?;
    serde_json::from_str(line)
        .map_err(|e| format!("its result is not the JSON catdog expects ({e}): {line}"))
}

/// Runs a peer script with `python` and returns its stdout, or why it could not.
pub fn run_peer(
    python: &Path,
    script: &Path,
    args: &[&str],
) -> std::result::Result<String, String> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number before `unit` in a peer's output line (e.g. "= 687.3 img/s").
pub fn figure_before(text: &str, unit: &str) -> Option<f64> {
    let before = &text[..text.find(unit)?];
    before.split_whitespace().last()?.parse().ok()
}

/// The number after `label` in a peer's output line (e.g. "train-step 16.2 img/s").
pub fn figure_after(text: &str, label: &str) -> Option<f64> {
    let after = &text[text.find(label)? + label.len()..];
    after.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn measures_a_child_process() {
        let (out, seconds, rss) =
            super::run_measured(Command::new("sh").args(["-c", "echo hi"])).unwrap();
        assert_eq!(out, "hi\n");
        assert!(seconds > 0.0 && rss > 0);
        assert!(super::run_measured(&mut Command::new("false")).is_err());
    }

    #[test]
    fn reads_peer_figures() {
        let line = "PIL+torchvision workers=2: 2002 images in 2.91s = 687.3 img/s";
        assert_eq!(super::figure_before(line, "img/s"), Some(687.3));
        assert_eq!(super::figure_before("no figure", "img/s"), None);
        let torch =
            "torch 2.15 threads=2 size=224 channels_last: infer 57.3 img/s, train-step 16.2 img/s";
        assert_eq!(super::figure_after(torch, "infer"), Some(57.3));
        assert_eq!(super::figure_after(torch, "train-step"), Some(16.2));
    }

    #[test]
    fn repeats_a_child_process() {
        let (seconds, rss) =
            super::run_repeated(Command::new("sh").args(["-c", "echo hi"]), 1, 3).unwrap();
        assert!(seconds > 0.0 && rss > 0);
        let err = super::run_repeated(&mut Command::new("false"), 0, 3).unwrap_err();
        assert!(err.contains("failed"), "{err}");
    }

    #[test]
    fn a_python_without_torch_is_named() {
        // `sh -c "import torch, ..."` fails as a Python without torch would.
        let err = super::check_python(std::path::Path::new("sh")).unwrap_err();
        assert!(err.contains("sh cannot import torch"), "{err}");
        assert!(err.contains("pip install torch torchvision"), "{err}");
        let err = super::check_python(std::path::Path::new("/no/such/python")).unwrap_err();
        assert!(err.contains("cannot run /no/such/python"), "{err}");
    }

    #[test]
    fn reads_the_recipe_result() {
        let out = concat!(
            "some warning\n",
            r#"{"mode": "finetune", "torch": "2.15.0", "seconds": 612.5, "#,
            r#""images": {"train": 1602, "val": 200, "test": 200}, "best_epoch": 3, "#,
            r#""test_accuracy": 0.915, "test_loss": 0.25, "history": [{"epoch": 1, "#,
            r#""train_loss": 0.6, "train_acc": 0.7, "val_loss": 0.5, "val_acc": 0.8, "seconds": 120.0}]}"#,
            "\n"
        );
        let r = super::recipe_result(out).unwrap();
        assert_eq!((r.mode.as_str(), r.best_epoch), ("finetune", 3));
        assert_eq!(r.images.values().sum::<usize>(), 2002);
        assert_eq!((r.test_accuracy, r.seconds), (0.915, 612.5));
        assert_eq!(r.history[0].val_acc, 0.8);
        let err = super::recipe_result("Traceback ...\n").unwrap_err();
        assert!(err.contains("no JSON result"), "{err}");
        let err = super::recipe_result("{\"mode\": \"frozen\"}\n").unwrap_err();
        assert!(err.contains("missing field"), "{err}");
    }
}
