//! Quality flags: photos that decode fine but may teach or score little. They are
//! warnings for a person to look at, never a reason to leave a photo out.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::phash::luma;

/// Something about a photo worth a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Shorter side under [`TINY_SIDE`] pixels: the model's 224 px input is mostly upscaling.
    Tiny,
    /// One side more than [`EXTREME_ASPECT`] times the other: the centre crop loses most of it.
    ExtremeAspect,
    /// Luma standard deviation under [`UNIFORM_STD`]: a blank or nearly blank frame.
    NearlyUniform,
    /// Mean luma under [`DARK_MEAN`].
    Dark,
    /// Mean luma over [`BRIGHT_MEAN`].
    Bright,
    /// Variance of the Laplacian under [`BLURRY_LAPLACIAN`]: no sharp edge anywhere.
    Blurry,
    /// Stored in colour, but every pixel is gray.
    GrayscaleAsColour,
}

impl Flag {
    pub const ALL: [Flag; 7] = [
        Flag::Tiny,
        Flag::ExtremeAspect,
        Flag::NearlyUniform,
        Flag::Dark,
        Flag::Bright,
        Flag::Blurry,
        Flag::GrayscaleAsColour,
    ];

    /// As the terminal table and the audit page name it.
    pub fn label(self) -> &'static str {
        match self {
            Flag::Tiny => "tiny",
            Flag::ExtremeAspect => "extreme aspect",
            Flag::NearlyUniform => "nearly uniform",
            Flag::Dark => "dark",
            Flag::Bright => "bright",
            Flag::Blurry => "blurry",
            Flag::GrayscaleAsColour => "gray as colour",
        }
    }
}

pub const TINY_SIDE: u32 = 64;
pub const EXTREME_ASPECT: f64 = 3.0;
pub const UNIFORM_STD: f64 = 8.0;
pub const DARK_MEAN: f64 = 30.0;
pub const BRIGHT_MEAN: f64 = 225.0;
pub const BLURRY_LAPLACIAN: f64 = 20.0;
/// Mean difference between a pixel's channels (of 255) below which it counts as gray.
const GRAY_SPREAD: f64 = 1.0;

/// The flags of a decoded photo. `converted` says the file was not stored as RGB (a
/// grayscale file converted on decoding is not "stored as colour").
pub fn assess(image: &RgbImage, converted: bool) -> Vec<Flag> {
    let (w, h) = image.dimensions();
    let mut flags = Vec::new();
    if w.min(h) < TINY_SIDE {
        flags.push(Flag::Tiny);
    }
    if f64::from(w.max(h)) > EXTREME_ASPECT * f64::from(w.min(h).max(1)) {
        flags.push(Flag::ExtremeAspect);
    }
    let pixels = f64::from(w) * f64::from(h);
    if pixels == 0.0 {
        return flags;
    }
    let gray: Vec<f32> = image.pixels().map(|p| luma(p.0) as f32).collect();
    let mean = gray.iter().map(|&v| f64::from(v)).sum::<f64>() / pixels;
    let var = gray
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / pixels;
    if var.sqrt() < UNIFORM_STD {
        flags.push(Flag::NearlyUniform);
    }
    if mean < DARK_MEAN {
        flags.push(Flag::Dark);
    }
    if mean > BRIGHT_MEAN {
        flags.push(Flag::Bright);
    }
    // A uniform frame has no edges either; saying blurry too would add nothing.
    if !flags.contains(&Flag::NearlyUniform) && laplacian_variance(&gray, w, h) < BLURRY_LAPLACIAN {
        flags.push(Flag::Blurry);
    }
    if !converted {
        let spread = image
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0.map(i32::from);
                f64::from((r - g).abs() + (g - b).abs())
            })
            .sum::<f64>()
            / pixels;
        if spread < GRAY_SPREAD {
            flags.push(Flag::GrayscaleAsColour);
        }
    }
    flags
}

/// Variance of the 4-neighbour Laplacian over the inner pixels (0 for a photo
/// without any).
fn laplacian_variance(gray: &[f32], w: u32, h: u32) -> f64 {
    let (w, h) = (w as usize, h as usize);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let (mut sum, mut sum2) = (0.0f64, 0.0f64);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let i = y * w + x;
            let l =
                f64::from(gray[i - 1] + gray[i + 1] + gray[i - w] + gray[i + w] - 4.0 * gray[i]);
            sum += l;
            sum2 += l * l;
        }
    }
    let n = ((w - 2) * (h - 2)) as f64;
    sum2 / n - (sum / n).powi(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn textured(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = ((x * 37 + y * 91) % 200) as u8 + 20;
            Rgb([v, v / 2, 255 - v])
        })
    }

    #[test]
    fn each_flag_fires_on_its_case_and_a_good_photo_has_none() {
        assert!(assess(&textured(200, 150), false).is_empty());
        assert_eq!(assess(&textured(50, 100), false), [Flag::Tiny]);
        assert_eq!(assess(&textured(400, 100), false), [Flag::ExtremeAspect]);
        let gray = RgbImage::from_pixel(200, 150, Rgb([128, 128, 128]));
        assert_eq!(
            assess(&gray, false),
            [Flag::NearlyUniform, Flag::GrayscaleAsColour]
        );
        assert_eq!(assess(&gray, true), [Flag::NearlyUniform]);
        let dark = RgbImage::from_fn(200, 150, |x, y| {
            let v = ((x * 7 + y * 13) % 50) as u8;
            Rgb([v, v, v / 2])
        });
        assert_eq!(assess(&dark, false), [Flag::Dark]);
        let bright = RgbImage::from_fn(200, 150, |x, y| {
            let v = 255 - ((x * 7 + y * 13) % 50) as u8;
            Rgb([v, v, 240])
        });
        assert_eq!(assess(&bright, false), [Flag::Bright]);
        // A smooth ramp: contrast, but no edge.
        let smooth = RgbImage::from_fn(200, 150, |x, _| Rgb([x as u8, 40, 200 - x as u8 / 2]));
        assert_eq!(assess(&smooth, false), [Flag::Blurry]);
    }
}
