//! ResNet-18's eval-mode forward pass on the CPU, as catdog's own kernels.
//!
//! burn's Flex backend runs a convolution as NCHW im2col + matrix product, then batch norm,
//! ReLU and the residual add as separate passes over memory; that leaves about half of the
//! time outside the matrix products (see PERFORMANCE.md). In eval mode batch norm is an affine
//! map per channel, so here it is folded into the convolution's weights and bias once, and the
//! network runs in NHWC, where im2col is a copy of contiguous channel runs and a 1x1
//! convolution needs none. Bias, residual and ReLU are applied to the product's output while
//! it is still in cache. Each image goes through the whole network on one core (its
//! activations stay in that core's cache); a batch smaller than the core count splits each
//! matrix product across cores instead.
//!
//! The result equals [`ResNet18::features`] up to float rounding (the parity tests check both
//! against torchvision's golden outputs).

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use gemm::Parallelism;
use rayon::prelude::*;

use super::{BasicBlock, BatchNorm2d, FEATURES, Precision, ResNet18};
use product::{Rhs, Weights, matmul};

pub mod bf16;
mod product;
mod train;
mod winograd;

pub use train::{Loss, Slot, StepResult, TrainNet, cross_entropy};

/// What a convolution adds to its product before storing it: `act(product + bias [+ residual])`.
struct Epilogue<'a> {
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
}

/// PyTorch's batch-norm epsilon, as in [`BatchNorm2d`].
const EPSILON: f32 = 1e-5;

/// A convolution with its batch norm folded in: `weight` is `[k*k*cin, cout]` in
/// (ky, kx, ci) row order, which is the NHWC im2col column order (empty where `winograd`
/// replaces it).
struct FoldedConv {
    weight: Weights,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    /// For a 3x3 stride-1 convolution: its tiling and its weights in that tiling's domain,
    /// `[points][cin][cout]` (see [`winograd::Tiling::weights`]).
    winograd: Option<(&'static winograd::Tiling, Weights)>,
}

/// Working memory of one thread's passes: im2col rows, or the Winograd-domain input and
/// product, and the Winograd-domain weight gradient of the training pass.
#[derive(Default)]
struct Scratch {
    input: Vec<f32>,
    /// bf16 rows: Winograd's transformed input, or im2col's.
    words: Vec<u32>,
    /// An image in bf16, for im2col's bf16 rows.
    image: Vec<u32>,
    product: Vec<f32>,
    gradient: Vec<f32>,
}

struct Block {
    conv1: FoldedConv,
    conv2: FoldedConv,
    downsample: Option<FoldedConv>,
}

/// The eval-mode backbone and head of a [`ResNet18`], ready for [`FusedResNet18::features`].
pub struct FusedResNet18 {
    stem: FoldedConv,
    blocks: Vec<Block>,
    /// `[FEATURES, classes]`, as burn's Linear stores it.
    fc_weight: Vec<f32>,
    fc_bias: Vec<f32>,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("converted to f32")
}

/// `conv` followed by eval-mode `bn` as one convolution: the weights in the convolution's own
/// `[cout, cin, k, k]` layout, each output channel scaled by `gamma / sqrt(var + eps)`, and the
/// bias `beta + (conv bias - mean) * scale`. The fused kernels and the ONNX export both run it.
pub fn fold_batch_norm(conv: &Conv2d, bn: &BatchNorm2d) -> (Vec<f32>, Vec<f32>) {
    let cout = conv.weight.dims()[0];
    let mut w = values(conv.weight.val());
    let conv_bias = conv
        .bias
        .as_ref()
        .map_or_else(|| vec![0.0; cout], |b| values(b.val()));
    let gamma = values(bn.weight.val());
    let beta = values(bn.bias.val());
    let mean = values(bn.running_mean.value_sync());
    let var = values(bn.running_var.value_sync());
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + EPSILON).sqrt())
        .collect();
    let per_channel = w.len() / cout;
    for (row, s) in w.chunks_exact_mut(per_channel).zip(&scale) {
        row.iter_mut().for_each(|v| *v *= s);
    }
    let bias = (0..cout)
        .map(|o| beta[o] + (conv_bias[o] - mean[o]) * scale[o])
        .collect();
    (w, bias)
}

