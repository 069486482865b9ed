//! `curves.png`: loss and accuracy per epoch, training against validation, and the learning
//! rate of each epoch where metrics.jsonl records it.

use std::ops::Range;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

use super::EpochRecord;
use super::draw::{Canvas, Drawn, GRID, INK, MUTED, bold, draw_png, font, label};
use super::text::text_width;
use crate::error::Result;
use crate::run::best_epoch;
use crate::train::Monitor;

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VALIDATION: RGBColor = RGBColor(255, 127, 14);
const RATE: RGBColor = RGBColor(44, 160, 44);
/// One panel above the other, so that on a phone's narrow screen the picture
/// shrinks less and its text stays readable.
const WIDTH: u32 = 720;
const PANEL: u32 = 400;
const HEADER: u32 = 92;

/// Writes two panels, loss above accuracy per epoch, each with a training and
/// a validation line and the epoch `best/` holds (by `monitor`) marked, and below them the
/// learning rate when the history records it. `history` is in
/// epoch order; values that are not finite (a diverged run) are skipped.
pub fn write_curves(path: &Path, history: &[EpochRecord], monitor: Monitor) -> Result<()> {
    let best = best_epoch(history, monitor).map(|r| r.epoch);
    let with_rate = history.iter().any(|r| r.lr.is_some());
    let height = HEADER + PANEL * if with_rate { 3 } else { 2 };
    draw_png(path, WIDTH, height, |canvas| {
        let (top, body) = canvas.split_vertically(HEADER);
        label(
            &top,
            &title(history, best),
            (WIDTH as i32 / 2, 28),
            HPos::Center,
            bold(24.0).color(&INK),
        )?;
        // The key sits above the charts, where it can hide no point.
        draw_legend(&top, 64, best.is_some())?;
        let (upper, rest) = body.split_vertically(PANEL);
        let (lower, bottom_panel) = rest.split_vertically(PANEL);

        let loss = |r: &EpochRecord| vec![r.train_loss, r.val_loss];
        panel(
            &upper,
            "Loss (cross-entropy)",
            history,
            &SERIES,
            loss,
            loss_axis(history),
            &|v| format!("{v:.3}"),
            best,
        )?;

        // Start the accuracy axis a little below the lowest value, at a whole
        // ten per cent, so that differences near 100 % stay visible.
        let lowest = history
            .iter()
            .flat_map(|r| [r.train_acc, r.val_acc])
            .filter(|v| v.is_finite())
            .fold(1.0, f64::min);
        let bottom = ((lowest - 0.02) * 10.0).floor().clamp(0.0, 9.0) / 10.0;
        let accuracy = |r: &EpochRecord| vec![r.train_acc, r.val_acc];
        let percent = |v: &f64| format!("{:.0}%", 100.0 * v);
        panel(
            &lower,
            "Accuracy",
            history,
            &SERIES,
            accuracy,
            bottom..1.0,
            &percent,
            best,
        )?;
        if !with_rate {
            return Ok(());
        }
        // A run from before schedules has no rate; NaN leaves its epochs out of the line.
        let rate = |r: &EpochRecord| vec![r.lr.unwrap_or(f64::NAN)];
        let highest = history.iter().filter_map(|r| r.lr).fold(0.0, f64::max);
        panel(
            &bottom_panel,
            "Learning rate (each epoch's last batch)",
            history,
            &[("rate", RATE)],
            rate,
            0.0..(highest * 1.05).max(f64::MIN_POSITIVE),
            &|v| format!("{v:.1e}"),
            best,
        )
    })
}

/// The loss axis spans the losses with a margin, not from 0: a loss moving
/// between 0.67 and 0.72 must not look flat.
fn loss_axis(history: &[EpochRecord]) -> Range<f64> {
    let (low, high) = history
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if low > high {
        return 0.0..1.0; // no finite loss at all
    }
    let margin = ((high - low) * 0.1).max(high.abs() * 0.02).max(1e-3);
    (low - margin).max(0.0)..high + margin
}

/// "Training curves · 12 epochs · best: epoch 9". The epochs' seconds are left
/// out: they omit what came before the first epoch (decoding, features).
fn title(history: &[EpochRecord], best: Option<usize>) -> String {
    let epochs = if history.len() == 1 {
        "epoch"
    } else {
        "epochs"
    };
    let mut title = format!("Training curves · {} {epochs}", history.len());
    if let Some(best) = best {
        title += &format!(" · best: epoch {best}");
    }
    title
}

const SERIES: [(&str, RGBColor); 2] = [("training", TRAIN), ("validation", VALIDATION)];
const BEST_NAME: &str = "best epoch (best/)";

