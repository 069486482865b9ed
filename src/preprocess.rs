//! Preprocessing as torchvision does it for ResNet-18: resize the shorter side
//! to 256 (bilinear with antialias, as PIL does), centre crop 224, scale to
//! \[0,1\], normalise with the ImageNet mean and std, channels first (CHW).
//! The training transform may add torchvision's RandomResizedCrop and a
//! horizontal flip (`--augment`).

use std::path::Path;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::decode::{self, Limits};
use crate::error::{Error, Result};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The preprocessing settings; stored with every checkpoint so a model always
/// sees its inputs the way it was trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Side of the square model input (224 in the reference recipe).
    pub image_size: u32,
    /// The shorter side is resized to this before the centre crop (256).
    pub resize: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocessing {
    fn default() -> Self {
        Preprocessing::imagenet(224)
    }
}

impl Preprocessing {
    /// torchvision's recipe at another size keeps its 256:224 resize-to-crop ratio.
    pub fn imagenet(image_size: u32) -> Self {
        Preprocessing {
            image_size,
            resize: (f64::from(image_size) * 256.0 / 224.0).round() as u32,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Floats in one preprocessed image (3 x size x size).
    pub fn tensor_len(&self) -> usize {
        3 * (self.image_size as usize).pow(2)
    }

    /// The eval transform, written into `out` (CHW, `self.len()` floats).
    pub fn eval(&self, img: &RgbImage, out: &mut [f32]) {
        let (resized, width, origin) = self.eval_resize(img);
        self.normalise(&resized, width, origin, false, out);
    }

    /// The pixels the eval transform shows the model, before normalisation:
    /// the `image_size` square of the resized photo (for pictures such as Grad-CAM,
    /// whose maps are aligned with the model's input).
    pub fn eval_crop(&self, img: &RgbImage) -> RgbImage {
        let (resized, width, (left, top)) = self.eval_resize(img);
        let s = self.image_size;
        let width = width as usize;
        RgbImage::from_fn(s, s, |x, y| {
            let i = ((top + y) as usize * width + (left + x) as usize) * 3;
            image::Rgb([resized[i], resized[i + 1], resized[i + 2]])
        })
    }

    /// The eval resize (shorter side to `resize`) as packed RGB, its width, and
    /// the top-left corner of the centre crop in it.
    fn eval_resize(&self, img: &RgbImage) -> (Vec<u8>, u32, (u32, u32)) {
        let (w, h) = img.dimensions();
        let (rw, rh) = resized_size(w, h, self.resize);
        let s = self.image_size;
        // torchvision's centre crop rounds half to even (Python's round()).
        let left = (f64::from(rw.saturating_sub(s)) / 2.0).round_ties_even() as u32;
        let top = (f64::from(rh.saturating_sub(s)) / 2.0).round_ties_even() as u32;
        let resized = resize(img, (0.0, 0.0, f64::from(w), f64::from(h)), rw, rh);
        (resized, rw, (left, top))
    }

    /// The training transform: the eval transform, or with `augment` a random
    /// resized crop (scale 0.08-1, aspect 3/4-4/3, as torchvision) and a
    /// horizontal flip with probability 1/2.
    pub fn train(&self, img: &RgbImage, augment: Option<&mut impl Rng>, out: &mut [f32]) {
        let Some(rng) = augment else {
            return self.eval(img, out);
        };
        let (w, h) = img.dimensions();
        let crop = random_resized_crop(w, h, rng);
        let s = self.image_size;
        let resized = resize(img, crop, s, s);
        let flip = rng.random_bool(0.5);
        self.normalise(&resized, s, (0, 0), flip, out);
    }

    /// Crops `size x size` at `origin` from an RGB buffer of width `width`,
    /// scales to [0,1] and normalises into CHW floats.
    fn normalise(&self, rgb: &[u8], width: u32, origin: (u32, u32), flip: bool, out: &mut [f32]) {
        let s = self.image_size as usize;
        assert_eq!(out.len(), 3 * s * s, "output buffer has the wrong size");
        // A lookup table per channel, computed in f32 exactly as ToTensor + Normalize do.
        let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
            std::array::from_fn(|v| (v as f32 / 255.0 - self.mean[c]) / self.std[c])
        });
        let (ox, oy) = (origin.0 as usize, origin.1 as usize);
        let (plane_r, rest) = out.split_at_mut(s * s);
        let (plane_g, plane_b) = rest.split_at_mut(s * s);
        for y in 0..s {
            let row = &rgb[((oy + y) * width as usize + ox) * 3..][..s * 3];
            for x in 0..s {
                let dx = if flip { s - 1 - x } else { x };
                let px = &row[x * 3..x * 3 + 3];
                let i = y * s + dx;
                plane_r[i] = lut[0][px[0] as usize];
                plane_g[i] = lut[1][px[1] as usize];
                plane_b[i] = lut[2][px[2] as usize];
            }
        }
    }
}