impl FoldedConv {
    fn new(
        conv: &Conv2d,
        bn: &BatchNorm2d,
        (stride, pad): (usize, usize),
        precision: Precision,
    ) -> Self {
        let [cout, cin, kernel, _] = conv.weight.dims();
        let (w, bias) = fold_batch_norm(conv, bn);
        // Each output channel's row in (ky, kx, ci) order; then the transpose to
        // [(ky, kx, ci)][cout], in blocks that stay in cache.
        let depth = kernel * kernel * cin;
        let mut rows = vec![0.0; cout * depth];
        for (o, row) in rows.chunks_exact_mut(depth).enumerate() {
            let src = &w[o * depth..][..depth];
            for i in 0..cin {
                for t in 0..kernel * kernel {
                    row[t * cin + i] = src[i * kernel * kernel + t];
                }
            }
        }
        let mut weight = vec![0.0; depth * cout];
        const BLOCK: usize = 32;
        for o0 in (0..cout).step_by(BLOCK) {
            for r0 in (0..depth).step_by(BLOCK) {
                for o in o0..(o0 + BLOCK).min(cout) {
                    for r in r0..(r0 + BLOCK).min(depth) {
                        weight[r * cout + o] = rows[o * depth + r];
                    }
                }
            }
        }
        // A Winograd convolution needs only its transformed weights.
        let tiling = winograd::tiling((kernel, stride, pad), cin, precision);
        let winograd = tiling.map(|tiling| {
            let mut transformed = Weights::new(precision);
            let points = (tiling.m() + 2).pow(2);
            transformed.set((points, cin, cout), |t| {
                tiling.weights(&weight, cin, cout, t)
            });
            weight = Vec::new();
            (tiling, transformed)
        });
        let mut folded = Weights::new(precision);
        folded.set((1, weight.len() / cout, cout), |w| *w = weight);
        FoldedConv {
            weight: folded,
            bias,
            cin,
            cout,
            kernel,
            stride,
            pad,
            winograd,
        }
    }

    fn out_size(&self, size: usize) -> usize {
        (size + 2 * self.pad - self.kernel) / self.stride + 1
    }

    /// `out = act(conv(x) + bias [+ residual])` for one NHWC image of `h x w`; returns the
    /// output's height and width. `scratch` holds the im2col matrix.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        out: &mut Vec<f32>,
        residual: Option<&[f32]>,
        relu: bool,
        scratch: &mut Scratch,
        parallelism: Parallelism,
    ) -> (usize, usize) {
        if let Some((tiling, weights)) = &self.winograd {
            out.resize(h * w * self.cout, 0.0);
            let epilogue = Epilogue {
                bias: &self.bias,
                residual,
                relu,
            };
            tiling.conv(
                x,
                1,
                (h, w),
                self.cin,
                self.cout,
                weights,
                epilogue,
                out,
                scratch,
                parallelism,
            );
            return (h, w);
        }
        let (ho, wo) = (self.out_size(h), self.out_size(w));
        let rows = ho * wo;
        let depth = self.kernel * self.kernel * self.cin;
        out.clear();
        match residual {
            Some(r) => out.extend(
                r.chunks_exact(self.cout)
                    .flat_map(|px| px.iter().zip(&self.bias).map(|(a, b)| a + b)),
            ),
            None => {
                for _ in 0..rows {
                    out.extend_from_slice(&self.bias);
                }
            }
        }
        let window = (self.kernel, self.stride, self.pad);
        match self.weight.get(0) {
            Rhs::Bf16(packed) if window != (1, 1, 0) => {
                im2col_bf16(x, 1, (h, w), self.cin, window, (ho, wo), scratch);
                bf16::matmul_rows(
                    rows,
                    out,
                    self.cout,
                    true,
                    &scratch.words,
                    packed,
                    parallelism,
                );
            }
            rhs => {
                let lhs: &[f32] = if window == (1, 1, 0) {
                    x
                } else {
                    let col = grown(&mut scratch.input, rows * depth);
                    im2col(x, (h, w), self.cin, window, (ho, wo), depth, col);
                    col
                };
                matmul(
                    (rows, self.cout, depth),
                    out,
                    self.cout,
                    true,
                    lhs,
                    (depth, 1),
                    rhs,
                    parallelism,
                );
            }
        }
        if relu {
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        (ho, wo)
    }
}

