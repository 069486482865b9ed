//! Photo grids: `predictions.png`, `top-losses.png` and `gradcam.png` all use
//! this one layout, with correct and wrong predictions framed in green and red.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

use super::draw::{INK, MUTED, RIGHT, WRONG, bold, draw_on, fit, font, label, write_png};
use crate::error::Result;
use crate::evaluate::predicted;

/// One photo in a grid, with the lines printed under it.
#[derive(Clone, Debug)]
pub struct Tile {
    pub image: RgbImage,
    /// Lines under the photo; the first is bold and in the frame's colour.
    pub caption: Vec<String>,
    /// Whether the model was right: a green frame, or a red one.
    pub correct: bool,
}

impl Tile {
    /// A photo captioned with the model's guess and the truth, e.g.
    /// "✗ dog 93.1%" over "true: cat".
    pub fn prediction(
        image: RgbImage,
        classes: &[String],
        label: usize,
        probabilities: &[f32],
    ) -> Tile {
        let guess = predicted(probabilities);
        let correct = guess == label;
        let mark = if correct { '✓' } else { '✗' };
        Tile {
            image,
            caption: vec![
                format!(
                    "{mark} {} {:.1}%",
                    classes[guess],
                    100.0 * probabilities[guess]
                ),
                format!("true: {}", classes[label]),
            ],
            correct,
        }
    }
}

/// Side of the square each photo is shown in.
const PHOTO: u32 = 200;
/// Width of the green or red frame.
const FRAME: u32 = 6;
const GAP: u32 = 24;
const LINE: u32 = 24;
const TITLE: u32 = 64;
/// The narrowest picture, so that a grid of one photo still has room for its title.
const MIN_WIDTH: u32 = 480;

/// Writes `tiles` as a grid under `title`. Each photo is shown as its central
/// square (what the model's centre crop sees), in a green frame when the model
/// was right and a red one when it was wrong; a grid with no tile says so.
pub fn write_grid(path: &Path, title: &str, tiles: &[Tile]) -> Result<()> {
    let n = tiles.len() as u32;
    let columns = columns(n);
    let rows = n.div_ceil(columns);
    let lines = tiles
        .iter()
        .map(|t| t.caption.len() as u32)
        .max()
        .unwrap_or(0);
    let cell = (PHOTO + 2 * FRAME, PHOTO + 2 * FRAME + 8 + lines * LINE);
    let grid_width = columns * cell.0 + (columns - 1) * GAP;
    let width = (grid_width + 2 * GAP).max(MIN_WIDTH);
    let height = TITLE + rows.max(1) * (cell.1 + GAP);
    let left = (width - grid_width) / 2;
    let origin = |i: u32| {
        (
            left + (i % columns) * (cell.0 + GAP),
            TITLE + (i / columns) * (cell.1 + GAP),
        )
    };

    let mut picture = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (i, tile) in (0..).zip(tiles) {
        let (x, y) = origin(i);
        let colour = frame_colour(tile.correct);
        imageops::replace(
            &mut picture,
            &RgbImage::from_pixel(cell.0, cell.0, Rgb([colour.0, colour.1, colour.2])),
            x.into(),
            y.into(),
        );
        imageops::replace(
            &mut picture,
            &square(&tile.image),
            (x + FRAME).into(),
            (y + FRAME).into(),
        );
    }
    draw_on(path, &mut picture, |canvas| {
        let title = fit(title, &bold(24.0), width - 2 * GAP);
        label(
            canvas,
            &title,
            (width as i32 / 2, TITLE as i32 / 2),
            HPos::Center,
            bold(24.0).color(&INK),
        )?;
        if tiles.is_empty() {
            label(
                canvas,
                "(no images)",
                (width as i32 / 2, (TITLE + cell.1 / 2) as i32),
                HPos::Center,
                font(18.0).color(&MUTED),
            )?;
        }
        for (i, tile) in (0..).zip(tiles) {
            let (x, y) = origin(i);
            let centre_x = (x + cell.0 / 2) as i32;
            for (l, line) in (0..).zip(&tile.caption) {
                let (face, colour) = if l == 0 {
                    (bold(18.0), frame_colour(tile.correct))
                } else {
                    (font(17.0), INK)
                };
                let line = fit(line, &face, cell.0);
                let centre_y = (y + cell.0 + 8 + l * LINE + LINE / 2) as i32;
                label(
                    canvas,
                    &line,
                    (centre_x, centre_y),
                    HPos::Center,
                    face.color(&colour),
                )?;
            }
        }
        Ok(())
    })?;
    write_png(path, &picture)
}

/// Columns for `n` photos: up to 4 across, more only when the grid would
/// otherwise be much taller than wide.
fn columns(n: u32) -> u32 {
    let square = (n as f64).sqrt().ceil() as u32;
    square.max(n.min(4)).max(1)
}

fn frame_colour(correct: bool) -> RGBColor {
    if correct { RIGHT } else { WRONG }
}

/// The central square of `image`, scaled to [`PHOTO`] pixels a side.
fn square(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let side = w.min(h);
    let crop = imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side).to_image();
    imageops::resize(&crop, PHOTO, PHOTO, FilterType::Triangle)
}
