//! `index.html`: one self-contained page with the metrics, the pictures and
//! the run's settings. No script and no file but the pictures beside it, so it
//! opens offline, from a copied folder or an archive, on a phone too.

use std::path::Path;

use serde_json::Value;

use super::{CONFUSION, CURVES, GRADCAM, INDEX, PREDICTIONS, RELIABILITY, ROC, TOP_LOSSES};
use crate::error::Result;
use crate::evaluate::{Evaluation, Metrics};
use crate::fsio::write_atomic;

/// The pictures in the order the page shows them, each with a heading and a
/// line on how to read it.
const PICTURES: [(&str, &str, &str); 7] = [
    (
        CURVES,
        "Training curves",
        "Loss and accuracy after each epoch. Validation much worse than training means overfitting; \
         both still improving at the end means more epochs could help.",
    ),
    (
        CONFUSION,
        "Confusion matrix",
        "Rows are the true class, columns the predicted one; each cell's share is of its row.",
    ),
    (
        RELIABILITY,
        "Reliability",
        "Per band of confidence, the share of photos the most probable class gets right: on the \
         dashed diagonal, a photo given 80% is right 80% of the time. Calibration (a temperature \
         fitted on the validation split) brings the points towards it.",
    ),
    (
        ROC,
        "ROC curve",
        "How many of a class the model finds (up) against how many others it takes for it \
         (right), as the threshold moves; the dot is where the most probable class answers.",
    ),
    (
        PREDICTIONS,
        "Sample predictions",
        "Photos with the predicted class and its probability: green frames are right, red ones wrong.",
    ),
    (
        TOP_LOSSES,
        "Top losses",
        "The photos the model got most confidently wrong: look here for mislabelled photos and hard cases.",
    ),
    (
        GRADCAM,
        "Grad-CAM",
        "Where the model looked: red regions pushed it most towards its prediction, blue ones not at all.",
    ),
];

