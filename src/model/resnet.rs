//! torchvision's `resnet18`, layer for layer.
//!
//! Field names are torchvision's parameter paths: `layer2` is an array of two blocks (burn names
//! array entries `0`, `1`) and `downsample` is a (conv, batch norm) tuple (entries `0`, `1`), so
//! `layer2.0.downsample.1.running_var` or `fc.weight` in a torchvision state dict lands in the
//! same-named field with no key remapping.

use std::f64::consts::SQRT_2;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::BatchNorm2d;

/// Width of the pooled backbone output that the head reads.
pub const FEATURES: usize = 512;

/// Two 3x3 convolutions with a residual connection (torchvision's `BasicBlock`).
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    /// 1x1 strided convolution and batch norm that reshape the shortcut, where the block changes
    /// resolution and width (first block of stages 2-4).
    pub downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        init: &Initializer,
        device: &Device,
    ) -> Self {
        let downsample = (stride != 1 || in_channels != out_channels).then(|| {
            (
                conv(in_channels, out_channels, 1, stride, 0, init, device),
                BatchNorm2d::new(out_channels, device),
            )
        });
        Self {
            conv1: conv(in_channels, out_channels, 3, stride, 1, init, device),
            bn1: BatchNorm2d::new(out_channels, device),
            conv2: conv(out_channels, out_channels, 3, 1, 1, init, device),
            bn2: BatchNorm2d::new(out_channels, device),
            downsample,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(conv.forward(x.clone())),
            None => x.clone(),
        };
        let out = relu(self.bn1.forward(self.conv1.forward(x)));
        let out = self.bn2.forward(self.conv2.forward(out));
        relu(out + identity)
    }
}

/// How torchvision initialises the convolutions: Kaiming normal, fan-out, ReLU gain.
const TORCHVISION_INIT: Initializer = Initializer::KaimingNormal {
    gain: SQRT_2,
    fan_out_only: true,
};

/// A bias-free convolution with weights from `init`.
fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    init: &Initializer,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(init.clone())
        .init(device)
}

fn stage(
    in_channels: usize,
    out_channels: usize,
    stride: usize,
    init: &Initializer,
    device: &Device,
) -> [BasicBlock; 2] {
    [
        BasicBlock::new(in_channels, out_channels, stride, init, device),
        BasicBlock::new(out_channels, out_channels, 1, init, device),
    ]
}

/// Square max-pooling windows (padding counts as minus infinity, as in PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPool {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        max_pool2d(
            x,
            MaxPoolOptions::new([self.kernel, self.kernel])
                .with_stride([self.stride, self.stride])
                .with_padding([self.pad, self.pad]),
        )
    }
}

/// ResNet-18 with a `num_classes`-way linear head (`fc`).
#[derive(Module, Debug)]
pub struct ResNet18 {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub layer1: [BasicBlock; 2],
    pub layer2: [BasicBlock; 2],
    pub layer3: [BasicBlock; 2],
    pub layer4: [BasicBlock; 2],
    pub fc: Linear,
}

impl ResNet18 {
    /// The pooling after the stem (parameter-free, so not a field: weight files have no entry
    /// for it).
    pub const STEM_POOL: MaxPool = MaxPool {
        kernel: 3,
        stride: 2,
        pad: 1,
    };

    /// A randomly initialised network, as `torchvision.models.resnet18(num_classes=...)` is
    /// (the head gets PyTorch's default `Linear` init, unseeded; see [`ResNet18::with_head`]).
    /// Batch norm is in training mode, which takes effect on an autodiff device only.
    pub fn new(num_classes: usize, device: &Device) -> Self {
        Self::with_conv_init(num_classes, &TORCHVISION_INIT, device)
    }

    /// A network with all-zero convolutions, for a weight file to fill in: drawing 11 million
    /// random numbers that loading then replaces takes a quarter of a second on a CPU, most of
    /// the start-up time of `catdog predict`.
    pub fn zeroed(num_classes: usize, device: &Device) -> Self {
        Self::with_conv_init(num_classes, &Initializer::Zeros, device)
    }

