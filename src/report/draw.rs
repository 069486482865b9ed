//! What every picture shares: the embedded font, the palette, and turning a
//! drawing into a PNG file written atomically.

use std::io;
use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::text::{TextBackend, text_width};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;

/// A plotters drawing area over an RGB picture in memory.
pub(crate) type Canvas<'a> = DrawingArea<TextBackend<'a>, Shift>;
/// What a drawing closure returns: plotters' errors, boxed (they can only be
/// bugs, since everything is drawn into memory).
pub(crate) type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

pub(crate) const INK: RGBColor = RGBColor(33, 37, 41);
pub(crate) const MUTED: RGBColor = RGBColor(108, 117, 125);
pub(crate) const GRID: RGBColor = RGBColor(222, 226, 230);
/// Correct and wrong predictions: a green and a red that stay apart for most
/// colour-blind readers too, helped by the ✓ / ✗ marks next to them.
pub(crate) const RIGHT: RGBColor = RGBColor(25, 135, 84);
pub(crate) const WRONG: RGBColor = RGBColor(214, 39, 40);

/// Text in the pictures' font (DejaVu Sans, see [`super::text`]), `size`
/// pixels from the top of the ascenders to the bottom of the descenders.
pub(crate) fn font(size: f64) -> FontDesc<'static> {
    ("sans-serif", size).into_font()
}

/// Bold text in the pictures' font.
pub(crate) fn bold(size: f64) -> FontDesc<'static> {
    font(size).style(FontStyle::Bold)
}

/// Draws `text` with the middle of its capitals at height `at.1`, and its left
/// edge, centre or right edge (`h`) at `at.0`.
pub(crate) fn label(
    canvas: &Canvas,
    text: &str,
    at: (i32, i32),
    h: HPos,
    style: TextStyle,
) -> Drawn {
    canvas.draw(&Text::new(
        text.to_owned(),
        at,
        style.pos(Pos::new(h, VPos::Center)),
    ))?;
    Ok(())
}

/// `text`, shortened with "…" until it is at most `width` pixels wide in `font`.
pub(crate) fn fit(text: &str, font: &FontDesc, width: u32) -> String {
    let bold = matches!(font.get_style(), FontStyle::Bold);
    let wide = |t: &str| text_width(t, font.get_size(), bold) > width;
    if !wide(text) {
        return text.to_owned();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() && wide(&format!("{}…", chars.iter().collect::<String>())) {
        chars.pop();
    }
    format!("{}…", chars.iter().collect::<String>())
}

/// Draws on a white `width` x `height` picture and writes it to `path` as PNG.
pub(crate) fn draw_png(
    path: &Path,
    width: u32,
    height: u32,
    draw: impl FnOnce(&Canvas) -> Drawn,
) -> Result<()> {
    let mut picture = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    draw_on(path, &mut picture, draw)?;
    write_png(path, &picture)
}

/// Draws with plotters over `picture` (for photos pasted in first); `path` names
/// the file being made, for the error message.
pub(crate) fn draw_on(
    path: &Path,
    picture: &mut RgbImage,
    draw: impl FnOnce(&Canvas) -> Drawn,
) -> Result<()> {
    let size = picture.dimensions();
    let canvas = TextBackend(BitMapBackend::with_buffer(picture, size)).into_drawing_area();
    let drawn = draw(&canvas).and_then(|()| Ok(canvas.present()?));
    drawn.map_err(|e| Error::io("cannot draw", path, io::Error::other(e.to_string())))
}

/// Encodes `picture` as PNG and writes it atomically.
pub(crate) fn write_png(path: &Path, picture: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    picture
        .write_with_encoder(PngEncoder::new(&mut bytes))
        .map_err(|e| Error::io("cannot encode", path, io::Error::other(e)))?;
    write_atomic(path, &bytes)
}
