//! The clean step: decode every candidate completely, in parallel, and sort it
//! into usable (perhaps with warnings), rejected (with a reason) or ignored.
//! It never modifies or deletes a user's file; [`quarantine`] moves rejected
//! files aside only when asked to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::decode::{self, Limits, RejectReason, Rejection, Warning, WarningKind};
use super::manifest::{Conflict, LabelledFile, NearGroup};
use super::near;
use super::phash::{self, Hashes};
use super::quality::{self, Flag};
use super::scan::{Layout, Scan};
use crate::error::{Error, Result};
use crate::fsio;
use crate::progress::Progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    Usable,
    Rejected,
    Ignored,
}

/// What the clean step found about one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileReport {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub status: FileStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// SHA-256 of the content (usable files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// Perceptual hashes (usable files), for near-duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phash: Option<Hashes>,
    /// Quality flags (usable files): warnings for a person, never a reason to leave it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_because: Option<String>,
    /// Where `--quarantine` moved this file, relative to the quarantine folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_to: Option<String>,
}

/// The per-class counts printed after cleaning.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassSummary {
    pub class: String,
    pub usable: usize,
    /// Usable files whose colour mode was converted to RGB8.
    pub converted: usize,
    /// Usable files with any warning.
    pub with_warnings: usize,
    pub rejected: BTreeMap<RejectReason, usize>,
    pub ignored: usize,
    /// Usable files per quality flag.
    #[serde(default)]
    pub quality: BTreeMap<Flag, usize>,
}

/// The full result of the clean step, written as JSON by `catdog clean --report`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CleanReport {
    pub root: PathBuf,
    pub layout: Layout,
    pub classes: Vec<String>,
    pub limits: Limits,
    pub summary: Vec<ClassSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<PathBuf>,
    pub files: Vec<FileReport>,
    /// Usable files with identical content but different labels; the split
    /// leaves them out.
    #[serde(default)]
    pub conflicts: Vec<Conflict>,
    /// Perceptual hashes at most this many bits apart mark near-duplicates.
    #[serde(default)]
    pub near_threshold: u32,
    /// Groups of near-duplicate usable files (not all identical), in path order.
    #[serde(default)]
    pub near_duplicates: Vec<NearGroup>,
}

/// Decodes every candidate of `scan` (in parallel) and reports on each.
pub fn clean(scan: &Scan, limits: &Limits, progress: &dyn Progress) -> CleanReport {
    progress.set_total(scan.candidates.len() as u64);
    let mut files: Vec<FileReport> = scan
        .candidates
        .par_iter()
        .map(|c| {
            let report = check_file(&scan.root, &c.path, Some(c.class.clone()), limits);
            progress.advance(1);
            report
        })
        .collect();
    files.extend(scan.ignored.iter().map(|i| FileReport {
        class: class_of(scan, &i.path),
        ignored_because: Some(i.reason.clone()),
        ..FileReport::new(i.path.clone(), FileStatus::Ignored)
    }));
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let summary = summarise(&scan.classes, &files);
    CleanReport {
        root: scan.root.clone(),
        layout: scan.layout,
        classes: scan.classes.clone(),
        limits: *limits,
        summary,
        quarantine: None,
        conflicts: conflicts(&files),
        near_threshold: near::DEFAULT_THRESHOLD,
        near_duplicates: near_duplicates(&files, near::DEFAULT_THRESHOLD),
        files,
    }
}

/// The groups of usable files within `threshold` bits of each other, leaving out
/// groups of identical files only (those are [`conflicts`] or plain duplicates).
fn near_duplicates(files: &[FileReport], threshold: u32) -> Vec<NearGroup> {
    let hashed: Vec<(&FileReport, Hashes)> = files
        .iter()
        .filter(|f| f.status == FileStatus::Usable)
        .filter_map(|f| f.phash.map(|h| (f, h)))
        .collect();
    let hashes: Vec<Hashes> = hashed.iter().map(|(_, h)| *h).collect();
    let pairs = near::pairs(&hashes, threshold);
    let mut farthest = vec![0u32; hashed.len()];
    for p in &pairs {
        farthest[p.a] = farthest[p.a].max(p.distance);
    }
    near::groups(hashed.len(), &pairs)
        .into_iter()
        .filter(|g| g.iter().any(|&i| hashed[i].0.hash != hashed[g[0]].0.hash))
        .map(|g| NearGroup {
            distance: g.iter().map(|&i| farthest[i]).max().unwrap_or(0),
            files: g
                .iter()
                .map(|&i| LabelledFile {
                    path: hashed[i].0.path.clone(),
                    label: hashed[i].0.class.clone().unwrap_or_default(),
                })
                .collect(),
            split: None,
        })
        .collect()
}

