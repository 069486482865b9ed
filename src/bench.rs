//! In-process measurements of catdog's own parts (decoding, inference, a training step), each
//! a [`Figure`]. `catdog bench` runs each in a child process of its own and puts PyTorch's
//! figures beside them; that machinery is the command's (`src/cli/bench/`).

use std::path::PathBuf;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::decode::{self, Limits};
use crate::error::{Error, Result};
use crate::model::Precision;
use crate::model::fused::{FusedResNet18, Loss, TrainNet};
use crate::model::{FEATURES, ResNet18};
use crate::preprocess::Preprocessing;
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
pub fn median_seconds(warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
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
pub fn inference(batch: usize, size: usize, precision: Precision) -> Figure {
    let device = Device::flex();
    let fused = FusedResNet18::new(&ResNet18::new(2, &device), precision);
    let x: Vec<f32> = random_images(batch, size, &device)
        .into_data()
        .try_into_vec()
        .expect("f32 images");
    let t = median_seconds(1, 5, || {
        let _ = fused.features(&x, size);
    });
    Figure::new(
        &format!("inference {size} px, batch {batch}, {precision}"),
        batch,
        t,
    )
}

/// The same through burn's generic operations on `device`: on the CPU the reference the fused
/// kernels are measured against (PERFORMANCE.md), elsewhere how inference runs there.
pub fn inference_burn(batch: usize, size: usize, device: &Device) -> Figure {
    let model = ResNet18::new(2, device);
    let x = random_images(batch, size, device);
    let t = median_seconds(1, 3, || {
        let _ = model.features(x.clone()).into_data();
    });
    Figure::new(&burn_label("inference", batch, size, device), batch, t)
}

/// A row's name for burn's operations: a reference row under catdog's own on the CPU, the
/// figure itself on another device.
fn burn_label(what: &str, batch: usize, size: usize, device: &Device) -> String {
    if device.clone().without_autodiff() == Device::flex() {
        "  same, burn operations (reference)".to_owned()
    } else {
        format!("{what} {size} px, batch {batch} (burn)")
    }
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
pub fn train_step(batch: usize, size: usize, precision: Precision) -> Figure {
    let device = Device::flex();
    let mut net = TrainNet::new(&ResNet18::new(2, &device), precision);
    let x: Vec<f32> = random_images(batch, size, &device)
        .into_data()
        .try_into_vec()
        .expect("f32 images");
    let labels: Vec<usize> = (0..batch).map(|i| i % 2).collect();
    let mut adam = Adam::new(1e-3);
    let t = median_seconds(1, 3, || {
        net.step(&x, size, &labels, &Loss::default());
        adam.step_slices(
            net.slots_mut()
                .into_iter()
                .map(|s| (s.name.as_str(), &mut s.value[..], &s.grad[..])),
        );
    });
    Figure::new(
        &format!("fine-tuning step {size} px, batch {batch}, {precision}"),
        batch,
        t,
    )
}

/// The same through burn's autodiff over its generic operations on `device`: the reference on
/// the CPU, how `catdog train` fine-tunes elsewhere.
pub fn train_step_burn(batch: usize, size: usize, device: &Device) -> Figure {
    let device = device.clone().autodiff();
    let x = random_images(batch, size, &device);
    let t = adam_step_seconds(ResNet18::new(2, &device), batch, 1, 3, |m| {
        m.forward(x.clone())
    });
    Figure::new(
        &burn_label("fine-tuning step", batch, size, &device),
        batch,
        t,
    )
}

/// A step of frozen mode's head on cached features on `device`, img/s.
pub fn head_step(batch: usize, device: &Device) -> Figure {
    let device = device.clone().autodiff();
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
