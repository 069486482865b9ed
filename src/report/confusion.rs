//! `confusion.png`: the confusion matrix as a heat map, with counts and the
//! share of each true class in every cell.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

use super::draw::{Canvas, Drawn, INK, MUTED, bold, draw_png, fit, font, label};
use super::text::text_width;
use crate::error::Result;
use crate::evaluate::Metrics;

const TITLE: u32 = 72;
/// Room for the rotated axis title left of the class names.
const AXIS_TITLE: u32 = 44;
/// The widest a class name may be before it is shortened.
const NAME_WIDTH: u32 = 200;
const BOTTOM: u32 = 84;
const BAR_GAP: u32 = 28;
const BAR_WIDTH: u32 = 22;
const RIGHT: u32 = 110;

/// Writes the confusion matrix: rows are the true class, columns the
/// predicted one. Each cell shows its count and its share of the row (the
/// true class), and is coloured by that share, so that a good classifier
/// shows a dark diagonal whatever the class sizes.
pub fn write_confusion(path: &Path, metrics: &Metrics) -> Result<()> {
    let n = metrics.classes.len().max(1) as u32;
    let cell = (360 / n).clamp(72, 180);
    let names: Vec<String> = metrics
        .classes
        .iter()
        .map(|c| fit(c, &font(18.0), NAME_WIDTH))
        .collect();
    let name_width = names
        .iter()
        .map(|c| text_width(c, 18.0, false))
        .max()
        .unwrap_or(0);
    let left = AXIS_TITLE + name_width + 16;
    let (width, height) = (
        left + n * cell + BAR_GAP + BAR_WIDTH + RIGHT,
        TITLE + n * cell + BOTTOM,
    );
    let matrix = (left as i32, TITLE as i32);
    let side = (n * cell) as i32;

    draw_png(path, width, height, |canvas| {
        let title = format!(
            "Confusion matrix · {} images · accuracy {:.1}%",
            metrics.images,
            100.0 * metrics.accuracy
        );
        let title = fit(&title, &bold(22.0), width - 24);
        label(
            canvas,
            &title,
            (width as i32 / 2, TITLE as i32 / 2 - 4),
            HPos::Center,
            bold(22.0).color(&INK),
        )?;

        let cell = cell as i32;
        let count_size = (f64::from(cell) * 0.2).clamp(16.0, 32.0);
        for (t, row) in (0..).zip(&metrics.confusion_matrix) {
            let total: u64 = row.iter().sum();
            for (p, &count) in (0..).zip(row) {
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                let (x, y) = (matrix.0 + p * cell, matrix.1 + t * cell);
                canvas.draw(&Rectangle::new(
                    [(x, y), (x + cell - 2, y + cell - 2)],
                    blues(share).filled(),
                ))?;
                let ink = if share > 0.5 { WHITE } else { INK };
                let centre = (x + cell / 2 - 1, y + cell / 2 - 1);
                let count_at = (centre.0, centre.1 - (0.35 * count_size) as i32);
                label(
                    canvas,
                    &count.to_string(),
                    count_at,
                    HPos::Center,
                    bold(count_size).color(&ink),
                )?;
                let share_at = (centre.0, centre.1 + (0.55 * count_size) as i32);
                let share_text = format!("{:.1}%", 100.0 * share);
                label(
                    canvas,
                    &share_text,
                    share_at,
                    HPos::Center,
                    font(count_size * 0.68).color(&ink),
                )?;
            }
        }
        for (k, name) in (0..).zip(&names) {
            let middle = k * cell + cell / 2;
            let below = (matrix.0 + middle, matrix.1 + side + 18);
            let short = fit(name, &font(18.0), cell as u32 - 8);
            label(canvas, &short, below, HPos::Center, font(18.0).color(&INK))?;
            let beside = (matrix.0 - 12, matrix.1 + middle);
            label(canvas, name, beside, HPos::Right, font(18.0).color(&INK))?;
        }
        let axis = font(17.0).color(&MUTED);
        label(
            canvas,
            "predicted class",
            (matrix.0 + side / 2, matrix.1 + side + 56),
            HPos::Center,
            axis.clone(),
        )?;
        let true_at = (AXIS_TITLE as i32 / 2, matrix.1 + side / 2);
        let upright = axis.transform(FontTransform::Rotate270);
        label(canvas, "true class", true_at, HPos::Center, upright)?;
        colour_bar(canvas, (matrix.0 + side + BAR_GAP as i32, matrix.1), side)
    })
}

/// A vertical scale from 0 % (bottom) to 100 % (top), `height` pixels tall.
fn colour_bar(canvas: &Canvas, (x, y): (i32, i32), height: i32) -> Drawn {
    let width = BAR_WIDTH as i32;
    for row in 0..height {
        let share = 1.0 - f64::from(row) / f64::from(height - 1);
        canvas.draw(&Rectangle::new(
            [(x, y + row), (x + width, y + row + 1)],
            blues(share).filled(),
        ))?;
    }
    canvas.draw(&Rectangle::new(
        [(x, y), (x + width, y + height)],
        MUTED.stroke_width(1),
    ))?;
    for tick in 0..=4 {
        let at = y + (height - 1) - tick * (height - 1) / 4;
        canvas.draw(&PathElement::new(
            [(x + width, at), (x + width + 5, at)],
            MUTED.stroke_width(1),
        ))?;
        label(
            canvas,
            &format!("{}%", tick * 25),
            (x + width + 9, at),
            HPos::Left,
            font(14.0).color(&INK),
        )?;
    }
    let title_at = (x + width + 72, y + height / 2);
    let upright = font(15.0).color(&MUTED).transform(FontTransform::Rotate270);
    label(
        canvas,
        "share of true class",
        title_at,
        HPos::Center,
        upright,
    )
}

/// A white-to-dark-blue scale (the ends and middle of ColorBrewer's "Blues").
fn blues(share: f64) -> RGBColor {
    const STOPS: [[f64; 3]; 3] = [
        [247.0, 251.0, 255.0],
        [107.0, 174.0, 214.0],
        [8.0, 48.0, 107.0],
    ];
    let t = share.clamp(0.0, 1.0) * 2.0;
    let (from, to, f) = if t <= 1.0 {
        (STOPS[0], STOPS[1], t)
    } else {
        (STOPS[1], STOPS[2], t - 1.0)
    };
    let mix = |i: usize| (from[i] + (to[i] - from[i]) * f).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}
