//! Grad-CAM pictures: a heat map (from [`crate::model::gradcam`]) laid over the photo it
//! explains.

use image::{Rgb, RgbImage};

/// How much of the heat map's colour goes into each pixel of the overlay:
/// enough to read the map, little enough to still see the photo under it.
const ALPHA: f32 = 0.45;

/// `photo` with `map` (`h` x `w`, values in [0, 1]) laid over it: the map is
/// stretched to the photo's size by bilinear interpolation, coloured with the
/// Turbo colour map (blue for 0 through green and yellow to red for 1), and
/// blended in at 45 %.
///
/// # Panics
/// If `map` does not have `h * w` values, or is empty.
pub fn overlay(photo: &RgbImage, map: &[f32], h: usize, w: usize) -> RgbImage {
    assert!(
        h * w > 0 && map.len() == h * w,
        "the map must be h x w and not empty"
    );
    let (width, height) = photo.dimensions();
    // Pixel centres line up (PyTorch's align_corners=false): photo pixel x sits
    // at map column (x + 0.5) * w / width - 0.5.
    let source = |i: u32, photo_len: u32, map_len: usize| {
        (i as f32 + 0.5) * map_len as f32 / photo_len as f32 - 0.5
    };
    RgbImage::from_fn(width, height, |x, y| {
        let heat = turbo(bilinear(
            map,
            h,
            w,
            source(y, height, h),
            source(x, width, w),
        ));
        let pixel = photo.get_pixel(x, y);
        Rgb(std::array::from_fn(|i| {
            ((1.0 - ALPHA) * pixel[i] as f32 + ALPHA * heat[i] as f32).round() as u8
        }))
    })
}

/// `map` (`h` x `w`) at fractional row `y` and column `x`, clamped to the edges.
fn bilinear(map: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let y = y.clamp(0.0, (h - 1) as f32);
    let x = x.clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = (y - y0 as f32, x - x0 as f32);
    let row = |r: usize| map[r * w + x0] * (1.0 - fx) + map[r * w + x1] * fx;
    row(y0) * (1.0 - fy) + row(y1) * fy
}

/// Google's Turbo colour map (Anton Mikhailov, 2019), by Ruofei Du's published
/// polynomial approximation: like jet, but with a smooth, perceptually ordered lightness.
fn turbo(t: f32) -> [u8; 3] {
    // Coefficients of 1, t, t², … t⁵ for each channel, one row each as published.
    #[rustfmt::skip]
    const RED: [f64; 6] = [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943];
    #[rustfmt::skip]
    const GREEN: [f64; 6] = [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604];
    #[rustfmt::skip]
    const BLUE: [f64; 6] = [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973];
    let t = f64::from(t.clamp(0.0, 1.0));
    let channel = |k: &[f64; 6]| {
        let value = k.iter().rev().fold(0.0, |acc, &c| acc * t + c);
        (value.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    [channel(&RED), channel(&GREEN), channel(&BLUE)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_interpolates_between_pixel_centres() {
        let map = [0.0, 1.0, 2.0, 3.0]; // 2 x 2
        assert_eq!(bilinear(&map, 2, 2, 0.5, 0.5), 1.5);
        assert_eq!(bilinear(&map, 2, 2, 0.0, 0.25), 0.25);
        assert_eq!(bilinear(&map, 2, 2, -3.0, 9.0), 1.0);
    }

    #[test]
    fn overlay_keeps_the_photo_size_and_colours_hot_regions_red() {
        let photo = RgbImage::from_pixel(40, 20, Rgb([128, 128, 128]));
        // Hot on the right, cool on the left.
        let out = overlay(&photo, &[0.2, 0.95], 1, 2);
        assert_eq!(out.dimensions(), (40, 20));
        let (left, right) = (out.get_pixel(0, 10), out.get_pixel(39, 10));
        assert!(left[2] > left[0], "cold is blue: {left:?}");
        assert!(right[0] > right[2], "hot is red: {right:?}");
    }

    #[test]
    fn turbo_runs_from_dark_blue_to_dark_red() {
        let [r, g, b] = turbo(0.15);
        assert!(b > r && b > g, "{:?}", (r, g, b));
        let [r, g, b] = turbo(0.5);
        assert!(g > r && g > b, "{:?}", (r, g, b));
        let [r, g, b] = turbo(0.95);
        assert!(r > g && r > b, "{:?}", (r, g, b));
    }
}
