//! Progress bars for long work, drawn on stderr only when it is a terminal
//! (indicatif hides them otherwise, so logs and CI output stay clean).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting items of work called `what` (e.g. "decoding"), for the library's
/// [`catdog::progress::Progress`] counts.
pub struct Bar(pub ProgressBar);

impl Bar {
    pub fn new(what: &str) -> Bar {
        Bar::with_template(
            what,
            "{msg:>10} [{bar:32}] {pos}/{len} {per_sec:>9} eta {eta}",
        )
    }

    /// Counting bytes.
    pub fn bytes(what: &str) -> Bar {
        Bar::with_template(
            what,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    fn with_template(what: &str, template: &str) -> Bar {
        let style = ProgressStyle::with_template(template)
            .expect("static template")
            .progress_chars("=> ");
        Bar(ProgressBar::new(0)
            .with_style(style)
            .with_message(what.to_owned()))
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl catdog::progress::Progress for Bar {
    fn set_total(&self, items: u64) {
        self.0.set_length(items);
    }

    fn advance(&self, items: u64) {
        self.0.inc(items);
    }
}
