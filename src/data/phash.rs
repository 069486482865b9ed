//! Perceptual hashes: 63 bits that stay nearly the same when a photo is resized,
//! re-encoded, slightly cropped or brightened, so that copies of a photo can be
//! found by Hamming distance ([`super::near`]).
//!
//! The hash is the classic DCT one: the photo in grayscale, averaged down to
//! 32x32, its 2-D DCT, and of the 8x8 lowest frequencies less the DC term (the
//! mean, which brightness moves) one bit each: above their median or not.
//! A horizontal flip negates every coefficient of odd horizontal frequency, so
//! the flipped photo's hash comes from the same DCT at no extra cost.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Side of the grayscale thumbnail the DCT is taken of.
const SIDE: usize = 32;
/// Side of the block of lowest frequencies the bits come from.
const LOW: usize = 8;
/// Bits in a hash: the low block less its DC term.
pub const BITS: u32 = (LOW * LOW - 1) as u32;

/// A 63-bit perceptual hash, written as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PHash(pub u64);

impl PHash {
    /// Bits that differ.
    pub fn distance(self, other: PHash) -> u32 {
        (self.0 ^ other.0).count_ones()
    }
}

impl fmt::Display for PHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for PHash {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(PHash)
    }
}

impl Serialize for PHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A photo's hash and its mirror image's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    pub hash: PHash,
    pub flipped: PHash,
}

impl Hashes {
    /// How far apart two photos are: as they are, or either one mirrored.
    pub fn distance(&self, other: &Hashes) -> u32 {
        self.hash
            .distance(other.hash)
            .min(self.flipped.distance(other.hash))
            .min(self.hash.distance(other.flipped))
    }
}

/// The perceptual hashes of `image` and of its horizontal mirror image.
pub fn hashes(image: &RgbImage) -> Hashes {
    let thumb = thumbnail(image);
    let table = cosines();
    // The DCT is separable: along rows first (only the LOW frequencies needed), then columns.
    let mut rows = [[0.0f64; LOW]; SIDE];
    for (y, row) in rows.iter_mut().enumerate() {
        for (u, out) in row.iter_mut().enumerate() {
            *out = (0..SIDE).map(|x| thumb[y * SIDE + x] * table[u][x]).sum();
        }
    }
    let mut coefficients = [0.0f64; LOW * LOW];
    for v in 0..LOW {
        for u in 0..LOW {
            coefficients[v * LOW + u] = (0..SIDE).map(|y| rows[y][u] * table[v][y]).sum();
        }
    }
    let mut mirrored = coefficients;
    for v in 0..LOW {
        for u in (1..LOW).step_by(2) {
            mirrored[v * LOW + u] = -mirrored[v * LOW + u];
        }
    }
    Hashes {
        hash: bits(&coefficients),
        flipped: bits(&mirrored),
    }
}

/// One bit per coefficient but the DC term: above the median of those 63.
fn bits(coefficients: &[f64; LOW * LOW]) -> PHash {
    let ac = &coefficients[1..];
    let mut sorted = ac.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    PHash(
        ac.iter()
            .enumerate()
            .filter(|(_, c)| **c > median)
            .fold(0u64, |h, (i, _)| h | (1 << i)),
    )
}

/// `cos(pi (2x + 1) u / 2N)` for the LOW frequencies u and the SIDE positions x.
fn cosines() -> &'static [[f64; SIDE]; LOW] {
    static TABLE: OnceLock<[[f64; SIDE]; LOW]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [[0.0; SIDE]; LOW];
        for (u, row) in t.iter_mut().enumerate() {
            for (x, c) in row.iter_mut().enumerate() {
                *c = (std::f64::consts::PI * (2 * x + 1) as f64 * u as f64 / (2 * SIDE) as f64)
                    .cos();
            }
        }
        t
    })
}

/// The photo's luma averaged over a SIDE x SIDE grid of areas: every pixel counts once, so
/// the thumbnail of a resized copy is nearly the same.
fn thumbnail(image: &RgbImage) -> Vec<f64> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return vec![0.0; SIDE * SIDE];
    }
    let mut sums = vec![0.0f64; SIDE * SIDE];
    let mut counts = vec![0u32; SIDE * SIDE];
    let column: Vec<usize> = (0..w).map(|x| x * SIDE / w).collect();
    for (y, row) in image.rows().enumerate() {
        let cell_row = y * SIDE / h * SIDE;
        for (pixel, &cx) in row.zip(&column) {
            sums[cell_row + cx] += luma(pixel.0);
            counts[cell_row + cx] += 1;
        }
    }
    // A photo narrower or lower than SIDE leaves cells empty: they take the nearest pixel.
    for (i, (sum, count)) in sums.iter_mut().zip(&counts).enumerate() {
        *sum = if *count == 0 {
            let (x, y) = ((i % SIDE * w / SIDE) as u32, (i / SIDE * h / SIDE) as u32);
            luma(image.get_pixel(x, y).0)
        } else {
            *sum / f64::from(*count)
        };
    }
    sums
}

/// ITU-R BT.601 luma, as PIL's grayscale conversion.
pub(crate) fn luma([r, g, b]: [u8; 3]) -> f64 {
    0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops::{self, FilterType};

    /// A photo-like image: smooth shapes with some texture, no two seeds alike.
    fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
        let s = seed as f64;
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
            let v = 128.0
                + 60.0 * (fx * (3.0 + s) + s).sin() * (fy * (2.0 + s * 0.7)).cos()
                + 40.0
                    * ((fx - 0.3 * s.sin()).powi(2) + (fy - 0.5).powi(2))
                        .sqrt()
                        .cos();
            let v = v.clamp(0.0, 255.0) as u8;
            image::Rgb([v, v.saturating_add(20), v / 2])
        })
    }

    #[test]
    fn resized_and_mirrored_copies_stay_close_and_other_pictures_do_not() {
        let a = picture(320, 240, 1);
        let h = hashes(&a);
        let half = hashes(&imageops::resize(&a, 160, 120, FilterType::Triangle));
        assert!(h.distance(&half) <= 8, "{}", h.distance(&half));
        let mirror = hashes(&imageops::flip_horizontal(&a));
        assert!(mirror.distance(&h) <= 2, "{}", mirror.distance(&h));
        // Mirroring does change the hash itself: the flipped one is what matches.
        assert!(mirror.hash.distance(h.hash) > 10);
        let other = hashes(&picture(320, 240, 5));
        assert!(h.distance(&other) > 12, "{}", h.distance(&other));
    }

    #[test]
    fn hashes_have_63_bits_and_read_back_from_text() {
        let h = hashes(&picture(64, 48, 2));
        assert_eq!(h.hash.0 >> BITS, 0);
        // The median splits the 63 coefficients: 31 above it.
        assert_eq!(h.hash.0.count_ones(), 31);
        assert_eq!(h.hash.to_string().parse::<PHash>().unwrap(), h.hash);
        // A photo smaller than the thumbnail still hashes.
        let tiny = hashes(&picture(5, 3, 2));
        assert_eq!(tiny.hash.0 >> BITS, 0);
    }
}
