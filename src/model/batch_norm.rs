//! 2-D batch normalisation that behaves like PyTorch's `nn.BatchNorm2d`.
//!
//! burn's own `BatchNorm` updates `running_var` with the biased (population) batch variance;
//! PyTorch uses the unbiased one (divided by n - 1). Fine-tuning from torchvision weights and
//! checking against PyTorch needs the same running statistics, so this layer keeps burn's fused
//! training kernel for the output and gradients and only corrects the running update. Its field
//! names are torchvision's (`weight`, `bias`, `running_mean`, `running_var`), so weight files map
//! without renaming.

use burn::module::{Flag, Module, Param, RunningState};
use burn::prelude::*;
use burn::tensor::module::{batch_norm, batch_norm_train};

/// PyTorch's defaults for `nn.BatchNorm2d`, which torchvision's ResNet uses.
const EPSILON: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Scale (gamma).
    pub weight: Param<Tensor<1>>,
    /// Shift (beta).
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    /// Training behaviour (batch statistics, running update). Disabled by `valid()` and
    /// `freeze()`, like burn's own layers; only used on an autodiff device.
    pub training: Param<Flag>,
}

impl BatchNorm2d {
    /// A fresh layer: scale 1, shift 0, running mean 0 and variance 1 (PyTorch's init).
    pub fn new(num_features: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([num_features], device)),
            bias: Param::from_tensor(Tensor::zeros([num_features], device)),
            running_mean: RunningState::new(Tensor::zeros([num_features], device)),
            running_var: RunningState::new(Tensor::ones([num_features], device)),
            training: Param::from_bool(true),
        }
    }

    /// Normalises `[batch, channels, height, width]`: with the batch's statistics when training
    /// on an autodiff device (and updates the running ones), with the running ones otherwise.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        if input.device().is_autodiff() && self.training.is_enabled() {
            self.forward_train(input)
        } else {
            // value_sync: a checkpoint or evaluation right after a training step must see that
            // step's running statistics, not the ones before it.
            let device = input.device();
            batch_norm(
                input,
                self.weight.val(),
                self.bias.val(),
                self.running_mean.value_sync().to_device(&device),
                self.running_var.value_sync().to_device(&device),
                EPSILON,
            )
        }
    }

    fn forward_train(&self, input: Tensor<4>) -> Tensor<4> {
        let [batch, _, height, width] = input.dims();
        let device = input.device();
        let out = batch_norm_train(input, self.weight.val(), self.bias.val(), EPSILON);

        // Bessel's correction turns burn's population variance into PyTorch's sample variance.
        let n = (batch * height * width) as f64;
        let correction = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let mean = mean
            .mul_scalar(1.0 - MOMENTUM)
            .add(out.mean.detach().mul_scalar(MOMENTUM));
        let var = var
            .mul_scalar(1.0 - MOMENTUM)
            .add(out.variance.detach().mul_scalar(MOMENTUM * correction));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        out.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(device: &Device) -> Tensor<4> {
        // 2 images, 1 channel, 1x2 pixels: values 1, 3, 2, 6 (mean 3, sample variance 14/3).
        Tensor::from_floats([[[[1.0, 3.0]]], [[[2.0, 6.0]]]], device)
    }

    #[test]
    fn training_updates_running_var_with_unbiased_variance() {
        let device = Device::flex().autodiff();
        let bn = BatchNorm2d::new(1, &device);
        let out = bn.forward(input(&device));
        // Output uses the biased variance, as in PyTorch: (x - 3) / sqrt(3.5 + 1e-5).
        let out: Vec<f32> = out.into_data().try_into_vec().unwrap();
        let expected = [-2.0, 0.0, -1.0, 3.0].map(|d: f32| d / (3.5f32 + 1e-5).sqrt());
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-5, "{out:?}");
        }
        let mean: Vec<f32> = bn
            .running_mean
            .value_sync()
            .into_data()
            .try_into_vec()
            .unwrap();
        let var: Vec<f32> = bn
            .running_var
            .value_sync()
            .into_data()
            .try_into_vec()
            .unwrap();
        assert!((mean[0] - 0.3).abs() < 1e-6, "{mean:?}");
        // 0.9 * 1 + 0.1 * 14/3 (burn's BatchNorm would give 0.9 + 0.1 * 3.5 = 1.25).
        assert!((var[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6, "{var:?}");
    }

    #[test]
    fn inference_uses_running_statistics_and_leaves_them_alone() {
        let device = Device::flex();
        let bn = BatchNorm2d::new(1, &device);
        let out: Vec<f32> = bn
            .forward(input(&device))
            .into_data()
            .try_into_vec()
            .unwrap();
        let scale = 1.0 / (1.0f32 + 1e-5).sqrt();
        assert_eq!(out, [1.0, 3.0, 2.0, 6.0].map(|v| v * scale));
        let var: Vec<f32> = bn
            .running_var
            .value_sync()
            .into_data()
            .try_into_vec()
            .unwrap();
        assert_eq!(var, [1.0]);
    }

    #[test]
    fn frozen_layer_uses_running_statistics_on_autodiff_device() {
        let device = Device::flex().autodiff();
        let bn = BatchNorm2d::new(1, &device).freeze();
        let out: Vec<f32> = bn
            .forward(input(&device))
            .into_data()
            .try_into_vec()
            .unwrap();
        assert!((out[3] - 6.0 / (1.0f32 + 1e-5).sqrt()).abs() < 1e-6);
        let mean: Vec<f32> = bn
            .running_mean
            .value_sync()
            .into_data()
            .try_into_vec()
            .unwrap();
        assert_eq!(mean, [0.0]);
    }
}
