//! Child processes measured from outside: wall time and peak memory of that child alone.
//!
//! Peak memory is the child's `VmHWM`, read from /proc while it runs. The kernel's own
//! figure for a child (`ru_maxrss` from wait4) is not the child's alone: at exec, Linux keeps
//! the high-water mark of the memory the child was spawned with, which for a spawn that shares
//! the parent's memory is the parent's whole peak (a test binary of several hundred MiB made a
//! 90 MiB `catdog clean` read as 1.1 GiB). It stays the fallback for a child too quick to be
//! read even once.

use std::process::Command;
use std::time::{Duration, Instant};

use catdog::bench::median_seconds;

/// Runs a command to completion; returns its stdout, wall seconds and peak
/// resident memory in bytes (of the program the child runs).
pub fn run_measured(cmd: &mut Command) -> std::result::Result<(String, f64, u64), String> {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let reader = child.stdout.take().map(|mut stdout| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        })
    });
    let pid = child.id() as libc::pid_t;
    let mut peak_kib = 0u64;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        peak_kib = peak_kib.max(high_water_kib(pid).unwrap_or(0));
        // SAFETY: the pid is our own child's, not yet reaped; both pointers are valid.
        match unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) } {
            0 => std::thread::sleep(Duration::from_millis(2)),
            p if p == pid => break,
            _ => {
                return Err(format!(
                    "cannot wait for {cmd:?}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    let out = reader
        .map(|r| r.join().unwrap_or_default())
        .unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{cmd:?} failed (status {status})"));
    }
    // Linux reports both in KiB.
    if peak_kib == 0 {
        peak_kib = usage.ru_maxrss as u64;
    }
    Ok((out, start.elapsed().as_secs_f64(), peak_kib * 1024))
}

/// The `VmHWM` line of a running process's /proc status, in KiB.
fn high_water_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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

    /// The parent's memory is not the child's: a 400 MiB parent measures a shell that sleeps
    /// at a few MiB (the kernel's ru_maxrss said 400 MiB and more).
    #[test]
    fn a_large_parent_does_not_count_as_its_child() {
        let big = vec![1u8; 400 << 20];
        let (_, _, rss) =
            super::run_measured(Command::new("sh").args(["-c", "sleep 0.2"])).unwrap();
        assert!(big.iter().step_by(4096).all(|&b| b == 1));
        assert!(rss < 100 << 20, "{} MiB", rss >> 20);
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