    /// A network initialised as [`ResNet18::new`] is (Kaiming normal convolutions, a
    /// PyTorch-style head), drawn from `seed` instead of the device's generator: that one is
    /// shared by the whole process, so two runs seeding it at once (tests side by side) would
    /// draw each other's numbers. The same seed gives the same network, whatever else runs.
    pub fn seeded(num_classes: usize, seed: u64, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut model = Self::zeroed(num_classes, device);
        let mut kaiming = |conv: &mut Conv2d| {
            let [cout, cin, k, _] = conv.weight.dims();
            let std = SQRT_2 / ((cout * k * k) as f64).sqrt();
            let values: Vec<f32> = (0..cout * cin * k * k)
                .map(|_| (standard_normal(&mut rng) * std) as f32)
                .collect();
            conv.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [cout, cin, k, k]),
                device,
            ));
        };
        kaiming(&mut model.conv1);
        for block in [
            &mut model.layer1,
            &mut model.layer2,
            &mut model.layer3,
            &mut model.layer4,
        ]
        .into_iter()
        .flatten()
        {
            kaiming(&mut block.conv1);
            kaiming(&mut block.conv2);
            if let Some((conv, _)) = &mut block.downsample {
                kaiming(conv);
            }
        }
        model.with_head(num_classes, seed, device)
    }

    fn with_conv_init(num_classes: usize, init: &Initializer, device: &Device) -> Self {
        Self {
            conv1: conv(3, 64, 7, 2, 3, init, device),
            bn1: BatchNorm2d::new(64, device),
            layer1: stage(64, 64, 1, init, device),
            layer2: stage(64, 128, 2, init, device),
            layer3: stage(128, 256, 2, init, device),
            layer4: stage(256, 512, 2, init, device),
            // burn's default Linear init is PyTorch's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            fc: LinearConfig::new(FEATURES, num_classes).init(device),
        }
    }

    /// Number of outputs of the head.
    pub fn num_classes(&self) -> usize {
        // burn stores a Linear weight as [inputs, outputs].
        let [_, outputs] = self.fc.weight.shape().dims();
        outputs
    }

    /// Logits `[batch, num_classes]` for normalised images `[batch, 3, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head_forward(self.features(images))
    }

    /// The pooled backbone output `[batch, 512]`: what the head sees.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        global_average_pool(self.trunk(images))
    }

    /// The head alone, on features from [`ResNet18::features`] (e.g. cached ones).
    pub fn head_forward(&self, features: Tensor<2>) -> Tensor<2> {
        self.fc.forward(features)
    }

    /// The last stage's activations `[batch, 512, h/32, w/32]` and the logits computed from them,
    /// for Grad-CAM. On an autodiff device the activations are a fresh leaf that requires
    /// gradients, so `activations.grad(&logits.backward())` gives d(logit)/d(activation); the
    /// graph behind them is cut, since Grad-CAM needs nothing further back.
    pub fn forward_with_activations(&self, images: Tensor<4>) -> (Tensor<4>, Tensor<2>) {
        let mut activations = self.trunk(images);
        if activations.is_autodiff() {
            activations = activations.detach().require_grad();
        }
        let logits = self.head_forward(global_average_pool(activations.clone()));
        (activations, logits)
    }

    /// Replaces the head with a fresh `num_classes`-way one, initialised like PyTorch's
    /// `nn.Linear` (weight and bias from U(-1/sqrt(512), 1/sqrt(512))) but from `seed`, so the
    /// same seed gives the same head on every run and machine.
    pub fn with_head(mut self, num_classes: usize, seed: u64, device: &Device) -> Self {
        self.fc = seeded_linear(FEATURES, num_classes, seed, device);
        self
    }

    /// Stops training the backbone: its parameters get no gradients and its batch norms use
    /// their running statistics (and keep them) even on an autodiff device. The head stays
    /// trainable.
    pub fn freeze_backbone(self) -> Self {
        Self {
            conv1: self.conv1.freeze(),
            bn1: self.bn1.freeze(),
            layer1: self.layer1.freeze(),
            layer2: self.layer2.freeze(),
            layer3: self.layer3.freeze(),
            layer4: self.layer4.freeze(),
            fc: self.fc,
        }
    }

    /// Everything before the pooling: stem, max-pool and the four stages.
    fn trunk(&self, images: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn1.forward(self.conv1.forward(images)));
        let x = Self::STEM_POOL.forward(x);
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
            .fold(x, |x, block| block.forward(x))
    }
}

/// `[batch, channels, h, w]` -> `[batch, channels]`, the mean over each feature map.
fn global_average_pool(x: Tensor<4>) -> Tensor<2> {
    let [batch, channels, height, width] = x.dims();
    x.reshape([batch, channels, height * width])
        .mean_dim(2)
        .reshape([batch, channels])
}

