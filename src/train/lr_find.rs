//! `catdog lr-find`: fastai's learning-rate finder. From the start a run with the same
//! settings would have (data, weights, mode, new head), Adam trains for a short sweep whose
//! rate grows exponentially from `start_lr` to `end_lr`, one batch per rate; the loss of
//! each batch, smoothed, shows where the loss falls fastest and where it blows up, and
//! [`valley`] picks a rate from the curve. Nothing is saved but the curve: the model is
//! thrown away, no run folder is touched.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::{
    Learner, Mode, OnEvent, RunConfig, Source, TrainConfig, batches, check_settings, check_splits,
    head_source, start,
};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::fsio;
use crate::train::Event;

/// The sweep's defaults: fastai's `lr_find(start_lr=1e-7, end_lr=10, num_it=100)`.
pub const START_LR: f64 = 1e-7;
pub const END_LR: f64 = 10.0;
pub const ITERATIONS: usize = 100;
/// The smoothing of the loss: fastai's `AvgSmoothLoss(beta=0.98)`.
pub const BETA: f64 = 0.98;
/// The sweep stops once the smoothed loss exceeds this many times its lowest (fastai's).
pub const DIVERGED: f64 = 4.0;
/// Where `catdog lr-find` writes by default, and its files there.
pub const DEFAULT_OUT: &str = "lr-find";
pub const CSV: &str = "lr-find.csv";
pub const PNG: &str = "lr-find.png";

/// The sweep's range and length (`--start-lr`, `--end-lr`, `--iterations`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrFind {
    pub start_lr: f64,
    pub end_lr: f64,
    /// Batches of the full sweep; the training split is cycled through when it has fewer.
    pub iterations: usize,
}

impl Default for LrFind {
    fn default() -> Self {
        LrFind {
            start_lr: START_LR,
            end_lr: END_LR,
            iterations: ITERATIONS,
        }
    }
}

impl LrFind {
    fn check(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        for (setting, value) in [("--start-lr", self.start_lr), ("--end-lr", self.end_lr)] {
            if !positive(value) {
                return Err(Error::setting(
                    setting,
                    format!("{value} is not a positive number"),
                ));
            }
        }
        if self.start_lr >= self.end_lr {
            return Err(Error::setting(
                "--start-lr",
                format!(
                    "{} is not below --end-lr ({}): the sweep raises the rate from the one to the other",
                    self.start_lr, self.end_lr
                ),
            ));
        }
        if self.iterations < 2 {
            return Err(Error::setting(
                "--iterations",
                "must be at least 2: the sweep's first batch takes --start-lr, its last --end-lr",
            ));
        }
        Ok(())
    }

    /// The rate of batch `step` (from 0): `start · (end / start)^(step / (iterations - 1))`,
    /// so that the first batch takes `start_lr` and the last `end_lr` (fastai's stops one
    /// batch short of `end_lr`).
    pub fn rate(&self, step: usize) -> f64 {
        let t = step as f64 / (self.iterations - 1) as f64;
        self.start_lr * (self.end_lr / self.start_lr).powf(t)
    }
}

/// One batch of the sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// From 0.
    pub step: usize,
    pub lr: f64,
    /// The batch's mean training loss, before its step.
    pub loss: f64,
    pub smoothed: f64,
}

/// fastai's `AvgSmoothLoss`: an exponential moving average of the losses from 0, divided by
/// `1 - β^n` after `n` losses so that the first values are not pulled towards 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Smoother {
    average: f64,
    count: i32,
}

impl Smoother {
    /// Adds a loss; returns the smoothed loss so far.
    pub fn add(&mut self, loss: f64) -> f64 {
        self.average = BETA * self.average + (1.0 - BETA) * loss;
        self.count += 1;
        self.average / (1.0 - BETA.powi(self.count))
    }
}

/// Why a sweep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every rate was tried.
    Completed,
    /// The smoothed loss rose above [`DIVERGED`] times its lowest.
    Diverged,
    /// The loss was not a finite number.
    NotFinite,
}

