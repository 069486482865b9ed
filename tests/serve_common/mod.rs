//! Helpers shared by the `catdog serve` tests: a model on disk, a server on 127.0.0.1 port 0,
//! images made in memory, and a small HTTP client.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use catdog::model::checkpoint::{self, CheckpointMeta};
use catdog::preprocess::Preprocessing;
pub use catdog::serve::Config;
use catdog::serve::{Running, Server};
use image::{ImageFormat, Rgb, RgbImage};
use serde_json::Value;
use tempfile::TempDir;

pub const CLASSES: [&str; 2] = ["cat", "dog"];

/// A server and the folder its model lives in (kept until the server is dropped).
pub struct TestServer {
    pub running: Running,
    pub model: TempDir,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }
}

/// Settings for a test server: a free port on loopback, otherwise the defaults.
pub fn config() -> Config {
    Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    }
}

/// A two-class ResNet-18 with random weights and a 64-pixel input: quick on a CPU, and every
/// code path is the same as at 224.
pub fn save_tiny_model(dir: &Path) {
    save_model(dir, 64);
}

/// A two-class ResNet-18 with random weights for `image_size`-pixel inputs.
pub fn save_model(dir: &Path, image_size: u32) {
    let meta = CheckpointMeta::new(
        CLASSES.iter().map(|c| c.to_string()).collect(),
        Preprocessing::imagenet(image_size),
    );
    checkpoint::save_random(dir, &meta, 7).unwrap();
}

/// A server for the tiny model with `config`, started in this process.
pub fn start(config: Config) -> TestServer {
    let model = tempfile::tempdir().unwrap();
    save_tiny_model(model.path());
    start_with(model, config)
}

/// A server for the model already saved in `model`.
pub fn start_with(model: TempDir, config: Config) -> TestServer {
    let running = Server::bind(model.path(), config).unwrap().spawn();
    TestServer { running, model }
}

/// A photo-like picture: smooth colour gradients.
pub fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(&picture(width, height), ImageFormat::Png)
}

pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(&picture(width, height), ImageFormat::Jpeg)
}

/// A client that reports 4xx and 5xx answers as answers, not errors.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Status and JSON body of an answer.
pub fn json(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = result.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text:?}"));
    (status, value)
}

/// POSTs `body` with a content type (or none) and returns status and JSON.
pub fn post(url: &str, content_type: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut request = client().post(url);
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    json(request.send(body))
}

pub fn get(url: &str) -> (u16, Value) {
    json(client().get(url).call())
}

/// The probabilities of a prediction, in the model's class order.
pub fn probabilities(answer: &Value) -> Vec<f64> {
    answer["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect()
}

/// A multipart/form-data body with one file field.
pub fn multipart(field: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "catdog-test-boundary-7d1c";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
