//! `reliability.png` (how far the probabilities can be trusted, before and after
//! calibration) and `roc.png` (the ROC curve with the operating point of the answers).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

use super::draw::{Canvas, Drawn, GRID, INK, MUTED, bold, draw_png, fit, font, label};
use crate::error::Result;
use crate::evaluate::calibration::Bin;

const BEFORE: RGBColor = RGBColor(255, 127, 14);
const AFTER: RGBColor = RGBColor(31, 119, 180);
const SIDE: u32 = 640;
const HEADER: u32 = 84;

/// The reliability diagram: per confidence bin, the share right against the mean top
/// probability, raw (`before`) and calibrated (`after`, when the model has a calibration),
/// with the diagonal a calibrated model follows. `title` carries the figures (ECE).
pub fn write_reliability(
    path: &Path,
    title: &str,
    before: &[Bin],
    after: Option<&[Bin]>,
) -> Result<()> {
    let mut series = vec![("raw probabilities", BEFORE, before)];
    if let Some(after) = after {
        series.push(("calibrated", AFTER, after));
    }
    let points = |bins: &[Bin]| -> Vec<(f64, f64)> {
        bins.iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.confidence, b.accuracy))
            .collect()
    };
    let series: Vec<_> = series
        .into_iter()
        .map(|(name, colour, bins)| (name, colour, points(bins)))
        .collect();
    let legend: Vec<(&str, RGBColor)> = series.iter().map(|(n, c, _)| (*n, *c)).collect();
    draw_png(path, SIDE, SIDE + HEADER, |canvas| {
        let (top, body) = canvas.split_vertically(HEADER);
        header(&top, title, &legend)?;
        let mut chart = square_chart(&body, "mean top probability (bins of 1/15)", "share right")?;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            8,
            6,
            MUTED.stroke_width(2),
        ))?;
        for (_, colour, points) in &series {
            chart.draw_series(
                LineSeries::new(points.iter().copied(), colour.stroke_width(3)).point_size(5),
            )?;
        }
        Ok(())
    })
}

/// The ROC curve of `scores` (higher: more likely positive) against `positive`, with the
/// operating point `(false positive rate, true positive rate)` marked. Without a positive or
/// without a negative there is no curve, and the picture says so.
pub fn write_roc(
    path: &Path,
    title: &str,
    scores: &[f32],
    positive: &[bool],
    operating: Option<(f64, f64)>,
) -> Result<()> {
    let curve = roc_curve(scores, positive);
    let legend = [("ROC curve", AFTER), ("operating point", BEFORE)];
    draw_png(path, SIDE, SIDE + HEADER, |canvas| {
        let (top, body) = canvas.split_vertically(HEADER);
        header(&top, title, &legend)?;
        let mut chart = square_chart(&body, "false positive rate", "true positive rate")?;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            8,
            6,
            GRID.stroke_width(2),
        ))?;
        if let Some(curve) = &curve {
            chart.draw_series(LineSeries::new(
                curve.iter().copied(),
                AFTER.stroke_width(3),
            ))?;
        }
        if let Some(point) = operating {
            chart.draw_series([Circle::new(point, 8, BEFORE.filled())])?;
        }
        Ok(())
    })
}

/// The (false positive rate, true positive rate) points as the threshold falls through the
/// scores, tied scores taken together; `None` without positives or negatives.
fn roc_curve(scores: &[f32], positive: &[bool]) -> Option<Vec<(f64, f64)>> {
    let pos = positive.iter().filter(|&&p| p).count() as f64;
    let neg = positive.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut curve = vec![(0.0, 0.0)];
    for tied in order.chunk_by(|&a, &b| scores[a] == scores[b]) {
        for &i in tied {
            if positive[i] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
        }
        curve.push((fp / neg, tp / pos));
    }
    Some(curve)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    super::text::TextBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A unit square chart with percent axes.
fn square_chart<'a, 'b>(
    area: &'a Canvas<'b>,
    x: &str,
    y: &str,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .margin_left(16)
        .margin_right(32)
        .margin_bottom(12)
        .x_label_area_size(52)
        .y_label_area_size(76)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    let percent = |v: &f64| format!("{:.0}%", 100.0 * v);
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .x_label_formatter(&percent)
        .y_label_formatter(&percent)
        .x_labels(6)
        .y_labels(6)
        .label_style(font(18.0).color(&INK))
        .axis_desc_style(font(18.0).color(&MUTED))
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .axis_style(MUTED)
        .draw()?;
    Ok(chart)
}

/// The title, and below it a key of coloured swatches.
fn header(area: &Canvas, title: &str, legend: &[(&str, RGBColor)]) -> Drawn {
    let title = fit(title, &bold(21.0), SIDE - 24);
    label(
        area,
        &title,
        (SIDE as i32 / 2, 26),
        HPos::Center,
        bold(21.0).color(&INK),
    )?;
    let mut x = 40;
    for (name, colour) in legend {
        area.draw(&PathElement::new(
            [(x, 62), (x + 28, 62)],
            colour.stroke_width(3),
        ))?;
        label(area, name, (x + 36, 62), HPos::Left, font(17.0).color(&INK))?;
        x += 36 + super::text::text_width(name, 17.0, false) as i32 + 28;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roc_curve_steps_through_the_scores_ties_together() {
        let curve = roc_curve(&[0.9, 0.8, 0.8, 0.1], &[true, true, false, false]).unwrap();
        assert_eq!(curve, [(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert_eq!(roc_curve(&[0.5], &[true]), None);
    }
}