/// torchvision's Resize(size) output: shorter side `size`, longer side scaled
/// and truncated (Python's int()).
fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    if w <= h {
        (size, (u64::from(size) * u64::from(h) / u64::from(w)) as u32)
    } else {
        ((u64::from(size) * u64::from(w) / u64::from(h)) as u32, size)
    }
}

/// Resizes the region `crop` (left, top, width, height) of `img` to `w x h`,
/// bilinear with antialias (PIL's convolution resampling), as packed RGB bytes.
fn resize(img: &RgbImage, crop: (f64, f64, f64, f64), w: u32, h: u32) -> Vec<u8> {
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .expect("RgbImage buffers are packed RGB");
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.0, crop.1, crop.2, crop.3);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("sizes are valid");
    dst.into_vec()
}

/// torchvision's RandomResizedCrop.get_params: ten tries at a random area and
/// aspect ratio, then the centre crop as the fallback.
fn random_resized_crop(w: u32, h: u32, rng: &mut impl Rng) -> (f64, f64, f64, f64) {
    let (wf, hf) = (f64::from(w), f64::from(h));
    let area = wf * hf;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= wf && ch <= hf {
            let top = rng.random_range(0..=(h - ch as u32));
            let left = rng.random_range(0..=(w - cw as u32));
            return (f64::from(left), f64::from(top), cw, ch);
        }
    }
    let in_ratio = wf / hf;
    let (cw, ch) = if in_ratio < 3.0 / 4.0 {
        (wf, (wf / (3.0 / 4.0)).round())
    } else if in_ratio > 4.0 / 3.0 {
        ((hf * 4.0 / 3.0).round(), hf)
    } else {
        (wf, hf)
    };
    (((wf - cw) / 2.0).floor(), ((hf - ch) / 2.0).floor(), cw, ch)
}

/// Decodes a photo and applies the eval transform: the CHW tensor data that
/// torchvision would feed ResNet-18 at `image_size`.
pub fn eval_tensor_from_path(path: &Path, image_size: u32) -> Result<Vec<f32>> {
    let decoded = decode::decode_file(path, &Limits::default()).map_err(|r| {
        Error::data(
            path,
            r.to_string(),
            "use a JPEG, PNG, GIF, BMP, WebP or TIFF photo",
        )
    })?;
    let p = Preprocessing::imagenet(image_size);
    let mut out = vec![0.0; p.tensor_len()];
    p.eval(&decoded.image, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn resize_follows_torchvision_sizes() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(300, 300, 256), (256, 256));
        assert_eq!(Preprocessing::imagenet(112).resize, 128);
    }

    #[test]
    fn eval_of_a_flat_colour_is_its_normalised_value() {
        let img = RgbImage::from_pixel(333, 250, image::Rgb([255, 0, 128]));
        let p = Preprocessing::default();
        let mut out = vec![0.0; p.tensor_len()];
        p.eval(&img, &mut out);
        let plane = 224 * 224;
        let expect = |c: usize, v: f32| (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert!(
            out[..plane]
                .iter()
                .all(|&v| (v - expect(0, 255.0)).abs() < 1e-6)
        );
        assert!(
            out[plane..2 * plane]
                .iter()
                .all(|&v| (v - expect(1, 0.0)).abs() < 1e-6)
        );
        assert!(
            out[2 * plane..]
                .iter()
                .all(|&v| (v - expect(2, 128.0)).abs() < 1e-6)
        );
    }

    #[test]
    fn eval_crop_is_what_eval_normalises() {
        let img = RgbImage::from_fn(150, 90, |x, y| {
            image::Rgb([x as u8, (2 * y) as u8, (x ^ y) as u8])
        });
        let p = Preprocessing::imagenet(64);
        let crop = p.eval_crop(&img);
        assert_eq!(crop.dimensions(), (64, 64));
        let mut out = vec![0.0; p.tensor_len()];
        p.eval(&img, &mut out);
        let plane = 64 * 64;
        for (i, px) in crop.pixels().enumerate() {
            for c in 0..3 {
                let expect = (f32::from(px[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                assert_eq!(out[c * plane + i], expect);
            }
        }
        // The crop is the middle of the resized photo: its left column is not the photo's.
        assert_ne!(crop.get_pixel(0, 0)[0], 0);
    }

    #[test]
    fn augmentation_is_seeded_and_varies() {
        let img = RgbImage::from_fn(120, 90, |x, y| {
            image::Rgb([x as u8, y as u8, (x + y) as u8])
        });
        let p = Preprocessing::imagenet(64);
        let run = |seed| {
            let mut out = vec![0.0; p.tensor_len()];
            p.train(
                &img,
                Some(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
                &mut out,
            );
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        for _ in 0..100 {
            let (l, t, w, h) =
                random_resized_crop(120, 90, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
            assert!(l + w <= 120.0 && t + h <= 90.0 && w > 0.0 && h > 0.0);
        }
    }
}