/// The sweep's bookkeeping, apart from the model: the rate of the next batch, the points so
/// far, and whether to go on.
#[derive(Clone, Debug)]
pub struct Recorder {
    find: LrFind,
    smoother: Smoother,
    lowest: f64,
    pub points: Vec<Point>,
}

impl Recorder {
    pub fn new(find: LrFind) -> Recorder {
        Recorder {
            find,
            smoother: Smoother::default(),
            lowest: f64::INFINITY,
            points: Vec::with_capacity(find.iterations),
        }
    }

    /// The rate of the next batch.
    pub fn next_rate(&self) -> f64 {
        self.find.rate(self.points.len())
    }

    /// Records the loss of the batch at [`Recorder::next_rate`]; `Some` when the sweep ends
    /// with it (the point is recorded either way).
    pub fn record(&mut self, loss: f64) -> Option<End> {
        let smoothed = self.smoother.add(loss);
        self.points.push(Point {
            step: self.points.len(),
            lr: self.next_rate(),
            loss,
            smoothed,
        });
        self.lowest = self.lowest.min(smoothed);
        if !smoothed.is_finite() {
            Some(End::NotFinite)
        } else if smoothed > DIVERGED * self.lowest {
            Some(End::Diverged)
        } else if self.points.len() == self.find.iterations {
            Some(End::Completed)
        } else {
            None
        }
    }
}

/// The suggested rate and the stretch of the curve it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Suggestion {
    pub lr: f64,
    /// The point the rate is taken from, and the valley's first and last points (indices
    /// into the sweep's points).
    pub at: usize,
    pub valley: (usize, usize),
}

/// fastai's default suggestion, `valley` (fastai 2.5+), on the smoothed curve: leaving out
/// the first tenth of the sweep and its last 5 batches (noise at the start, the blow-up at
/// the end), it finds the longest run of falling losses (a longest decreasing subsequence,
/// so that a small bump does not cut a long descent in two) and takes the rate about half
/// way down it. Half way down a long descent is a rate that still trains fast and is well
/// short of where the loss blows up; the steepest point of a noisy short sweep (fastai's
/// older `steep`) jumps from one sweep to the next, and the minimum's tenth (`minimum`)
/// lands on the flat start when the loss barely falls. `None` when too few points are left
/// (the sweep diverged early). fastai's Python wraps a valley starting at the first point to
/// the last; here it starts at the first.
pub fn valley(points: &[Point], iterations: usize) -> Option<Suggestion> {
    let skip = iterations / 10;
    let kept = points.len().checked_sub(5)?;
    if kept <= skip + 1 {
        return None;
    }
    let losses: Vec<f64> = points[skip..kept].iter().map(|p| p.smoothed).collect();
    let n = losses.len();
    // lds[i]: the length of the longest decreasing subsequence ending at i.
    let mut lds = vec![1usize; n];
    let mut max_end = 0;
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
        }
        if lds[max_end] < lds[i] {
            max_end = i;
        }
    }
    let max_start = max_end.saturating_sub(lds[max_end]);
    let sections = (max_end - max_start) as f64 / 3.0;
    let at = max_start + sections as usize + (sections / 2.0) as usize;
    Some(Suggestion {
        lr: points[skip + at].lr,
        at: skip + at,
        valley: (skip + max_start, skip + max_end),
    })
}

/// What a sweep found, and where it wrote it.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The settings the sweep trained with, and what it found at its start (as a run's
    /// config.json would hold them; not written).
    pub config: RunConfig,
    pub find: LrFind,
    pub points: Vec<Point>,
    pub end: End,
    pub suggestion: Option<Suggestion>,
    pub csv: PathBuf,
    pub png: PathBuf,
}