/// The groups of usable files with identical content whose labels disagree,
/// by hash, each in path order.
fn conflicts(files: &[FileReport]) -> Vec<Conflict> {
    let mut by_hash: BTreeMap<&str, Vec<LabelledFile>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.status == FileStatus::Usable) {
        if let (Some(hash), Some(label)) = (&f.hash, &f.class) {
            by_hash.entry(hash).or_default().push(LabelledFile {
                path: f.path.clone(),
                label: label.clone(),
            });
        }
    }
    by_hash
        .into_iter()
        .filter(|(_, g)| g.iter().any(|f| f.label != g[0].label))
        .map(|(hash, files)| Conflict {
            hash: hash.to_owned(),
            files,
        })
        .collect()
}

fn check_file(root: &Path, rel: &str, class: Option<String>, limits: &Limits) -> FileReport {
    let path = root.join(rel);
    let mut report = FileReport {
        class,
        ..FileReport::new(rel.to_owned(), FileStatus::Rejected)
    };
    let decoded = decode::read_listed_file(&path, limits).and_then(|bytes| {
        let decoded = decode::decode(&bytes, decode::extension(&path).as_deref(), limits)?;
        Ok((fsio::sha256_hex(&bytes), decoded))
    });
    match decoded {
        Ok((hash, d)) => {
            report.status = FileStatus::Usable;
            report.format = Some(format!("{:?}", d.format).to_lowercase());
            report.width = Some(d.image.width());
            report.height = Some(d.image.height());
            report.hash = Some(hash);
            report.phash = Some(phash::hashes(&d.image));
            let converted = d.warnings.iter().any(|w| w.kind == WarningKind::Converted);
            report.quality = quality::assess(&d.image, converted);
            report.warnings = d.warnings;
        }
        Err(rejection) => report.rejection = Some(rejection),
    }
    report
}

impl FileReport {
    fn new(path: String, status: FileStatus) -> Self {
        FileReport {
            path,
            class: None,
            status,
            format: None,
            width: None,
            height: None,
            hash: None,
            warnings: Vec::new(),
            phash: None,
            quality: Vec::new(),
            rejection: None,
            ignored_because: None,
            quarantined_to: None,
        }
    }
}

/// The class an ignored file sits under, in the folder layout.
fn class_of(scan: &Scan, rel: &str) -> Option<String> {
    match scan.layout {
        Layout::Folders => rel
            .split_once('/')
            .map(|(top, _)| top.to_owned())
            .filter(|c| scan.classes.contains(c)),
        Layout::Flat => None,
    }
}

fn summarise(classes: &[String], files: &[FileReport]) -> Vec<ClassSummary> {
    let mut rows: Vec<ClassSummary> = classes
        .iter()
        .map(|c| ClassSummary {
            class: c.clone(),
            ..Default::default()
        })
        .collect();
    let mut unlabelled = ClassSummary {
        class: "(no class)".to_owned(),
        ..Default::default()
    };
    for f in files {
        let row = match &f.class {
            Some(c) => rows
                .iter_mut()
                .find(|r| &r.class == c)
                .unwrap_or(&mut unlabelled),
            None => &mut unlabelled,
        };
        match f.status {
            FileStatus::Usable => {
                row.usable += 1;
                row.converted +=
                    usize::from(f.warnings.iter().any(|w| w.kind == WarningKind::Converted));
                row.with_warnings += usize::from(!f.warnings.is_empty());
                for flag in &f.quality {
                    *row.quality.entry(*flag).or_default() += 1;
                }
            }
            FileStatus::Rejected => {
                let reason = f
                    .rejection
                    .as_ref()
                    .map_or(RejectReason::Unreadable, |r| r.reason);
                *row.rejected.entry(reason).or_default() += 1;
            }
            FileStatus::Ignored => row.ignored += 1,
        }
    }
    if unlabelled.usable + unlabelled.ignored + unlabelled.rejected.len() > 0 {
        rows.push(unlabelled);
    }
    rows
}

impl CleanReport {
    pub fn usable(&self) -> impl Iterator<Item = &FileReport> {
        self.files.iter().filter(|f| f.status == FileStatus::Usable)
    }

    pub fn rejected(&self) -> impl Iterator<Item = &FileReport> {
        self.files
            .iter()
            .filter(|f| f.status == FileStatus::Rejected)
    }

    /// Usable files with any quality flag, and the count of each flag.
    pub fn quality_counts(&self) -> (usize, BTreeMap<Flag, usize>) {
        let mut counts = BTreeMap::new();
        for s in &self.summary {
            for (flag, n) in &s.quality {
                *counts.entry(*flag).or_default() += n;
            }
        }
        let flagged = self.usable().filter(|f| !f.quality.is_empty()).count();
        (flagged, counts)
    }

