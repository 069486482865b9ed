//! Learning-rate schedules, stepped per batch: the rate of a batch is a pure function of
//! where the batch stands in its phase, so a resumed run takes exactly the rates an
//! uninterrupted one would.

use serde::{Deserialize, Serialize};

/// How the rate moves over a phase of training (`--schedule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// `--lr` throughout (after any warmup): the seed's recipe.
    #[default]
    Constant,
    /// PyTorch's `OneCycleLR` (cosine annealing, `cycle_momentum=False`): from lr/25 up to
    /// lr over the warmup (default 30% of the phase), then down to lr/25/1e4.
    OneCycle,
    /// PyTorch's `CosineAnnealingLR` to 0 over the steps after the warmup.
    Cosine,
}

crate::error::named_choice!(
    Schedule,
    "--schedule",
    Schedule::Constant => "constant",
    Schedule::OneCycle => "one-cycle",
    Schedule::Cosine => "cosine",
);

/// One-cycle's rise when no warmup is given: PyTorch's `pct_start`.
const ONE_CYCLE_RISE: f64 = 0.3;
/// One-cycle's first rate is lr / DIV, its last lr / DIV / FINAL_DIV (PyTorch's defaults).
const ONE_CYCLE_DIV: f64 = 25.0;
const ONE_CYCLE_FINAL_DIV: f64 = 1e4;

impl Schedule {
    /// The fraction of the peak rate at `step` (from 0) of a phase of `total` steps, the
    /// first `warmup` of which warm up (`None`: the schedule's own: one-cycle's 30%, none
    /// for the others). A warmup of constant and cosine rises linearly, step `s` at
    /// `(s + 1) / warmup`, so that no step has a rate of 0.
    pub fn factor(self, step: usize, total: usize, warmup: Option<f64>) -> f64 {
        let t = step as f64;
        let total = total as f64;
        match self {
            Schedule::Constant | Schedule::Cosine => {
                let w = warmup.unwrap_or(0.0).min(total);
                if t < w {
                    return ((t + 1.0) / w).min(1.0);
                }
                match self {
                    Schedule::Constant => 1.0,
                    _ => 0.5 * (1.0 + (std::f64::consts::PI * (t - w) / (total - w)).cos()),
                }
            }
            Schedule::OneCycle => {
                // As OneCycleLR: the peak at step `rise_end`, the floor at the last step.
                let rise_end = warmup.unwrap_or(ONE_CYCLE_RISE * total) - 1.0;
                let last = total - 1.0;
                let first = 1.0 / ONE_CYCLE_DIV;
                let floor = first / ONE_CYCLE_FINAL_DIV;
                let anneal = |from: f64, to: f64, done: f64| {
                    to + (from - to) / 2.0 * (1.0 + (std::f64::consts::PI * done).cos())
                };
                let fraction = |done: f64, length: f64| {
                    if length > 0.0 { done / length } else { 1.0 }
                };
                if t <= rise_end {
                    anneal(first, 1.0, fraction(t, rise_end))
                } else {
                    anneal(1.0, floor, fraction(t - rise_end, last - rise_end))
                }
            }
        }
    }
}

/// The rates of a run: its schedule over each phase. A run with `--freeze-epochs` has two
/// phases, the head alone and then every layer, and each runs the whole schedule (as fastai's
/// `fine_tune` runs one cycle per phase); other runs have one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub schedule: Schedule,
    /// The peak rate (`--lr`).
    pub lr: f64,
    /// In epochs (`--warmup`); `None`: the schedule's own.
    pub warmup: Option<f64>,
    pub epochs: usize,
    /// Epochs of the first phase (0: one phase).
    pub freeze_epochs: usize,
    pub batches_per_epoch: usize,
}

impl Plan {
    /// The rate of batch `batch` (from 0) of epoch `epoch` (from 0).
    pub fn rate(&self, epoch: usize, batch: usize) -> f64 {
        let (start, end) = if epoch < self.freeze_epochs {
            (0, self.freeze_epochs)
        } else {
            (self.freeze_epochs, self.epochs)
        };
        let b = self.batches_per_epoch;
        let warmup = self.warmup.map(|w| w * b as f64);
        self.lr
            * self
                .schedule
                .factor((epoch - start) * b + batch, (end - start) * b, warmup)
    }

