//! The audit's page (`catdog audit`): `index.html` beside `audit.json`, with the
//! suspected label errors and the near-duplicates as photo grids and every finding
//! in tables. Offline and script-free, like the run report.

use std::fmt::Write as _;
use std::path::Path;

use image::{Rgb, RgbImage};
use rayon::prelude::*;

use super::INDEX;
use super::grid::{Tile, write_grid};
use super::html::{STYLE, escape};
use crate::audit::{AUDIT_JSON, AuditReport};
use crate::data::decode::{self, Limits};
use crate::error::Result;
use crate::fsio::write_atomic;

/// The grid of the most suspect labels.
pub const SUSPECTS: &str = "suspects.png";
/// The grid of near-duplicate groups, those with different labels first.
pub const NEAR_DUPLICATES: &str = "near-duplicates.png";
/// Rows of a table on the page; audit.json has them all.
const ROWS: usize = 200;
/// Photos in the near-duplicate grid.
const NEAR_PHOTOS: usize = 24;

/// Writes the grids and `index.html` into `dir` (beside `audit.json`); `top` suspects are
/// drawn.
pub fn write_audit_page(dir: &Path, audit: &AuditReport, top: usize) -> Result<()> {
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>catdog audit</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>catdog audit</h1>\n<p class=\"about\"><code>{}</code> · every finding in \
         <a href=\"{AUDIT_JSON}\">{AUDIT_JSON}</a></p>\n",
        escape(&audit.root.display().to_string())
    );
    let conflicting = audit
        .near_duplicates
        .iter()
        .filter(|g| !g.labels_agree())
        .count();
    let mut cards = vec![
        ("photos", audit.photos.to_string()),
        (
            "near-duplicate groups",
            audit.near_duplicates.len().to_string(),
        ),
        ("… with different labels", conflicting.to_string()),
        ("photos with quality flags", audit.flagged.len().to_string()),
    ];
    if let Some(s) = &audit.suspects {
        cards.push(("suspected labels", s.list.len().to_string()));
    }
    page += "<div class=\"cards\">\n";
    for (name, value) in cards {
        let _ = writeln!(page, "<div>{name}<b>{value}</b></div>");
    }
    page += "</div>\n";

    if let Some(s) = &audit.suspects {
        let shown: Vec<_> = s.list.iter().take(top).collect();
        let tiles = tiles(
            audit,
            shown.iter().map(|x| {
                (
                    x.path.as_str(),
                    vec![
                        format!("labelled {}", x.label),
                        format!("looks {} {:.0}%", x.predicted, 100.0 * x.probability),
                        x.path.clone(),
                    ],
                    false,
                )
            }),
        );
        write_grid(&dir.join(SUSPECTS), "Suspected label errors", &tiles)?;
        let thresholds: Vec<String> = s
            .thresholds
            .iter()
            .map(|(c, t)| format!("{} {t:.3}", escape(c)))
            .collect();
        let _ = write!(
            page,
            "<h2>Suspected label errors</h2>\n<p>Out-of-sample probabilities from {} heads, each \
             trained on the other folds' features of {} (confident learning; per-class \
             thresholds: {}). Most suspect first: look at each and fix or delete the file.</p>\n\
             <a href=\"{SUSPECTS}\"><img src=\"{SUSPECTS}\" alt=\"suspected label errors\" \
             loading=\"lazy\"></a>\n",
            s.folds,
            escape(&s.backbone),
            thresholds.join(", ")
        );
        page += &table(
            &["photo", "label", "looks like", "probability"],
            s.list.iter().map(|x| {
                vec![
                    x.path.clone(),
                    x.label.clone(),
                    x.predicted.clone(),
                    format!("{:.3}", x.probability),
                ]
            }),
        );
    }

    // Groups whose labels differ first: they are the ones left out of the split.
    let mut groups: Vec<(usize, &crate::data::manifest::NearGroup)> =
        audit.near_duplicates.iter().enumerate().collect();
    groups.sort_by_key(|(i, g)| (g.labels_agree(), *i));
    let mut members = Vec::new();
    for (i, g) in &groups {
        if members.len() + g.files.len() > NEAR_PHOTOS && !members.is_empty() {
            break;
        }
        for f in &g.files {
            members.push((
                f.path.as_str(),
                vec![format!("group {}: {}", i + 1, f.label), f.path.clone()],
                g.labels_agree(),
            ));
        }
    }
    write_grid(
        &dir.join(NEAR_DUPLICATES),
        "Near-duplicates",
        &tiles(audit, members.into_iter()),
    )?;
    let _ = write!(
        page,
        "<h2>Near-duplicates</h2>\n<p>Photos whose perceptual hashes are at most {} bits (of 63) \
         apart: resized, re-encoded, slightly cropped, brightened or mirrored copies. \
         <code>catdog split</code> keeps each group in one split; a group whose labels differ \
         (red) is left out of every split unless <code>--keep-near-conflicts</code>.</p>\n\
         <a href=\"{NEAR_DUPLICATES}\"><img src=\"{NEAR_DUPLICATES}\" alt=\"near-duplicates\" \
         loading=\"lazy\"></a>\n",
        audit.near_threshold
    );
    page += &table(
        &["group", "photos", "labels", "bits apart"],
        groups.iter().map(|(i, g)| {
            let paths: Vec<&str> = g.files.iter().map(|f| f.path.as_str()).collect();
            let mut labels: Vec<&str> = g.files.iter().map(|f| f.label.as_str()).collect();
            labels.sort_unstable();
            labels.dedup();
            vec![
                (i + 1).to_string(),
                paths.join(" = "),
                labels.join(", "),
                g.distance.to_string(),
            ]
        }),
    );

    page += "<h2>Quality flags</h2>\n<p>Warnings, never a reason to leave a photo out: \
             look, and delete what should not be there.</p>\n";
    page += &table(
        &["flag", "photos"],
        audit
            .quality
            .iter()
            .map(|(f, n)| vec![f.label().to_owned(), n.to_string()]),
    );
    page += &table(
        &["photo", "label", "flags"],
        audit.flagged.iter().map(|f| {
            let flags: Vec<&str> = f.flags.iter().map(|f| f.label()).collect();
            vec![f.path.clone(), f.label.clone(), flags.join(", ")]
        }),
    );
    page += "</body>\n</html>\n";
    write_atomic(&dir.join(INDEX), page.as_bytes())
}

