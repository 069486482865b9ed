//! Near-duplicates: photos whose perceptual hashes ([`super::phash`]) are within a
//! Hamming distance of each other, found through an index rather than by comparing
//! every pair, and joined into groups (a resized copy of a cropped copy is in the
//! group of the original).
//!
//! The index is multi-index hashing: the 63 bits are cut into [`BANDS`] bands, and
//! two hashes within `t` bits differ in some band by at most `t / BANDS` bits
//! (pigeonhole), so each photo only looks up the buckets within that radius of its
//! own bands, for its hash and its mirror image's.

use super::phash::{BITS, Hashes};

/// Hashes at most this many bits apart (of 63) are near-duplicates. Chosen by
/// measurement on the 2,002 photos of kaggle-sample (README, `catdog audit`): 12 bits
/// paired 26 distinct photos, 10 bits 4. Every hash has 31 bits set (the median splits
/// 63 coefficients), so distances are even: 10 and 11 are the same threshold.
pub const DEFAULT_THRESHOLD: u32 = 10;

/// Bands the index cuts a hash into: 16 bits each (15 for the last), so a
/// bucket of 25,000 photos holds a handful.
const BANDS: u32 = 4;

/// Two photos within the threshold: indices `a < b`, and their distance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub distance: u32,
}

/// One band's buckets: the photos whose band holds each value, back to back.
struct Band {
    shift: u32,
    width: u32,
    starts: Vec<u32>,
    photos: Vec<u32>,
}

impl Band {
    fn new(hashes: &[Hashes], shift: u32, width: u32) -> Band {
        let value = |h: &Hashes| ((h.hash.0 >> shift) & ((1 << width) - 1)) as usize;
        let mut starts = vec![0u32; (1 << width) + 1];
        for h in hashes {
            starts[value(h) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut photos = vec![0u32; hashes.len()];
        for (i, h) in hashes.iter().enumerate() {
            let slot = &mut next[value(h)];
            photos[*slot as usize] = i as u32;
            *slot += 1;
        }
        Band {
            shift,
            width,
            starts,
            photos,
        }
    }

    fn bucket(&self, value: u64) -> &[u32] {
        let v = value as usize;
        &self.photos[self.starts[v] as usize..self.starts[v + 1] as usize]
    }
}

/// Every pair of photos whose hashes are within `threshold` bits (either photo
/// mirrored), ordered by `a` then `b`. Each photo looks up its hash and its mirror
/// image's among the others' hashes: a pair matching only as `a` against mirrored `b`
/// is found from `b`.
pub fn pairs(hashes: &[Hashes], threshold: u32) -> Vec<Pair> {
    let width = BITS.div_ceil(BANDS);
    let bands: Vec<Band> = (0..BANDS)
        .map(|b| Band::new(hashes, b * width, width.min(BITS - b * width)))
        .collect();
    let radius = threshold / BANDS;
    // The changes of at most `radius` bits within a band, for each band width.
    let flips = |w: u32| -> Vec<u64> {
        (0..1u64 << w)
            .filter(|m| m.count_ones() <= radius)
            .collect()
    };
    let flips: Vec<Vec<u64>> = bands.iter().map(|b| flips(b.width)).collect();
    // seen[j] == i + 1: photo j was already compared with photo i.
    let mut seen = vec![0usize; hashes.len()];
    let mut out = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        for query in [h.hash, h.flipped] {
            for (band, flips) in bands.iter().zip(&flips) {
                let own = (query.0 >> band.shift) & ((1 << band.width) - 1);
                for flip in flips {
                    for &j in band.bucket(own ^ flip) {
                        let j = j as usize;
                        if j == i || seen[j] == i + 1 {
                            continue;
                        }
                        seen[j] = i + 1;
                        let distance = h.distance(&hashes[j]);
                        if distance <= threshold {
                            out.push(Pair {
                                a: i.min(j),
                                b: i.max(j),
                                distance,
                            });
                        }
                    }
                }
            }
        }
    }
    // A pair whose mirror images match is found from both sides.
    out.sort_by_key(|p| (p.a, p.b));
    out.dedup();
    out
}

/// The connected groups of `pairs` among `n` photos: each sorted, two photos or more,
/// ordered by their first photo.
pub fn groups(n: usize, pairs: &[Pair]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for p in pairs {
        let (a, b) = (root(&mut parent, p.a), root(&mut parent, p.b));
        // The smaller index is the root, so a group's root is its first photo.
        parent[a.max(b)] = a.min(b);
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        let r = root(&mut parent, i);
        members[r].push(i);
    }
    members.into_iter().filter(|g| g.len() > 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::phash::PHash;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn unflipped(h: u64) -> Hashes {
        // A mirror image far from everything, so only `hash` can match.
        Hashes {
            hash: PHash(h),
            flipped: PHash(!h & ((1 << BITS) - 1)),
        }
    }

    #[test]
    fn the_index_finds_exactly_the_pairs_a_full_comparison_finds() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut hashes: Vec<Hashes> = (0..400)
            .map(|_| unflipped(rng.random::<u64>() >> 1))
            .collect();
        // Copies with up to 14 bits changed, anywhere.
        for i in 0..200 {
            let mut h = hashes[i].hash.0;
            for _ in 0..rng.random_range(0..=14) {
                h ^= 1 << rng.random_range(0..BITS);
            }
            hashes.push(unflipped(h));
        }
        // A mirrored copy: its mirror image is the original's hash.
        hashes.push(Hashes {
            hash: PHash(0x1234_5678),
            flipped: hashes[7].hash,
        });
        for threshold in [4, 10, 12, 14] {
            let mut expected = Vec::new();
            for a in 0..hashes.len() {
                for b in a + 1..hashes.len() {
                    let distance = hashes[a].distance(&hashes[b]);
                    if distance <= threshold {
                        expected.push(Pair { a, b, distance });
                    }
                }
            }
            assert!(expected.len() > 40, "{threshold}: {}", expected.len());
            assert_eq!(pairs(&hashes, threshold), expected, "threshold {threshold}");
        }
        assert!(pairs(&hashes, 0).iter().any(|p| (p.a, p.b) == (7, 600)));
    }

    #[test]
    fn groups_join_chains_of_pairs() {
        let p = |a, b| Pair { a, b, distance: 1 };
        let g = groups(7, &[p(0, 3), p(3, 5), p(1, 6), p(2, 5)]);
        assert_eq!(g, vec![vec![0, 2, 3, 5], vec![1, 6]]);
        assert!(groups(3, &[]).is_empty());
    }
}
