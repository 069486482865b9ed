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
        let (output, batch_mean, batch_var) = if device.clone().without_autodiff() == Device::flex()
        {
            let out = batch_norm_train(input, self.weight.val(), self.bias.val(), EPSILON);
            (out.output, out.mean, out.variance)
        } else {
            self.forward_train_by_axes(input)
        };

        // Bessel's correction turns the population variance into PyTorch's sample variance.
        let n = (batch * height * width) as f64;
        let correction = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let mean = mean
            .mul_scalar(1.0 - MOMENTUM)
            .add(batch_mean.detach().mul_scalar(MOMENTUM));
        let var = var
            .mul_scalar(1.0 - MOMENTUM)
            .add(batch_var.detach().mul_scalar(MOMENTUM * correction));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        output
    }

    /// Train-mode batch norm out of tensor operations, for GPU backends, where burn's fused
    /// `batch_norm_train` reduces each channel over one flattened dimension of N*H*W values
    /// (401,408 for bn1 at 224 px and batch 32), which wgpu got wrong (issue 14). The
    /// statistics are taken one axis at a time (width, height, batch), and each per-channel
    /// value ([1, C, 1, 1]) is widened to [1, C, 1, W] before it meets the activations, so
    /// that autodiff sums its gradient over N*H and then W rather than over N*H*W in one
    /// reduction (burn-autodiff's `broadcast_shape`). Without the widening, on Mesa 22.3's
    /// lavapipe the golden step's stem gradients (conv1, bn1) were 5-17% off PyTorch's while
    /// the batch norm alone at that size was right: the fault needs the whole graph and is
    /// not pinned down further (PERFORMANCE.md, "The GPU path").
    /// Returns the output, the batch mean and the population variance, as `batch_norm_train`.
    fn forward_train_by_axes(&self, input: Tensor<4>) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        let [_, channels, _, width] = input.dims();
        let row = Tensor::<4>::ones([1, 1, 1, width], &input.device());
        let widen = |per_channel: Tensor<4>| per_channel.mul(row.clone());
        let mean_by_axes = |x: Tensor<4>| x.mean_dim(3).mean_dim(2).mean_dim(0);
        let mean = mean_by_axes(input.clone());
        let centered = input.sub(widen(mean.clone()));
        let var = mean_by_axes(centered.clone().powi_scalar(2));
        let output = centered.div(widen(var.clone().add_scalar(EPSILON).sqrt()));
        let output = output
            .mul(widen(self.weight.val().reshape([1, channels, 1, 1])))
            .add(widen(self.bias.val().reshape([1, channels, 1, 1])));
        (output, mean.reshape([channels]), var.reshape([channels]))
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

    /// The GPU path (reductions one axis at a time, autodiff through tensor operations) agrees
    /// with burn's fused kernel, output and gradients, on the CPU where both are right.
    #[test]
    fn per_axis_statistics_match_burns_fused_kernel() {
        let device = Device::flex().autodiff();
        let mut bn = BatchNorm2d::new(3, &device);
        bn.weight = Param::from_tensor(Tensor::from_floats([0.5, 1.5, -2.0], &device));
        bn.bias = Param::from_tensor(Tensor::from_floats([0.1, -0.3, 0.7], &device));
        let x: Tensor<4> = Tensor::random(
            [4, 3, 5, 7],
            burn::tensor::Distribution::Normal(1.0, 2.0),
            &device,
        );
        // A loss that weighs outputs unevenly, so the input gradient is not trivially zero.
        let weights: Tensor<4> =
            Tensor::random([4, 3, 5, 7], burn::tensor::Distribution::Default, &device);
        let run = |by_axes: bool| {
            let x = x.clone().detach().require_grad();
            let (out, mean, var) = if by_axes {
                bn.forward_train_by_axes(x.clone())
            } else {
                let o = batch_norm_train(x.clone(), bn.weight.val(), bn.bias.val(), EPSILON);
                (o.output, o.mean, o.variance)
            };
            let grads = out.clone().mul(weights.clone()).sum().backward();
            let vec = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_into_vec().unwrap() };
            let vec1 = |t: Tensor<1>| -> Vec<f32> { t.into_data().try_into_vec().unwrap() };
            [
                vec(out),
                vec1(mean),
                vec1(var),
                vec(x.grad(&grads).unwrap()),
                vec1(bn.weight.val().grad(&grads).unwrap()),
                vec1(bn.bias.val().grad(&grads).unwrap()),
            ]
        };
        let names = [
            "output",
            "mean",
            "variance",
            "x grad",
            "weight grad",
            "bias grad",
        ];
        for ((name, a), b) in names.iter().zip(run(true)).zip(run(false)) {
            for (a, b) in a.iter().zip(&b) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{name}: {a} vs {b}"
                );
            }
        }
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
