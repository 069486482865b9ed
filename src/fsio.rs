//! File plumbing shared by every stage: atomic writes (a reader or a crash
//! never sees half a file) and content hashing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over the target. A crash leaves either the
/// old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by `fill` (for large files).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create folder", &dir, e))?;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // The rename is durable only once the folder entry is on disk.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("our types always serialise");
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads a JSON file written by [`write_json`]; `what` names it in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|cause| Error::Json {
        what,
        path: path.to_owned(),
        cause,
    })
}

/// The temporary name used while writing `path`: hidden, and unique per process
/// and thread so that concurrent writers never share one.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tid = format!("{:?}", std::thread::current().id());
    let tid: String = tid.chars().filter(char::is_ascii_digit).collect();
    parent_dir(path).join(format!(".{name}.{}.{tid}.tmp", std::process::id()))
}

/// Removes the temporary files that [`write_atomic`] leaves in `dir` when its
/// process is killed mid-write (files named by [`temp_sibling`]). Only for a
/// folder no other process is writing to.
pub fn remove_stale_temps(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // no folder, nothing left behind
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && entry.path().is_file() {
            fs::remove_file(entry.path())
                .map_err(|e| Error::io("cannot remove", entry.path(), e))?;
        }
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Replaces the folder `target` as a whole: `fill` writes the new content into
/// a hidden sibling, which then takes `target`'s place. A crash leaves either
/// the old folder or the complete new one (see [`recover_dir`]), never a mix:
/// a checkpoint's files always belong together.
pub fn replace_dir(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (new, old) = dir_siblings(target);
    recover_dir(target)?;
    if new.exists() {
        fs::remove_dir_all(&new).map_err(|e| Error::io("cannot remove", &new, e))?;
    }
    fs::create_dir_all(&new).map_err(|e| Error::io("cannot create folder", &new, e))?;
    if let Err(mut e) = fill(&new) {
        let _ = fs::remove_dir_all(&new);
        // Name the file the user knows (`last/x`), not the hidden folder it was written in.
        if let Error::Io { path, .. } = &mut e
            && let Ok(rel) = path.strip_prefix(&new)
        {
            *path = target.join(rel);
        }
        return Err(e);
    }
    if target.exists() {
        fs::rename(target, &old).map_err(|e| Error::io("cannot move aside", target, e))?;
    }
    fs::rename(&new, target).map_err(|e| Error::io("cannot move into place", &new, e))?;
    if let Ok(d) = File::open(parent_dir(target)) {
        let _ = d.sync_all();
    }
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io("cannot remove", &old, e))?;
    }
    Ok(())
}

/// Finishes or undoes a [`replace_dir`] that a crash interrupted: a complete
/// new folder that had not yet taken its place does so; a half-written one is
/// dropped; the old one is removed once the new one is in place.
pub fn recover_dir(target: &Path) -> Result<()> {
    let (new, old) = dir_siblings(target);
    if !target.exists() && new.exists() && old.exists() {
        // Crashed between the two renames: `new` was complete before `old` was moved aside.
        fs::rename(&new, target).map_err(|e| Error::io("cannot move into place", &new, e))?;
    }
    for leftover in [new, old] {
        if leftover.exists() {
            fs::remove_dir_all(&leftover).map_err(|e| Error::io("cannot remove", &leftover, e))?;
        }
    }
    Ok(())
}

fn dir_siblings(target: &Path) -> (PathBuf, PathBuf) {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let dir = parent_dir(target);
    (
        dir.join(format!(".{name}.new")),
        dir.join(format!(".{name}.old")),
    )
}

/// SHA-256 of a byte slice, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a file's content, streamed (weight files are tens of MB).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/report.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.json")]);
    }

    #[test]
    fn failed_fill_keeps_old_file_and_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.unwrap_err().to_string().contains("m.json"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replace_dir_swaps_whole_folders_and_recovers_from_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("last");
        let put = |v: &'static str| {
            replace_dir(&target, |d| {
                write_atomic(&d.join("a"), v.as_bytes())
                    .and_then(|_| write_atomic(&d.join("b"), v.as_bytes()))
            })
        };
        put("1").unwrap();
        put("2").unwrap();
        assert_eq!(fs::read(target.join("b")).unwrap(), b"2");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failed fill leaves the old folder in place.
        let err = replace_dir(&target, |_| Err(Error::setting("test", "fail")));
        assert!(err.is_err());
        assert_eq!(fs::read(target.join("a")).unwrap(), b"2");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // Crash between the renames: the complete new folder wins.
        let (new, old) = dir_siblings(&target);
        fs::rename(&target, &old).unwrap();
        fs::create_dir(&new).unwrap();
        fs::write(new.join("a"), "3").unwrap();
        recover_dir(&target).unwrap();
        assert_eq!(fs::read(target.join("a")).unwrap(), b"3");
        assert!(!old.exists() && !new.exists());
        // Crash while filling: the half-written folder is dropped.
        fs::create_dir(&new).unwrap();
        recover_dir(&target).unwrap();
        assert!(!new.exists() && target.join("a").exists());
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
