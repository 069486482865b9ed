//! Data folders as real machines leave them: unreadable files and folders,
//! files that vanish mid-run, odd names and links, pipes, 100,000 files in
//! one folder, and a data folder on a read-only mount. Each has a defined
//! outcome (README, "Safety"); none may stop or hang the clean step.

#![cfg(unix)]

use std::ffi::OsStr;
use std::fs;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{Mount, catdog, fill, run_catdog};
use catdog::data::decode::RejectReason;
use catdog::data::{self, CleanReport, FileStatus, Limits};
use catdog::progress::Quiet;
use image::{ImageFormat, RgbImage};

fn jpeg(seed: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 9, y as u8 * 13, seed]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// `Cat/0.jpg`.. and `Dog/0.jpg`.., `n` good photos each, all different (identical
/// photos in two classes are set aside as conflicting labels).
fn photos(root: &Path, n: u8) {
    for (class, first) in [("Cat", 0), ("Dog", 128)] {
        fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..n {
            fs::write(root.join(format!("{class}/{i}.jpg")), jpeg(first + i)).unwrap();
        }
    }
}

fn file<'a>(report: &'a CleanReport, path: &str) -> &'a data::clean::FileReport {
    report
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not in the report"))
}

/// The clean step on a thread, failing (rather than hanging the suite) if it
/// takes over a minute: a pipe opened for reading blocks until written to.
fn clean_within_a_minute(root: &Path) -> CleanReport {
    let (tx, rx) = mpsc::channel();
    let root = root.to_owned();
    std::thread::spawn(move || {
        let scan = data::scan::scan(&root, None, None).unwrap();
        let _ = tx.send(data::clean::clean(&scan, &Limits::default(), &Quiet));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the clean step hung")
}

#[test]
fn odd_names_links_pipes_and_nesting_have_defined_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    photos(&root, 2);
    let outside = dir.path().join("elsewhere.jpg");
    fs::write(&outside, jpeg(9)).unwrap();
    // Followed: a link to a photo elsewhere; nested folders belong to their top-level class.
    symlink(&outside, root.join("Cat/linked.jpg")).unwrap();
    fs::create_dir_all(root.join("Cat/a/b/c")).unwrap();
    fs::write(root.join("Cat/a/b/c/deep.jpg"), jpeg(5)).unwrap();
    // Ignored, with reasons: names that are not UTF-8 (a file, and a folder with a
    // photo in it), a broken link, a link to itself, a link to a folder, a pipe.
    let latin1 = |s: &[u8]| OsStr::from_bytes(s).to_owned();
    fs::write(root.join("Dog").join(latin1(b"caf\xe9.jpg")), jpeg(1)).unwrap();
    fs::create_dir(root.join("Dog").join(latin1(b"\xe9t\xe9"))).unwrap();
    fs::write(
        root.join("Dog").join(latin1(b"\xe9t\xe9")).join("1.jpg"),
        jpeg(2),
    )
    .unwrap();
    symlink(dir.path().join("missing.jpg"), root.join("Dog/broken.jpg")).unwrap();
    symlink(root.join("Dog/self.jpg"), root.join("Dog/self.jpg")).unwrap();
    symlink(&root, root.join("Dog/loop")).unwrap();
    let fifo = root.join("Cat/pipe.jpg");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);

    let report = clean_within_a_minute(&root);
    for (path, class) in [("Cat/linked.jpg", "Cat"), ("Cat/a/b/c/deep.jpg", "Cat")] {
        let f = file(&report, path);
        assert_eq!(f.status, FileStatus::Usable, "{path}: {:?}", f.rejection);
        assert_eq!(f.class.as_deref(), Some(class));
    }
    let ignored = |path: &str, because: &str| {
        let f = file(&report, path);
        assert_eq!(f.status, FileStatus::Ignored, "{path}");
        let reason = f.ignored_because.as_deref().unwrap();
        assert!(reason.contains(because), "{path}: {reason}");
    };
    ignored("Dog/caf\u{FFFD}.jpg", "not valid UTF-8");
    ignored("Dog/\u{FFFD}t\u{FFFD}", "not valid UTF-8");
    ignored("Dog/broken.jpg", "broken symbolic link");
    ignored("Dog/self.jpg", "broken symbolic link");
    ignored("Dog/loop", "not followed");
    ignored("Cat/pipe.jpg", "not a regular file");
    assert_eq!(report.usable().count(), 6);
    assert_eq!(report.rejected().count(), 0);
}

