//! How far long work has got. The library only counts; the command line draws the counts
//! as bars (`src/cli/progress.rs`), and tests pass [`Quiet`].

/// Receives the progress of one long step, from any thread: [`Progress::set_total`] once the
/// amount of work is known, then [`Progress::advance`] as items are done.
pub trait Progress: Sync {
    fn set_total(&self, items: u64);
    fn advance(&self, items: u64);
}

/// Progress nobody watches.
pub struct Quiet;

impl Progress for Quiet {
    fn set_total(&self, _items: u64) {}
    fn advance(&self, _items: u64) {}
}
