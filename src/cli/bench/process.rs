//! Child processes measured from outside: wall time and peak memory, from the kernel's
//! accounting of that child (wait4), so that each benchmark part's memory is its own.

use std::process::Command;
use std::time::Instant;

use catdog::bench::median_seconds;

/// Runs a command to completion; returns its stdout, wall seconds and peak
/// resident memory in bytes (from the kernel's accounting of that child).
pub fn run_measured(cmd: &mut Command) -> std::result::Result<(String, f64, u64), String> {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child's, not yet waited for; both pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(format!(
            "cannot wait for {cmd:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{cmd:?} failed (status {status})"));
    }
    // Linux reports ru_maxrss in KiB.
    Ok((
        out,
        start.elapsed().as_secs_f64(),
        usage.ru_maxrss as u64 * 1024,
    ))
}

/// Runs `cmd` as a fresh process `reps` times after `warm` uncounted runs;
/// returns the median wall seconds and the largest peak resident memory in bytes.
pub fn run_repeated(
    cmd: &mut Command,
    warm: usize,
    reps: usize,
) -> std::result::Result<(f64, u64), String> {
    let mut rss = 0;
    let mut failure = None;
    let seconds = median_seconds(warm, reps, || {
        if failure.is_none() {
            match run_measured(cmd) {
                Ok((_, _, r)) => rss = rss.max(r),
                Err(e) => failure = Some(e),
            }
        }
    });
    failure.map_or(Ok((seconds, rss)), Err)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn measures_a_child_process() {
        let (out, seconds, rss) =
            super::run_measured(Command::new("sh").args(["-c", "echo hi"])).unwrap();
        assert_eq!(out, "hi\n");
        assert!(seconds > 0.0 && rss > 0);
        assert!(super::run_measured(&mut Command::new("false")).is_err());
    }

    #[test]
    fn repeats_a_child_process() {
        let (seconds, rss) =
            super::run_repeated(Command::new("sh").args(["-c", "echo hi"]), 1, 3).unwrap();
        assert!(seconds > 0.0 && rss > 0);
        let err = super::run_repeated(&mut Command::new("false"), 0, 3).unwrap_err();
        assert!(err.contains("failed"), "{err}");
    }
}
