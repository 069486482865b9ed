//! From preprocessed images to ranked class probabilities.

use super::eval_net::EvalNet;

/// One class of a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Output index of the class.
    pub index: usize,
    /// Softmax probability.
    pub probability: f32,
}

/// The `k` most probable classes of each image, most probable first. `images` are CHW f32
/// tensors of `3 x image_size x image_size` values (as `catdog::preprocess` makes them), all
/// run through the network as one batch.
pub fn classify(
    net: &EvalNet,
    images: Vec<Vec<f32>>,
    image_size: usize,
    k: usize,
) -> Vec<Vec<Ranked>> {
    let batch: Vec<f32> = images.into_iter().flatten().collect();
    probabilities(net, batch, image_size)
        .iter()
        .map(|row| top_k(row, k))
        .collect()
}

/// Each image's softmax probabilities, in the model's output order. `batch` holds the CHW
/// tensors of `3 x image_size x image_size` values back to back (as a loader batch does), and
/// goes through the network in one forward pass.
pub fn probabilities(net: &EvalNet, batch: Vec<f32>, image_size: usize) -> Vec<Vec<f32>> {
    let n = batch.len() / (3 * image_size * image_size);
    if n == 0 {
        return Vec::new();
    }
    let logits = net.logits(batch, image_size);
    logits.chunks(logits.len() / n).map(softmax).collect()
}

/// exp(x - max) / sum: the shift keeps exp finite for any logits.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / total).collect()
}

/// The `k` largest entries of `probabilities`, largest first (ties: lower index first).
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<Ranked> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|index| Ranked {
            index,
            probability: probabilities[index],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::model::ResNet18;

    #[test]
    fn top_k_orders_by_probability_then_index() {
        let ranked = top_k(&[0.1, 0.4, 0.1, 0.4], 3);
        let indices: Vec<usize> = ranked.iter().map(|r| r.index).collect();
        assert_eq!(indices, [1, 3, 0]);
        assert_eq!(ranked[0].probability, 0.4);
        assert_eq!(top_k(&[0.5, 0.5], 10).len(), 2);
    }

    #[test]
    fn classify_returns_one_normalised_ranking_per_image() {
        let device = Device::flex();
        let net = EvalNet::new(&ResNet18::new(5, &device), &device, Default::default());
        let images = vec![vec![0.5; 3 * 32 * 32], vec![-0.5; 3 * 32 * 32]];
        let rankings = classify(&net, images, 32, 5);
        assert_eq!(rankings.len(), 2);
        for ranking in &rankings {
            let total: f32 = ranking.iter().map(|r| r.probability).sum();
            assert!((total - 1.0).abs() < 1e-5);
            assert!(
                ranking
                    .windows(2)
                    .all(|w| w[0].probability >= w[1].probability)
            );
        }
        assert!(classify(&net, Vec::new(), 32, 5).is_empty());
    }
}
