//! Helpers shared by the integration tests: the location of ../shared, a
//! minimal .npy reader for torchvision's golden outputs, generated data sets,
//! the catdog binary, and tmpfs mounts for the file-system tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::Device;
use catdog::device::DeviceChoice;
use catdog::report::EpochRecord;
use catdog::run::RunDir;

/// `../shared` beside the repository (the real photos and torchvision's golden outputs), or
/// `None`: a user's fresh clone does not have it. `CATDOG_SHARED` names another place, for a
/// test binary carried to a machine where the repository sits elsewhere (bench/gpu-check.sh).
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CATDOG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    dir.is_dir().then_some(dir)
}

/// `../shared`, for the tests that cannot run without it. They are marked
/// `#[ignore = "needs ../shared"]`, so that a run lists them as ignored rather than passed;
/// `cargo test -- --include-ignored` runs them (CI does where ../shared exists).
pub fn shared() -> PathBuf {
    shared_dir().expect(
        "this test needs ../shared beside the repository; run it only with ../shared present",
    )
}

/// Where the device-parameterised golden tests (tests/model_parity.rs) run: the device
/// `CATDOG_TEST_DEVICE` names (`cpu`, `wgpu`, `cuda`, `cuda:N`), the CPU when it is unset. A
/// device this build lacks fails the test, saying which feature to build with.
pub fn test_device() -> (DeviceChoice, Device) {
    let choice: DeviceChoice = match std::env::var("CATDOG_TEST_DEVICE") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("CATDOG_TEST_DEVICE: {e}")),
        Err(_) => DeviceChoice::Cpu,
    };
    let device = choice
        .device()
        .unwrap_or_else(|e| panic!("CATDOG_TEST_DEVICE={choice}: {e}"));
    eprintln!("test device: {choice}");
    (choice, device)
}

/// A little-endian f32 array in NumPy's .npy format (C order): shape and data.
pub fn read_npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{} is not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}: data does not match shape",
        path.display()
    );
    (shape, data)
}

/// ||a - b|| / ||b||, in f64.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// A weights file with torchvision's names and seeded random weights (a saved checkpoint's
/// `model.safetensors`): frozen mode caches features only for a weights file.
pub fn random_weights(dir: &Path) -> PathBuf {
    use catdog::model::checkpoint::{self, CheckpointMeta};
    use catdog::preprocess::Preprocessing;
    let folder = dir.join("weights");
    let meta = CheckpointMeta::new(vec!["a".into(), "b".into()], Preprocessing::imagenet(32));
    checkpoint::save_random(&folder, &meta, 1).unwrap();
    folder.join(checkpoint::WEIGHTS_FILE)
}

/// A generated two-class photo set (`catdog demo`'s), `per_class` photos a class.
pub fn demo_data(dir: &Path, per_class: usize) -> PathBuf {
    catdog::data::synthetic::write_dataset(&dir.join("demo"), per_class, 7)
        .unwrap()
        .data
}

/// A run's epochs without their timings, as they must repeat exactly.
pub fn history(run: &Path) -> Vec<[f64; 4]> {
    std::fs::read_to_string(RunDir::new(run).metrics_jsonl())
        .unwrap()
        .lines()
        .map(|l| {
            let r: EpochRecord = serde_json::from_str(l).unwrap();
            [r.train_loss, r.train_acc, r.val_loss, r.val_acc]
        })
        .collect()
}

/// The catdog binary, ready for arguments.
pub fn catdog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_catdog"))
}

/// Runs catdog to completion: success, stdout, stderr.
pub fn run_catdog(args: &[&str]) -> (bool, String, String) {
    let out = catdog().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A tmpfs mounted on a temporary folder for one test, unmounted when dropped.
pub struct Mount {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a tmpfs with `options` (e.g. `size=8m`), or says why the test
    /// skips and returns `None` where mounting is not permitted (not root, a
    /// container without CAP_SYS_ADMIN).
    pub fn tmpfs(test: &str, options: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount {
                path: dir.path().to_owned(),
                _dir: dir,
            }),
            Ok(o) => {
                eprintln!(
                    "skipped {test}: cannot mount a tmpfs here ({})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped {test}: cannot run mount ({e})");
                None
            }
        }
    }

    /// Changes the mount's options (`remount,ro`, `remount,size=...`).
    pub fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", options])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -o {options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: a failed test may still hold a file open there.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the disk under it is full.
pub fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&block[..4096]).is_ok() {}
}

/// Every picture a run's report holds.
pub const REPORT_PICTURES: [&str; 7] = [
    catdog::report::CURVES,
    catdog::report::CONFUSION,
    catdog::report::RELIABILITY,
    catdog::report::ROC,
    catdog::report::PREDICTIONS,
    catdog::report::TOP_LOSSES,
    catdog::report::GRADCAM,
];
