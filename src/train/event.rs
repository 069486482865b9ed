//! What training (and the learning-rate finder) reports while it runs. The library sends
//! events; the command line turns them into progress bars and lines, and tests check them as
//! data.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::data::manifest::Conflict;
use crate::data::{CleanReport, Split};
use crate::evaluate::calibration::Fitted;
use crate::model::weights::Origin;
use crate::progress::Progress;
use crate::run::EpochRecord;
use crate::train::Monitor;
use crate::train::lr_find::Point;
use crate::train::state::Best;

/// Where [`super::train`] sends its events, from any thread.
pub type OnEvent<'a> = &'a (dyn Fn(Event<'_>) + Sync);

/// One thing that happened during [`super::train`].
#[derive(Debug)]
pub enum Event<'a> {
    /// The data folder was cleaned and split (a run given a manifest skips this).
    Prepared(&'a CleanReport),
    /// Identical files with different labels, left out of every split (after
    /// [`Event::Prepared`]; only when there are some).
    Conflicts(&'a [Conflict]),
    /// The model's starting weights.
    Weights(&'a Origin),
    /// Continuing after `epochs_done` epochs and `batches_done` batches of the next.
    Resumed {
        epochs_done: usize,
        batches_done: usize,
    },
    /// A resumed run was asked for `to` epochs in all instead of `from` (config.json updated).
    EpochsChanged { from: usize, to: usize },
    /// Continuing a run that completed no epoch: it starts again from the beginning.
    Restarted,
    /// Frozen mode with augmentation: the backbone sees a new crop every step, so no
    /// features are cached.
    Uncached,
    /// Work before the epochs advanced: `done` of `total` items of `step`.
    Progress { step: Step, done: u64, total: u64 },
    /// Frozen mode's features of a split are ready: `hits` from the cache, `computed` now.
    Features {
        split: Split,
        hits: usize,
        computed: usize,
    },
    /// A training batch ended: `images` of the epoch's `total` done in epoch `epoch` (from 1)
    /// of `epochs`, with the epoch's running loss and accuracy.
    Batch {
        epoch: usize,
        epochs: usize,
        images: usize,
        total: usize,
        loss: f64,
        accuracy: f64,
    },
    /// An epoch of `epochs` ended and was saved in `last/`, and in `best/` when `best`.
    Saved {
        record: &'a EpochRecord,
        epochs: usize,
        best: bool,
    },
    /// The checkpoint's calibration was fitted and stored with it (the end of training, and
    /// `catdog calibrate`).
    Calibrated(&'a Fitted),
    /// Stopped on request after batch `batches_done` of epoch `epoch` (from 1); `last/` saved.
    Stopped { epoch: usize, batches_done: usize },
    /// The training split's count of each class, and the weights of the loss (empty: equal),
    /// when the counts are unbalanced or the classes weighted.
    Classes {
        names: &'a [String],
        counts: &'a [usize],
        weights: &'a [f64],
    },
    /// `--patience` epochs after the best one passed without a better `monitor`: training
    /// ends after `epoch` epochs, before the last; `best/` holds `best`.
    EarlyStopped {
        epoch: usize,
        best: Best,
        monitor: Monitor,
        patience: usize,
    },
    /// A batch of [`super::lr_find`]'s sweep of `iterations` ended.
    Sweep { point: Point, iterations: usize },
    /// Stopped on request while frozen mode's features were computed, before any epoch of
    /// this call began; the features computed so far are cached, the model is unchanged.
    StoppedExtracting,
}

/// Long work before the epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Cleaning the data folder: decoding every photo.
    Decoding,
    /// Frozen mode: the backbone's features of a split's photos.
    Features(Split),
}

/// A [`Progress`] that sends its counts as [`Event::Progress`].
pub(crate) struct StepProgress<'a> {
    step: Step,
    on: OnEvent<'a>,
    total: AtomicU64,
    done: AtomicU64,
}

impl<'a> StepProgress<'a> {
    pub fn new(step: Step, on: OnEvent<'a>) -> Self {
        StepProgress {
            step,
            on,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn send(&self, done: u64) {
        let total = self.total.load(Ordering::Relaxed);
        (self.on)(Event::Progress {
            step: self.step,
            done,
            total,
        });
    }
}

impl Progress for StepProgress<'_> {
    fn set_total(&self, items: u64) {
        self.total.store(items, Ordering::Relaxed);
        self.send(self.done.load(Ordering::Relaxed));
    }

    fn advance(&self, items: u64) {
        let done = self.done.fetch_add(items, Ordering::Relaxed) + items;
        self.send(done);
    }
}
