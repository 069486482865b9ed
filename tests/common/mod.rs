//! Helpers shared by integration tests: finding `../shared` and reading `.npy` files.

use std::path::{Path, PathBuf};

/// `../shared` beside the repository, or `None` (with a message saying the test is skipped)
/// where it is absent, as on a user's fresh clone.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    if dir.is_dir() {
        Some(dir.to_path_buf())
    } else {
        eprintln!(
            "{test}: skipped: ../shared not found (looked for {})",
            dir.display()
        );
        None
    }
}

/// A float32 array from a `.npy` file.
pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads a `.npy` file holding little-endian float32 in C order (what `np.save` writes for a
/// float32 array); anything else is refused rather than misread.
pub fn read_npy(path: &Path) -> Npy {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x93NUMPY"),
        "{} is not a .npy file",
        path.display()
    );
    // Version 1 has a 2-byte header length, versions 2 and 3 a 4-byte one.
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: not little-endian float32: {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: not C order: {header}",
        path.display()
    );
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape in header");
    let shape: Vec<usize> = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}: data length does not match shape",
        path.display()
    );
    Npy { shape, data }
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
