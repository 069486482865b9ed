//! `catdog lr-find`: the learning-rate sweep, its curve, and the rate it suggests, with the
//! `catdog train` command that tries it.

use std::path::PathBuf;

use anyhow::Result;
use catdog::data::Ratios;
use catdog::run::RunDir;
use catdog::train::lr_find::{self, End, LrFind, Sweep};
use catdog::train::{self, DataSource, TrainConfig};

use super::train::{SetupArgs, Show};

#[derive(clap::Args)]
pub struct LrFindArgs {
    /// The data folder (one folder per class, or files named like cat.0.jpg); required
    /// unless --manifest is given
    #[arg(long, required_unless_present = "manifest")]
    pub data: Option<PathBuf>,
    /// Use this manifest (from `catdog split`) instead of preparing the data
    #[arg(long, conflicts_with = "data")]
    pub manifest: Option<PathBuf>,
    /// Where the curve goes (lr-find.png, lr-find.csv)
    #[arg(long, default_value = lr_find::DEFAULT_OUT)]
    pub out: PathBuf,
    /// The first batch's rate
    #[arg(long, default_value_t = lr_find::START_LR, allow_negative_numbers = true)]
    pub start_lr: f64,
    /// The last batch's rate
    #[arg(long, default_value_t = lr_find::END_LR, allow_negative_numbers = true)]
    pub end_lr: f64,
    /// Batches of the sweep (the training photos are cycled through when they are fewer);
    /// it stops early once the smoothed loss passes 4x its lowest
    #[arg(long, value_name = "N", default_value_t = lr_find::ITERATIONS)]
    pub iterations: usize,
    #[command(flatten)]
    pub setup: SetupArgs,
}

pub fn run(args: LrFindArgs) -> Result<()> {
    let find = LrFind {
        start_lr: args.start_lr,
        end_lr: args.end_lr,
        iterations: args.iterations,
    };
    let settings = args.setup.config(args.data, args.manifest);
    let show = Show::new(&RunDir::new(&args.out));
    let sweep = train::lr_find(settings, find, &args.out, &|event| show.event(event))?;
    show.finish();
    print!("{}", summary(&sweep));
    Ok(())
}

/// What the sweep found, why it is only a suggestion, and the command that tries it.
fn summary(sweep: &Sweep) -> String {
    let last = sweep.points.last().expect("a sweep has a batch");
    let mut text = match sweep.end {
        End::Completed => format!(
            "swept {} batches from {:.0e} to {:.0e}\n",
            sweep.points.len(),
            sweep.find.start_lr,
            sweep.find.end_lr
        ),
        End::Diverged | End::NotFinite => format!(
            "the loss diverged at lr {:.1e} (smoothed loss {}), after {} of {} batches: the sweep stopped there\n",
            last.lr,
            if sweep.end == End::Diverged {
                format!("{:.3}, over 4x its lowest", last.smoothed)
            } else {
                "not a number".to_owned()
            },
            sweep.points.len(),
            sweep.find.iterations
        ),
    };
    match &sweep.suggestion {
        Some(s) => {
            let lr = format!("{:.1e}", s.lr);
            text += &format!(
                "suggested learning rate: {lr} (fastai's \"valley\": about half way down the longest descent of the smoothed loss, lr {:.1e} to {:.1e})\n\
                 It is only a suggestion: the curve comes from one short, noisy sweep from one starting point, with a rate that never stays put. \
                 A rate part-way down the steepest fall is a place to start; check it with a real run (against the default 1e-3, say):\n  {}\n",
                sweep.points[s.valley.0].lr,
                sweep.points[s.valley.1].lr,
                train_command(&sweep.config.settings, &lr)
            );
        }
        None => {
            text += &format!(
                "no suggestion: past the sweep's first tenth and its last 5 batches, too few remain to find a descent. \
                 Start lower (--start-lr, now {:.0e}) or sweep longer (--iterations, now {})\n",
                sweep.find.start_lr, sweep.find.iterations
            );
        }
    }
    text += &format!(
        "curve: {} (the loss against the rate), {} (step,lr,loss,smoothed)\n",
        sweep.png.display(),
        sweep.csv.display()
    );
    text
}

/// `catdog train` with the sweep's settings (those away from their defaults, and the mode,
/// whose default depends on the device) and `--lr lr`.
fn train_command(s: &TrainConfig, lr: &str) -> String {
    let d = TrainConfig::default();
    let mut words = vec!["catdog".to_owned(), "train".to_owned()];
    let mut add = |flag: &str, value: String| {
        words.push(flag.to_owned());
        if !value.is_empty() {
            words.push(shell_word(&value));
        }
    };
    match &s.source {
        DataSource::Folder { root, ratios, .. } => {
            add("--data", root.display().to_string());
            if *ratios != Ratios::default() {
                add("--ratios", ratios.to_string());
            }
        }
        DataSource::Manifest(path) => add("--manifest", path.display().to_string()),
    }
    add("--out", format!("run-lr-{lr}"));
    if s.weights != d.weights {
        add("--weights", s.weights.to_string());
    }
    add("--mode", s.mode.to_string());
    if s.preprocessing.image_size != d.preprocessing.image_size {
        add("--image-size", s.preprocessing.image_size.to_string());
    }
    if s.batch_size != d.batch_size {
        add("--batch-size", s.batch_size.to_string());
    }
    if s.augment {
        add("--augment", String::new());
    }
    if s.seed != d.seed {
        add("--seed", s.seed.to_string());
    }
    if s.device != d.device {
        add("--device", s.device.to_string());
    }
    if s.precision != d.precision {
        add("--precision", s.precision.to_string());
    }
    if s.cache_dir != train::default_cache_dir()
        && let Some(dir) = &s.cache_dir
    {
        add("--cache-dir", dir.display().to_string());
    }
    if s.weight_decay != d.weight_decay {
        add("--weight-decay", s.weight_decay.to_string());
    }
    if s.label_smoothing != d.label_smoothing {
        add("--label-smoothing", s.label_smoothing.to_string());
    }
    if s.class_weights != d.class_weights {
        add("--class-weights", s.class_weights.to_string());
    }
    add("--lr", lr.to_owned());
    words.join(" ")
}

/// `word` as a shell reads it back: quoted unless it is plain.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-,:=+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
