//! `lr-find.png`: the learning-rate finder's loss against the rate, on a log axis, with the
//! suggested rate marked.

use std::ops::Range;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

use super::draw::{Canvas, Drawn, GRID, INK, MUTED, bold, draw_png, font, label};
use super::text::text_width;
use crate::error::Result;
use crate::train::lr_find::{BETA, Point, Suggestion};

const RAW: RGBColor = RGBColor(158, 202, 225);
const SMOOTHED: RGBColor = RGBColor(31, 119, 180);
const SUGGESTED: RGBColor = RGBColor(214, 39, 40);
const WIDTH: u32 = 720;
const HEIGHT: u32 = 480;
const HEADER: u32 = 92;

/// Writes the batches' losses (faint) and the smoothed loss against the rate, with
/// `suggestion`'s rate marked and labelled. Losses that are not finite are left out; the
/// loss axis spans the smoothed curve, and raw losses above it are drawn at its top.
pub fn write_lr_find(
    path: &Path,
    points: &[Point],
    suggestion: Option<&Suggestion>,
    title: &str,
) -> Result<()> {
    let x = rate_axis(points);
    let y = loss_axis(points);
    draw_png(path, WIDTH, HEIGHT + HEADER, |canvas| {
        let (top, body) = canvas.split_vertically(HEADER);
        label(
            &top,
            title,
            (WIDTH as i32 / 2, 28),
            HPos::Center,
            bold(20.0).color(&INK),
        )?;
        draw_legend(&top, 64, suggestion.is_some())?;
        let (y_low, y_high) = (y.start, y.end);
        let mut chart = ChartBuilder::on(&body)
            .margin_left(16)
            .margin_right(32)
            .margin_bottom(12)
            .x_label_area_size(52)
            .y_label_area_size(76)
            .build_cartesian_2d(x.log_scale(), y)?;
        chart
            .configure_mesh()
            .x_desc("learning rate (log scale)")
            .y_desc("training loss")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .x_labels(9)
            .y_labels(6)
            .label_style(font(18.0).color(&INK))
            .axis_desc_style(font(18.0).color(&MUTED))
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .axis_style(MUTED)
            .draw()?;
        let finite = |v: f64| v.is_finite();
        let raw = points
            .iter()
            .filter(|p| finite(p.loss))
            .map(|p| (p.lr, p.loss.clamp(y_low, y_high)));
        chart.draw_series(LineSeries::new(raw, RAW.stroke_width(1)))?;
        let smoothed = points
            .iter()
            .filter(|p| finite(p.smoothed))
            .map(|p| (p.lr, p.smoothed.clamp(y_low, y_high)));
        chart.draw_series(LineSeries::new(smoothed, SMOOTHED.stroke_width(3)))?;
        let Some(s) = suggestion else {
            return Ok(());
        };
        chart.draw_series(DashedLineSeries::new(
            [(s.lr, y_low), (s.lr, y_high)],
            8,
            6,
            SUGGESTED.stroke_width(2),
        ))?;
        let at = (s.lr, points[s.at].smoothed);
        chart.draw_series([Circle::new(at, 7, SUGGESTED.filled())])?;
        // The label sits right of the mark, or left of it near the right edge.
        let (px, py) = chart.backend_coord(&at);
        let text = format!("suggested: {:.1e}", s.lr);
        let width = text_width(&text, 18.0, true) as i32;
        let (x, h) = if px + 14 + width < WIDTH as i32 - 8 {
            (px + 14, HPos::Left)
        } else {
            (px - 14, HPos::Right)
        };
        label(canvas, &text, (x, py - 22), h, bold(18.0).color(&SUGGESTED))
    })
}

/// The swept rates, with some length when there is one point.
fn rate_axis(points: &[Point]) -> Range<f64> {
    let first = points.first().map_or(1e-7, |p| p.lr);
    let last = points.last().map_or(10.0, |p| p.lr);
    first..last.max(first * 10.0)
}

/// The smoothed losses with a margin, not from 0: the sweep's story is in their shape.
fn loss_axis(points: &[Point]) -> Range<f64> {
    let (low, high) = points
        .iter()
        .flat_map(|p| [p.smoothed, p.loss.min(p.smoothed)])
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if low > high {
        return 0.0..1.0; // no finite loss at all
    }
    let margin = ((high - low) * 0.08).max(1e-3);
    (low - margin).max(0.0)..high + margin
}

/// The key, one row centred at height `y`.
fn draw_legend(area: &Canvas, y: i32, with_suggestion: bool) -> Drawn {
    let smoothed = format!("smoothed (β {BETA})");
    let mut entries: Vec<(&str, ShapeStyle, bool)> = vec![
        ("loss of each batch", RAW.stroke_width(2), false),
        (&smoothed, SMOOTHED.stroke_width(3), false),
    ];
    if with_suggestion {
        entries.push(("suggested rate", SUGGESTED.stroke_width(2), true));
    }
    super::curves::draw_key(area, y, entries)
}
