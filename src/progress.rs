//! Progress bars for long work, drawn on stderr only when it is a terminal
//! (indicatif hides them otherwise, so logs and CI output stay clean).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` items of work called `what` (e.g. "decoding").
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:32}] {pos}/{len} {per_sec:>9} eta {eta}")
            .expect("static template")
            .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(what.to_owned())
}
