//! The data stage: from a folder a user downloaded to a [`Manifest`] of clean,
//! labelled, split photos.
//!
//! - [`scan`]: find the photos and their labels (the two layouts).
//! - [`decode`]: read one file safely (limits, formats, colour modes, EXIF).
//! - [`clean`]: decode every file and sort it into usable / rejected / ignored.
//! - [`phash`]: perceptual hashes; [`near`]: near-duplicate pairs and groups through an index.
//! - [`quality`]: quality flags (tiny, blurry, dark...), warnings only.
//! - [`split`]: the stratified, seeded train/val/test assignment.
//! - [`manifest`]: the prepared data set as one JSON file, and [`prepare`] to make it.
//! - [`synthetic`]: generated photos (the demo's data set, the bench's and the tests' stand-ins).

pub mod clean;
pub mod decode;
pub mod manifest;
pub mod near;
pub mod phash;
pub mod quality;
pub mod scan;
pub mod split;
pub mod synthetic;

pub use clean::{CleanReport, FileStatus};
pub use decode::Limits;
pub use manifest::{Manifest, ManifestFile, Prepare, Sample, prepare};
pub use scan::{Layout, Scan};
pub use split::{Ratios, Split};
