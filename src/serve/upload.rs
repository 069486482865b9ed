//! From an upload to the model's input: content type, size and time limits, multipart forms,
//! then the same safe decoding as the data pipeline and the model's own preprocessing.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use http_body_util::BodyExt;
use image::RgbImage;
use serde::Serialize;
use tokio::time::Instant;

use super::Config;
use super::error::ApiError;
use crate::data::decode::{self, Limits, RejectReason, Rejection};
use crate::preprocess::Preprocessing;

/// The multipart form field that carries the image.
pub(super) const FIELD: &str = "image";

/// How the image arrives.
enum Encoding {
    /// The body is the image.
    Raw,
    /// The body is a form with the image in field [`FIELD`].
    Multipart,
}

/// The image's bytes from a request: the raw body, or the multipart field `image`. Refuses a
/// content type that cannot hold an image (415), a body over the limit (413), one that arrives
/// too slowly (408) and an empty image (400).
pub(super) async fn read_image(request: Request, config: &Config) -> Result<Bytes, ApiError> {
    let encoding = encoding(&request)?;
    let deadline = Instant::now() + config.read_timeout;
    let limit = config.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is over the limit of {}", bytes_text(limit)),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // A client that asked whether to send its body (curl does, for large ones) has sent
    // nothing yet; hyper answers "100 Continue" only once the body is read.
    let waits_to_send = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, mut body) = request.into_parts();
    if let Some(declared) = declared.filter(|&n| n > limit) {
        // Refused unread; a body that is on its way is read away if that is cheap, so that
        // the client gets to see why.
        if !waits_to_send && declared <= limit.saturating_mul(2) {
            discard(&mut body, limit, deadline).await;
        }
        return Err(too_large());
    }
    // Within the limit here, so the declared length is safe to reserve.
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the upload did not arrive within {} s",
                        config.read_timeout.as_secs_f64()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the upload broke off: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if (bytes.len() + data.len()) as u64 > limit {
            discard(&mut body, limit, deadline).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&data);
    }
    let image = match encoding {
        Encoding::Raw => Bytes::from(bytes),
        Encoding::Multipart => form_field(Request::from_parts(parts, Body::from(bytes))).await?,
    };
    if image.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the upload is empty: send an image",
        ));
    }
    Ok(image)
}

/// Reads and drops up to `budget` more bytes of a refused upload, until `deadline`. A client
/// that sends its whole body before it reads the answer (as browsers do) then reads the 413,
/// rather than a connection reset; a larger body is cut off.
async fn discard(body: &mut Body, mut budget: u64, deadline: Instant) {
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        let len = frame.data_ref().map_or(0, |data| data.len() as u64);
        let Some(left) = budget.checked_sub(len) else {
            return;
        };
        budget = left;
    }
}

/// What the content type says about the body. No content type is taken as a raw image.
fn encoding(request: &Request) -> Result<Encoding, ApiError> {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return Ok(Encoding::Raw);
    };
    let text = value.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.starts_with("image/") || essence == "application/octet-stream" {
        Ok(Encoding::Raw)
    } else if essence == "multipart/form-data" {
        Ok(Encoding::Multipart)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {text:?} cannot hold an image: send the image as the body \
                 (image/jpeg, image/png, ... or application/octet-stream) or as the field \
                 `{FIELD}` of a multipart/form-data form"
            ),
        ))
    }
}

/// The field [`FIELD`] of a multipart form that is already in memory.
async fn form_field(request: Request) -> Result<Bytes, ApiError> {
    let bad_form = |problem: String| ApiError::new(StatusCode::BAD_REQUEST, problem);
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad_form(format!("bad multipart form: {e}")))?;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad_form(format!("bad multipart form: {e}")))?
    {
        if field.name() == Some(FIELD) {
            return field
                .bytes()
                .await
                .map_err(|e| bad_form(format!("bad multipart form: {e}")));
        }
    }
    Err(bad_form(format!("the form has no field `{FIELD}`")))
}

/// What the answer says about the uploaded image.
#[derive(Serialize)]
pub(super) struct ImageSummary {
    pub width: u32,
    pub height: u32,
    pub format: String,
}

/// An upload ready for the model.
pub(super) struct Prepared {
    /// The preprocessed image (CHW floats).
    pub input: Vec<f32>,
    /// The model's centre crop, for the Grad-CAM overlay; only when explaining.
    pub crop: Option<RgbImage>,
    pub summary: ImageSummary,
    pub warnings: Vec<String>,
}

/// Decodes `bytes` within `limits` (pixel limit from the header, decoder panics caught) and
/// applies the model's eval transform.
pub(super) fn prepare(
    bytes: &[u8],
    preprocessing: &Preprocessing,
    limits: &Limits,
    explain: bool,
) -> Result<Prepared, ApiError> {
    let decoded = decode::decode(bytes, None, limits).map_err(rejected)?;
    let image = decoded.image;
    let mut input = vec![0.0; preprocessing.tensor_len()];
    preprocessing.eval(&image, &mut input);
    Ok(Prepared {
        input,
        crop: explain.then(|| preprocessing.eval_crop(&image)),
        summary: ImageSummary {
            width: image.width(),
            height: image.height(),
            format: format!("{:?}", decoded.format).to_ascii_lowercase(),
        },
        warnings: decoded.warnings.into_iter().map(|w| w.detail).collect(),
    })
}

/// The answer to an image that decoding refused.
fn rejected(rejection: Rejection) -> ApiError {
    let status = match rejection.reason {
        RejectReason::Empty => StatusCode::BAD_REQUEST,
        RejectReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RejectReason::NotAnImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RejectReason::Truncated | RejectReason::Corrupt | RejectReason::Unreadable => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    ApiError::new(status, rejection.to_string())
}

/// A byte count as a person reads it.
fn bytes_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}
