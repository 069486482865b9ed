//! Fitting a model's calibration ([`crate::model::calibration`]) and measuring how well its
//! probabilities are calibrated: expected calibration error, negative log-likelihood and Brier
//! score, before and after the temperature.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::{image_loss, predicted};
use crate::error::{Error, Result};
use crate::model::calibration::{Calibration, OOD_PASS, OodModel, softmax};

/// Equal-width confidence bins of the expected calibration error (and the reliability diagram).
pub const ECE_BINS: usize = 15;

/// How well probabilities are calibrated, before and after the temperature: what evaluation
/// files hold as `calibration`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub temperature: f64,
    pub ece_before: f64,
    pub ece_after: f64,
    pub nll_before: f64,
    pub nll_after: f64,
    pub brier_before: f64,
    pub brier_after: f64,
}

impl CalibrationReport {
    /// The scores of the softmax of `logits` at temperature 1 and at `temperature`.
    pub fn compute(labels: &[usize], logits: &[Vec<f32>], temperature: f64) -> Self {
        let at = |t: f64| -> Vec<Vec<f32>> { logits.iter().map(|l| softmax(l, t)).collect() };
        let (before, after) = (at(1.0), at(temperature));
        CalibrationReport {
            temperature,
            ece_before: ece(labels, &before),
            ece_after: ece(labels, &after),
            nll_before: nll(labels, &before),
            nll_after: nll(labels, &after),
            brier_before: brier(labels, &before),
            brier_after: brier(labels, &after),
        }
    }
}

/// One confidence bin of a reliability diagram.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bin {
    /// Photos whose top probability falls in the bin.
    pub count: usize,
    /// Their mean top probability (0 when empty).
    pub confidence: f64,
    /// The share of them whose most probable class is right (0 when empty).
    pub accuracy: f64,
}

/// [`ECE_BINS`] equal-width bins of the top probability, `[0, 1/15)`, ..., `[14/15, 1]`.
pub fn reliability(labels: &[usize], probabilities: &[Vec<f32>]) -> Vec<Bin> {
    let mut bins = vec![Bin::default(); ECE_BINS];
    for (&label, p) in labels.iter().zip(probabilities) {
        let top = predicted(p);
        let confidence = f64::from(p[top]);
        let bin = &mut bins[((confidence * ECE_BINS as f64) as usize).min(ECE_BINS - 1)];
        bin.count += 1;
        bin.confidence += confidence;
        bin.accuracy += f64::from(u8::from(top == label));
    }
    for bin in &mut bins {
        if bin.count > 0 {
            bin.confidence /= bin.count as f64;
            bin.accuracy /= bin.count as f64;
        }
    }
    bins
}

