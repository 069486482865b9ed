//! A trained network ready for eval-mode forward passes, run the fastest way its device has:
//! catdog's fused kernels on the CPU ([`FusedResNet18`]), burn's operations on a GPU.

use burn::prelude::*;

use super::fused::FusedResNet18;
use super::{Precision, ResNet18};

// Boxed: both are large, and this is built once per loaded model.
pub enum EvalNet {
    Cpu(Box<FusedResNet18>),
    Burn {
        model: Box<ResNet18>,
        device: Device,
    },
}

impl EvalNet {
    /// Prepares `model` (batch norm on running statistics, no gradients) for `device`, with
    /// the CPU's products in `precision` where this CPU runs it (burn's operations on other
    /// devices are f32).
    pub fn new(model: &ResNet18, device: &Device, precision: Precision) -> Self {
        let device = device.clone().without_autodiff();
        if device == Device::flex() {
            EvalNet::Cpu(Box::new(FusedResNet18::new(model, precision.on_this_cpu())))
        } else {
            EvalNet::Burn {
                model: Box::new(model.clone().valid().to_device(&device)),
                device,
            }
        }
    }

    /// The pooled backbone output, [`super::FEATURES`] values per image, of CHW images of
    /// `3 x image_size x image_size` values back to back.
    pub fn features(&self, batch: Vec<f32>, image_size: usize) -> Vec<f32> {
        match self {
            EvalNet::Cpu(fused) => fused.features(&batch, image_size),
            EvalNet::Burn { model, device } => {
                values(model.features(images(batch, image_size, device)))
            }
        }
    }

    /// The head's outputs, one row per image, of features from [`EvalNet::features`].
    pub fn head(&self, features: Vec<f32>) -> Vec<f32> {
        match self {
            EvalNet::Cpu(fused) => fused.head(&features),
            EvalNet::Burn { model, device } => {
                let n = features.len() / super::FEATURES;
                let features = TensorData::new(features, [n, super::FEATURES]);
                values(model.head_forward(Tensor::from_data(features, device)))
            }
        }
    }

    /// Logits, one row of the head's outputs per image, of images as for [`EvalNet::features`].
    pub fn logits(&self, batch: Vec<f32>, image_size: usize) -> Vec<f32> {
        match self {
            EvalNet::Cpu(fused) => fused.head(&fused.features(&batch, image_size)),
            EvalNet::Burn { model, device } => {
                values(model.forward(images(batch, image_size, device)))
            }
        }
    }
}

fn images(batch: Vec<f32>, size: usize, device: &Device) -> Tensor<4> {
    let n = batch.len() / (3 * size * size);
    Tensor::from_data(TensorData::new(batch, [n, 3, size, size]), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec()
        .expect("the model computes in f32")
}