pub(crate) const STYLE: &str = "
body { font: 16px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #212529;
       max-width: 1000px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; padding-bottom: .25rem; border-bottom: 1px solid #dee2e6; }
p { margin: .25rem 0 .75rem; color: #495057; }
img { display: block; max-width: 100%; height: auto; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; margin-bottom: 1rem; }
.cards div { background: #f1f3f5; border-radius: 8px; padding: .5rem 1rem; min-width: 7rem; }
.cards b { display: block; font-size: 1.4rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin-bottom: 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .75rem; border-bottom: 1px solid #dee2e6; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td code { font-size: .9rem; word-break: break-all; }
.settings td { text-align: left; }
.about { margin-top: -.5rem; }
@media (max-width: 480px) { body { padding: .6rem; } table { font-size: .85rem; }
  th, td { padding: .25rem .3rem; } .cards div { min-width: 5.5rem; padding: .4rem .7rem; } }
";

/// Writes `dir/index.html`: the summary and per-class metrics, every report
/// picture found in `dir` (call this after writing them; each links to itself
/// at full size, for phones), and `settings`, the run's configuration, with
/// nested objects flattened to dotted keys and unset (null) ones left out.
/// Its `report` object, when present, names the page: `run` (the run's name),
/// `checkpoint`, `epoch` (the checkpoint's), `trained` (a date) and `split`
/// (what the metrics are measured on).
pub fn write_index(dir: &Path, settings: &Value, evaluation: &Evaluation) -> Result<()> {
    let metrics = &evaluation.metrics;
    let about = |key: &str| match &settings["report"][key] {
        Value::Null => None,
        Value::String(text) => Some(escape(text)),
        other => Some(escape(&other.to_string())),
    };
    let name = match about("run") {
        Some(run) => format!("catdog report: {run}"),
        None => "catdog report".to_owned(),
    };
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{name}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{name}</h1>\n"
    );
    let mut facts = Vec::new();
    if let Some(checkpoint) = about("checkpoint") {
        facts.push(match about("epoch") {
            Some(epoch) => format!("model <code>{checkpoint}</code>, from epoch {epoch}"),
            None => format!("model <code>{checkpoint}</code>"),
        });
    }
    if let Some(date) = about("trained") {
        facts.push(format!("trained {date}"));
    }
    if !facts.is_empty() {
        page += &format!("<p class=\"about\">{}</p>\n", facts.join(" · "));
    }
    page += &metrics_section(metrics, about("split").as_deref());
    page += &answers_section(evaluation);
    for (file, heading, note) in PICTURES {
        if dir.join(file).is_file() {
            page += &format!(
                "<h2>{heading}</h2>\n<p>{note}</p>\n\
                 <a href=\"{file}\"><img src=\"{file}\" alt=\"{heading}\" loading=\"lazy\"></a>\n"
            );
        }
    }
    page += "<h2>Settings</h2>\n<div class=\"scroll\"><table class=\"settings\">\n";
    let mut rows = Vec::new();
    flatten("", settings, &mut rows);
    for (key, value) in rows {
        page += &format!(
            "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>\n",
            escape(&key),
            escape(&value)
        );
    }
    page += "</table></div>\n</body>\n</html>\n";
    write_atomic(&dir.join(INDEX), page.as_bytes())
}

/// Summary cards, then per-class scores and the confusion matrix as tables;
/// the heading says which split they are measured on, when known.
fn metrics_section(m: &Metrics, split: Option<&str>) -> String {
    let auc = m.roc_auc.map_or("n/a".to_owned(), |a| format!("{a:.4}"));
    let cards = [
        ("images", m.images.to_string()),
        ("accuracy", format!("{:.2}%", 100.0 * m.accuracy)),
        ("loss", format!("{:.4}", m.loss)),
        ("ROC AUC", auc),
    ];
    let heading = match split {
        Some(split) => format!("Metrics on the {split} split"),
        None => "Metrics".to_owned(),
    };
    let mut html = format!("<h2>{heading}</h2>\n<div class=\"cards\">\n");
    for (name, value) in cards {
        html += &format!("<div>{name}<b>{value}</b></div>\n");
    }
    html += "</div>\n<div class=\"scroll\"><table>\n\
             <tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>\n";
    for (k, class) in m.classes.iter().enumerate() {
        let support: u64 = m.confusion_matrix[k].iter().sum();
        html += &format!(
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{support}</td></tr>\n",
            escape(class),
            m.precision[k],
            m.recall[k],
            m.f1[k]
        );
    }
    html += "</table></div>\n<div class=\"scroll\"><table>\n<tr><th>true \\ predicted</th>";
    for class in &m.classes {
        html += &format!("<th>{}</th>", escape(class));
    }
    html += "</tr>\n";
    for (class, row) in m.classes.iter().zip(&m.confusion_matrix) {
        html += &format!("<tr><td>{}</td>", escape(class));
        for count in row {
            html += &format!("<td>{count}</td>");
        }
        html += "</tr>\n";
    }
    html + "</table></div>\n"
}

/// The answers per true class, and what calibration measured.
fn answers_section(e: &Evaluation) -> String {
    let mut html = format!(
        "<h2>Answers</h2>\n<p>With the {} decision: a class, <i>unsure</i> (both classes \
         plausible) or <i>neither</i> (unlike the training photos).</p>\n\
         <div class=\"scroll\"><table>\n<tr><th>true \\ answer</th>",
        e.decision_rule
    );
    for name in &e.decision_names {
        html += &format!("<th>{}</th>", escape(name));
    }
    html += "</tr>\n";
    for (class, row) in e.metrics.classes.iter().zip(&e.decisions) {
        html += &format!("<tr><td>{}</td>", escape(class));
        for count in row {
            html += &format!("<td>{count}</td>");
        }
        html += "</tr>\n";
    }
    html += "</table></div>\n";
    if let Some(c) = &e.calibration {
        html += &format!(
            "<p>Calibration: temperature {:.3}; expected calibration error {:.4} before, {:.4} \
             after; NLL {:.4} → {:.4}; Brier score {:.4} → {:.4}.</p>\n",
            c.temperature,
            c.ece_before,
            c.ece_after,
            c.nll_before,
            c.nll_after,
            c.brier_before,
            c.brier_after
        );
    }
    if let Some(c) = &e.conformal {
        html += &format!(
            "<p>Prediction sets kept the true class for {:.2}% of these photos (promised: at \
             least {:.2}%).</p>\n",
            100.0 * c.coverage,
            100.0 * c.promised_coverage
        );
    }
    html
}

/// `value` as (dotted key, text) rows: objects are opened, strings shown as
/// they are, anything else as compact JSON.
fn flatten(key: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (name, field) in fields {
                let key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                flatten(&key, field, rows);
            }
        }
        // An unset option (no manifest given, layout detected) says nothing.
        Value::Null => {}
        Value::String(text) => rows.push((key.to_owned(), text.clone())),
        other => rows.push((key.to_owned(), other.to_string())),
    }
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_flattened_to_dotted_keys() {
        let settings = serde_json::json!({"epochs": 3, "manifest": null,
            "data": {"dir": "photos", "split": [0.8, 0.1, 0.1]}});
        let mut rows = Vec::new();
        flatten("", &settings, &mut rows);
        rows.sort();
        let expected = [
            ("data.dir", "photos"),
            ("data.split", "[0.8,0.1,0.1]"),
            ("epochs", "3"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
