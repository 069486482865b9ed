//! The manifest: a prepared data set in one JSON file. It records every usable
//! file with its label, split and content hash, the classes, the counts, the
//! seed, the duplicates and what was rejected or ignored and why, so that
//! `catdog split` alone is a complete, reproducible preparation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::clean::{self, CleanReport};
use super::decode::{Limits, RejectReason};
use super::scan::{self, Ignored, Layout};
use super::split::{self, Ratios, Split};
use crate::error::{Error, Result};
use crate::fsio;
use crate::progress::Progress;

/// Bumped when the format changes incompatibly.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub catdog_version: String,
    /// The data folder the paths are relative to (absolute when made).
    pub root: PathBuf,
    pub layout: Layout,
    pub classes: Vec<String>,
    pub seed: u64,
    pub ratios: Ratios,
    /// Files per split and class.
    pub counts: BTreeMap<Split, BTreeMap<String, usize>>,
    pub files: Vec<ManifestFile>,
    /// Groups of files with identical content; each group shares one split.
    pub duplicates: Vec<DuplicateGroup>,
    /// Groups of files with identical content but different labels: left out
    /// of every split, since one of each group would always be scored wrong.
    #[serde(default)]
    pub conflicts: Vec<Conflict>,
    /// Groups of near-duplicates (resized, re-encoded, cropped, mirrored copies): each
    /// shares one split; one whose labels differ is left out of every split unless
    /// [`Manifest::near_conflicts_kept`].
    #[serde(default)]
    pub near_duplicates: Vec<NearGroup>,
    /// Whether near-duplicates with different labels were split like the others
    /// (`catdog split --keep-near-conflicts`).
    #[serde(default)]
    pub near_conflicts_kept: bool,
    pub rejected: Vec<RejectedFile>,
    pub ignored: Vec<Ignored>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to [`Manifest::root`], `/`-separated.
    pub path: String,
    pub label: String,
    pub split: Split,
    /// SHA-256 of the file's content.
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateGroup {
    pub hash: String,
    pub paths: Vec<String>,
    pub split: Split,
    /// False when the same photo carries different labels (manifests from
    /// before such groups were set aside as [`Conflict`]s).
    pub labels_agree: bool,
}

/// Identical files labelled differently (`Cat/x.png` = `Dog/x.png`): a data
/// error to fix by deleting the wrong copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub hash: String,
    pub files: Vec<LabelledFile>,
}

/// Photos whose perceptual hashes are within the near-duplicate threshold of each other
/// (through a chain of pairs), not all identical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearGroup {
    pub files: Vec<LabelledFile>,
    /// The largest distance (bits of 63) among the pairs that joined the group.
    pub distance: u32,
    /// Where the group went; none in the clean report, and for a group left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

