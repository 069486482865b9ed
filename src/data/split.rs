//! The train/validation/test split: stratified per class, seeded, and
//! independent of the order in which the file system lists files. Exact
//! duplicates (same content hash) always land in the same split, so the test
//! set cannot hold a copy of a training photo.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
}

crate::error::named_choice!(Split, "--split", Split::Train => "train", Split::Val => "val", Split::Test => "test");

/// The seed of `catdog split` and of the training recipe by default.
pub const DEFAULT_SEED: u64 = 42;

/// The fractions of each class that go to train, val and test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub train: f64,
    pub val: f64,
    pub test: f64,
}

impl Default for Ratios {
    fn default() -> Self {
        Ratios {
            train: 0.8,
            val: 0.1,
            test: 0.1,
        }
    }
}

/// As `--ratios` takes them: `0.8,0.1,0.1`.
impl fmt::Display for Ratios {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.train, self.val, self.test)
    }
}

impl FromStr for Ratios {
    type Err = Error;

    /// `"0.8,0.1,0.1"`: three non-negative numbers summing to 1, train above 0.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |problem: String| {
            Error::setting(
                "--ratios",
                format!("{problem} (expected TRAIN,VAL,TEST like 0.8,0.1,0.1)"),
            )
        };
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .map_err(|_| bad(format!("'{p}' is not a number")))
            })
            .collect::<Result<_>>()?;
        let [train, val, test] = parts[..] else {
            return Err(bad(format!("'{s}' has {} numbers, not 3", parts.len())));
        };
        if parts.iter().any(|r| !r.is_finite() || *r < 0.0) {
            return Err(bad(format!("'{s}' has a negative number")));
        }
        if (train + val + test - 1.0).abs() > 1e-6 {
            return Err(bad(format!("'{s}' sums to {}, not 1", train + val + test)));
        }
        if train <= 0.0 {
            return Err(bad("the training fraction must be above 0".to_owned()));
        }
        Ok(Ratios { train, val, test })
    }
}

impl Ratios {
    /// How many of `n` items go to (train, val, test): val and test rounded,
    /// train takes the rest, so nothing is lost to rounding.
    pub fn counts(&self, n: usize) -> [usize; 3] {
        let val = (n as f64 * self.val).round() as usize;
        let test = ((n as f64 * self.test).round() as usize).min(n - val);
        [n - val - test, val, test]
    }
}

/// One file to assign: its class index and the key of the group it moves with (its
/// content hash, or its near-duplicate group's smallest one).
pub struct Item<'a> {
    pub class: usize,
    pub hash: &'a str,
}

/// Assigns a split to every item. Items sharing a key form one group that
/// moves together; a group counts toward the class of its first item. Groups
/// are ordered by hash before the seeded shuffle, which makes the result
/// depend only on the seed and the set of files.
pub fn assign(items: &[Item<'_>], num_classes: usize, ratios: &Ratios, seed: u64) -> Vec<Split> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(item.hash).or_default().push(i);
    }
    let mut per_class: Vec<Vec<&Vec<usize>>> = vec![Vec::new(); num_classes];
    for members in groups.values() {
        per_class[items[members[0]].class].push(members);
    }
    let mut out = vec![Split::Train; items.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for class_groups in &mut per_class {
        class_groups.shuffle(&mut rng);
        let total: usize = class_groups.iter().map(|g| g.len()).sum();
        let [train, val, _] = ratios.counts(total);
        let mut placed = 0;
        for group in class_groups.iter() {
            let split = if placed < train {
                Split::Train
            } else if placed < train + val {
                Split::Val
            } else {
                Split::Test
            };
            for &i in group.iter() {
                out[i] = split;
            }
            placed += group.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{:08x}", i * 2_654_435_761 % 1_000_003))
            .collect()
    }

    #[test]
    fn ratios_parse_and_reject() {
        assert_eq!("0.8,0.1,0.1".parse::<Ratios>().unwrap(), Ratios::default());
        for bad in [
            "0.8,0.1",
            "0.5,0.5,0.5",
            "a,b,c",
            "1.2,-0.1,-0.1",
            "0,0.5,0.5",
        ] {
            let err = bad.parse::<Ratios>().unwrap_err().to_string();
            assert!(err.contains("--ratios"), "{bad}: {err}");
        }
    }

    #[test]
    fn stratified_counts_per_class() {
        let h = hashes(1001 + 500);
        let items: Vec<Item> = h
            .iter()
            .enumerate()
            .map(|(i, h)| Item {
                class: usize::from(i >= 1001),
                hash: h,
            })
            .collect();
        let s = assign(&items, 2, &Ratios::default(), 42);
        let count = |class: usize, split| {
            items
                .iter()
                .zip(&s)
                .filter(|(it, sp)| it.class == class && **sp == split)
                .count()
        };
        assert_eq!(
            [
                count(0, Split::Train),
                count(0, Split::Val),
                count(0, Split::Test)
            ],
            [801, 100, 100]
        );
        assert_eq!(
            [
                count(1, Split::Train),
                count(1, Split::Val),
                count(1, Split::Test)
            ],
            [400, 50, 50]
        );
    }

    #[test]
    fn same_seed_same_split_whatever_the_order_and_other_seed_differs() {
        let h = hashes(300);
        let items: Vec<Item> = h
            .iter()
            .enumerate()
            .map(|(i, h)| Item {
                class: i % 2,
                hash: h,
            })
            .collect();
        let a = assign(&items, 2, &Ratios::default(), 7);
        let reversed: Vec<Item> = items
            .iter()
            .rev()
            .map(|i| Item {
                class: i.class,
                hash: i.hash,
            })
            .collect();
        let mut b = assign(&reversed, 2, &Ratios::default(), 7);
        b.reverse();
        assert_eq!(a, b);
        assert_ne!(a, assign(&items, 2, &Ratios::default(), 8));
    }

    #[test]
    fn duplicates_share_a_split() {
        let mut h = hashes(200);
        for i in 0..20 {
            h[100 + i] = h[i].clone();
        }
        let items: Vec<Item> = h.iter().map(|h| Item { class: 0, hash: h }).collect();
        for seed in 0..5 {
            let s = assign(&items, 1, &Ratios::default(), seed);
            for i in 0..20 {
                assert_eq!(s[i], s[100 + i]);
            }
        }
    }
}