/// Runs the sweep from the start `catdog train` would make with `settings` (its `lr` and
/// schedule are not used), sending [`Event::Sweep`] after each batch, and writes the curve
/// to `out` ([`CSV`], [`PNG`]).
pub fn lr_find(settings: TrainConfig, find: LrFind, out: &Path, on: OnEvent) -> Result<Sweep> {
    find.check()?;
    check_settings(&settings)?;
    let device = settings.device.device()?;
    // Before the data is scanned: a folder that exists is left out of it.
    std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create folder", out, e))?;
    let (config, manifest) = start(settings, out, &device, on)?;
    let s = &config.settings;
    let data = match &s.source {
        super::DataSource::Manifest(path) => path,
        super::DataSource::Folder { root, .. } => root,
    };
    check_splits(&manifest, &[Split::Train], data)?;
    let photos = manifest.count(Split::Train);
    if photos < s.batch_size {
        return Err(Error::data(
            data,
            format!(
                "has {photos} training photo(s), fewer than one batch of {}",
                s.batch_size
            ),
            "use more photos, or a smaller --batch-size",
        ));
    }

    let mut learner = Learner::new(&config, &manifest, &device, on)?;
    let source = match s.mode {
        Mode::Frozen => {
            learner.freeze();
            // Nothing sets the flag: lr-find has no state worth stopping cleanly for.
            head_source(
                &config,
                &manifest,
                &learner.model,
                &device,
                &AtomicBool::new(false),
                on,
            )?
            .expect("extraction stops only when asked")
        }
        Mode::Finetune => {
            learner.unfreeze(s.precision, &device);
            Source::photos(&manifest)
        }
    };
    let ad = device.clone().autodiff();
    let mut recorder = Recorder::new(find);
    // Epoch after epoch of the training split, each shuffled as a run's would be.
    let mut epoch = 0;
    let end = 'sweep: loop {
        for item in batches(s, &source, Split::Train, epoch, 0) {
            let (input, labels) = item?;
            let step = learner.step(input, &labels, recorder.next_rate(), &ad);
            let end = recorder.record(step.loss);
            let point = *recorder.points.last().expect("just recorded");
            on(Event::Sweep {
                point,
                iterations: find.iterations,
            });
            if let Some(end) = end {
                break 'sweep end;
            }
        }
        epoch += 1;
    };

    let points = recorder.points;
    let suggestion = valley(&points, find.iterations);
    let (csv, png) = (out.join(CSV), out.join(PNG));
    fsio::write_atomic(&csv, csv_text(&points).as_bytes())?;
    crate::report::write_lr_find(&png, &points, suggestion.as_ref(), &title(s, &points, end))?;
    Ok(Sweep {
        config,
        find,
        points,
        end,
        suggestion,
        csv,
        png,
    })
}

/// `step,lr,loss,smoothed`, a line per batch, numbers in Rust's shortest exact form.
fn csv_text(points: &[Point]) -> String {
    let mut text = String::from("step,lr,loss,smoothed\n");
    for p in points {
        text += &format!("{},{},{},{}\n", p.step, p.lr, p.loss, p.smoothed);
    }
    text
}

