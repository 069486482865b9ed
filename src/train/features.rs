//! Frozen mode's shortcut: with a fixed backbone and the deterministic eval
//! transform, an image's 512-d feature vector never changes, so it is
//! computed once and cached on disk. Five epochs then cost about one forward
//! pass over the data, and a second run over the same photos costs none.
//!
//! An entry is keyed by the weights' SHA-256, the preprocessing, the precision
//! of the products and the photo's content hash; it holds the features and a checksum, is written by
//! rename (never seen half-written), and a damaged one is recomputed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::data::manifest::Sample;
use crate::error::{Error, Result};
use crate::fsio;
use crate::loader::{Loader, LoaderConfig};
use crate::model::{EvalNet, FEATURES, Precision};
use crate::preprocess::Preprocessing;
use crate::progress::Progress;

const ENTRY_BYTES: usize = FEATURES * 4 + 8;

/// The on-disk feature cache for one backbone and preprocessing.
pub struct FeatureCache {
    dir: PathBuf,
}

/// How an extraction went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: usize,
    pub computed: usize,
}

impl FeatureCache {
    /// The cache under `root` for these weights (by SHA-256), preprocessing and precision.
    pub fn new(
        root: &Path,
        weights_sha256: &str,
        preprocessing: &Preprocessing,
        precision: Precision,
    ) -> Self {
        let key = serde_json::to_string(preprocessing).expect("serialisable");
        // fp32 keeps the key it had before precisions existed: those caches stay valid.
        let precision = match precision {
            Precision::Fp32 => String::new(),
            other => format!("|{other}"),
        };
        let key = format!("resnet18|{weights_sha256}|{key}{precision}");
        let key = fsio::sha256_hex(key.as_bytes());
        FeatureCache {
            dir: root.join("features").join(&key[..16]),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, hash: &str) -> PathBuf {
        self.dir
            .join(&hash[..2.min(hash.len())])
            .join(format!("{hash}.f32"))
    }

    /// The cached features of a photo, if present and intact.
    pub fn get(&self, hash: &str) -> Option<Vec<f32>> {
        let bytes = fs::read(self.entry(hash)).ok()?;
        if bytes.len() != ENTRY_BYTES || bytes[FEATURES * 4..] != checksum(&bytes[..FEATURES * 4]) {
            return None;
        }
        Some(
            bytes[..FEATURES * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
    }

    pub fn put(&self, hash: &str, features: &[f32]) -> Result<()> {
        let mut bytes: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        let path = self.entry(hash);
        let dir = path.parent().expect("entries live in a folder");
        fs::create_dir_all(dir).map_err(|e| Error::io("cannot create cache folder", dir, e))?;
        // No fsync: losing an entry in a crash only costs recomputing it, and the
        // checksum catches one whose data did not reach the disk.
        let tmp = fsio::temp_sibling(&path);
        fs::write(&tmp, &bytes)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io("cannot write cache entry", &path, e)
            })
    }
}

fn checksum(data: &[u8]) -> [u8; 8] {
    let digest = fsio::sha256_hex(data);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest.as_bytes()[..8]);
    out
}

/// The features of every sample (row-major, `samples.len() x 512`): read from
/// the cache where present, else computed through `net`'s backbone in
/// batches and stored. Without a cache, everything is computed. When `stop` is
/// set, returns `None` after the batch in progress (whose features are cached).
pub fn extract(
    net: &EvalNet,
    samples: &[Sample],
    cache: Option<&FeatureCache>,
    loader: &LoaderConfig,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<Option<(Vec<f32>, CacheStats)>> {
    let mut out = vec![0.0f32; samples.len() * FEATURES];
    let mut missing = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        match cache.and_then(|c| c.get(&s.hash)) {
            Some(f) => out[i * FEATURES..(i + 1) * FEATURES].copy_from_slice(&f),
            None => missing.push(i),
        }
    }
    let stats = CacheStats {
        hits: samples.len() - missing.len(),
        computed: missing.len(),
    };
    progress.set_total(missing.len() as u64);
    let todo: Arc<[Sample]> = missing.iter().map(|&i| samples[i].clone()).collect();
    let config = LoaderConfig {
        shuffle: false,
        augment: false,
        ..loader.clone()
    };
    for batch in Loader::new(todo, config, 0, 0) {
        let batch = batch?;
        let n = batch.len();
        let features = net.features(batch.images, batch.image_size);
        for (row, &k) in features.chunks_exact(FEATURES).zip(&batch.indices) {
            let i = missing[k];
            out[i * FEATURES..(i + 1) * FEATURES].copy_from_slice(row);
            if let Some(c) = cache {
                c.put(&samples[i].hash, row)?;
            }
        }
        progress.advance(n as u64);
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
    }
    Ok(Some((out, stats)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_rejects_damaged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let pre = Preprocessing::default();
        let cache = FeatureCache::new(dir.path(), "abc", &pre, Precision::Fp32);
        let other = FeatureCache::new(dir.path(), "abd", &pre, Precision::Fp32);
        let bf16 = FeatureCache::new(dir.path(), "abc", &pre, Precision::Bf16);
        assert_ne!(cache.dir(), other.dir());
        // bf16 features are not fp32's.
        assert_ne!(cache.dir(), bf16.dir());
        let f: Vec<f32> = (0..FEATURES).map(|i| i as f32 * 0.5).collect();
        assert!(cache.get("ff00").is_none());
        cache.put("ff00", &f).unwrap();
        assert_eq!(cache.get("ff00").unwrap(), f);
        assert!(other.get("ff00").is_none());
        // A torn entry (cut short) and a corrupted one are both refused.
        let path = cache.entry("ff00");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..100]).unwrap();
        assert!(cache.get("ff00").is_none());
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(cache.get("ff00").is_none());
    }
}
