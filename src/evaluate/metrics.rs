//! Classification metrics from the true labels and each image's class
//! probabilities: what `metrics.json` holds and the report shows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Probabilities are clamped to at least this before the log (as Keras does):
/// a softmax that underflowed to exactly 0 would give an infinite loss, and the
/// clamp caps one image's loss at -ln(1e-7) ≈ 16.1 so that a single saturated
/// mistake cannot swamp the mean.
const MIN_PROBABILITY: f32 = 1e-7;

/// How well a classifier did on a set of images.
///
/// Per-class scores follow scikit-learn's `zero_division=0`: a score whose
/// denominator is 0 is reported as 0, not NaN, so that the JSON stays plain
/// numbers. A class that is never predicted therefore has precision 0, a class
/// with no image has recall 0, and F1 is 0 where precision + recall is 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Share of images whose most probable class is the true one (0 with no image).
    pub accuracy: f64,
    /// Mean cross-entropy, -ln p(true class), with p clamped away from 0 (0 with no image).
    pub loss: f64,
    /// `confusion_matrix[t][p]`: images of true class `t` predicted as class `p`.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Per class: of the images predicted as it, the share that truly are.
    pub precision: Vec<f64>,
    /// Per class: of its images, the share predicted as it.
    pub recall: Vec<f64>,
    /// Per class: harmonic mean of precision and recall.
    pub f1: Vec<f64>,
    /// Area under the ROC curve: the chance that a random image of a class gets a
    /// higher probability for that class than a random image of another class,
    /// ties counting half. With two classes it is that of the second class; with
    /// more, the mean over classes, one against the rest. `None` where no class
    /// has both positive and negative images (e.g. a test set of cats only).
    pub roc_auc: Option<f64>,
    /// Number of images evaluated.
    pub images: usize,
    /// Class names, in label order.
    pub classes: Vec<String>,
}

impl Metrics {
    /// Computes every metric. `probabilities[i]` holds image `i`'s probability
    /// for each class, in the order of `classes`; the prediction is the most
    /// probable class (the first one on a tie).
    ///
    /// # Panics
    /// If `labels` and `probabilities` differ in length, a label is not a class
    /// index, or a probability row does not have one entry per class: these are
    /// bugs in the caller, not in the data.
    pub fn compute(labels: &[usize], probabilities: &[Vec<f32>], classes: &[String]) -> Metrics {
        let n = classes.len();
        assert_eq!(
            labels.len(),
            probabilities.len(),
            "one probability row per label"
        );
        let mut confusion = vec![vec![0u64; n]; n];
        for (&label, probs) in labels.iter().zip(probabilities) {
            assert!(label < n, "label {label} is not one of {n} classes");
            assert_eq!(
                probs.len(),
                n,
                "a probability row must have one entry per class"
            );
            confusion[label][predicted(probs)] += 1;
        }

        let images = labels.len();
        let correct: u64 = (0..n).map(|k| confusion[k][k]).sum();
        let total_loss: f64 = labels
            .iter()
            .zip(probabilities)
            .map(|(&l, p)| image_loss(l, p))
            .sum();
        let precision: Vec<f64> = (0..n)
            .map(|k| ratio(confusion[k][k], confusion.iter().map(|row| row[k]).sum()))
            .collect();
        let recall: Vec<f64> = (0..n)
            .map(|k| ratio(confusion[k][k], confusion[k].iter().sum()))
            .collect();
        let f1 = precision
            .iter()
            .zip(&recall)
            .map(|(p, r)| {
                if p + r == 0.0 {
                    0.0
                } else {
                    2.0 * p * r / (p + r)
                }
            })
            .collect();

        Metrics {
            accuracy: ratio(correct, images as u64),
            loss: if images == 0 {
                0.0
            } else {
                total_loss / images as f64
            },
            confusion_matrix: confusion,
            precision,
            recall,
            f1,
            roc_auc: roc_auc(labels, probabilities, n),
            images,
            classes: classes.to_vec(),
        }
    }
}

/// The most probable class: the first one on a tie (and never a NaN).
pub fn predicted(probabilities: &[f32]) -> usize {
    let mut best = 0;
    for (k, &p) in probabilities.iter().enumerate() {
        if p > probabilities[best] {
            best = k;
        }
    }
    best
}

/// One image's cross-entropy, -ln p(true class), with p clamped away from 0.
pub fn image_loss(label: usize, probabilities: &[f32]) -> f64 {
    -f64::from(probabilities[label].max(MIN_PROBABILITY)).ln()
}

