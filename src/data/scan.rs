//! Finding photos in a data folder and reading their labels from the layout.
//!
//! Two layouts are understood (and auto-detected):
//! - [`Layout::Folders`]: one folder per class (`PetImages/Cat/1.jpg`); the
//!   label is the top-level folder's name, nested folders included.
//! - [`Layout::Flat`]: label in the file name (`train/cat.0.jpg`); the label is
//!   the part before the first dot.
//!
//! Classes are sorted by name, so Cat=0 and Dog=1. Files are identified by
//! their path relative to the data root, with `/` separators.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How labels are encoded in a data folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One folder per class: `Cat/1.jpg`, `Dog/2.jpg`.
    Folders,
    /// Label in the file name: `cat.0.jpg`, `dog.12.jpg`.
    Flat,
}

crate::error::named_choice!(Layout, "--layout", Layout::Folders => "folders", Layout::Flat => "flat");

/// A file that is meant as a photo of a class (it may still turn out broken).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Path relative to the data root, `/`-separated.
    pub path: String,
    pub class: String,
}

/// A file or folder passed over on purpose, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignored {
    pub path: String,
    pub reason: String,
}

/// The result of scanning a data folder.
#[derive(Clone, Debug)]
pub struct Scan {
    pub root: PathBuf,
    pub layout: Layout,
    /// Class names, sorted; a label is an index into this list.
    pub classes: Vec<String>,
    /// Sorted by path, so everything downstream is independent of the order
    /// in which the file system lists entries.
    pub candidates: Vec<Candidate>,
    pub ignored: Vec<Ignored>,
}

/// Scans `root`. `layout` forces a layout (else it is detected); `exclude` is a
/// folder not to enter (the quarantine folder, when it lies inside the data).
pub fn scan(root: &Path, layout: Option<Layout>, exclude: Option<&Path>) -> Result<Scan> {
    let meta = fs::metadata(root).map_err(|e| {
        Error::data(
            root,
            format!("cannot open the data folder ({e})"),
            "check the path; it should be the folder holding Cat/ and Dog/ (or cat.*.jpg files)",
        )
    })?;
    if !meta.is_dir() {
        return Err(Error::data(
            root,
            "is a file, not a data folder",
            "pass the folder that holds the photos",
        ));
    }
    let exclude = exclude.and_then(|p| p.canonicalize().ok());
    let mut walker = Walker {
        root,
        canonical_root: root.canonicalize().ok(),
        exclude,
        ignored: Vec::new(),
    };
    let top = walker.list(root, "")?;
    let layout = match layout {
        Some(l) => l,
        None => detect(root, &top)?,
    };
    let mut candidates = Vec::new();
    match layout {
        Layout::Folders => {
            for entry in top {
                match entry.kind {
                    Kind::Dir => {
                        let mut files = Vec::new();
                        walker.walk_files(&root.join(&entry.rel), &entry.rel, &mut files);
                        candidates.extend(files.into_iter().map(|path| Candidate {
                            path,
                            class: entry.rel.clone(),
                        }));
                    }
                    Kind::File => {
                        walker.ignore(&entry.rel, "outside any class folder (layout: folders)")
                    }
                }
            }
        }
        Layout::Flat => {
            for entry in top {
                match entry.kind {
                    Kind::File => match flat_label(&entry.rel) {
                        Some(class) => candidates.push(Candidate {
                            class: class.to_owned(),
                            path: entry.rel,
                        }),
                        None => walker.ignore(
                            &entry.rel,
                            "no label in the file name (expected LABEL.ID.EXT, e.g. cat.0.jpg)",
                        ),
                    },
                    Kind::Dir => walker.ignore(
                        &entry.rel,
                        "a folder inside a flat data folder (layout: flat)",
                    ),
                }
            }
        }
    }
    candidates.sort_by(|a, b| a.path.cmp(&b.path));
    let mut classes: Vec<String> = candidates.iter().map(|c| c.class.clone()).collect();
    classes.sort();
    classes.dedup();
    let unlabelled = walker
        .ignored
        .iter()
        .filter(|i| !i.path.contains('/') && looks_like_photo(&i.path))
        .count();
    if candidates.is_empty() && layout == Layout::Flat && unlabelled > 0 {
        let parent = root
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_else(|| root.join(".."));
        return Err(Error::data(
            root,
            format!(
                "holds {unlabelled} photos but no labels (no class folders, no names like cat.0.jpg)"
            ),
            format!(
                "if this is one class's folder, did you mean the folder above it, {}?",
                parent.display()
            ),
        ));
    }
    if candidates.is_empty() {
        return Err(Error::data(
            root,
            "no photos found",
            "the folder should hold one folder per class (Cat/, Dog/) or files named like cat.0.jpg",
        ));
    }
    if classes.len() < 2 {
        return Err(Error::data(
            root,
            format!(
                "only one class found ({}); a classifier needs at least two",
                classes[0]
            ),
            "point at the folder that holds every class (for PetImages, the folder with both Cat/ and Dog/)",
        ));
    }
    let mut ignored = walker.ignored;
    ignored.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Scan {
        root: root.to_owned(),
        layout,
        classes,
        candidates,
        ignored,
    })
}