/// Expected calibration error: the photo-weighted mean of |accuracy - confidence| over the
/// [`ECE_BINS`] bins (0 with no photo).
pub fn ece(labels: &[usize], probabilities: &[Vec<f32>]) -> f64 {
    let n = labels.len().max(1) as f64;
    reliability(labels, probabilities)
        .iter()
        .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Mean negative log-likelihood of the true class (clamped as the evaluation's loss).
pub fn nll(labels: &[usize], probabilities: &[Vec<f32>]) -> f64 {
    let total: f64 = labels
        .iter()
        .zip(probabilities)
        .map(|(&l, p)| image_loss(l, p))
        .sum();
    total / labels.len().max(1) as f64
}

/// Brier score as Brier defined it: the mean over photos of the squared distance between the
/// probabilities and the one-hot truth, summed over classes (twice scikit-learn's binary
/// `brier_score_loss`).
pub fn brier(labels: &[usize], probabilities: &[Vec<f32>]) -> f64 {
    let total: f64 = labels
        .iter()
        .zip(probabilities)
        .map(|(&l, p)| {
            p.iter()
                .enumerate()
                .map(|(k, &pk)| (f64::from(pk) - f64::from(u8::from(k == l))).powi(2))
                .sum::<f64>()
        })
        .sum();
    total / labels.len().max(1) as f64
}

/// The temperature T that minimises the mean NLL of softmax(logits / T). With b = 1/T, the
/// NLL is convex in b and its derivative, mean(E_softmax[z] - z_true), increases with b, so
/// bisection on its sign finds the minimum; T stays within [0.05, 20] (a validation split the
/// model separates perfectly would push it to 0, and every answer to certainty).
pub fn fit_temperature(labels: &[usize], logits: &[Vec<f32>]) -> f64 {
    let derivative = |b: f64| -> f64 {
        let total: f64 = labels
            .iter()
            .zip(logits)
            .map(|(&l, z)| {
                let p = softmax(z, 1.0 / b);
                let expected: f64 = p.iter().zip(z).map(|(&p, &z)| f64::from(p * z)).sum();
                expected - f64::from(z[l])
            })
            .sum();
        total / labels.len().max(1) as f64
    };
    let (mut low, mut high) = ((0.05f64).ln(), (20.0f64).ln());
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        if derivative(mid.exp()) < 0.0 {
            low = mid;
        } else {
            high = mid;
        }
    }
    1.0 / (0.5 * (low + high)).exp()
}

/// The split-conformal threshold on the scores `1 - p(true class)` of calibration photos: the
/// ⌈(n+1)(1-error_rate)⌉-th smallest, which keeps the true class of a new exchangeable photo
/// with probability at least 1 - error_rate. Too few photos for that rank: 1 (every class kept).
pub fn conformal_threshold(mut scores: Vec<f64>, error_rate: f64) -> f64 {
    scores.sort_by(f64::total_cmp);
    let rank = ((scores.len() + 1) as f64 * (1.0 - error_rate)).ceil() as usize;
    match rank {
        0 => 0.0,
        r if r > scores.len() => 1.0,
        r => scores[r - 1],
    }
}

/// The value that `share` of `scores` are at or below (the ⌈share·n⌉-th smallest).
pub fn quantile(mut scores: Vec<f64>, share: f64) -> f64 {
    scores.sort_by(f64::total_cmp);
    let rank = ((scores.len() as f64 * share).ceil() as usize).clamp(1, scores.len().max(1));
    scores.get(rank - 1).copied().unwrap_or(f64::INFINITY)
}

/// Class means and a shared covariance of `features` (`labels.len()` rows of `dim` values),
/// the covariance shrunk towards a multiple of the identity by Ledoit and Wolf's estimate
/// (2004): with fewer photos than features the sample covariance cannot be inverted, and with
/// a few more it is too noisy to. A class without photos gets no mean.
pub fn fit_ood(features: &[f32], labels: &[usize], classes: usize, dim: usize) -> OodModel {
    let n = labels.len();
    assert_eq!(features.len(), n * dim, "one feature row per label");
    let mut sums = vec![0.0f64; classes * dim];
    let mut counts = vec![0usize; classes];
    for (row, &l) in features.chunks_exact(dim).zip(labels) {
        counts[l] += 1;
        for (s, &x) in sums[l * dim..(l + 1) * dim].iter_mut().zip(row) {
            *s += f64::from(x);
        }
    }
    let means: Vec<Vec<f64>> = (0..classes)
        .filter(|&k| counts[k] > 0)
        .map(|k| {
            let c = counts[k] as f64;
            sums[k * dim..(k + 1) * dim].iter().map(|s| s / c).collect()
        })
        .collect();
    let index: Vec<Option<usize>> = {
        let mut next = 0;
        (0..classes)
            .map(|k| {
                (counts[k] > 0).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    };
    // Rows of x - mean(class of x).
    let centred: Vec<f64> = features
        .chunks_exact(dim)
        .zip(labels)
        .flat_map(|(row, &l)| {
            let mean = &means[index[l].expect("the class has this photo")];
            row.iter().zip(mean).map(|(&x, m)| f64::from(x) - m)
        })
        .collect();
    let total = n.max(1) as f64;
    let mut sample = vec![0.0f64; dim * dim];
    sample.par_chunks_mut(dim).enumerate().for_each(|(i, out)| {
        for x in centred.chunks_exact(dim) {
            let xi = x[i] / total;
            for (o, &xj) in out.iter_mut().zip(x) {
                *o += xi * xj;
            }
        }
    });
    let covariance = ledoit_wolf(&sample, &centred, dim);
    let precision = invert_spd(&covariance, dim);
    OodModel::new(dim, means.concat(), precision)
}

/// (1 - λ) S + λ m I with m = tr(S)/d and Ledoit and Wolf's λ, from the sample covariance
/// `sample` of the rows of `centred`.
fn ledoit_wolf(sample: &[f64], centred: &[f64], dim: usize) -> Vec<f64> {
    let d = dim as f64;
    let n = (centred.len() / dim).max(1) as f64;
    let m = (0..dim).map(|i| sample[i * dim + i]).sum::<f64>() / d;
    let frobenius: f64 = sample.iter().map(|s| s * s).sum();
    let delta = (frobenius - m * m * d) / d;
    // Mean over photos of |x xᵀ - S|² = |x|⁴ - 2 xᵀ S x + |S|².
    // Collected before summing: a parallel sum's order, hence its rounding, would vary from
    // run to run, and the stored model must not.
    let spreads: Vec<f64> = centred
        .par_chunks_exact(dim)
        .map(|x| {
            let norm: f64 = x.iter().map(|v| v * v).sum();
            let quadratic: f64 = sample
                .chunks_exact(dim)
                .zip(x)
                .map(|(row, xi)| xi * row.iter().zip(x).map(|(s, xj)| s * xj).sum::<f64>())
                .sum();
            norm * norm - 2.0 * quadratic + frobenius
        })
        .collect();
    let spread: f64 = spreads.iter().sum();
    let beta = (spread / (n * n * d)).min(delta);
    let shrinkage = if delta > 0.0 { beta / delta } else { 1.0 };
    // A floor keeps the identity target invertible when every feature is constant.
    let target = m.max(1e-12);
    let mut out: Vec<f64> = sample.iter().map(|s| (1.0 - shrinkage) * s).collect();
    for i in 0..dim {
        out[i * dim + i] += shrinkage * target;
    }
    out
}

/// The inverse of a symmetric positive definite matrix, by Cholesky: A = L Lᵀ, Y = L⁻¹, A⁻¹ = Yᵀ Y.
fn invert_spd(a: &[f64], dim: usize) -> Vec<f64> {
    let mut l = vec![0.0f64; dim * dim];
    for i in 0..dim {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * dim + k] * l[j * dim + k]).sum();
            if i == j {
                // Rounding can leave a tiny non-positive pivot in a matrix that is PD in theory.
                l[i * dim + i] = (a[i * dim + i] - dot).max(1e-300).sqrt();
            } else {
                l[i * dim + j] = (a[i * dim + j] - dot) / l[j * dim + j];
            }
        }
    }
    // Column c of Y = L⁻¹ by forward substitution, each column on its own.
    let columns: Vec<Vec<f64>> = (0..dim)
        .into_par_iter()
        .map(|c| {
            let mut y = vec![0.0f64; dim];
            for i in c..dim {
                let rhs = if i == c { 1.0 } else { 0.0 };
                let dot: f64 = (c..i).map(|k| l[i * dim + k] * y[k]).sum();
                y[i] = (rhs - dot) / l[i * dim + i];
            }
            y
        })
        .collect();
    // (Yᵀ Y)[a][b] = Σ_i Y[i][a] Y[i][b] = the dot product of columns a and b.
    let mut out = vec![0.0f64; dim * dim];
    out.par_chunks_mut(dim).enumerate().for_each(|(a, row)| {
        for (b, o) in row.iter_mut().enumerate() {
            *o = columns[a].iter().zip(&columns[b]).map(|(x, y)| x * y).sum();
        }
    });
    out
}