/// Indices of the `k` images with the highest loss, highest first (ties by
/// index): the most confidently wrong predictions come first.
pub fn top_losses(labels: &[usize], probabilities: &[Vec<f32>], k: usize) -> Vec<usize> {
    let losses: Vec<f64> = labels
        .iter()
        .zip(probabilities)
        .map(|(&l, p)| image_loss(l, p))
        .collect();
    let mut order: Vec<usize> = (0..losses.len()).collect();
    order.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]));
    order.truncate(k);
    order
}

/// Why a photo is worth a closer look (see [`instructive`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Right, with the highest probabilities.
    ConfidentRight,
    /// Wrong, with the highest probabilities.
    ConfidentWrong,
    /// The lowest probability for the predicted class, right or wrong.
    Uncertain,
}

impl Verdict {
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::ConfidentRight => "confident, right",
            Verdict::ConfidentWrong => "confident, wrong",
            Verdict::Uncertain => "uncertain",
        }
    }
}

/// Up to `k` photos that teach the most about a model: in turn the most
/// confident right one, the most confident wrong one and the least certain
/// one, each photo once; a kind that runs out leaves its turns to the others.
pub fn instructive(
    labels: &[usize],
    probabilities: &[Vec<f32>],
    k: usize,
) -> Vec<(usize, Verdict)> {
    let confidence = |i: usize| probabilities[i][predicted(&probabilities[i])];
    let mut by_confidence: Vec<usize> = (0..labels.len()).collect();
    by_confidence.sort_by(|&a, &b| confidence(b).total_cmp(&confidence(a)).then(a.cmp(&b)));
    let right = |i: &usize| predicted(&probabilities[*i]) == labels[*i];
    let mut queues: [(Verdict, Vec<usize>); 3] = [
        (
            Verdict::ConfidentRight,
            by_confidence.iter().copied().filter(right).collect(),
        ),
        (
            Verdict::ConfidentWrong,
            by_confidence
                .iter()
                .copied()
                .filter(|i| !right(i))
                .collect(),
        ),
        (
            Verdict::Uncertain,
            by_confidence.iter().rev().copied().collect(),
        ),
    ];
    let mut chosen: Vec<(usize, Verdict)> = Vec::with_capacity(k);
    let mut taken = vec![false; labels.len()];
    while chosen.len() < k.min(labels.len()) {
        for (verdict, queue) in &mut queues {
            while let Some(&i) = queue.first() {
                queue.remove(0);
                if !taken[i] {
                    taken[i] = true;
                    chosen.push((i, *verdict));
                    break;
                }
            }
            if chosen.len() == k.min(labels.len()) {
                break;
            }
        }
    }
    chosen
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Two classes: the AUC of the second class's probability. More: the mean of
/// the one-vs-rest AUCs of the classes for which it is defined.
fn roc_auc(labels: &[usize], probabilities: &[Vec<f32>], n: usize) -> Option<f64> {
    let classes = if n == 2 { 1..2 } else { 0..n };
    let aucs: Vec<f64> = classes
        .filter_map(|k| {
            let scores: Vec<f32> = probabilities.iter().map(|p| p[k]).collect();
            let positive: Vec<bool> = labels.iter().map(|&l| l == k).collect();
            auc(&scores, &positive)
        })
        .collect();
    (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
}

/// Area under the ROC curve by the Mann-Whitney U statistic: rank all scores
/// (tied scores share their mean rank, which counts a tied pair as half), then
/// U = (sum of the positives' ranks) - n⁺(n⁺+1)/2 and AUC = U / (n⁺ n⁻).
/// `None` without a positive or without a negative.
fn auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut below, mut positive_rank_sum) = (0usize, 0.0);
    for tied in order.chunk_by(|&a, &b| scores[a] == scores[b]) {
        // Ranks below+1 ..= below+len, whose mean is below + (len+1)/2.
        let mean_rank = below as f64 + (tied.len() + 1) as f64 / 2.0;
        positive_rank_sum += mean_rank * tied.iter().filter(|&&i| positive[i]).count() as f64;
        below += tied.len();
    }
    Some((positive_rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// A plain-text table: the summary line, per-class scores, then the confusion matrix.
impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auc = self.roc_auc.map_or("n/a".to_owned(), |a| format!("{a:.4}"));
        writeln!(
            f,
            "{} images   accuracy {:.2}%   loss {:.4}   ROC AUC {auc}",
            self.images,
            100.0 * self.accuracy,
            self.loss
        )?;
        let corner = "true \\ predicted";
        let longest_name = self
            .classes
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0);
        let name_width = longest_name.max(corner.len());
        writeln!(f)?;
        writeln!(
            f,
            "{:<name_width$} {:>9} {:>7} {:>7} {:>7}",
            "class", "precision", "recall", "f1", "images"
        )?;
        for (k, class) in self.classes.iter().enumerate() {
            let support: u64 = self.confusion_matrix[k].iter().sum();
            writeln!(
                f,
                "{class:<name_width$} {:>9.4} {:>7.4} {:>7.4} {support:>7}",
                self.precision[k], self.recall[k], self.f1[k]
            )?;
        }
        writeln!(f)?;
        writeln!(f, "confusion matrix (rows: true class, columns: predicted)")?;
        let count_width = longest_name.max(7);
        write!(f, "{corner:<name_width$}")?;
        for class in &self.classes {
            write!(f, " {class:>count_width$}")?;
        }
        writeln!(f)?;
        for (class, row) in self.classes.iter().zip(&self.confusion_matrix) {
            write!(f, "{class:<name_width$}")?;
            for count in row {
                write!(f, " {count:>count_width$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructive_photos_take_turns_and_never_repeat() {
        // Labels all 0; predicted class 0 is right.
        let p = |cat: f32| vec![cat, 1.0 - cat];
        let probabilities = vec![p(0.99), p(0.6), p(0.02), p(0.45), p(0.9), p(0.3)];
        let labels = vec![0; 6];
        let got = instructive(&labels, &probabilities, 5);
        use Verdict::*;
        assert_eq!(
            got,
            [
                (0, ConfidentRight),
                (2, ConfidentWrong),
                (3, Uncertain),
                (4, ConfidentRight),
                (5, ConfidentWrong)
            ]
        );
        // Nothing wrong: the right and the uncertain share the turns, every photo once.
        let all_right = instructive(&[0, 0, 0], &[p(0.9), p(0.8), p(0.55)], 8);
        assert_eq!(
            all_right,
            [(0, ConfidentRight), (2, Uncertain), (1, ConfidentRight)]
        );
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Rows [p(cat), p(dog)] from p(dog).
    fn binary(p_dog: &[f32]) -> Vec<Vec<f32>> {
        p_dog.iter().map(|&d| vec![1.0 - d, d]).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    fn all_close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(*x, *y))
    }

    #[test]
    fn binary_case_by_hand() {
        // Cats get p(dog) 0.1 0.4 0.6 (the last is predicted dog); dogs get
        // 0.3 0.8 0.9 (the first is predicted cat).
        let m = Metrics::compute(
            &[0, 0, 0, 1, 1, 1],
            &binary(&[0.1, 0.4, 0.6, 0.3, 0.8, 0.9]),
            &names(&["cat", "dog"]),
        );
        assert_eq!(m.confusion_matrix, vec![vec![2, 1], vec![1, 2]]);
        assert_eq!(m.images, 6);
        assert!(close(m.accuracy, 4.0 / 6.0));
        assert!(all_close(&m.precision, &[2.0 / 3.0, 2.0 / 3.0]));
        assert!(all_close(&m.recall, &[2.0 / 3.0, 2.0 / 3.0]));
        assert!(all_close(&m.f1, &[2.0 / 3.0, 2.0 / 3.0]));
        // p(true) = 0.9 0.6 0.4 0.3 0.8 0.9, whose product is 0.6^6.
        assert!(close(m.loss, -(0.6f64).ln()), "{}", m.loss);
        // Dog scores 0.3 0.8 0.9 against cat scores 0.1 0.4 0.6: 1 + 3 + 3 of 9 pairs.
        assert!(close(m.roc_auc.unwrap(), 7.0 / 9.0));
    }

    #[test]
    fn auc_counts_ties_as_half() {
        // Dogs 0.5 0.7, cats 0.5 0.2: pairs (0.5,0.5) = ½, the other three = 1.
        let m = Metrics::compute(
            &[0, 1, 0, 1],
            &binary(&[0.5, 0.5, 0.2, 0.7]),
            &names(&["cat", "dog"]),
        );
        assert!(close(m.roc_auc.unwrap(), 3.5 / 4.0));
        let all_tied = Metrics::compute(&[0, 1, 0, 1], &binary(&[0.5; 4]), &names(&["cat", "dog"]));
        assert!(close(all_tied.roc_auc.unwrap(), 0.5));
        // A tie predicts the first class.
        assert_eq!(all_tied.confusion_matrix, vec![vec![2, 0], vec![2, 0]]);
    }

    #[test]
    fn perfect_and_inverted_classifiers() {
        let labels = [0, 0, 1, 1];
        let perfect = Metrics::compute(
            &labels,
            &binary(&[0.0, 0.2, 0.7, 1.0]),
            &names(&["cat", "dog"]),
        );
        assert_eq!(perfect.accuracy, 1.0);
        assert_eq!(perfect.roc_auc, Some(1.0));
        assert!(all_close(&perfect.f1, &[1.0, 1.0]));
        // p(true) = 1 0.8 0.7 1.
        assert!(close(perfect.loss, -(0.8f64.ln() + 0.7f64.ln()) / 4.0));

        let inverted = Metrics::compute(
            &labels,
            &binary(&[1.0, 0.8, 0.3, 0.0]),
            &names(&["cat", "dog"]),
        );
        assert_eq!(inverted.accuracy, 0.0);
        assert_eq!(inverted.roc_auc, Some(0.0));
        assert_eq!(inverted.confusion_matrix, vec![vec![0, 2], vec![2, 0]]);
        assert!(all_close(&inverted.precision, &[0.0, 0.0]));
        assert!(all_close(&inverted.f1, &[0.0, 0.0]));
        // p(true) is 0 for two images: clamped to 1e-7, not infinite.
        let expected = -(2.0 * f64::from(MIN_PROBABILITY).ln() + 0.2f64.ln() + 0.3f64.ln()) / 4.0;
        assert!((inverted.loss - expected).abs() < 1e-4, "{}", inverted.loss);
    }

    #[test]
    fn class_never_predicted_scores_zero_and_auc_is_one_vs_rest_mean() {
        // Foxes are predicted as cat (image 2) and dog (image 3), never as fox.
        let probs = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.2, 0.45, 0.35],
            vec![0.5, 0.2, 0.3],
            vec![0.1, 0.5, 0.4],
        ];
        let m = Metrics::compute(&[0, 1, 2, 2], &probs, &names(&["cat", "dog", "fox"]));
        assert_eq!(
            m.confusion_matrix,
            vec![vec![1, 0, 0], vec![0, 1, 0], vec![1, 1, 0]]
        );
        assert!(close(m.accuracy, 0.5));
        assert!(all_close(&m.precision, &[0.5, 0.5, 0.0]));
        assert!(all_close(&m.recall, &[1.0, 1.0, 0.0]));
        assert!(all_close(&m.f1, &[2.0 / 3.0, 2.0 / 3.0, 0.0]));
        // One vs rest: cat 0.7 beats 0.2 0.5 0.1 → 1; dog 0.45 beats 0.2 0.2, not
        // 0.5 → 2/3; fox 0.3 0.4 against 0.1 0.35 → 3 of 4 pairs.
        assert!(close(m.roc_auc.unwrap(), (1.0 + 2.0 / 3.0 + 0.75) / 3.0));
    }

    #[test]
    fn auc_is_undefined_with_one_class_present_and_empty_input_is_zero() {
        let cats_only = Metrics::compute(&[0, 0], &binary(&[0.1, 0.9]), &names(&["cat", "dog"]));
        assert_eq!(cats_only.roc_auc, None);
        assert!(all_close(&cats_only.recall, &[0.5, 0.0]));

        let empty = Metrics::compute(&[], &[], &names(&["cat", "dog"]));
        assert_eq!(
            (empty.images, empty.accuracy, empty.loss, empty.roc_auc),
            (0, 0.0, 0.0, None)
        );
    }

    #[test]
    fn top_losses_sorts_by_loss_descending() {
        // Losses -ln 0.9, -ln 0.2, -ln 0.6, -ln 0.2.
        let probs = binary(&[0.1, 0.8, 0.6, 0.2]);
        assert_eq!(top_losses(&[0, 0, 1, 1], &probs, 3), vec![1, 3, 2]);
        assert_eq!(top_losses(&[0, 0, 1, 1], &probs, 10).len(), 4);
    }

    #[test]
    fn serialises_with_the_documented_keys() {
        let m = Metrics::compute(&[0, 1], &binary(&[0.2, 0.9]), &names(&["cat", "dog"]));
        let json = serde_json::to_value(&m).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "accuracy",
                "classes",
                "confusion_matrix",
                "f1",
                "images",
                "loss",
                "precision",
                "recall",
                "roc_auc"
            ]
        );
        assert_eq!(serde_json::from_value::<Metrics>(json).unwrap(), m);
    }

    #[test]
    fn table_shows_summary_scores_and_matrix() {
        let m = Metrics::compute(
            &[0, 0, 0, 1, 1, 1],
            &binary(&[0.1, 0.4, 0.6, 0.3, 0.8, 0.9]),
            &names(&["cat", "dog"]),
        );
        let table = m.to_string();
        assert!(
            table.starts_with("6 images   accuracy 66.67%   loss 0.5108   ROC AUC 0.7778\n"),
            "{table}"
        );
        assert!(
            table.contains("\ncat                 0.6667  0.6667  0.6667       3\n"),
            "{table}"
        );
        assert!(table.ends_with("\ntrue \\ predicted     cat     dog\ncat                    2       1\ndog                    1       2\n"), "{table}");
    }
}
