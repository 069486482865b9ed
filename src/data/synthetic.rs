//! Synthetic two-class photos generated on the fly (no download): the demo's data set, with a
//! few deliberately broken files among them so that every branch of the clean step shows up;
//! Kaggle-shaped photos for `catdog bench` where ../shared is absent; test data.
//!
//! "Cats" are warm-coloured with horizontal stripes, "dogs" cool-coloured with
//! round spots: easy for a network to tell apart from pixels, yet each image
//! varies in size, hue, phase and noise.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Marks a folder as made by the demo, so it may be written over.
const MARKER: &str = ".catdog-demo";

/// What [`write_dataset`] created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoSet {
    /// The data folder (`OUT/data`).
    pub data: PathBuf,
    pub photos: usize,
    /// Broken or odd files written on purpose: (relative path, what it is).
    pub planted: Vec<(String, &'static str)>,
}

/// Writes `per_class` photos per class into `out/data` (one folder per
/// class), plus the planted odd files. Refuses an `out` that exists and was
/// not made by the demo, so a user's files are never overwritten.
pub fn write_dataset(out: &Path, per_class: usize, seed: u64) -> Result<DemoSet> {
    let non_empty = fs::read_dir(out)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !out.join(MARKER).exists() {
        return Err(Error::data(
            out,
            "exists and was not made by `catdog demo`",
            "choose another --out folder, or remove this one if it is yours to remove",
        ));
    }
    let dir = out.join("data");
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot clear the demo folder", &dir, e))?;
    }
    fs::create_dir_all(out).map_err(|e| Error::io("cannot create", out, e))?;
    write(out, MARKER, b"made by catdog demo\n")?;
    let dir = dir.as_path();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for class in ["Cat", "Dog"] {
        let folder = dir.join(class);
        fs::create_dir_all(&folder).map_err(|e| Error::io("cannot create", &folder, e))?;
        for i in 0..per_class {
            let img = photo(class == "Cat", &mut rng);
            write(
                dir,
                &format!("{class}/{i}.jpg"),
                &encode(&img, ImageFormat::Jpeg),
            )?;
        }
    }

    let cat = photo(true, &mut rng);
    let dog = photo(false, &mut rng);
    let jpeg = encode(&cat, ImageFormat::Jpeg);
    let gray = image::DynamicImage::ImageRgb8(dog.clone()).into_luma8();
    let mut gray_jpeg = Cursor::new(Vec::new());
    gray.write_to(&mut gray_jpeg, ImageFormat::Jpeg)
        .expect("in-memory encode");
    let planted: Vec<(String, &'static str, Vec<u8>)> = vec![
        ("Cat/empty.jpg".into(), "zero bytes (rejected)", Vec::new()),
        (
            "Cat/truncated.jpg".into(),
            "a JPEG cut in half (rejected)",
            jpeg[..jpeg.len() / 2].to_vec(),
        ),
        (
            "Dog/error-page.jpg".into(),
            "an HTML page saved as .jpg (rejected)",
            b"<html><body>404 Not Found</body></html>\n".to_vec(),
        ),
        (
            "Dog/really-a-png.jpg".into(),
            "PNG content under a .jpg name (usable, warned)",
            encode(&dog, ImageFormat::Png),
        ),
        (
            "Cat/grayscale.jpg".into(),
            "a grayscale JPEG (usable, converted to RGB)",
            gray_jpeg.into_inner(),
        ),
        (
            "Cat/Thumbs.db".into(),
            "Windows thumbnail cache (ignored)",
            vec![0xD0, 0xCF, 0x11, 0xE0],
        ),
    ];
    for (rel, _, bytes) in &planted {
        write(dir, rel, bytes)?;
    }
    Ok(DemoSet {
        data: dir.to_owned(),
        photos: 2 * per_class,
        planted: planted
            .into_iter()
            .map(|(rel, what, _)| (rel, what))
            .collect(),
    })
}

/// Photos shaped like the Kaggle sample's: flat layout (`cat.N.jpg`), 500x375 JPEG, the
/// generated photos scaled up to that size.
pub fn write_kaggle_like(dir: &Path, per_class: usize, seed: u64) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (class, cat) in [("cat", true), ("dog", false)] {
        for i in 0..per_class {
            let small = photo(cat, &mut rng);
            let big =
                image::imageops::resize(&small, 500, 375, image::imageops::FilterType::Triangle);
            write(
                dir,
                &format!("{class}.{i}.jpg"),
                &encode(&big, ImageFormat::Jpeg),
            )?;
        }
    }
    Ok(())
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(rel);
    fs::write(&path, bytes).map_err(|e| Error::io("cannot write", &path, e))
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("in-memory encode");
    out.into_inner()
}

/// One synthetic photo of a "cat" (warm, stripes) or a "dog" (cool, spots).
pub fn photo(cat: bool, rng: &mut impl Rng) -> RgbImage {
    let w = rng.random_range(120..=200);
    let h = rng.random_range(100..=160);
    let base: [f32; 3] = if cat {
        [
            rng.random_range(170.0..240.0),
            rng.random_range(90.0..150.0),
            rng.random_range(30.0..80.0),
        ]
    } else {
        [
            rng.random_range(30.0..80.0),
            rng.random_range(100.0..160.0),
            rng.random_range(170.0..240.0),
        ]
    };
    let period = rng.random_range(10.0..22.0f32);
    let phase = rng.random_range(0.0..period);
    let spots: Vec<(f32, f32, f32)> = (0..rng.random_range(3..7))
        .map(|_| {
            (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
                rng.random_range(8.0..20.0),
            )
        })
        .collect();
    let noise_seed: u64 = rng.random();
    let mut noise = ChaCha8Rng::seed_from_u64(noise_seed);
    RgbImage::from_fn(w, h, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let pattern = if cat {
            ((yf + phase) / period * std::f32::consts::TAU).sin()
        } else if spots
            .iter()
            .any(|&(cx, cy, r)| (xf - cx).powi(2) + (yf - cy).powi(2) < r * r)
        {
            1.0
        } else {
            -0.6
        };
        let n: f32 = noise.random_range(-18.0..18.0);
        Rgb(std::array::from_fn(|c| {
            (base[c] + 45.0 * pattern + n).clamp(0.0, 255.0) as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_folder_it_did_not_make() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious.txt"), "mine").unwrap();
        let err = write_dataset(dir.path(), 2, 1).unwrap_err().to_string();
        assert!(err.contains("not made by"), "{err}");
        assert!(dir.path().join("precious.txt").exists());
    }

    #[test]
    fn rewrites_its_own_folder_identically() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("demo");
        let a = write_dataset(&out, 3, 9).unwrap();
        let first = fs::read(a.data.join("Dog/2.jpg")).unwrap();
        let b = write_dataset(&out, 3, 9).unwrap();
        assert_eq!(a, b);
        assert_eq!(first, fs::read(b.data.join("Dog/2.jpg")).unwrap());
    }
}