fn detect(root: &Path, top: &[Entry]) -> Result<Layout> {
    let dirs = top.iter().filter(|e| e.kind == Kind::Dir).count();
    let files = top.iter().filter(|e| e.kind == Kind::File).count();
    // A readme or a report beside the class folders is not a photo: it does not make the layout flat.
    let photos = top
        .iter()
        .filter(|e| e.kind == Kind::File && looks_like_photo(&e.rel))
        .count();
    match (dirs, files, photos) {
        (0, 0, _) => Err(Error::data(
            root,
            "the data folder is empty",
            "put the photos there, one folder per class",
        )),
        (_, 0, _) | (_, _, 0) if dirs > 0 => Ok(Layout::Folders),
        (0, _, _) => Ok(Layout::Flat),
        _ => Err(Error::data(
            root,
            format!("holds both folders ({dirs}) and photos ({photos}); cannot tell the layout"),
            "pass --layout folders (labels from folder names) or --layout flat (labels from file names)",
        )),
    }
}

/// Whether a file's extension is an image format's (the content is checked when decoding).
fn looks_like_photo(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| image::ImageFormat::from_extension(e).is_some())
}

/// `cat.0.jpg` -> `cat`; a name needs a label, an id and an extension.
fn flat_label(name: &str) -> Option<&str> {
    let mut parts = name.split('.');
    let label = parts.next()?;
    (parts.count() >= 2 && !label.is_empty()).then_some(label)
}

/// Why a file name is never a photo (OS metadata, hidden files), if it is one of those.
pub fn system_file_reason(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "thumbs.db" | "ehthumbs.db" => Some("Windows thumbnail cache, not a photo"),
        "desktop.ini" => Some("Windows folder settings, not a photo"),
        ".ds_store" => Some("macOS folder metadata, not a photo"),
        _ if name.starts_with("._") => Some("macOS resource fork, not a photo"),
        _ if name.starts_with('.') => Some("hidden file"),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

struct Entry {
    rel: String,
    kind: Kind,
}

struct Walker<'a> {
    root: &'a Path,
    canonical_root: Option<PathBuf>,
    exclude: Option<PathBuf>,
    ignored: Vec<Ignored>,
}

