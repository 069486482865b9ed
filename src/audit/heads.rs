//! Out-of-sample class probabilities from k-fold heads: for each fold, a softmax
//! regression on the frozen backbone's features of the other folds predicts that fold's
//! photos. No photo is scored by a head that saw its label, which is what confident
//! learning needs; a head on cached features trains in a second, where cross-validating
//! the whole network would take hours.

use crate::train::adam::Adam;

/// Full-batch Adam steps per head: the loss has flattened out well before on ImageNet
/// features (standardised, so one learning rate fits every data set).
pub const STEPS: usize = 200;
const LR: f64 = 0.01;
/// L2 penalty on the weights: 512 features and a few thousand photos overfit without it.
const WEIGHT_DECAY: f32 = 1e-3;

/// The probabilities of every class for every photo (`features` is `labels.len() x dim`,
/// row-major), each predicted by the head trained without its fold (`folds[i]` in `0..k`).
pub fn out_of_fold(
    features: &[f32],
    dim: usize,
    labels: &[usize],
    classes: usize,
    folds: &[usize],
    k: usize,
) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); labels.len()];
    for fold in 0..k {
        let train: Vec<usize> = (0..labels.len()).filter(|&i| folds[i] != fold).collect();
        let head = Head::fit(features, dim, labels, classes, &train);
        for i in (0..labels.len()).filter(|&i| folds[i] == fold) {
            out[i] = head.probabilities(&features[i * dim..(i + 1) * dim]);
        }
    }
    out
}

/// A softmax regression on standardised features.
struct Head {
    mean: Vec<f32>,
    scale: Vec<f32>,
    /// `classes x dim`, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Head {
    fn fit(features: &[f32], dim: usize, labels: &[usize], classes: usize, rows: &[usize]) -> Head {
        let n = rows.len().max(1) as f32;
        let mut mean = vec![0.0f32; dim];
        for &r in rows {
            for (m, x) in mean.iter_mut().zip(&features[r * dim..(r + 1) * dim]) {
                *m += x / n;
            }
        }
        let mut var = vec![0.0f32; dim];
        for &r in rows {
            for ((v, x), m) in var
                .iter_mut()
                .zip(&features[r * dim..(r + 1) * dim])
                .zip(&mean)
            {
                *v += (x - m) * (x - m) / n;
            }
        }
        // A feature that never varies (a dead ReLU) gets scale 1 rather than a division by 0.
        let scale: Vec<f32> = var
            .iter()
            .map(|v| if *v > 1e-12 { 1.0 / v.sqrt() } else { 1.0 })
            .collect();
        let standard: Vec<f32> = rows
            .iter()
            .flat_map(|&r| {
                features[r * dim..(r + 1) * dim]
                    .iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((x, m), s)| (x - m) * s)
            })
            .collect();
        let mut head = Head {
            mean,
            scale,
            weights: vec![0.0; classes * dim],
            bias: vec![0.0; classes],
        };
        let mut adam = Adam::new(LR);
        let mut grad_w = vec![0.0f32; classes * dim];
        let mut grad_b = vec![0.0f32; classes];
        let mut p = vec![0.0f32; classes];
        for _ in 0..STEPS {
            grad_w.fill(0.0);
            grad_b.fill(0.0);
            for (x, &r) in standard.chunks_exact(dim).zip(rows) {
                head.softmax(x, &mut p);
                p[labels[r]] -= 1.0;
                for c in 0..classes {
                    let g = p[c] / n;
                    grad_b[c] += g;
                    for (gw, xi) in grad_w[c * dim..(c + 1) * dim].iter_mut().zip(x) {
                        *gw += g * xi;
                    }
                }
            }
            for (g, w) in grad_w.iter_mut().zip(&head.weights) {
                *g += WEIGHT_DECAY * w;
            }
            adam.step_slices([
                ("weights", &mut head.weights[..], &grad_w[..]),
                ("bias", &mut head.bias[..], &grad_b[..]),
            ]);
        }
        head
    }

    /// Softmax of the logits of a standardised feature row, into `out`.
    fn softmax(&self, x: &[f32], out: &mut [f32]) {
        let dim = x.len();
        for (c, o) in out.iter_mut().enumerate() {
            *o = self.bias[c]
                + self.weights[c * dim..(c + 1) * dim]
                    .iter()
                    .zip(x)
                    .map(|(w, x)| w * x)
                    .sum::<f32>();
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for o in out.iter_mut() {
            *o = (*o - max).exp();
            sum += *o;
        }
        for o in out.iter_mut() {
            *o /= sum;
        }
    }

    fn probabilities(&self, raw: &[f32]) -> Vec<f32> {
        let x: Vec<f32> = raw
            .iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .map(|((x, m), s)| (x - m) * s)
            .collect();
        let mut p = vec![0.0; self.bias.len()];
        self.softmax(&x, &mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn heads_score_each_photo_out_of_sample() {
        // Two classes, separable along the first feature; photo 0 is labelled against it.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (n, dim) = (120, 8);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let mut features = Vec::new();
        for &l in &labels {
            features.push(if l == 1 { 2.0 } else { -2.0 } + rng.random_range(-0.5..0.5));
            features.extend((1..dim).map(|_| rng.random_range(-1.0f32..1.0)));
        }
        let mut noisy = labels.clone();
        noisy[0] = 1;
        let folds: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let p = out_of_fold(&features, dim, &noisy, 2, &folds, 4);
        // Out of sample, photo 0 is scored by heads that never saw its wrong label.
        assert!(p[0][0] > 0.8, "{:?}", p[0]);
        let right = (1..n).filter(|&i| p[i][labels[i]] > 0.5).count();
        assert_eq!(right, n - 1);
        assert!(p.iter().all(|q| (q.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    }
}