/// One RGB image from CHW (planes, as the transforms give it) to HWC (pixels, as the kernels
/// read it).
fn to_hwc(image: &[f32], hwc: &mut [f32]) {
    let plane = image.len() / 3;
    assert_eq!(hwc.len(), 3 * plane, "3 planes in, as many pixels out");
    let (r, gb) = image.split_at(plane);
    let (g, b) = gb.split_at(plane);
    for (px, ((r, g), b)) in hwc.chunks_exact_mut(3).zip(r.iter().zip(g).zip(b)) {
        px.copy_from_slice(&[*r, *g, *b]);
    }
}

/// The first `len` values of a working buffer that only grows. Buffers shared by layers of
/// different sizes are not zero-filled again each time a larger layer follows a smaller one:
/// what the caller does not write holds stale values.
fn grown<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    &mut buffer[..len]
}

/// One row of `row` values (at least `k * k * c`, the rest zero) per output pixel of a
/// `k x k` convolution of NHWC `x` (`c` channels): the input values it sees, in (ky, kx, ci)
/// order, zero outside.
fn im2col<T: Copy + Default>(
    x: &[T],
    (h, w): (usize, usize),
    c: usize,
    (k, stride, pad): (usize, usize, usize),
    (ho, wo): (usize, usize),
    row: usize,
    out: &mut [T],
) {
    assert!(
        row >= k * k * c && out.len() == ho * wo * row,
        "one row per output pixel"
    );
    let mut rows = out.chunks_exact_mut(row);
    for oy in 0..ho {
        for ox in 0..wo {
            let dst = rows.next().expect("sized for every pixel");
            // Windows that reach into the padding see zeros there.
            let inside = |o: usize, n: usize| o * stride >= pad && o * stride + k <= n + pad;
            if !(inside(oy, h) && inside(ox, w)) {
                dst.fill(T::default());
            } else {
                dst[k * k * c..].fill(T::default());
            }
            // The window's columns inside the image, `kx0..kx1`: one run of pixels per row,
            // copied at once (the stem's pixels are 3 values: copied one by one, im2col and
            // its copies were 13% of a bf16 inference pass).
            let kx0 = pad.saturating_sub(ox * stride).min(k);
            let kx1 = (w + pad).saturating_sub(ox * stride).clamp(kx0, k);
            let run = (kx1 - kx0) * c;
            for ky in 0..k {
                let iy = (oy * stride + ky).wrapping_sub(pad);
                if iy >= h || run == 0 {
                    continue;
                }
                let src = (iy * w + ox * stride + kx0 - pad) * c;
                let at = (ky * k + kx0) * c;
                dst[at..at + run].copy_from_slice(&x[src..src + run]);
            }
        }
    }
}

/// [`im2col`]'s rows of `images` NHWC images `x` (each `h x w x c`) as bf16 rows for
/// [`bf16::matmul_rows`], in `scratch.words`: each image rounded to bf16 once (into
/// `scratch.image`), then its windows copied, half the bytes of f32 rows and no conversion
/// pass over the rows (9 or 49 times the image).
fn im2col_bf16(
    x: &[f32],
    images: usize,
    (h, w): (usize, usize),
    c: usize,
    window: (usize, usize, usize),
    (ho, wo): (usize, usize),
    scratch: &mut Scratch,
) {
    let pairs = (window.0 * window.0 * c).div_ceil(2);
    let count = images * ho * wo;
    // Whole micro-tiles of rows; those past `count` are read by the product, their sums dropped.
    let words = grown(&mut scratch.words, count.next_multiple_of(bf16::MR) * pairs);
    let rows = words.chunks_mut(ho * wo * pairs);
    for (x, rows) in x.chunks_exact(h * w * c).zip(rows).take(images) {
        bf16::to_words(x, &mut scratch.image);
        let image = &bf16::halves(&scratch.image)[..h * w * c];
        im2col(
            image,
            (h, w),
            c,
            window,
            (ho, wo),
            2 * pairs,
            bf16::halves_mut(rows),
        );
    }
}