impl Walker<'_> {
    fn ignore(&mut self, rel: &str, reason: impl Into<String>) {
        self.ignored.push(Ignored {
            path: rel.to_owned(),
            reason: reason.into(),
        });
    }

    /// Lists one folder: photos-to-be and subfolders, recording what is passed over.
    fn list(&mut self, dir: &Path, rel: &str) -> Result<Vec<Entry>> {
        let read = fs::read_dir(dir).map_err(|e| Error::io("cannot list folder", dir, e))?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| Error::io("cannot list folder", dir, e))?;
            let name = entry.file_name();
            let path = entry.path();
            let Some(name) = name.to_str() else {
                let shown = name.to_string_lossy();
                self.ignore(
                    &join(rel, &shown),
                    "file name is not valid UTF-8; rename the file to use it",
                );
                continue;
            };
            let child = join(rel, name);
            if let Some(reason) = system_file_reason(name) {
                self.ignore(&child, reason);
                continue;
            }
            if self.exclude.is_some() && path.canonicalize().ok() == self.exclude {
                continue;
            }
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            // Follow links to files. Links to folders only at the top, where a data set is
            // often assembled from class folders kept elsewhere (`Cat -> /photos/cats`):
            // below it links are not followed, so the only loop left is a top-level link
            // to the data folder itself or above it.
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() && is_link && !rel.is_empty() => {
                    self.ignore(&child, "symbolic link to a folder, not followed")
                }
                Ok(m) if m.is_dir() && is_link && self.encloses_root(&path) => self.ignore(
                    &child,
                    "symbolic link to the data folder or a folder above it, not followed (it would loop)",
                ),
                Ok(m) if m.is_dir() => out.push(Entry {
                    rel: child,
                    kind: Kind::Dir,
                }),
                Ok(m) if m.is_file() => out.push(Entry {
                    rel: child,
                    kind: Kind::File,
                }),
                // Opening a FIFO blocks until someone writes to it, and a device may never end.
                Ok(_) => self.ignore(&child, "not a regular file (a pipe, socket or device)"),
                Err(e) if is_link => self.ignore(&child, format!("broken symbolic link ({e})")),
                Err(e) => self.ignore(&child, format!("cannot read ({e})")),
            }
        }
        Ok(out)
    }

    /// Whether the folder `path` leads to is the data folder or one above it.
    fn encloses_root(&self, path: &Path) -> bool {
        match (path.canonicalize(), &self.canonical_root) {
            (Ok(target), Some(root)) => root.starts_with(target),
            _ => true, // cannot tell: do not risk a loop
        }
    }

    /// All files below `dir`, recursively; unreadable folders are recorded, not fatal.
    fn walk_files(&mut self, dir: &Path, rel: &str, files: &mut Vec<String>) {
        let entries = match self.list(dir, rel) {
            Ok(entries) => entries,
            Err(e) => {
                self.ignore(rel, format!("folder not read: {e}"));
                return;
            }
        };
        for entry in entries {
            match entry.kind {
                Kind::File => files.push(entry.rel),
                Kind::Dir => self.walk_files(&self.root.join(&entry.rel), &entry.rel, files),
            }
        }
    }
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn folders_layout_sorts_classes_and_ignores_system_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "Dog/2.jpg",
            "Cat/1.jpg",
            "Cat/sub/3.jpg",
            "Cat/Thumbs.db",
            "Dog/.DS_Store",
            "Dog/.hidden.jpg",
        ] {
            touch(dir.path(), f);
        }
        let s = scan(dir.path(), None, None).unwrap();
        assert_eq!(s.layout, Layout::Folders);
        assert_eq!(s.classes, ["Cat", "Dog"]);
        let got: Vec<_> = s
            .candidates
            .iter()
            .map(|c| (c.path.as_str(), c.class.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Cat/1.jpg", "Cat"),
                ("Cat/sub/3.jpg", "Cat"),
                ("Dog/2.jpg", "Dog")
            ]
        );
        let ignored: Vec<_> = s.ignored.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            ignored,
            ["Cat/Thumbs.db", "Dog/.DS_Store", "Dog/.hidden.jpg"]
        );
    }

    #[test]
    fn flat_layout_reads_label_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["dog.12.jpg", "cat.0.jpg", "cat.1.jpg", "README"] {
            touch(dir.path(), f);
        }
        let s = scan(dir.path(), None, None).unwrap();
        assert_eq!(s.layout, Layout::Flat);
        assert_eq!(s.classes, ["cat", "dog"]);
        assert_eq!(s.candidates.len(), 3);
        assert_eq!(s.ignored[0].path, "README");
    }

    #[test]
    fn user_errors_name_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(
            scan(&missing, None, None)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        let empty = scan(dir.path(), None, None).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        touch(dir.path(), "Cat/1.jpg");
        let one = scan(dir.path(), None, None).unwrap_err().to_string();
        assert!(one.contains("only one class"), "{one}");
        touch(dir.path(), "dog.1.jpg");
        let mixed = scan(dir.path(), None, None).unwrap_err().to_string();
        assert!(mixed.contains("--layout"), "{mixed}");
    }

    #[test]
    fn stray_files_beside_class_folders_do_not_change_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["Cat/1.jpg", "Dog/1.jpg", "readme.txt", "expected.json"] {
            touch(dir.path(), f);
        }
        let s = scan(dir.path(), None, None).unwrap();
        assert_eq!(s.layout, Layout::Folders);
        assert_eq!(s.candidates.len(), 2);
        let ignored: Vec<_> = s.ignored.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(ignored, ["expected.json", "readme.txt"]);
    }

    #[test]
    fn a_class_folder_given_as_the_data_folder_points_to_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["Cat/1.jpg", "Cat/2.jpg", "Cat/3.png", "Dog/1.jpg"] {
            touch(dir.path(), f);
        }
        let err = scan(&dir.path().join("Cat"), None, None)
            .unwrap_err()
            .to_string();
        let parent = dir.path().canonicalize().unwrap();
        assert!(
            err.contains("holds 3 photos but no labels")
                && err.contains(&format!(
                    "did you mean the folder above it, {}?",
                    parent.display()
                )),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn class_folders_that_are_links_are_followed_but_loops_are_not() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "elsewhere/cats/1.jpg");
        touch(dir.path(), "elsewhere/cats/sub/2.jpg");
        touch(dir.path(), "elsewhere/dogs/1.jpg");
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        symlink(dir.path().join("elsewhere/cats"), data.join("Cat")).unwrap();
        symlink(dir.path().join("elsewhere/dogs"), data.join("Dog")).unwrap();
        symlink(&data, data.join("self")).unwrap();
        symlink(dir.path(), data.join("up")).unwrap();
        symlink(
            dir.path().join("elsewhere"),
            dir.path().join("elsewhere/dogs/loop"),
        )
        .unwrap();
        let s = scan(&data, None, None).unwrap();
        assert_eq!(s.layout, Layout::Folders);
        assert_eq!(s.classes, ["Cat", "Dog"]);
        let got: Vec<_> = s.candidates.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(got, ["Cat/1.jpg", "Cat/sub/2.jpg", "Dog/1.jpg"]);
        let ignored: Vec<_> = s
            .ignored
            .iter()
            .map(|i| (i.path.as_str(), i.reason.contains("not followed")))
            .collect();
        assert_eq!(ignored, [("Dog/loop", true), ("self", true), ("up", true)]);
    }

    #[cfg(unix)]
    #[test]
    fn folder_symlink_loops_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "Cat/1.jpg");
        touch(dir.path(), "Dog/1.jpg");
        std::os::unix::fs::symlink(dir.path(), dir.path().join("Cat/loop")).unwrap();
        let s = scan(dir.path(), None, None).unwrap();
        assert_eq!(s.candidates.len(), 2);
        assert!(
            s.ignored
                .iter()
                .any(|i| i.path == "Cat/loop" && i.reason.contains("not followed"))
        );
    }
}
