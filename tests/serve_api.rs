//! `catdog serve`'s HTTP API, against a server started in this process on 127.0.0.1 port 0:
//! predictions (raw and multipart, with and without Grad-CAM), the model's description, every
//! kind of bad input, slow clients, and batching of concurrent requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::serve_common::*;
use base64::Engine as _;
use catdog::evaluate::Metrics;
use catdog::fsio;
use serde_json::{Value, json};

/// Same probabilities, up to float rounding (batches of other sizes, or the autodiff path
/// that Grad-CAM takes, may sum in another order).
fn assert_same_probabilities(a: &Value, b: &Value) {
    let (a, b) = (probabilities(a), probabilities(b));
    assert!(
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
        "{a:?} vs {b:?}"
    );
}

fn assert_error(answer: &(u16, Value), status: u16, words: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(message.contains(words), "{message:?} lacks {words:?}");
}

#[test]
fn a_raw_image_gets_its_class_and_every_class_probability() {
    let server = start(config());
    let (status, answer) = post(&server.url("/v1/predict"), Some("image/png"), &png(120, 90));
    assert_eq!(status, 200, "{answer}");
    let classes: Vec<&str> = answer["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["class"].as_str().unwrap())
        .collect();
    assert_eq!(classes, CLASSES, "every class, in the model's order");
    let p = probabilities(&answer);
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
    let top = if p[0] >= p[1] { 0 } else { 1 };
    assert_eq!(answer["class"], CLASSES[top]);
    assert_eq!(answer["probability"].as_f64().unwrap(), p[top]);
    assert!(answer["model_ms"].as_f64().unwrap() > 0.0);
    assert!(answer["batch_size"].as_u64().unwrap() >= 1);
    assert_eq!(
        answer["image"],
        json!({"width": 120, "height": 90, "format": "png"})
    );
    assert!(
        answer.get("gradcam_png").is_none(),
        "only asked for with explain=1"
    );

    // No content type at all, and application/octet-stream, are raw images too; the model is
    // deterministic, so the same picture gets the same answer.
    let jpeg = jpeg(80, 100);
    let (status, a) = post(&server.url("/v1/predict"), None, &jpeg);
    assert_eq!(status, 200, "{a}");
    let (status, b) = post(
        &server.url("/v1/predict"),
        Some("application/octet-stream"),
        &jpeg,
    );
    assert_eq!(status, 200, "{b}");
    assert_same_probabilities(&a, &b);
    assert_eq!(a["image"]["format"], "jpeg");
}

#[test]
fn a_multipart_form_field_image_is_the_same_as_a_raw_body() {
    let server = start(config());
    let image = png(100, 100);
    let (_, raw) = post(&server.url("/v1/predict"), Some("image/png"), &image);
    let (content_type, form) = multipart("image", &image);
    let (status, answer) = post(&server.url("/v1/predict"), Some(&content_type), &form);
    assert_eq!(status, 200, "{answer}");
    assert_same_probabilities(&answer, &raw);
}

#[test]
fn explain_adds_a_gradcam_overlay_of_the_centre_crop() {
    let server = start(config());
    let (status, answer) = post(
        &server.url("/v1/predict?explain=1"),
        Some("image/jpeg"),
        &jpeg(150, 100),
    );
    assert_eq!(status, 200, "{answer}");
    let png = base64::engine::general_purpose::STANDARD
        .decode(answer["gradcam_png"].as_str().expect("a base64 PNG"))
        .unwrap();
    let overlay = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
    // The tiny model's input: the 64-pixel centre crop.
    assert_eq!((overlay.width(), overlay.height()), (64, 64));

    let (status, plain) = post(
        &server.url("/v1/predict?explain=0"),
        Some("image/jpeg"),
        &jpeg(150, 100),
    );
    assert_eq!(status, 200);
    assert!(plain.get("gradcam_png").is_none());
    // Explaining does not change the answer.
    assert_same_probabilities(&plain, &answer);
}

#[test]
fn the_model_is_described_with_its_weights_hash_and_run_results() {
    // A run folder: the checkpoint in best/, the run's settings and its test evaluation.
    let run = tempfile::tempdir().unwrap();
    let best = run.path().join("best");
    save_tiny_model(&best);
    fsio::write_json(
        &run.path().join("config.json"),
        &json!({"epochs": 3, "lr": 0.001}),
    )
    .unwrap();
    let metrics = Metrics::compute(
        &[0, 1, 1],
        &[vec![0.9, 0.1], vec![0.2, 0.8], vec![0.7, 0.3]],
        &["cat".into(), "dog".into()],
    );
    fsio::write_json(&run.path().join("eval-test.json"), &metrics).unwrap();
    let server = start_with(run, config());

    let (status, model) = get(&server.url("/v1/model"));
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["classes"], json!(CLASSES));
    assert_eq!(model["arch"], "resnet18");
    assert_eq!(model["preprocessing"]["image_size"], 64);
    assert_eq!(
        model["weights_sha256"],
        fsio::sha256_file(&best.join("model.safetensors")).unwrap()
    );
    let trained_at = model["trained_at"].as_str().unwrap();
    assert!(
        trained_at.len() == 20 && trained_at.ends_with('Z'),
        "{trained_at}"
    );
    assert_eq!(model["run_config"]["epochs"], 3);
    assert!((model["test_accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(model["max_upload_bytes"], 16 << 20);

    // A bare checkpoint folder has no run to tell about.
    let server = start(config());
    let (_, model) = get(&server.url("/v1/model"));
    assert!(model["run_config"].is_null() && model["test_accuracy"].is_null());
}

#[test]
fn health_page_and_unknown_routes() {
    let server = start(config());
    let (status, health) = get(&server.url("/healthz"));
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["images"], 0);

    let mut page = client().get(&server.url("/")).call().unwrap();
    assert_eq!(page.status(), 200);
    let header = |name| {
        page.headers()
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert!(header("content-security-policy").contains("default-src 'none'"));
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains(r#"<input id="file" type="file""#));
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(external), "the page loads {external}…");
    }

    assert_error(&get(&server.url("/v2/nothing")), 404, "/v2/nothing");
    assert_error(
        &json(client().get(&server.url("/v1/predict")).call()),
        405,
        "GET is not allowed",
    );
}

/// Every kind of bad upload gets a 4xx with a JSON error, and the server goes on answering.
#[test]
fn bad_uploads_get_a_clear_4xx_and_the_server_carries_on() {
    let server = start(Config {
        max_upload_bytes: 50_000,
        ..config()
    });
    let predict = server.url("/v1/predict");

    assert_error(&post(&predict, Some("image/png"), b""), 400, "empty");
    assert_error(
        &post(&predict, Some("image/png"), b"hello, I am text"),
        415,
        "not an image",
    );
    let mut truncated = png(200, 200);
    truncated.truncate(truncated.len() / 2);
    assert_error(&post(&predict, Some("image/png"), &truncated), 422, "image");
    for content_type in [
        "text/plain",
        "application/json",
        "application/x-www-form-urlencoded",
    ] {
        assert_error(
            &post(&predict, Some(content_type), &png(10, 10)),
            415,
            content_type,
        );
    }

    // Over the limit: declared by Content-Length, and streamed without one (chunked).
    let big = vec![0u8; 80_000];
    assert_error(&post(&predict, Some("image/png"), &big), 413, "50000 bytes");
    let chunked = client()
        .post(&predict)
        .header("Content-Type", "image/png")
        .send(ureq::SendBody::from_reader(&mut &big[..]));
    assert_error(&json(chunked), 413, "over the limit");

    // A declared length over the limit is refused before a byte of the body is read: far
    // over it, and with the client waiting for "100 Continue" before it sends its body.
    for request in [
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000000\r\n\r\n",
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Length: 80000\r\nExpect: 100-continue\r\n\r\n",
    ] {
        let (_, answer) = raw_exchange(&server, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("over the limit of 50000 bytes"), "{answer}");
    }

    // A decompression bomb: a 60-byte PNG that claims 50000 x 50000 pixels (7.5 GB decoded) is
    // refused from its header, at once.
    let started = Instant::now();
    assert_error(
        &post(
            &predict,
            Some("image/png"),
            &png_header_only(50_000, 50_000),
        ),
        413,
        "50000x50000",
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let (content_type, form) = multipart("photo", &png(10, 10));
    assert_error(&post(&predict, Some(&content_type), &form), 400, "`image`");
    assert_error(
        &post(&predict, Some("multipart/form-data"), b"--x\r\n"),
        400,
        "multipart",
    );
    assert_error(
        &post(&server.url("/v1/predict?explain=maybe"), None, &png(10, 10)),
        400,
        "explain",
    );

    let (status, answer) = post(&predict, Some("image/png"), &png(64, 64));
    assert_eq!(status, 200, "still serving: {answer}");
    let (_, health) = get(&server.url("/healthz"));
    assert_eq!(health["failed_batches"], 0);
}

/// Sends `request` as it is on a fresh connection; returns the time until the server closed
/// it and everything it sent (a reset after the answer counts as a close).
fn raw_exchange(server: &TestServer, request: &[u8]) -> (Duration, String) {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let sent = Instant::now();
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    (
        sent.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

/// A PNG signature, an IHDR chunk for an 8-bit RGB image of `width x height`, and nothing else.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // An IDAT chunk's start, so the decoder has something to expect after the header.
    png.extend_from_slice(&[0, 0, 0, 8]);
    png.extend_from_slice(b"IDAT\x78\x9c\x63\x60");
    png
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        (0..8).fold(crc ^ u32::from(b), |c, _| {
            if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            }
        })
    })
}

#[test]
fn slow_clients_are_cut_off() {
    let timeout = Duration::from_millis(800);
    let server = start(Config {
        read_timeout: timeout,
        ..config()
    });

    // Headers that never end: the connection is closed without an answer.
    let (waited, answer) = raw_exchange(&server, b"POST /v1/predict HTTP/1.1\r\nHost: test\r\n");
    assert_eq!(answer, "");
    assert!(
        waited >= timeout / 2 && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // A body that stops halfway: 408 with a JSON error.
    let (_, answer) = raw_exchange(
        &server,
        b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n\x89PNG",
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"the upload did not arrive within"#),
        "{answer}"
    );

    let (status, _) = post(&server.url("/v1/predict"), None, &png(32, 32));
    assert_eq!(status, 200, "still serving");
}

/// Requests that arrive together share a forward pass: fewer batches than images, and the
/// answers say so. Every other request asks for Grad-CAM: only those get a map.
#[test]
fn concurrent_requests_are_batched() {
    const CLIENTS: usize = 12;
    let server = start(Config {
        max_batch: 8,
        // Long enough that requests sent together on a busy 2-core machine meet.
        batch_wait: Duration::from_millis(50),
        ..config()
    });
    let start_line = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let url = server.url(&format!("/v1/predict?explain={}", i % 2));
            let start_line = start_line.clone();
            std::thread::spawn(move || {
                let image = png(60 + i as u32, 60);
                start_line.wait();
                post(&url, Some("image/png"), &image)
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (status, answer)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer.get("gradcam_png").is_some(), i % 2 == 1, "{i}");
    }
    let largest = answers
        .iter()
        .map(|(_, a)| a["batch_size"].as_u64().unwrap())
        .max()
        .unwrap();

    let (_, health) = get(&server.url("/healthz"));
    assert_eq!(health["images"], CLIENTS as u64);
    let batches = health["batches"].as_u64().unwrap();
    assert!(batches < CLIENTS as u64, "{health}");
    assert!(largest > 1 && largest <= 8, "{health}");
    assert_eq!(health["largest_batch"], largest);
    let sizes: Vec<u64> = serde_json::from_value(health["batch_sizes"].clone()).unwrap();
    assert_eq!(sizes.len(), 8);
    assert_eq!(
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 + 1) * n)
            .sum::<u64>(),
        CLIENTS as u64
    );
}