impl NearGroup {
    pub fn labels_agree(&self) -> bool {
        self.files.iter().all(|f| f.label == self.files[0].label)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledFile {
    pub path: String,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedFile {
    pub path: String,
    pub reason: RejectReason,
    pub detail: String,
}

/// One file ready for the loader: where it is, its class index and content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
    pub hash: String,
}

/// Scans, cleans and splits a data folder: the whole data preparation.
pub struct Prepare<'a> {
    pub root: &'a Path,
    pub layout: Option<Layout>,
    pub ratios: Ratios,
    pub seed: u64,
    pub limits: Limits,
    /// A folder under the root to leave out (the quarantine folder).
    pub exclude: Option<&'a Path>,
    /// Split near-duplicates with different labels like the others, instead of leaving
    /// them out.
    pub keep_near_conflicts: bool,
}

/// Runs [`Prepare`]: returns the manifest and the clean step's full report.
pub fn prepare(p: &Prepare<'_>, progress: &dyn Progress) -> Result<(Manifest, CleanReport)> {
    let scan = scan::scan(p.root, p.layout, p.exclude)?;
    let report = clean::clean(&scan, &p.limits, progress);
    let manifest = Manifest::from_report(&report, p.ratios, p.seed, p.keep_near_conflicts)?;
    Ok((manifest, report))
}

impl Manifest {
    /// Splits the usable files of a clean report: near-duplicates and identical files
    /// share a split; near-duplicates with different labels are left out unless
    /// `keep_near_conflicts`.
    pub fn from_report(
        report: &CleanReport,
        ratios: Ratios,
        seed: u64,
        keep_near_conflicts: bool,
    ) -> Result<Manifest> {
        // One of each conflicting group would always be scored wrong.
        let mut conflicted: BTreeSet<&str> = report
            .conflicts
            .iter()
            .flat_map(|c| c.files.iter().map(|f| f.path.as_str()))
            .collect();
        if !keep_near_conflicts {
            conflicted.extend(
                report
                    .near_duplicates
                    .iter()
                    .filter(|g| !g.labels_agree())
                    .flat_map(|g| g.files.iter().map(|f| f.path.as_str())),
            );
        }
        // A near-duplicate moves with its group: its split key is the group's smallest
        // content hash. Identical copies hash alike, so they are always in one group.
        let hash_of: BTreeMap<&str, &str> = report
            .usable()
            .filter_map(|f| Some((f.path.as_str(), f.hash.as_deref()?)))
            .collect();
        let mut group_key: BTreeMap<&str, &str> = BTreeMap::new();
        for g in &report.near_duplicates {
            let key = g
                .files
                .iter()
                .filter_map(|f| hash_of.get(f.path.as_str()).copied())
                .min()
                .unwrap_or_default();
            for f in &g.files {
                group_key.insert(&f.path, key);
            }
        }
        let usable: Vec<&clean::FileReport> = report
            .usable()
            .filter(|f| !conflicted.contains(f.path.as_str()))
            .collect();
        let class_index = |name: &str| {
            report
                .classes
                .iter()
                .position(|c| c == name)
                .expect("scan lists every class")
        };
        let items: Vec<split::Item> = usable
            .iter()
            .map(|f| split::Item {
                class: class_index(f.class.as_deref().expect("usable files have a class")),
                hash: group_key
                    .get(f.path.as_str())
                    .copied()
                    .unwrap_or_else(|| f.hash.as_deref().expect("usable files have a hash")),
            })
            .collect();
        let splits = split::assign(&items, report.classes.len(), &ratios, seed);
        let files: Vec<ManifestFile> = usable
            .iter()
            .zip(&splits)
            .map(|(f, &split)| ManifestFile {
                path: f.path.clone(),
                label: f.class.clone().expect("usable files have a class"),
                split,
                hash: f.hash.clone().expect("usable files have a hash"),
            })
            .collect();
        for class in &report.classes {
            if !files.iter().any(|f| &f.label == class) {
                return Err(Error::data(
                    &report.root,
                    format!("class '{class}' has no usable photo"),
                    "see the clean report for why its files were rejected",
                ));
            }
        }
        let mut counts: BTreeMap<Split, BTreeMap<String, usize>> = BTreeMap::new();
        for split in Split::ALL {
            let row = counts.entry(split).or_default();
            for class in &report.classes {
                row.insert(class.clone(), 0);
            }
        }
        for f in &files {
            *counts
                .get_mut(&f.split)
                .and_then(|r| r.get_mut(&f.label))
                .expect("initialised above") += 1;
        }
        Ok(Manifest {
            version: MANIFEST_VERSION,
            catdog_version: env!("CARGO_PKG_VERSION").to_owned(),
            root: report
                .root
                .canonicalize()
                .unwrap_or_else(|_| report.root.clone()),
            layout: report.layout,
            classes: report.classes.clone(),
            seed,
            ratios,
            counts,
            duplicates: duplicate_groups(&files),
            conflicts: report.conflicts.clone(),
            near_duplicates: report
                .near_duplicates
                .iter()
                .map(|g| {
                    let split = files
                        .iter()
                        .find(|f| f.path == g.files[0].path)
                        .map(|f| f.split);
                    NearGroup { split, ..g.clone() }
                })
                .collect(),
            near_conflicts_kept: keep_near_conflicts,
            rejected: report
                .rejected()
                .map(|f| {
                    let r = f
                        .rejection
                        .clone()
                        .expect("rejected files have a rejection");
                    RejectedFile {
                        path: f.path.clone(),
                        reason: r.reason,
                        detail: r.detail,
                    }
                })
                .collect(),
            ignored: report
                .files
                .iter()
                .filter_map(|f| {
                    f.ignored_because.as_ref().map(|reason| Ignored {
                        path: f.path.clone(),
                        reason: reason.clone(),
                    })
                })
                .collect(),
            files,
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        fsio::write_json(path, self)
    }

    pub fn load(path: &Path) -> Result<Manifest> {
        let m: Manifest = fsio::read_json(path, "catdog manifest")?;
        if m.version != MANIFEST_VERSION {
            return Err(Error::data(
                path,
                format!(
                    "manifest version {} is not supported (this catdog reads {MANIFEST_VERSION})",
                    m.version
                ),
                "make it again with `catdog split`",
            ));
        }
        Ok(m)
    }

    /// How many files `split` holds (from [`Manifest::counts`]).
    pub fn count(&self, split: Split) -> usize {
        self.counts.get(&split).map_or(0, |c| c.values().sum())
    }

    /// The files of one split, with class indices, in manifest order.
    pub fn samples(&self, split: Split) -> Vec<Sample> {
        self.files
            .iter()
            .filter(|f| f.split == split)
            .map(|f| Sample {
                path: self.root.join(&f.path),
                label: self
                    .classes
                    .iter()
                    .position(|c| c == &f.label)
                    .unwrap_or(usize::MAX),
                hash: f.hash.clone(),
            })
            .collect()
    }

    /// Checks that the manifest is consistent and its files are still there;
    /// names the first missing file.
    pub fn verify(&self, manifest_path: &Path) -> Result<()> {
        if let Some(f) = self.files.iter().find(|f| !self.classes.contains(&f.label)) {
            return Err(Error::data(
                manifest_path,
                format!(
                    "{} has label '{}', which is not among the classes {:?}",
                    f.path, f.label, self.classes
                ),
                "make the manifest again with `catdog split`",
            ));
        }
        let missing: Vec<&ManifestFile> = self
            .files
            .iter()
            .filter(|f| !self.root.join(&f.path).is_file())
            .collect();
        if let Some(first) = missing.first() {
            return Err(Error::data(
                self.root.join(&first.path),
                format!(
                    "listed in the manifest but missing ({} of {} files are missing)",
                    missing.len(),
                    self.files.len()
                ),
                format!(
                    "the data moved or changed since {} was made; make it again with `catdog split`",
                    manifest_path.display()
                ),
            ));
        }
        Ok(())
    }

    /// The splits that hold no file (too few photos, or `--ratios` gave them nothing).
    pub fn empty_splits(&self) -> Vec<Split> {
        Split::ALL
            .into_iter()
            .filter(|s| self.files.iter().all(|f| f.split != *s))
            .collect()
    }

    /// The counts as a text table: one row per class, one column per split.
    pub fn table(&self) -> String {
        let mut rows = vec![vec![
            "class".to_owned(),
            "train".into(),
            "val".into(),
            "test".into(),
            "total".into(),
        ]];
        for class in &self.classes {
            let n: Vec<usize> = Split::ALL.iter().map(|s| self.counts[s][class]).collect();
            let mut row = vec![class.clone()];
            row.extend(n.iter().map(usize::to_string));
            row.push(n.iter().sum::<usize>().to_string());
            rows.push(row);
        }
        let totals: Vec<usize> = Split::ALL
            .iter()
            .map(|s| self.counts[s].values().sum())
            .collect();
        let mut row = vec!["total".to_owned()];
        row.extend(totals.iter().map(usize::to_string));
        row.push(totals.iter().sum::<usize>().to_string());
        rows.push(row);
        clean::render_table(&rows)
    }
}

/// The groups of identical files with different labels, one line each, and
/// what is done with them; empty when there are none.
pub fn conflicts_text(conflicts: &[Conflict]) -> String {
    if conflicts.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "{} group(s) of identical files with different labels, left out of every split \
         (delete the wrong copy):\n",
        conflicts.len()
    );
    for conflict in conflicts {
        let files: Vec<String> = conflict
            .files
            .iter()
            .map(|f| format!("{} ({})", f.path, f.label))
            .collect();
        text += &format!("  {}\n", files.join(" = "));
    }
    text
}

/// One line on near-duplicates and where to look, empty when there are none. `kept`:
/// those with different labels were split like the others.
pub fn near_text(groups: &[NearGroup], kept: Option<bool>) -> String {
    if groups.is_empty() {
        return String::new();
    }
    let photos: usize = groups.iter().map(|g| g.files.len()).sum();
    let conflicting = groups.iter().filter(|g| !g.labels_agree()).count();
    let fate = match kept {
        None => "",
        Some(true) => ", split like the others (--keep-near-conflicts)",
        Some(false) => ", left out of every split (--keep-near-conflicts keeps them)",
    };
    let shared = if kept.is_some() {
        ", each kept in one split"
    } else {
        ""
    };
    format!(
        "near-duplicates: {} group(s) of {photos} photos{shared}; {conflicting} with different labels{fate}\n",
        groups.len()
    )
}

fn duplicate_groups(files: &[ManifestFile]) -> Vec<DuplicateGroup> {
    let mut by_hash: BTreeMap<&str, Vec<&ManifestFile>> = BTreeMap::new();
    for f in files {
        by_hash.entry(&f.hash).or_default().push(f);
    }
    by_hash
        .into_iter()
        .filter(|(_, g)| g.len() > 1)
        .map(|(hash, g)| DuplicateGroup {
            hash: hash.to_owned(),
            paths: g.iter().map(|f| f.path.clone()).collect(),
            split: g[0].split,
            labels_agree: g.iter().all(|f| f.label == g[0].label),
        })
        .collect()
}