    /// The rate of an epoch's last batch: the one metrics.jsonl records.
    pub fn epoch_rate(&self, epoch: usize) -> f64 {
        self.rate(epoch, self.batches_per_epoch.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(ours: f64, theirs: f64) -> bool {
        (ours - theirs).abs() <= 1e-12 * theirs.abs().max(1e-9)
    }

    /// The rates of torch.optim.lr_scheduler.OneCycleLR(max_lr=1e-3, total_steps=20,
    /// cycle_momentum=False) and CosineAnnealingLR(lr=1e-3, T_max=10), read from
    /// `optimizer.param_groups[0]["lr"]` before each step (PyTorch 2.15).
    #[test]
    fn one_cycle_and_cosine_take_pytorchs_rates() {
        let one_cycle = [
            3.9999999999999996e-05,
            0.0001316718427000252,
            0.0003716718427000253,
            0.0006683281572999747,
            0.0009083281572999747,
            0.001,
            0.0009874640062350875,
            0.0009504846320134736,
            0.0008909161775710499,
            0.000811745653949763,
            0.0007169430017913008,
            0.0006112620219362892,
            0.0005000019999999999,
            0.00038874197806371076,
            0.0002830609982086992,
            0.00018825834605023698,
            0.00010908782242895002,
            4.9519367986526286e-05,
            1.2539993764912554e-05,
            4e-09,
        ];
        let cosine = [
            0.001,
            0.0009755282581475768,
            0.0009045084971874736,
            0.0007938926261462366,
            0.0006545084971874737,
            0.0005,
            0.00034549150281252633,
            0.0002061073738537635,
            9.549150281252634e-05,
            2.4471741852423235e-05,
        ];
        for (schedule, expected) in [
            (Schedule::OneCycle, &one_cycle[..]),
            (Schedule::Cosine, &cosine[..]),
        ] {
            for (step, &theirs) in expected.iter().enumerate() {
                let ours = 1e-3 * schedule.factor(step, expected.len(), None);
                assert!(
                    close(ours, theirs),
                    "{schedule} step {step}: {ours} vs {theirs}"
                );
            }
        }
    }

    /// Warmup by hand: 4 steps at 1/4, 2/4, 3/4, 4/4 of the rate, then the schedule over the
    /// steps left (cosine over 4: 1, cos²(π/8), 1/2, sin²(π/8)); a warmup of one-cycle moves
    /// its peak to the warmup's last step.
    #[test]
    fn warmup_rises_linearly_then_the_schedule_runs_over_the_rest() {
        let constant: Vec<f64> = (0..6)
            .map(|s| Schedule::Constant.factor(s, 6, Some(4.0)))
            .collect();
        assert_eq!(constant, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        let c = (std::f64::consts::PI / 8.0).cos().powi(2);
        let expected = [0.25, 0.5, 0.75, 1.0, 1.0, c, 0.5, 1.0 - c];
        for (s, e) in expected.into_iter().enumerate() {
            let f = Schedule::Cosine.factor(s, 8, Some(4.0));
            assert!(close(f, e), "step {s}: {f} vs {e}");
        }
        assert_eq!(Schedule::OneCycle.factor(2, 10, Some(3.0)), 1.0);
        assert!(Schedule::OneCycle.factor(1, 10, Some(3.0)) < 1.0);
    }

    /// Two phases each run the whole schedule; warmup is in epochs.
    #[test]
    fn each_phase_of_a_plan_runs_the_schedule() {
        let plan = Plan {
            schedule: Schedule::Cosine,
            lr: 1.0,
            warmup: Some(0.5),
            epochs: 3,
            freeze_epochs: 1,
            batches_per_epoch: 4,
        };
        // Phase 1: 4 steps, 2 of warmup, then cosine over 2.
        let phase1: Vec<f64> = (0..4).map(|b| plan.rate(0, b)).collect();
        assert_eq!(phase1, [0.5, 1.0, 1.0, 0.5]);
        // Phase 2 starts over: 8 steps, 2 of warmup.
        assert_eq!(
            (plan.rate(1, 0), plan.rate(1, 1), plan.rate(1, 2)),
            (0.5, 1.0, 1.0)
        );
        assert_eq!(plan.epoch_rate(0), plan.rate(0, 3));
    }
}
