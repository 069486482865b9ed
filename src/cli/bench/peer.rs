//! The PyTorch side of `catdog bench`: checking the Python, running the peer scripts in
//! ../shared/peers and `bench/pytorch_recipe.py`, and reading their figures.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use catdog::run::EpochRecord;
use serde::{Deserialize, Serialize};

/// Checks that `python` imports torch and torchvision; returns torch's version.
pub fn check_python(python: &Path) -> std::result::Result<String, String> {
    let out = Command::new(python)
        .args(["-c", "import torch, torchvision; print(torch.__version__)"])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e}; pass a Python interpreter with --python",
                python.display()
            )
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{py} cannot import torch and torchvision ({}); install them with `{py} -m pip install torch torchvision`, or pass another --python",
            stderr.trim().lines().last().unwrap_or("no message"),
            py = python.display()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The result `bench/pytorch_recipe.py` prints as its last line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipeResult {
    pub mode: String,
    /// From the script's start to its test result, imports excluded.
    pub seconds: f64,
    /// Photos per split.
    pub images: BTreeMap<String, usize>,
    pub best_epoch: usize,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub history: Vec<EpochRecord>,
}

/// Reads the recipe's result from its standard output: the last line that is a JSON object.
pub fn recipe_result(stdout: &str) -> std::result::Result<RecipeResult, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("it printed no JSON result")?;
    serde_json::from_str(line)
        .map_err(|e| format!("its result is not the JSON catdog expects ({e}): {line}"))
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

/// The number after `label` in a peer's output line (e.g. "train-step 16.2 img/s").
pub fn figure_after(text: &str, label: &str) -> Option<f64> {
    let after = &text[text.find(label)? + label.len()..];
    after.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_peer_figures() {
        let line = "PIL+torchvision workers=2: 2002 images in 2.91s = 687.3 img/s";
        assert_eq!(super::figure_before(line, "img/s"), Some(687.3));
        assert_eq!(super::figure_before("no figure", "img/s"), None);
        let torch =
            "torch 2.15 threads=2 size=224 channels_last: infer 57.3 img/s, train-step 16.2 img/s";
        assert_eq!(super::figure_after(torch, "infer"), Some(57.3));
        assert_eq!(super::figure_after(torch, "train-step"), Some(16.2));
    }

    #[test]
    fn a_python_without_torch_is_named() {
        // `sh -c "import torch, ..."` fails as a Python without torch would.
        let err = super::check_python(std::path::Path::new("sh")).unwrap_err();
        assert!(err.contains("sh cannot import torch"), "{err}");
        assert!(err.contains("pip install torch torchvision"), "{err}");
        let err = super::check_python(std::path::Path::new("/no/such/python")).unwrap_err();
        assert!(err.contains("cannot run /no/such/python"), "{err}");
    }

    #[test]
    fn reads_the_recipe_result() {
        let out = concat!(
            "some warning\n",
            r#"{"mode": "finetune", "torch": "2.15.0", "seconds": 612.5, "#,
            r#""images": {"train": 1602, "val": 200, "test": 200}, "best_epoch": 3, "#,
            r#""test_accuracy": 0.915, "test_loss": 0.25, "history": [{"epoch": 1, "#,
            r#""train_loss": 0.6, "train_acc": 0.7, "val_loss": 0.5, "val_acc": 0.8, "seconds": 120.0}]}"#,
            "\n"
        );
        let r = super::recipe_result(out).unwrap();
        assert_eq!((r.mode.as_str(), r.best_epoch), ("finetune", 3));
        assert_eq!(r.images.values().sum::<usize>(), 2002);
        assert_eq!((r.test_accuracy, r.seconds), (0.915, 612.5));
        assert_eq!(r.history[0].val_acc, 0.8);
        let err = super::recipe_result("Traceback ...\n").unwrap_err();
        assert!(err.contains("no JSON result"), "{err}");
        let err = super::recipe_result("{\"mode\": \"frozen\"}\n").unwrap_err();
        assert!(err.contains("missing field"), "{err}");
    }
}
