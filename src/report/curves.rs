//! `curves.png`: loss and accuracy per epoch, training against validation.

use std::ops::Range;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

use super::EpochRecord;
use super::draw::{Canvas, Drawn, GRID, INK, MUTED, bold, draw_png, font, label};
use super::text::text_width;
use crate::error::Result;

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VALIDATION: RGBColor = RGBColor(255, 127, 14);
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 520;
const TITLE: u32 = 56;

/// Writes two panels side by side, loss and accuracy per epoch, each with a
/// training and a validation line. `history` is in epoch order; values that
/// are not finite (a diverged run) are skipped.
pub fn write_curves(path: &Path, history: &[EpochRecord]) -> Result<()> {
    draw_png(path, WIDTH, HEIGHT, |canvas| {
        let (top, body) = canvas.split_vertically(TITLE);
        label(
            &top,
            &title(history),
            (WIDTH as i32 / 2, TITLE as i32 / 2 + 4),
            HPos::Center,
            bold(24.0).color(&INK),
        )?;
        let (left, right) = body.split_horizontally(WIDTH / 2);

        let highest_loss = history
            .iter()
            .flat_map(|r| [r.train_loss, r.val_loss])
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let loss_top = if highest_loss > 0.0 {
            highest_loss * 1.1
        } else {
            1.0
        };
        let loss = |r: &EpochRecord| [r.train_loss, r.val_loss];
        panel(
            &left,
            "Loss (cross-entropy)",
            history,
            loss,
            0.0..loss_top,
            &|v| format!("{v:.2}"),
            Legend::Top,
        )?;

        // Start the accuracy axis a little below the lowest value, at a whole
        // ten per cent, so that differences near 100 % stay visible.
        let lowest = history
            .iter()
            .flat_map(|r| [r.train_acc, r.val_acc])
            .filter(|v| v.is_finite())
            .fold(1.0, f64::min);
        let bottom = ((lowest - 0.02) * 10.0).floor().clamp(0.0, 9.0) / 10.0;
        let accuracy = |r: &EpochRecord| [r.train_acc, r.val_acc];
        let percent = |v: &f64| format!("{:.0}%", 100.0 * v);
        panel(
            &right,
            "Accuracy",
            history,
            accuracy,
            bottom..1.0,
            &percent,
            Legend::Bottom,
        )
    })
}

/// "Training curves · 12 epochs · 14 min 3 s".
fn title(history: &[EpochRecord]) -> String {
    let seconds = history.iter().map(|r| r.seconds).sum::<f64>().round() as u64;
    let time = match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    };
    let epochs = if history.len() == 1 {
        "epoch"
    } else {
        "epochs"
    };
    format!("Training curves · {} {epochs} · {time}", history.len())
}

/// Where a panel's legend goes: the right-hand corner away from the lines
/// (loss falls, so its top right is free; accuracy rises, so its bottom right).
enum Legend {
    Top,
    Bottom,
}

const SERIES: [(&str, RGBColor); 2] = [("training", TRAIN), ("validation", VALIDATION)];

/// One chart: `value` gives a record's [training, validation] pair.
fn panel(
    area: &Canvas,
    name: &str,
    history: &[EpochRecord],
    value: impl Fn(&EpochRecord) -> [f64; 2],
    y: Range<f64>,
    y_format: &dyn Fn(&f64) -> String,
    legend: Legend,
) -> Drawn {
    let first = history.first().map_or(1, |r| r.epoch);
    // One epoch still gets an axis with some length.
    let last = history.last().map_or(1, |r| r.epoch).max(first + 1);
    let mut chart = ChartBuilder::on(area)
        .margin_left(16)
        .margin_right(32)
        .margin_bottom(12)
        .caption(name, bold(19.0).color(&INK))
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(first..last, y)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_label_formatter(y_format)
        .x_labels((last - first + 1).min(12))
        .label_style(font(15.0).color(&INK))
        .axis_desc_style(font(16.0).color(&MUTED))
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .axis_style(MUTED)
        .draw()?;
    // Markers show single epochs, until there are so many that they blur the line.
    let marker = if history.len() <= 20 { 4 } else { 0 };
    for (i, (_, colour)) in SERIES.into_iter().enumerate() {
        // A diverged run's NaN or infinite losses are left out, not drawn off the chart.
        let points = history
            .iter()
            .map(|r| (r.epoch, value(r)[i]))
            .filter(|(_, v)| v.is_finite());
        chart.draw_series(LineSeries::new(points, colour.stroke_width(3)).point_size(marker))?;
    }
    draw_legend(&chart.plotting_area().strip_coord_spec(), legend)
}

/// A framed key in a corner of the plotting area. Drawn here rather than by
/// plotters, whose legend box is sized by a rough guess at the text's width.
fn draw_legend(plot: &Canvas, corner: Legend) -> Drawn {
    const PAD: i32 = 12;
    const ROW: i32 = 24;
    const SWATCH: i32 = 24;
    let widest = SERIES
        .iter()
        .map(|(name, _)| text_width(name, 15.0, false))
        .max()
        .unwrap_or(0) as i32;
    let size = (
        PAD + SWATCH + 8 + widest + PAD,
        ROW * SERIES.len() as i32 + PAD,
    );
    let (width, height) = plot.dim_in_pixel();
    let x = width as i32 - size.0 - PAD;
    let y = match corner {
        Legend::Top => PAD,
        Legend::Bottom => height as i32 - size.1 - PAD,
    };
    plot.draw(&Rectangle::new(
        [(x, y), (x + size.0, y + size.1)],
        WHITE.mix(0.9).filled(),
    ))?;
    plot.draw(&Rectangle::new(
        [(x, y), (x + size.0, y + size.1)],
        GRID.stroke_width(1),
    ))?;
    for (row, (name, colour)) in (0..).zip(SERIES) {
        let middle = y + PAD / 2 + ROW * row + ROW / 2;
        plot.draw(&PathElement::new(
            [(x + PAD, middle), (x + PAD + SWATCH, middle)],
            colour.stroke_width(3),
        ))?;
        label(
            plot,
            name,
            (x + PAD + SWATCH + 8, middle),
            HPos::Left,
            font(15.0).color(&INK),
        )?;
    }
    Ok(())
}