/// A draw from N(0, 1) (Box-Muller).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Linear layer drawn like PyTorch's default init, from a seeded generator.
fn seeded_linear(inputs: usize, outputs: usize, seed: u64, device: &Device) -> Linear {
    let bound = 1.0 / (inputs as f32).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Drawn in PyTorch's [outputs, inputs] order, stored in burn's [inputs, outputs] layout.
    let drawn: Vec<f32> = (0..outputs * inputs)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let mut weight = vec![0.0f32; inputs * outputs];
    for (o, row) in drawn.chunks(inputs).enumerate() {
        for (i, &w) in row.iter().enumerate() {
            weight[i * outputs + o] = w;
        }
    }
    let bias: Vec<f32> = (0..outputs)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weight, [inputs, outputs]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [outputs]),
            device,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
    use burn::tensor::{Distribution, Int};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec().unwrap()
    }

    fn images(batch: usize, device: &Device) -> Tensor<4> {
        Tensor::random([batch, 3, 64, 64], Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn parameters_have_torchvision_names_and_shapes() {
        let model = ResNet18::new(10, &Device::flex());
        let tensors = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
        // torchvision's state dict has 122 entries, 20 of them batch-norm step counters.
        assert_eq!(tensors.len(), 102);
        let shape = |name: &str| {
            tensors
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.shape.to_vec())
        };
        assert_eq!(shape("conv1.weight"), Some(vec![64, 3, 7, 7]));
        assert_eq!(shape("layer1.1.bn2.running_mean"), Some(vec![64]));
        assert_eq!(
            shape("layer2.0.downsample.0.weight"),
            Some(vec![128, 64, 1, 1])
        );
        assert_eq!(shape("layer2.0.downsample.1.running_var"), Some(vec![128]));
        assert_eq!(shape("layer4.1.conv2.weight"), Some(vec![512, 512, 3, 3]));
        assert_eq!(shape("fc.weight"), Some(vec![10, 512]));
        assert_eq!(shape("fc.bias"), Some(vec![10]));
        assert_eq!(shape("layer1.0.downsample.0.weight"), None);
        assert_eq!(model.num_classes(), 10);
    }

    #[test]
    fn forward_is_features_then_head() {
        let device = Device::flex();
        let model = ResNet18::new(3, &device);
        let x = images(2, &device);
        let logits = model.forward(x.clone());
        assert_eq!(logits.dims(), [2, 3]);
        let features = model.features(x.clone());
        assert_eq!(features.dims(), [2, FEATURES]);
        assert_eq!(values(model.head_forward(features)), values(logits.clone()));
        let (activations, logits_too) = model.forward_with_activations(x);
        assert_eq!(activations.dims(), [2, 512, 2, 2]);
        assert_eq!(values(logits_too), values(logits));
    }

    #[test]
    fn seeded_networks_repeat_and_have_torchvisions_spread() {
        let device = Device::flex();
        let weights = |seed| {
            values(
                ResNet18::seeded(2, seed, &device).layer3[1]
                    .conv2
                    .weight
                    .val(),
            )
        };
        let w = weights(5);
        assert_eq!(w, weights(5));
        assert_ne!(w, weights(6));
        // Kaiming normal, fan-out: variance 2 / (256 * 3 * 3).
        let var = w.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / w.len() as f64;
        assert!((var / (2.0 / 2304.0) - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn seeded_head_is_deterministic_and_pytorch_distributed() {
        let device = Device::flex();
        let head = |seed| {
            let model = ResNet18::new(1000, &device).with_head(2, seed, &device);
            assert_eq!(model.num_classes(), 2);
            (
                values(model.fc.weight.val()),
                values(model.fc.bias.unwrap().val()),
            )
        };
        let (w, b) = head(42);
        assert_eq!((w.clone(), b.clone()), head(42));
        assert_ne!(w, head(43).0);
        let bound = 1.0 / 512f32.sqrt();
        assert!(w.iter().chain(&b).all(|v| v.abs() <= bound));
        // U(-a, a) has mean 0 and variance a^2 / 3: 1024 draws land close.
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!(mean.abs() < 0.1 * bound, "{mean}");
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.15, "{var}");
    }

    fn train_step_grads(model: &ResNet18, device: &Device) -> burn::tensor::Gradients {
        let logits = model.forward(images(2, device));
        let labels = Tensor::<1, Int>::from_ints([0, 1], device);
        CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, labels)
            .backward()
    }

    #[test]
    fn frozen_backbone_gets_no_gradients_and_keeps_its_statistics() {
        let device = Device::flex().autodiff();
        let model = ResNet18::new(2, &device).freeze_backbone();
        let mean_before = values(model.layer3[1].bn2.running_mean.value_sync());
        let grads = train_step_grads(&model, &device);
        assert!(model.conv1.weight.val().grad(&grads).is_none());
        assert!(model.layer4[0].bn1.weight.val().grad(&grads).is_none());
        assert!(model.fc.weight.val().grad(&grads).is_some());
        assert_eq!(
            values(model.layer3[1].bn2.running_mean.value_sync()),
            mean_before
        );
    }

    #[test]
    fn activation_gradients_are_what_grad_cam_needs() {
        let device = Device::flex().autodiff();
        let model = ResNet18::new(2, &device).freeze_backbone();
        let (activations, logits) = model.forward_with_activations(images(1, &device));
        let grads = logits.slice([0..1, 1..2]).sum().backward();
        let grad = values(
            activations
                .grad(&grads)
                .expect("activations keep their gradient"),
        );
        // Logit 1 is fc row 1 applied to the 2x2 average: each cell gets weight / 4.
        let weight = values(model.fc.weight.val().slice([0..512, 1..2]));
        for (channel, w) in weight.iter().enumerate() {
            for cell in 0..4 {
                assert!((grad[channel * 4 + cell] - w / 4.0).abs() < 1e-6);
            }
        }
    }
}