/// What fitting a calibration gives: the calibration (for `model.json`), the
/// out-of-distribution model (for `ood.safetensors`) and the scores on the validation split.
#[derive(Clone, Debug)]
pub struct Fitted {
    pub calibration: Calibration,
    pub ood: OodModel,
    /// Before and after the temperature, on the photos it was fitted on.
    pub validation: CalibrationReport,
}

/// Photos of one split as the network saw them: pooled features (`labels.len()` rows of `dim`),
/// and (where needed) logits, one row per photo.
pub struct Seen<'a> {
    pub labels: &'a [usize],
    pub features: &'a [f32],
    pub logits: &'a [Vec<f32>],
}

/// Fits the temperature and the conformal threshold on `validation`, the out-of-distribution
/// model on `train`'s features and its threshold on `validation` (so that [`OOD_PASS`] of its
/// photos pass).
pub fn fit(
    train: &Seen,
    validation: &Seen,
    classes: usize,
    dim: usize,
    error_rate: f64,
) -> Result<Fitted> {
    check_error_rate(error_rate)?;
    let temperature = fit_temperature(validation.labels, validation.logits);
    let scores: Vec<f64> = validation
        .labels
        .iter()
        .zip(validation.logits)
        .map(|(&l, z)| 1.0 - f64::from(softmax(z, temperature)[l]))
        .collect();
    let conformal_threshold = conformal_threshold(scores, error_rate);
    let ood = fit_ood(train.features, train.labels, classes, dim);
    let ood_scores: Vec<f64> = validation
        .features
        .par_chunks_exact(dim)
        .map(|f| ood.score(f))
        .collect();
    Ok(Fitted {
        calibration: Calibration {
            temperature,
            error_rate,
            conformal_threshold,
            ood_threshold: quantile(ood_scores, OOD_PASS),
        },
        ood,
        validation: CalibrationReport::compute(validation.labels, validation.logits, temperature),
    })
}

