//! Progress bars for long work, on stderr, drawn from the library's
//! [`catdog::progress::Progress`] counts. On a terminal: a bar redrawn in
//! place, within 80 columns. Otherwise (a log file, CI): the same line printed
//! plainly every [`LOG_EVERY`], so that a long epoch shows signs of life
//! without flooding the log.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

/// How often a progress line is printed where stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A bar counting items of work called `what` (e.g. "decoding", "epoch 2/5");
/// its message ([`Bar::set_message`]) is for running figures, beside the label.
pub struct Bar(pub ProgressBar);

impl Bar {
    pub fn new(what: &str) -> Bar {
        Bar::with_style(what, style())
    }

    /// Counting bytes.
    pub fn bytes(what: &str) -> Bar {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:12}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> ");
        Bar::with_style(what, style)
    }

    fn with_style(what: &str, style: ProgressStyle) -> Bar {
        Bar(ProgressBar::with_draw_target(Some(0), target())
            .with_style(style)
            .with_prefix(what.to_owned()))
    }

    /// Running figures shown beside the label (e.g. "loss 0.6931 acc 50.1%").
    pub fn set_message(&self, message: String) {
        self.0.set_message(message);
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

/// Stderr when it is a terminal, else plain lines every [`LOG_EVERY`].
fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        let lines = PlainLines::new(LOG_EVERY, |line| eprintln!("{line}"));
        ProgressDrawTarget::term_like_with_hz(Box::new(lines), 1)
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:12}] {pos}/{len} {msg} {rate} eta {eta}")
        .expect("static template")
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(state.per_sec()));
            },
        )
        .progress_chars("=> ")
}

/// Items per second in at most 7 columns, with as many digits as mean
/// something: `7.3/s`, `1953/s`, `84k/s`.
fn rate(per_sec: f64) -> String {
    match per_sec {
        r if !r.is_finite() => "-/s".to_owned(),
        r if r >= 9_999_500.0 => format!("{:.0}M/s", r / 1e6),
        r if r >= 9_999.5 => format!("{:.0}k/s", r / 1e3),
        r if r >= 99.95 => format!("{r:.0}/s"),
        r => format!("{r:.1}/s"),
    }
}

/// A draw target that prints the drawn line as a plain line once per `every`
/// (work shorter than that prints nothing); cursor movements are ignored.
struct PlainLines {
    every: Duration,
    print: Box<dyn Fn(&str) + Send + Sync>,
    /// The line being drawn, and when the bar began or a line was last printed.
    state: Mutex<(String, Instant)>,
}

impl PlainLines {
    fn new(every: Duration, print: impl Fn(&str) + Send + Sync + 'static) -> Self {
        PlainLines {
            every,
            print: Box::new(print),
            state: Mutex::new((String::new(), Instant::now())),
        }
    }
}

impl std::fmt::Debug for PlainLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainLines")
            .field("every", &self.every)
            .finish()
    }
}

impl TermLike for PlainLines {
    fn width(&self) -> u16 {
        80
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        let _ = state.0.write_str(s);
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        let (line, last) = &mut *state;
        let text = line.trim();
        if !text.is_empty() && last.elapsed() >= self.every {
            (self.print)(text);
            *last = Instant::now();
        }
        line.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate(1952.617974416), "1953/s");
        assert_eq!(rate(7.26), "7.3/s");
        assert_eq!(rate(99.97), "100/s");
        assert_eq!(rate(83_927.0), "84k/s");
        assert_eq!(rate(83_927_193.0), "84M/s");
        assert_eq!(rate(f64::INFINITY), "-/s");
    }

    #[test]
    fn a_log_gets_plain_lines_that_keep_the_label_and_fit_80_columns() {
        let printed = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = printed.clone();
        let lines = PlainLines::new(Duration::from_millis(300), move |l| {
            sink.lock().unwrap().push(l.to_owned())
        });
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(lines), 20);
        let bar = ProgressBar::with_draw_target(Some(20_000), target)
            .with_style(style())
            .with_prefix("epoch 12/50")
            .with_message("loss 0.6931 acc 50.1%")
            .with_position(19_999);
        bar.tick();
        assert!(
            printed.lock().unwrap().is_empty(),
            "printed before the interval"
        );
        std::thread::sleep(Duration::from_millis(350));
        bar.tick();
        bar.set_message("loss 0.6930 acc 50.2%");
        bar.tick();
        let printed = printed.lock().unwrap().clone();
        // One line: the next is due only after another interval.
        assert_eq!(printed.len(), 1, "{printed:?}");
        let line = &printed[0];
        assert!(
            line.starts_with("epoch 12/50 [") && line.contains("19999/20000 loss 0.6931 acc 50.1%"),
            "{line}"
        );
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
        let rate = line.split_whitespace().find(|w| w.ends_with("/s")).unwrap();
        assert!(rate.len() <= 7, "{line}");
    }
}
