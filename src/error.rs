//! The library's error type. Every error a user can cause names the file or
//! setting involved and says what to do about it.

use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{action} {}: {cause}{}", path.display(), io_hint(cause))]
    Io {
        action: &'static str,
        path: PathBuf,
        // Shown in the message, not chained as a source: anyhow would print it twice.
        cause: std::io::Error,
    },

    /// The input data (a data folder, a manifest, a photo) is not usable as it is.
    #[error("{}: {problem}\n  hint: {hint}", path.display())]
    Data {
        path: PathBuf,
        problem: String,
        hint: String,
    },

    /// A command-line setting or configuration value is out of range.
    #[error("invalid {setting}: {problem}")]
    Setting {
        setting: &'static str,
        problem: String,
    },

    /// A weight file or model checkpoint cannot be used, or could not be fetched.
    #[error("{}: {problem}\n  hint: {hint}", path.display())]
    Weights {
        path: PathBuf,
        problem: String,
        hint: String,
    },

    /// A JSON file of ours (manifest, report, config) could not be parsed.
    #[error("{} is not a valid {what}: {cause}\n  hint: it may be from another tool or damaged; create it again", path.display())]
    Json {
        what: &'static str,
        path: PathBuf,
        cause: serde_json::Error,
    },
}

/// What to do about the I/O failures a user can fix, as a hint line.
fn io_hint(cause: &std::io::Error) -> &'static str {
    match cause.kind() {
        // Every file catdog writes goes through a temporary file and a rename,
        // so a write that fails leaves the previous version in place.
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            "\n  hint: the disk is full; the previous version of the file is intact. Free some space (or write elsewhere) and run the command again (`catdog train --resume RUN` for training)"
        }
        std::io::ErrorKind::ReadOnlyFilesystem => {
            "\n  hint: that file system is mounted read-only; write somewhere else"
        }
        _ => "",
    }
}

impl Error {
    /// An I/O error with the path and the action that failed.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            cause,
        }
    }

    /// A problem with input data, with a hint on what to do.
    pub fn data(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.into(),
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    /// A problem with a weight file or checkpoint, with a hint on what to do.
    pub fn weights(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Weights {
            path: path.into(),
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    pub fn setting(setting: &'static str, problem: impl Into<String>) -> Self {
        Error::Setting {
            setting,
            problem: problem.into(),
        }
    }
}

/// The one of `choices` whose name (`Display`) is `name`, or an error for `setting` that says
/// what is accepted.
pub(crate) fn parse_choice<T: Copy + std::fmt::Display>(
    setting: &'static str,
    name: &str,
    choices: &[T],
) -> Result<T> {
    choices
        .iter()
        .copied()
        .find(|c| c.to_string() == name)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(ToString::to_string).collect();
            Error::setting(
                setting,
                format!("'{name}' is not one of {}", names.join(", ")),
            )
        })
}

/// `Display` and `FromStr` for a choice between named variants (a split, a checkpoint, a
/// mode, a layout), as the command line takes it: `named_choice!(Which, "--checkpoint",
/// Which::Best => "best", Which::Last => "last")`.
macro_rules! named_choice {
    ($ty:ty, $setting:literal, $($variant:path => $name:literal),+ $(,)?) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($variant => $name),+
                })
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::error::Error;

            fn from_str(s: &str) -> $crate::error::Result<Self> {
                $crate::error::parse_choice($setting, s, &[$($variant),+])
            }
        }
    };
}
pub(crate) use named_choice;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_so_and_what_to_do() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let text = Error::io("cannot write", "run/last/model.safetensors", full).to_string();
        assert!(
            text.contains("run/last/model.safetensors")
                && text.contains("disk is full")
                && text.contains("previous version of the file is intact"),
            "{text}"
        );
        let other = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(
            !Error::io("cannot write", "f", other)
                .to_string()
                .contains("hint")
        );
    }
}