/// `/healthz` is answered by the async side while the inference thread is busy.
#[test]
fn health_answers_quickly_while_the_model_works() {
    let model = tempfile::tempdir().unwrap();
    save_model(model.path(), 224);
    let server = start_with(model, config());
    let url = server.url("/v1/predict?explain=1");
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || post(&url, Some("image/png"), &png(300, 240)).0)
        })
        .collect();
    let mut seen_busy = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen_busy && Instant::now() < deadline {
        let asked = Instant::now();
        let (status, health) = get(&server.url("/healthz"));
        let took = asked.elapsed();
        assert_eq!(status, 200);
        seen_busy = health["busy"] == true;
        if seen_busy {
            assert!(took < Duration::from_millis(500), "/healthz took {took:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seen_busy, "the model was never seen at work");
    for worker in workers {
        assert_eq!(worker.join().unwrap(), 200);
    }
}

/// More requests than the queue holds: the surplus is refused with 503, not queued without
/// bound, and the rest are answered.
#[test]
fn a_full_queue_answers_503() {
    let model = tempfile::tempdir().unwrap();
    save_model(model.path(), 224);
    let server = start_with(
        model,
        Config {
            max_batch: 1,
            max_queue: 1,
            ..config()
        },
    );
    let url = server.url("/v1/predict");
    let start_line = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, start_line) = (url.clone(), start_line.clone());
            std::thread::spawn(move || {
                let image = png(64, 64);
                start_line.wait();
                post(&url, Some("image/png"), &image)
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let count = |status| answers.iter().filter(|(s, _)| *s == status).count();
    assert_eq!(count(200) + count(503), answers.len(), "{answers:?}");
    assert!(count(200) >= 1 && count(503) >= 1, "{answers:?}");
    let busy = answers.iter().find(|(s, _)| *s == 503).unwrap();
    assert_error(busy, 503, "try again");
}
