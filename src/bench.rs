//! Benchmarks that print figures (never timed tests): catdog's throughput,
//! and the PyTorch peer scripts in ../shared/peers run in the same invocation
//! so that ratios are measured side by side on the same machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::data::decode::{self, Limits};
use crate::error::{Error, Result};
use crate::preprocess::Preprocessing;

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub items: usize,
    pub seconds: f64,
    pub per_second: f64,
}

impl Figure {
    pub fn new(name: &str, items: usize, seconds: f64) -> Self {
        Figure {
            name: name.to_owned(),
            items,
            seconds,
            per_second: items as f64 / seconds,
        }
    }
}

/// Decode + eval transform of every file, in parallel on all cores, as the
/// loader does it. Two passes; the first warms the page cache and is not counted.
pub fn preprocess_throughput(files: &[PathBuf]) -> Result<Figure> {
    let p = Preprocessing::default();
    let limits = Limits::default();
    let mut seconds = 0.0;
    for _pass in 0..2 {
        let start = Instant::now();
        files.par_iter().try_for_each_init(
            || vec![0.0f32; p.tensor_len()],
            |out, path| -> Result<()> {
                let d = decode::decode_file(path, &limits).map_err(|r| {
                    Error::data(path, r.to_string(), "benchmark photos must decode")
                })?;
                p.eval(&d.image, out);
                Ok(())
            },
        )?;
        seconds = start.elapsed().as_secs_f64();
    }
    Ok(Figure::new("decode + eval transform", files.len(), seconds))
}

/// Runs a peer script with `python` and returns its stdout, or why it could not.
pub fn run_peer(
    python: &Path,
    script: &Path,
    args: &[&str],
) -> std::result::Result<String, String> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number before `unit` in a peer's output line (e.g. "= 687.3 img/s").
pub fn figure_before(text: &str, unit: &str) -> Option<f64> {
    let before = &text[..text.find(unit)?];
    before.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_peer_figures() {
        let line = "PIL+torchvision workers=2: 2002 images in 2.91s = 687.3 img/s";
        assert_eq!(super::figure_before(line, "img/s"), Some(687.3));
        assert_eq!(super::figure_before("no figure", "img/s"), None);
    }
}