/// The photos (paths under the audit's folder) as tiles, decoded in parallel; one that no
/// longer decodes is shown gray.
fn tiles<'a>(
    audit: &AuditReport,
    items: impl Iterator<Item = (&'a str, Vec<String>, bool)>,
) -> Vec<Tile> {
    let items: Vec<_> = items.collect();
    items
        .into_par_iter()
        .map(|(path, caption, correct)| Tile {
            image: decode::decode_file(&audit.root.join(path), &Limits::default())
                .map(|d| d.image)
                .unwrap_or_else(|_| RgbImage::from_pixel(8, 8, Rgb([200, 200, 200]))),
            caption,
            correct,
        })
        .collect()
}

/// An HTML table of at most [`ROWS`] rows (saying how many more there are).
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut html = String::from("<div class=\"scroll\"><table class=\"settings\">\n<tr>");
    for h in header {
        let _ = write!(html, "<th>{h}</th>");
    }
    html += "</tr>\n";
    let mut more = 0;
    for (i, row) in rows.enumerate() {
        if i >= ROWS {
            more += 1;
            continue;
        }
        html += "<tr>";
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(&cell));
        }
        html += "</tr>\n";
    }
    html += "</table></div>\n";
    if more > 0 {
        let _ = writeln!(html, "<p>… and {more} more in {AUDIT_JSON}.</p>");
    }
    html
}