/// Per-thread buffers, reused from image to image.
#[derive(Default)]
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    shortcut: Vec<f32>,
    scratch: Scratch,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

impl FusedResNet18 {
    /// Folds `model`'s eval-mode batch norms into its convolutions, for products in
    /// `precision` (which this CPU must run: [`Precision::on_this_cpu`]).
    pub fn new(model: &ResNet18, precision: Precision) -> Self {
        assert_eq!(
            precision,
            precision.on_this_cpu(),
            "this CPU runs {precision}"
        );
        let blocks: Vec<&BasicBlock> = [&model.layer1, &model.layer2, &model.layer3, &model.layer4]
            .into_iter()
            .flatten()
            .collect();
        // In parallel: folding and transforming 11 million weights is most of a cold start.
        let blocks = blocks
            .into_par_iter()
            .map(|b| {
                let stride = b.conv1.stride[0];
                Block {
                    conv1: FoldedConv::new(&b.conv1, &b.bn1, (stride, 1), precision),
                    conv2: FoldedConv::new(&b.conv2, &b.bn2, (1, 1), precision),
                    downsample: b
                        .downsample
                        .as_ref()
                        .map(|(conv, bn)| FoldedConv::new(conv, bn, (stride, 0), precision)),
                }
            })
            .collect();
        FusedResNet18 {
            stem: FoldedConv::new(&model.conv1, &model.bn1, (2, 3), precision),
            blocks,
            fc_weight: values(model.fc.weight.val()),
            fc_bias: model
                .fc
                .bias
                .as_ref()
                .map_or_else(Vec::new, |b| values(b.val())),
        }
    }

    /// Number of outputs of the head.
    pub fn num_classes(&self) -> usize {
        self.fc_weight.len() / FEATURES
    }

    /// The pooled backbone output, `FEATURES` values per image, of `n` NCHW images of
    /// `3 x size x size` values back to back.
    pub fn features(&self, images: &[f32], size: usize) -> Vec<f32> {
        let per_image = 3 * size * size;
        let n = images.len() / per_image;
        let mut out = vec![0.0; n * FEATURES];
        let threads = rayon::current_num_threads();
        if n >= threads {
            out.par_chunks_mut(FEATURES)
                .zip(images.par_chunks(per_image))
                .for_each(|(f, img)| {
                    // The thread's buffers, sized by its first image and kept from call to
                    // call (rayon's per-task `for_each_init` made fresh ones several times a
                    // batch, each growing and zero-filling them again).
                    let mut buf = BUFFERS.take();
                    self.image_features(img, size, f, &mut buf, Parallelism::None);
                    BUFFERS.set(buf);
                });
        } else {
            let mut buf = Buffers::default();
            for (f, img) in out.chunks_mut(FEATURES).zip(images.chunks(per_image)) {
                self.image_features(img, size, f, &mut buf, Parallelism::Rayon(threads));
            }
        }
        out
    }

    /// Logits, `num_classes` per image, of features from [`FusedResNet18::features`].
    pub fn head(&self, features: &[f32]) -> Vec<f32> {
        let classes = self.num_classes();
        features
            .chunks_exact(FEATURES)
            .flat_map(|f| {
                (0..classes).map(move |o| {
                    let dot: f32 = f
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * self.fc_weight[i * classes + o])
                        .sum();
                    dot + self.fc_bias.get(o).copied().unwrap_or(0.0)
                })
            })
            .collect()
    }

    fn image_features(
        &self,
        image: &[f32],
        size: usize,
        features: &mut [f32],
        buf: &mut Buffers,
        par: Parallelism,
    ) {
        buf.a.resize(image.len(), 0.0);
        to_hwc(image, &mut buf.a);
        let (mut h, mut w) = self.stem.forward(
            &buf.a,
            (size, size),
            &mut buf.b,
            None,
            true,
            &mut buf.scratch,
            par,
        );
        (h, w) = max_pool_3x3_s2(&buf.b, (h, w), self.stem.cout, &mut buf.a);
        // The block input lives in buf.a throughout.
        for block in &self.blocks {
            if let Some(ds) = &block.downsample {
                ds.forward(
                    &buf.a,
                    (h, w),
                    &mut buf.shortcut,
                    None,
                    false,
                    &mut buf.scratch,
                    par,
                );
            }
            let (h1, w1) = block.conv1.forward(
                &buf.a,
                (h, w),
                &mut buf.b,
                None,
                true,
                &mut buf.scratch,
                par,
            );
            let shortcut = if block.downsample.is_some() {
                &buf.shortcut
            } else {
                &buf.a
            };
            (h, w) = block.conv2.forward(
                &buf.b,
                (h1, w1),
                &mut buf.c,
                Some(shortcut),
                true,
                &mut buf.scratch,
                par,
            );
            std::mem::swap(&mut buf.a, &mut buf.c);
        }
        let c = FEATURES;
        features.fill(0.0);
        for px in buf.a.chunks_exact(c) {
            features.iter_mut().zip(px).for_each(|(f, v)| *f += v);
        }
        let n = (h * w) as f32;
        features.iter_mut().for_each(|f| *f /= n);
    }
}