/// One chart: `value` gives a record's value of each of `series`.
#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Canvas,
    name: &str,
    history: &[EpochRecord],
    series: &[(&str, RGBColor)],
    value: impl Fn(&EpochRecord) -> Vec<f64>,
    y: Range<f64>,
    y_format: &dyn Fn(&f64) -> String,
    best: Option<usize>,
) -> Drawn {
    let first = history.first().map_or(1, |r| r.epoch);
    // One epoch still gets an axis with some length.
    let last = history.last().map_or(1, |r| r.epoch).max(first + 1);
    let (y_low, y_high) = (y.start, y.end);
    let mut chart = ChartBuilder::on(area)
        .margin_left(16)
        .margin_right(32)
        .margin_bottom(12)
        .caption(name, bold(21.0).color(&INK))
        .x_label_area_size(52)
        .y_label_area_size(76)
        .build_cartesian_2d(first..last, y)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_label_formatter(y_format)
        .x_labels((last - first + 1).min(10))
        .y_labels(6)
        .label_style(font(18.0).color(&INK))
        .axis_desc_style(font(18.0).color(&MUTED))
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .axis_style(MUTED)
        .draw()?;
    if let Some(best) = best {
        chart.draw_series(DashedLineSeries::new(
            [(best, y_low), (best, y_high)],
            8,
            6,
            MUTED.stroke_width(2),
        ))?;
    }
    // Markers show single epochs, until there are so many that they blur the line.
    let marker = if history.len() <= 20 { 4 } else { 0 };
    for (i, &(_, colour)) in series.iter().enumerate() {
        // A diverged run's NaN or infinite losses are left out, not drawn off the chart.
        let points = history
            .iter()
            .map(|r| (r.epoch, value(r)[i]))
            .filter(|(_, v)| v.is_finite());
        chart.draw_series(LineSeries::new(points, colour.stroke_width(3)).point_size(marker))?;
    }
    Ok(())
}

/// The key, one row centred at height `y`: a swatch and a name per line, and
/// the best epoch's dashed mark when there is one.
fn draw_legend(area: &Canvas, y: i32, with_best: bool) -> Drawn {
    let mut entries: Vec<(&str, ShapeStyle, bool)> = SERIES
        .iter()
        .map(|&(name, colour)| (name, colour.stroke_width(3), false))
        .collect();
    if with_best {
        entries.push((BEST_NAME, MUTED.stroke_width(2), true));
    }
    draw_key(area, y, entries)
}

/// A key of `(name, line style, dashed)` entries, one row centred at height `y`. Drawn here
/// rather than by plotters, whose legend box is sized by a rough guess at the text's width.
pub(super) fn draw_key(area: &Canvas, y: i32, entries: Vec<(&str, ShapeStyle, bool)>) -> Drawn {
    const SWATCH: i32 = 28;
    const GAP: i32 = 8;
    const SPACE: i32 = 28;
    let size = 17.0;
    let widths: Vec<i32> = entries
        .iter()
        .map(|(name, _, _)| SWATCH + GAP + text_width(name, size, false) as i32)
        .collect();
    let total = widths.iter().sum::<i32>() + SPACE * (entries.len() as i32 - 1);
    let mut x = (WIDTH as i32 - total) / 2;
    for ((name, style, dashed), width) in entries.into_iter().zip(widths) {
        if dashed {
            for start in (0..SWATCH).step_by(10) {
                area.draw(&PathElement::new(
                    [(x + start, y), (x + (start + 6).min(SWATCH), y)],
                    style,
                ))?;
            }
        } else {
            area.draw(&PathElement::new([(x, y), (x + SWATCH, y)], style))?;
        }
        label(
            area,
            name,
            (x + SWATCH + GAP, y),
            HPos::Left,
            font(size).color(&INK),
        )?;
        x += width + SPACE;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, val_acc: f64, val_loss: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: 0.70,
            train_acc: 0.5,
            val_loss,
            val_acc,
            seconds: 1.0,
            lr: None,
        }
    }

    #[test]
    fn the_loss_axis_spans_the_losses_not_from_zero() {
        let history = [record(1, 0.5, 0.72), record(2, 0.6, 0.67)];
        let axis = loss_axis(&history);
        assert!(axis.start > 0.6 && axis.start < 0.67, "{axis:?}");
        assert!(axis.end > 0.72 && axis.end < 0.75, "{axis:?}");
    }

    #[test]
    fn the_title_names_the_best_epoch_and_no_partial_time() {
        let history = [
            record(1, 0.5, 0.7),
            record(2, 0.6, 0.69),
            record(3, 0.6, 0.65),
        ];
        let best = best_epoch(&history, Monitor::ValAcc).map(|r| r.epoch);
        assert_eq!(best, Some(3), "ties go to the lower loss");
        assert_eq!(
            best_epoch(&history[..2], Monitor::ValLoss).map(|r| r.epoch),
            Some(2)
        );
        let worse_loss = [record(1, 0.5, 0.6), record(2, 0.9, 0.7)];
        assert_eq!(
            best_epoch(&worse_loss, Monitor::ValLoss).map(|r| r.epoch),
            Some(1)
        );
        assert_eq!(
            best_epoch(&worse_loss, Monitor::ValAcc).map(|r| r.epoch),
            Some(2)
        );
        assert_eq!(
            title(&history, best),
            "Training curves · 3 epochs · best: epoch 3"
        );
    }
}
