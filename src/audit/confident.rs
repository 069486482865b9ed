//! Confident learning (Northcutt et al., 2021), the ranking cleanlab uses: a photo is a
//! suspected label error when its out-of-sample probability of another class reaches that
//! class's own threshold (the mean probability the photos labelled with it get), and that
//! class is the likeliest of those that do. Per-class thresholds matter: a class the model
//! is unsure of everywhere is not taken for a label error wherever it wins by a little.

use serde::{Deserialize, Serialize};

/// A photo whose label the out-of-sample probabilities doubt.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    /// Index into the photos given.
    pub index: usize,
    pub given: usize,
    /// The class confident learning assigns it.
    pub predicted: usize,
    /// The probability of `predicted`.
    pub probability: f32,
    /// The probability of the given label: lower is more suspect.
    pub self_confidence: f32,
}

/// Each class's threshold: the mean probability of that class over the photos labelled
/// with it (1.0 for a class no photo carries, so nothing is ever moved to it).
pub fn thresholds(labels: &[usize], probabilities: &[Vec<f32>], classes: usize) -> Vec<f32> {
    let mut sums = vec![0.0f64; classes];
    let mut counts = vec![0usize; classes];
    for (&label, p) in labels.iter().zip(probabilities) {
        sums[label] += f64::from(p[label]);
        counts[label] += 1;
    }
    sums.iter()
        .zip(&counts)
        .map(|(s, &n)| if n == 0 { 1.0 } else { (s / n as f64) as f32 })
        .collect()
}

/// The suspected label errors, most suspect (lowest self-confidence) first; ties in photo
/// order.
pub fn label_issues(
    labels: &[usize],
    probabilities: &[Vec<f32>],
    thresholds: &[f32],
) -> Vec<Issue> {
    let mut issues: Vec<Issue> = labels
        .iter()
        .zip(probabilities)
        .enumerate()
        .filter_map(|(index, (&given, p))| {
            let predicted = (0..p.len())
                .filter(|&j| p[j] >= thresholds[j])
                .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)))?;
            (predicted != given).then_some(Issue {
                index,
                given,
                predicted,
                probability: p[predicted],
                self_confidence: p[given],
            })
        })
        .collect();
    issues.sort_by(|a, b| {
        a.self_confidence
            .total_cmp(&b.self_confidence)
            .then(a.index.cmp(&b.index))
    });
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_label_errors_are_found_and_ranked_first() {
        // Class 0 is predicted confidently (about 0.9), class 1 hesitantly (about 0.6).
        let mut labels = Vec::new();
        let mut probabilities = Vec::new();
        for i in 0..50 {
            let jitter = (i % 5) as f32 * 0.01;
            labels.push(0);
            probabilities.push(vec![0.88 + jitter, 0.12 - jitter]);
            labels.push(1);
            probabilities.push(vec![0.42 - jitter, 0.58 + jitter]);
        }
        // Planted errors: labelled 1, clearly class 0; labelled 0, as class 1 as class 1's own.
        let planted = [
            (100, 1, [0.97, 0.03]),
            (101, 0, [0.35, 0.65]),
            (102, 1, [0.93, 0.07]),
        ];
        for (_, label, p) in planted {
            labels.push(label);
            probabilities.push(p.to_vec());
        }
        // Labelled 1 and lost by a little: below class 0's threshold (0.9), so not an error,
        // though the larger probability says class 0.
        labels.push(1);
        probabilities.push(vec![0.55, 0.45]);

        let t = thresholds(&labels, &probabilities, 2);
        // Means over each class's photos, the planted ones included.
        let expected = [(45.0 + 0.35) / 51.0, (30.0 + 0.03 + 0.07 + 0.45) / 53.0];
        assert!(
            (t[0] - expected[0]).abs() < 1e-4 && (t[1] - expected[1]).abs() < 1e-4,
            "{t:?}"
        );
        let issues = label_issues(&labels, &probabilities, &t);
        let found: Vec<(usize, usize)> = issues.iter().map(|i| (i.index, i.predicted)).collect();
        assert_eq!(found, [(100, 0), (102, 0), (101, 1)]);
        assert_eq!(issues[0].self_confidence, 0.03);
        assert_eq!(issues[0].probability, 0.97);
    }

    #[test]
    fn a_class_nobody_carries_takes_no_photo() {
        let t = thresholds(&[0, 0], &[vec![0.4, 0.6, 0.0], vec![0.9, 0.1, 0.0]], 3);
        assert_eq!(t[2], 1.0);
        assert!((t[0] - 0.65).abs() < 1e-6, "{t:?}");
    }
}