/// torchvision's stem pooling: 3x3 windows, stride 2, padding 1, on NHWC `x`. Padding never
/// wins, as torch's -inf padding never does.
fn max_pool_3x3_s2(
    x: &[f32],
    (h, w): (usize, usize),
    c: usize,
    out: &mut Vec<f32>,
) -> (usize, usize) {
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    out.clear();
    out.resize(ho * wo * c, f32::NEG_INFINITY);
    for oy in 0..ho {
        for ox in 0..wo {
            let dst = &mut out[(oy * wo + ox) * c..][..c];
            for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                    let src = &x[(iy * w + ix) * c..][..c];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.max(*s));
                }
            }
        }
    }
    (ho, wo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) from `seed`, for the kernels' tests.
    pub(super) fn values(seed: u32) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1 << 23) as f32 - 1.0
        }
    }

    /// bf16 products from [`im2col_bf16`]'s rows give the bits of the f32 rows converted by the
    /// product, at windows with odd depths (whole pairs padded) and edges in the padding, with
    /// stale values in the reused buffers.
    #[test]
    fn bf16_im2col_rows_give_the_converted_f32_rows_bits() {
        if !bf16::available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let mut next = values(11);
        // The stem's window, a 3x3 stride-2 one, a 1x1 stride-2 one; two images of 13 x 11.
        for (c, window, cout) in [(3, (7, 2, 3), 5), (5, (3, 2, 1), 7), (4, (1, 2, 0), 3)] {
            let (h, w, images) = (13, 11, 2);
            let (k, stride, pad) = window;
            let (ho, wo) = (
                (h + 2 * pad - k) / stride + 1,
                (w + 2 * pad - k) / stride + 1,
            );
            let depth = k * k * c;
            let rows = images * ho * wo;
            let x: Vec<f32> = (0..images * h * w * c).map(|_| next()).collect();
            let weight: Vec<f32> = (0..depth * cout).map(|_| next()).collect();
            let packed = bf16::Packed::new(depth, cout, &weight, (cout, 1));

            let mut col = vec![0.0; rows * depth];
            for (x, col) in x.chunks(h * w * c).zip(col.chunks_mut(ho * wo * depth)) {
                im2col(x, (h, w), c, window, (ho, wo), depth, col);
            }
            let mut expected = vec![0.0; rows * cout];
            let none = Parallelism::None;
            bf16::matmul(
                rows,
                &mut expected,
                cout,
                false,
                &col,
                depth,
                &packed,
                (depth, cout),
                none,
            );

            let mut scratch = Scratch {
                words: vec![0x7fc0_7fc0; 4 * rows * depth],
                image: vec![0x7fc0_7fc0; 4 * h * w * c],
                ..Scratch::default()
            };
            im2col_bf16(&x, images, (h, w), c, window, (ho, wo), &mut scratch);
            let mut got = vec![0.0; rows * cout];
            bf16::matmul_rows(rows, &mut got, cout, false, &scratch.words, &packed, none);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&got) == bits(&expected),
                "window {window:?}, {c} channels"
            );
        }
    }
}