    /// One line on the quality flags, empty when no photo has any.
    pub fn quality_text(&self) -> String {
        let (flagged, counts) = self.quality_counts();
        if flagged == 0 {
            return String::new();
        }
        let each: Vec<String> = counts
            .iter()
            .map(|(f, n)| format!("{} {n}", f.label()))
            .collect();
        format!(
            "quality flags (warnings only, nothing is left out): {flagged} photo(s): {}\n",
            each.join(", ")
        )
    }

    /// The summary as a text table, one row per class (the `q:` columns: quality flags).
    pub fn table(&self) -> String {
        let reasons: Vec<RejectReason> = {
            let mut r: Vec<_> = self
                .summary
                .iter()
                .flat_map(|s| s.rejected.keys().copied())
                .collect();
            r.sort();
            r.dedup();
            r
        };
        let mut header = vec![
            "class".to_owned(),
            "usable".into(),
            "converted".into(),
            "warned".into(),
        ];
        header.extend(reasons.iter().map(|r| format!("rej: {}", r.label())));
        header.push("ignored".into());
        let flags: Vec<Flag> = Flag::ALL
            .into_iter()
            .filter(|f| self.summary.iter().any(|s| s.quality.contains_key(f)))
            .collect();
        header.extend(flags.iter().map(|f| format!("q: {}", f.label())));
        let mut rows = vec![header];
        let mut total = vec![0usize; rows[0].len() - 1];
        for s in &self.summary {
            let mut nums = vec![s.usable, s.converted, s.with_warnings];
            nums.extend(
                reasons
                    .iter()
                    .map(|r| s.rejected.get(r).copied().unwrap_or(0)),
            );
            nums.push(s.ignored);
            nums.extend(flags.iter().map(|f| s.quality.get(f).copied().unwrap_or(0)));
            for (t, n) in total.iter_mut().zip(&nums) {
                *t += n;
            }
            rows.push(
                std::iter::once(s.class.clone())
                    .chain(nums.iter().map(usize::to_string))
                    .collect(),
            );
        }
        rows.push(
            std::iter::once("total".to_owned())
                .chain(total.iter().map(usize::to_string))
                .collect(),
        );
        render_table(&rows)
    }
}

/// Left-aligned first column, right-aligned numbers.
pub(crate) fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(out, "{cell:<w$}", w = widths[0]);
            } else {
                let _ = write!(out, "  {cell:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
    }
    out
}

/// Moves every rejected file under `dir`, keeping its relative path, and
/// records each move in the report. Files already there are never
/// overwritten; a second run finds nothing left to move.
pub fn quarantine(report: &mut CleanReport, dir: &Path) -> Result<usize> {
    let mut moved = 0;
    for f in report
        .files
        .iter_mut()
        .filter(|f| f.status == FileStatus::Rejected)
    {
        let from = report.root.join(&f.path);
        if !from.exists() {
            continue;
        }
        let rel = free_name(dir, &f.path);
        let to = dir.join(&rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| Error::io("cannot create quarantine folder", parent, e))?;
        }
        move_file(&from, &to)?;
        f.quarantined_to = Some(rel);
        moved += 1;
    }
    report.quarantine = Some(dir.to_owned());
    Ok(moved)
}

/// `rel`, or `rel.1`, `rel.2`... whichever does not exist yet under `dir`.
fn free_name(dir: &Path, rel: &str) -> String {
    (0..)
        .map(|i| {
            if i == 0 {
                rel.to_owned()
            } else {
                format!("{rel}.{i}")
            }
        })
        .find(|r| !dir.join(r).exists())
        .expect("some suffix is free")
}

fn move_file(from: &Path, to: &Path) -> Result<()> {
    let cannot_move = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            Error::data(
                from,
                format!(
                    "cannot move this rejected file to the quarantine ({e}); files before it in the report were moved, none after"
                ),
                "run `catdog clean` without --quarantine (the report lists every rejected file), or clean a writable copy of the data",
            )
        }
        _ => Error::io("cannot move to quarantine", from, e),
    };
    match fs::rename(from, to) {
        Ok(()) => return Ok(()),
        // Across file systems: copied below. Anything else cannot succeed by copying.
        Err(e) if e.kind() != std::io::ErrorKind::CrossesDevices => return Err(cannot_move(e)),
        Err(_) => {}
    }
    // Copy, make it durable, then remove the original. A failed copy (a full
    // disk) is removed: the original is still in place.
    fs::copy(from, to)
        .and_then(|_| fs::File::open(to)?.sync_all())
        .map_err(|e| {
            let _ = fs::remove_file(to);
            Error::io("cannot copy to quarantine", to, e)
        })?;
    fs::remove_file(from).map_err(|e| {
        // The original stays (a read-only data folder): drop the copy, so nothing is doubled.
        let _ = fs::remove_file(to);
        cannot_move(e)
    })
}