/// `--error-rate` must leave something to promise and something to miss.
pub fn check_error_rate(error_rate: f64) -> Result<()> {
    if error_rate > 0.0 && error_rate < 1.0 {
        Ok(())
    } else {
        Err(Error::setting(
            "--error-rate",
            format!(
                "{error_rate} is not between 0 and 1 (e.g. 0.05: the true class is missed for at most 5% of photos)"
            ),
        ))
    }
}

/// `--max-false-rate CLASS=RATE`: at most this share of the photos of other classes may be
/// answered CLASS (what a content filter needs: few photos wrongly let through, or blocked).
#[derive(Clone, Debug, PartialEq)]
pub struct FalseRateLimit {
    pub class: String,
    pub rate: f64,
}

impl std::str::FromStr for FalseRateLimit {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |problem: String| Error::setting("--max-false-rate", problem);
        let (class, rate) = text
            .split_once('=')
            .ok_or_else(|| bad(format!("'{text}' is not CLASS=RATE, e.g. dog=0.01")))?;
        let rate: f64 = rate
            .parse()
            .ok()
            .filter(|r| (0.0..1.0).contains(r))
            .ok_or_else(|| {
                bad(format!(
                    "'{rate}' is not a share from 0 to below 1, e.g. 0.01"
                ))
            })?;
        Ok(FalseRateLimit {
            class: class.to_owned(),
            rate,
        })
    }
}

/// A class's threshold for a [`FalseRateLimit`], and what it achieves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub class: String,
    pub max_false_rate: f64,
    /// The class is answered when its calibrated probability is above this.
    pub threshold: f64,
    /// On the validation split, where the threshold was chosen.
    pub validation: Rates,
    /// On the evaluated split.
    pub evaluated: Rates,
}

/// What a threshold does on a set of photos.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// The share of the other classes' photos answered as the class.
    pub false_rate: f64,
    /// The share of the class's photos answered as it.
    pub recall: f64,
}

/// The lowest threshold (the most photos of the class found) whose false rate on these photos
/// is at most `max_false_rate`: the class is answered when its score is above the
/// ⌊max_false_rate · negatives⌋+1-th highest score of the other photos.
pub fn threshold_for(scores: &[f64], positive: &[bool], max_false_rate: f64) -> f64 {
    let mut negatives: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, p)| !**p)
        .map(|(s, _)| *s)
        .collect();
    negatives.sort_by(|a, b| b.total_cmp(a));
    let allowed = (max_false_rate * negatives.len() as f64).floor() as usize;
    negatives.get(allowed).copied().unwrap_or(0.0)
}