/// "Learning-rate finder · frozen, 64 px, batch 32 · 100 batches".
fn title(s: &TrainConfig, points: &[Point], end: End) -> String {
    let ended = match end {
        End::Completed => String::new(),
        End::Diverged | End::NotFinite => " (diverged)".to_owned(),
    };
    format!(
        "Learning-rate finder · {}, {} px, batch {} · {} batches{ended}",
        s.mode,
        s.preprocessing.image_size,
        s.batch_size,
        points.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs()
    }

    fn curve(smoothed: &[f64]) -> Vec<Point> {
        let find = LrFind {
            iterations: smoothed.len(),
            ..LrFind::default()
        };
        smoothed
            .iter()
            .enumerate()
            .map(|(step, &s)| Point {
                step,
                lr: find.rate(step),
                loss: s,
                smoothed: s,
            })
            .collect()
    }

    #[test]
    fn rates_grow_geometrically_from_start_to_end() {
        let find = LrFind::default();
        assert_eq!(find.rate(0), START_LR);
        assert!(
            close(find.rate(ITERATIONS - 1), END_LR),
            "{}",
            find.rate(99)
        );
        let ratio = (END_LR / START_LR).powf(1.0 / (ITERATIONS - 1) as f64);
        for step in 1..ITERATIONS {
            assert!(
                close(find.rate(step) / find.rate(step - 1), ratio),
                "{step}"
            );
        }
        // Half way in steps is half way in decades: 1e-7 .. 10 is 8 decades.
        let odd = LrFind {
            iterations: 9,
            ..find
        };
        assert!(close(odd.rate(4), 1e-3), "{}", odd.rate(4));
    }

    /// fastai's formula by hand: with β = 0.98, after 1.0 then 2.0 the average is
    /// 0.98·0.02 + 0.02·2 = 0.0596, divided by 1 - 0.98² = 0.0396.
    #[test]
    fn smoothing_is_debiased_exponential_averaging() {
        let mut s = Smoother::default();
        assert!(close(s.add(1.0), 1.0));
        assert!(close(s.add(2.0), 0.0596 / 0.0396));
        // A constant loss stays itself: the debiasing undoes the average's start at 0.
        let mut s = Smoother::default();
        for _ in 0..50 {
            assert!(close(s.add(0.7), 0.7));
        }
    }

    #[test]
    fn a_diverging_loss_ends_the_sweep_early() {
        let find = LrFind::default();
        let mut r = Recorder::new(find);
        let mut loss = 1.0;
        let end = loop {
            if let Some(end) = r.record(loss) {
                break end;
            }
            // Flat for 30 batches, then doubling every batch.
            if r.points.len() >= 30 {
                loss *= 2.0;
            }
        };
        assert_eq!(end, End::Diverged);
        let last = r.points.last().unwrap();
        assert!(last.smoothed > DIVERGED && r.points.len() < ITERATIONS);
        // The batch before had not yet crossed the line.
        assert!(r.points[r.points.len() - 2].smoothed <= DIVERGED);

        let mut r = Recorder::new(find);
        assert_eq!(r.record(0.7), None);
        assert_eq!(r.record(f64::NAN), Some(End::NotFinite));
        let mut r = Recorder::new(LrFind {
            iterations: 3,
            ..find
        });
        let ends: Vec<_> = (0..3).map(|_| r.record(0.7)).collect();
        assert_eq!(ends, [None, None, Some(End::Completed)]);
    }

    /// A flat start, a straight descent over steps 40-70, a rise: the valley is the
    /// descent (with the flat point before it, as fastai counts), and the suggestion about
    /// half way down: steps 39..70, sections 31/3 = 10.33, at 39 + 10 + 5 = 54.
    #[test]
    fn valley_suggests_half_way_down_the_longest_descent() {
        let mut losses = vec![1.0; 40];
        losses.extend((0..=30).map(|i| 1.0 - 0.02 * i as f64));
        losses.extend((1..30).map(|i| 0.4 + 0.05 * i as f64));
        let points = curve(&losses);
        let s = valley(&points, points.len()).unwrap();
        assert_eq!((s.valley, s.at), ((39, 70), 54));
        assert_eq!(s.lr, points[54].lr);

        // A bump of noise in the descent does not split it.
        let mut bumped = losses.clone();
        bumped[55] = 0.9;
        assert_eq!(valley(&curve(&bumped), 100).unwrap().valley.1, 70);

        // Two descents: the longer one wins, wherever it lies.
        let mut two: Vec<f64> = (0..10).map(|i| 2.0 - 0.1 * i as f64).collect();
        two.extend((0..20).map(|i| 3.0 - 0.01 * i as f64));
        two.extend([5.0; 10]);
        let s = valley(&curve(&two), 40).unwrap();
        assert_eq!(s.valley, (9, 29));
    }

    #[test]
    fn valley_needs_points_past_the_trimmed_ends() {
        // 100 planned, 10 skipped at the start, 5 at the end: 16 points leave one.
        assert_eq!(valley(&curve(&[1.0; 16]), 100), None);
        assert!(valley(&curve(&[1.0; 17]), 100).is_some());
        assert_eq!(valley(&curve(&[1.0; 3]), 100), None);
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        let bad = |find: LrFind| find.check().unwrap_err().to_string();
        let d = LrFind::default();
        assert!(
            bad(LrFind {
                start_lr: 20.0,
                ..d
            })
            .contains("--start-lr: 20 is not below --end-lr (10)")
        );
        assert!(bad(LrFind { end_lr: -1.0, ..d }).contains("--end-lr: -1 is not a positive"));
        assert!(bad(LrFind { iterations: 1, ..d }).contains("--iterations"));
        assert!(d.check().is_ok());
    }
}
