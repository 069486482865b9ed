//! The HTTP routes. Every error is JSON, `{"error": "..."}`, with a 4xx status for what the
//! client can fix and 5xx for what it cannot.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::error::ApiError;
use super::inference::{Engine, Job, Refused, StatsSnapshot};
use super::upload::{self, ImageSummary};
use super::{Config, ModelInfo};
use crate::model::calibration::Decision;
use crate::model::gradcam::HeatMap;
use crate::report::overlay;

/// The page at `/`: HTML, CSS and script in one file, in the binary.
const PAGE: &str = include_str!("page.html");

/// The page may use only itself: no request leaves for another site, so it works offline and
/// leaks no photo.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        img-src data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// What every handler sees.
#[derive(Clone)]
pub(super) struct Shared {
    pub engine: Engine,
    pub info: Arc<ModelInfo>,
    pub config: Arc<Config>,
    pub started: Instant,
}

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model))
        .route("/v1/predict", post(predict))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Uploads are limited, with JSON answers, by upload::read_image.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(PAGE),
    )
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    uptime_s: f64,
    #[serde(flatten)]
    inference: StatsSnapshot,
}

/// Answered by the async side alone, so it stays quick while the model works.
async fn healthz(State(shared): State<Shared>) -> Json<Health> {
    Json(Health {
        status: "ok",
        uptime_s: shared.started.elapsed().as_secs_f64(),
        inference: shared.engine.stats(),
    })
}

#[derive(Serialize)]
struct ModelAnswer<'a> {
    #[serde(flatten)]
    info: &'a ModelInfo,
    max_upload_bytes: u64,
    max_pixels: u64,
}

async fn model(State(shared): State<Shared>) -> Response {
    Json(ModelAnswer {
        info: &shared.info,
        max_upload_bytes: shared.config.max_upload_bytes,
        max_pixels: shared.config.max_pixels,
    })
    .into_response()
}

#[derive(Deserialize)]
struct PredictQuery {
    explain: Option<String>,
}

/// The answer to `POST /v1/predict`.
#[derive(Serialize)]
struct Prediction {
    /// What to act on: a class, `unsure` or `neither`.
    decision: String,
    /// The decision in a sentence, for people.
    message: String,
    /// The most probable class.
    class: String,
    /// Its calibrated probability.
    probability: f32,
    /// Its probability before calibration.
    raw_probability: f32,
    /// Every class, calibrated, in the model's output order.
    probabilities: Vec<ClassProbability>,
    /// The out-of-distribution score (absent for a model without calibration).
    #[serde(skip_serializing_if = "Option::is_none")]
    ood_score: Option<f64>,
    /// Time of the forward pass of the batch this image was in.
    model_ms: f64,
    /// Images in that batch.
    batch_size: usize,
    image: ImageSummary,
    /// What decoding had to do to the image (e.g. EXIF orientation applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// With `explain=1`: the Grad-CAM overlay on the model's centre crop, a base64 PNG.
    #[serde(skip_serializing_if = "Option::is_none")]
    gradcam_png: Option<String>,
}

#[derive(Serialize)]
struct ClassProbability {
    class: String,
    probability: f32,
}

async fn predict(
    State(shared): State<Shared>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<Prediction>, ApiError> {
    let explain = explain_flag(query)?;
    let bytes = upload::read_image(request, &shared.config).await?;
    let preprocessing = shared.info.preprocessing.clone();
    let limits = crate::data::decode::Limits {
        max_file_bytes: shared.config.max_upload_bytes,
        max_pixels: shared.config.max_pixels,
    };
    let prepared =
        blocking(move || upload::prepare(&bytes, &preprocessing, &limits, explain)).await??;

    let (reply, answer) = oneshot::channel();
    let job = Job {
        input: prepared.input,
        explain,
        reply,
    };
    shared.engine.submit(job).map_err(|refused| match refused {
        Refused::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model has too many requests waiting; try again in a moment",
        ),
        Refused::Stopped => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is not running")
        }
    })?;
    let answer = answer.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model failed on the batch with this image",
        )
    })?;

    let gradcam_png = match (answer.gradcam, prepared.crop) {
        (Some(cam), Some(crop)) => Some(blocking(move || overlay_png(&crop, &cam)).await?),
        _ => None,
    };
    let classes = &shared.info.classes;
    let judgement = &answer.judgement;
    let top = judgement.label;
    Ok(Json(Prediction {
        decision: judgement.decision.name(classes).to_owned(),
        message: message(judgement.decision, classes),
        class: classes[top].clone(),
        probability: judgement.probabilities[top],
        raw_probability: judgement.raw_probabilities[top],
        ood_score: judgement.ood_score,
        probabilities: classes
            .iter()
            .zip(&judgement.probabilities)
            .map(|(class, &probability)| ClassProbability {
                class: class.clone(),
                probability,
            })
            .collect(),
        model_ms: answer.model_ms,
        batch_size: answer.batch_size,
        image: prepared.summary,
        warnings: prepared.warnings,
        gradcam_png,
    }))
}

/// A decision as the page says it.
fn message(decision: Decision, classes: &[String]) -> String {
    let any = |joiner: &str| {
        classes
            .iter()
            .map(|c| format!("a {c}"))
            .collect::<Vec<_>>()
            .join(joiner)
    };
    match decision {
        Decision::Class(k) => format!("this looks like a {}", classes[k]),
        Decision::Unsure => format!("unsure: this could be {}", any(" or ")),
        Decision::Neither => format!("this does not look like {}", any(" or ")),
    }
}

/// `explain=1` (or `true`, `yes`, or bare `explain`) asks for Grad-CAM.
fn explain_flag(query: Result<Query<PredictQuery>, QueryRejection>) -> Result<bool, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad query: {e}")))?;
    match query.explain.as_deref() {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("" | "1" | "true" | "yes") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("explain={other:?}: use explain=1 or explain=0"),
        )),
    }
}

/// Runs CPU work (decoding, resizing, PNG encoding) on tokio's blocking pool, off the threads
/// that answer requests.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "processing this image failed",
        )
    })
}

/// The Grad-CAM overlay on `crop`, as a base64 PNG.
fn overlay_png(crop: &RgbImage, cam: &HeatMap) -> String {
    let picture = overlay(crop, &cam.values, cam.height, cam.width);
    let mut png = Cursor::new(Vec::new());
    picture
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("PNG encoding into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(png.into_inner())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