/// The false rate and recall of answering the class above `threshold`.
pub fn rates(scores: &[f64], positive: &[bool], threshold: f64) -> Rates {
    let (mut fp, mut tp) = (0usize, 0usize);
    for (&s, &p) in scores.iter().zip(positive) {
        if s > threshold {
            if p {
                tp += 1;
            } else {
                fp += 1;
            }
        }
    }
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    Rates {
        false_rate: fp as f64 / neg.max(1) as f64,
        recall: tp as f64 / pos.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn normal(rng: &mut ChaCha8Rng) -> f64 {
        // Box-Muller.
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// `n` photos from a calibrated two-class model: logit gap g ~ N(0, 3²), the label drawn
    /// with p(class 1) = sigmoid(g); the logits reported are (0, g · overconfidence).
    fn planted(n: usize, overconfidence: f64, seed: u64) -> (Vec<usize>, Vec<Vec<f32>>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let gap = 3.0 * normal(&mut rng);
                let p1 = 1.0 / (1.0 + (-gap).exp());
                let label = usize::from(rng.random::<f64>() < p1);
                (label, vec![0.0, (gap * overconfidence) as f32])
            })
            .unzip()
    }

    #[test]
    fn the_temperature_recovers_a_planted_overconfidence_and_lowers_the_errors() {
        for planted_t in [0.5, 1.0, 3.0] {
            let (labels, logits) = planted(4000, planted_t, 7);
            let t = fit_temperature(&labels, &logits);
            assert!((t / planted_t - 1.0).abs() < 0.08, "{planted_t}: {t}");
        }
        let (labels, logits) = planted(4000, 3.0, 8);
        let report =
            CalibrationReport::compute(&labels, &logits, fit_temperature(&labels, &logits));
        assert!(
            report.ece_before > 0.1 && report.ece_after < 0.03,
            "{report:?}"
        );
        assert!(report.nll_after < report.nll_before && report.brier_after < report.brier_before);
    }

    #[test]
    fn the_false_rate_threshold_is_chosen_on_one_set_and_measured_on_another() {
        let limit: FalseRateLimit = "dog=0.25".parse().unwrap();
        assert_eq!((limit.class.as_str(), limit.rate), ("dog", 0.25));
        for bad in ["dog", "dog=2", "dog=x"] {
            let err = bad.parse::<FalseRateLimit>().unwrap_err().to_string();
            assert!(err.contains("--max-false-rate"), "{err}");
        }
        // Cats score 0.1 0.2 0.6 0.9; one of four may pass: above 0.6.
        let scores = [0.1, 0.2, 0.6, 0.9, 0.5, 0.7, 0.95];
        let dog = [false, false, false, false, true, true, true];
        let t = threshold_for(&scores, &dog, limit.rate);
        assert_eq!(t, 0.6);
        let r = rates(&scores, &dog, t);
        assert_eq!((r.false_rate, r.recall), (0.25, 2.0 / 3.0));
        assert_eq!(threshold_for(&scores, &dog, 0.0), 0.9);
    }

    #[test]
    fn scores_by_hand() {
        // Confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins of 0.9 and of 0.6.
        let labels = [0, 1, 1];
        let p = vec![vec![0.9, 0.1], vec![0.9, 0.1], vec![0.4, 0.6]];
        let expected_ece = 2.0 / 3.0 * (0.5f64 - 0.9).abs() + 1.0 / 3.0 * (1.0f64 - 0.6).abs();
        assert!((ece(&labels, &p) - expected_ece).abs() < 1e-6);
        let expected_brier = (0.02 + 2.0 * 0.81 + 2.0 * 0.16) / 3.0;
        assert!((brier(&labels, &p) - expected_brier).abs() < 1e-6);
        let expected_nll = -(0.9f64.ln() + 0.1f64.ln() + 0.6f64.ln()) / 3.0;
        assert!((nll(&labels, &p) - expected_nll).abs() < 1e-6);
        assert_eq!(conformal_threshold(vec![0.3, 0.1, 0.2], 0.5), 0.2);
        assert_eq!(conformal_threshold(vec![0.3, 0.1, 0.2], 0.1), 1.0);
        assert_eq!(quantile(vec![4.0, 1.0, 3.0, 2.0], 0.75), 3.0);
        assert!(check_error_rate(0.0).is_err() && check_error_rate(1.0).is_err());
    }

    #[test]
    fn conformal_sets_cover_as_promised_over_seeded_splits() {
        // Two-class photos from an imperfect model; calibrate on 200, test on 1000, 40 times.
        let (error_rate, calibrate, test, splits) = (0.1, 200, 1000, 40);
        let mut covered = 0usize;
        for seed in 0..splits {
            let (labels, logits) = planted(calibrate + test, 1.0, 100 + seed);
            let score = |i: usize| 1.0 - f64::from(softmax(&logits[i], 1.0)[labels[i]]);
            let threshold = conformal_threshold((0..calibrate).map(score).collect(), error_rate);
            let calibration = Calibration {
                temperature: 1.0,
                error_rate,
                conformal_threshold: threshold,
                ood_threshold: f64::INFINITY,
            };
            covered += (calibrate..calibrate + test)
                .filter(|&i| {
                    let p = softmax(&logits[i], 1.0);
                    calibration.prediction_set(&p).contains(&labels[i])
                })
                .count();
        }
        // Coverage lies in [1 - α, 1 - α + 1/(n+1)] in expectation; around that, the spread of
        // the test photos (binomial) and of the calibration sets (a Beta per split).
        let trials = (splits as usize * test) as f64;
        let per_split = error_rate * (1.0 - error_rate) / (calibrate as f64 + 2.0);
        let sd = (error_rate * (1.0 - error_rate) / trials + per_split / splits as f64).sqrt();
        let coverage = covered as f64 / trials;
        let (low, high) = (
            1.0 - error_rate - 4.0 * sd,
            1.0 - error_rate + 1.0 / (calibrate as f64 + 1.0) + 4.0 * sd,
        );
        assert!(
            (low..=high).contains(&coverage),
            "{coverage} outside [{low}, {high}]"
        );
    }

    #[test]
    fn the_mahalanobis_score_separates_two_known_gaussians() {
        // Two classes with a strongly correlated shared covariance in 6 dimensions; the outliers
        // lie close in Euclidean distance but across the correlation, where real photos never go.
        let dim = 6;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let draw = |class: Option<usize>, rng: &mut ChaCha8Rng| -> Vec<f32> {
            let common = normal(rng);
            (0..dim)
                .map(|_| {
                    let x = match class {
                        Some(k) => 2.0 * common + 0.2 * normal(rng) + 4.0 * k as f64,
                        // Same spread per coordinate, but independent coordinates.
                        None => 2.0 * normal(rng) + 2.0,
                    };
                    x as f32
                })
                .collect()
        };
        let labels: Vec<usize> = (0..2000).map(|i| i % 2).collect();
        let features: Vec<f32> = labels
            .iter()
            .flat_map(|&l| draw(Some(l), &mut rng))
            .collect();
        let ood = fit_ood(&features, &labels, 2, dim);
        let real: Vec<f64> = (0..1000)
            .map(|i| ood.score(&draw(Some(i % 2), &mut rng)))
            .collect();
        let outliers: Vec<f64> = (0..1000)
            .map(|_| ood.score(&draw(None, &mut rng)))
            .collect();
        let threshold = quantile(real.clone(), OOD_PASS);
        let caught = outliers.iter().filter(|&&s| s > threshold).count();
        assert!(caught > 950, "{caught} of 1000 outliers caught");
        // A squared Mahalanobis distance of Gaussian data is χ² with `dim` degrees of freedom,
        // of mean `dim`; the shrinkage raises the smallest variances, so a little less here.
        let mean = real.iter().sum::<f64>() / real.len() as f64;
        assert!(mean < dim as f64 && mean > dim as f64 - 1.5, "{mean}");
    }
}