#[test]
fn a_file_that_vanishes_after_the_scan_is_rejected_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    photos(&root, 4);
    let scan = data::scan::scan(&root, None, None).unwrap();
    fs::remove_file(root.join("Dog/2.jpg")).unwrap();
    let mut report = data::clean::clean(&scan, &Limits::default(), &Quiet);
    let gone = file(&report, "Dog/2.jpg");
    let rejection = gone.rejection.as_ref().unwrap();
    assert_eq!(rejection.reason, RejectReason::Unreadable);
    assert!(rejection.detail.contains("gone"), "{rejection}");
    assert_eq!(report.usable().count(), 7);
    // Quarantine has nothing to move for it, and does not fail on it.
    let q = dir.path().join("quarantine");
    assert_eq!(data::clean::quarantine(&mut report, &q).unwrap(), 0);
}

#[test]
fn unreadable_files_and_folders_are_reported_and_the_rest_is_cleaned() {
    let test = "unreadable_files_and_folders_are_reported_and_the_rest_is_cleaned";
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("data");
    photos(&root, 3);
    fs::write(root.join("Dog/locked.jpg"), jpeg(7)).unwrap();
    fs::create_dir(root.join("Cat/private")).unwrap();
    fs::write(root.join("Cat/private/1.jpg"), jpeg(8)).unwrap();
    fs::set_permissions(
        root.join("Dog/locked.jpg"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    fs::set_permissions(root.join("Cat/private"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let report_path = out.join("report.json");

    // Permission bits do not stop root: run catdog as `nobody` then.
    let mut cmd = catdog();
    cmd.arg("clean")
        .arg(&root)
        .arg("--report")
        .arg(&report_path);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    } else if fs::File::open(root.join("Dog/locked.jpg")).is_ok() {
        eprintln!("skipped {test}: this user reads files whatever their permissions");
        return;
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped {test}: cannot run catdog as another user ({e})");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: CleanReport = catdog::fsio::read_json(&report_path, "clean report").unwrap();
    let locked = file(&report, "Dog/locked.jpg");
    let rejection = locked.rejection.as_ref().unwrap();
    assert_eq!(rejection.reason, RejectReason::Unreadable);
    assert!(rejection.detail.contains("ermission denied"), "{rejection}");
    let private = file(&report, "Cat/private");
    assert_eq!(private.status, FileStatus::Ignored);
    let because = private.ignored_because.as_deref().unwrap();
    assert!(
        because.contains("folder not read") && because.contains("ermission denied"),
        "{because}"
    );
    assert_eq!(report.usable().count(), 6);
}

#[test]
fn a_hundred_thousand_files_in_one_folder_are_scanned_in_seconds() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    photos(&root, 1);
    // Empty files: the scan and the per-file work are what is measured, not decoding.
    let t = Instant::now();
    for i in 0..N {
        fs::File::create(root.join(format!("Cat/many-{i:06}.jpg"))).unwrap();
    }
    eprintln!("created {N} files in {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let scan = data::scan::scan(&root, None, None).unwrap();
    let scan_secs = t.elapsed().as_secs_f64();
    assert_eq!(scan.candidates.len(), N + 2);
    drop(scan);
    let report = dir.path().join("report.json");
    let mut cmd = catdog();
    cmd.arg("clean").arg(&root).arg("--report").arg(&report);
    let (stdout, secs, peak) = crate::process::run_measured(&mut cmd).unwrap();
    eprintln!(
        "{N} files in one folder: scan {scan_secs:.1} s; `catdog clean` {secs:.1} s, peak memory {} MiB",
        peak >> 20
    );
    assert!(stdout.contains("total"), "{stdout}");
    let report: CleanReport = catdog::fsio::read_json(&report, "clean report").unwrap();
    assert_eq!(report.rejected().count(), N);
    assert_eq!(report.usable().count(), 2);
    // Generous for two shared cores in a debug build; a quadratic step would blow through them.
    assert!(scan_secs < 20.0, "scan took {scan_secs:.1} s");
    assert!(secs < 90.0, "clean took {secs:.1} s");
    assert!(peak < 1 << 30, "clean used {} MiB", peak >> 20);
}

#[test]
fn a_data_folder_on_a_read_only_mount_is_cleaned_and_quarantine_refused() {
    let test = "a_data_folder_on_a_read_only_mount_is_cleaned_and_quarantine_refused";
    let Some(mount) = Mount::tmpfs(test, "size=4m") else {
        return;
    };
    let root = mount.path.join("data");
    photos(&root, 3);
    fs::write(root.join("Cat/broken.jpg"), &jpeg(1)[..100]).unwrap();
    mount.remount("remount,ro");
    let out = tempfile::tempdir().unwrap();
    let at = |name: &str| out.path().join(name).to_str().unwrap().to_owned();
    let data = root.to_str().unwrap();

    let (ok, _, err) = run_catdog(&["clean", data, "--report", &at("r.json")]);
    assert!(ok, "{err}");
    let (ok, _, err) = run_catdog(&["split", data, "--out", &at("m.json")]);
    assert!(ok, "{err}");

    // Quarantine elsewhere: the move cannot remove the original, so nothing moves,
    // no copy is left behind, and the report is still written.
    let (ok, _, err) = run_catdog(&[
        "clean",
        data,
        "--report",
        &at("r2.json"),
        "--quarantine",
        &at("q"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("Cat/broken.jpg")
            && err.contains("Read-only file system")
            && err.contains("without --quarantine"),
        "{err}"
    );
    assert!(root.join("Cat/broken.jpg").exists());
    assert!(!out.path().join("q/Cat/broken.jpg").exists());
    let report: CleanReport = catdog::fsio::read_json(&out.path().join("r2.json"), "r").unwrap();
    assert_eq!(file(&report, "Cat/broken.jpg").quarantined_to, None);
    assert_eq!(report.usable().count(), 6);

    // Quarantine inside the read-only data folder: refused before anything moves.
    let inside = root.join("quarantine");
    let (ok, _, err) = run_catdog(&[
        "clean",
        data,
        "--report",
        &at("r3.json"),
        "--quarantine",
        inside.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("quarantine") && err.contains("mounted read-only"),
        "{err}"
    );
}

#[test]
fn quarantine_onto_a_full_disk_moves_nothing_and_leaves_no_partial_copy() {
    let test = "quarantine_onto_a_full_disk_moves_nothing_and_leaves_no_partial_copy";
    let Some(disk) = Mount::tmpfs(test, "size=1m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    photos(&root, 2);
    let broken = jpeg(1)[..100].to_vec();
    fs::write(root.join("Cat/broken.jpg"), &broken).unwrap();
    fill(&disk.path.join("filler"));
    let q = disk.path.join("q");
    let report = dir.path().join("r.json");
    let (ok, _, err) = run_catdog(&[
        "clean",
        root.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quarantine",
        q.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("disk is full"), "{err}");
    assert_eq!(fs::read(root.join("Cat/broken.jpg")).unwrap(), broken);
    assert!(
        !q.join("Cat/broken.jpg").exists(),
        "a partial copy was left"
    );
    assert!(report.exists(), "no report written");
}
