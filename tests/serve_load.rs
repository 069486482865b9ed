//! A load test of `catdog serve` on loopback: concurrent clients post photos to a server in
//! this process for a bounded time, every answer must be a 200, and the latency percentiles,
//! the throughput and the batch sizes the model ran are printed (`--nocapture` shows them).
//!
//! The model is a 224-pixel ResNet-18 (random weights: the same work as a trained one). The
//! photos are ../shared's, or generated ones without it. `CATDOG_LOAD_SECONDS` (default 10)
//! and `CATDOG_LOAD_CLIENTS` (default 16) change the run; each client also stops after
//! [`MAX_REQUESTS_PER_CLIENT`] requests, so the run ends by itself whatever the machine.

use crate::common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::serve_common::*;

const MAX_REQUESTS_PER_CLIENT: usize = 2_000;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Up to 16 photos to send: ../shared's first cats and dogs, or generated pictures.
fn photos() -> Vec<Vec<u8>> {
    let sample = common::shared_dir()
        .map(|dir| dir.join("data/kaggle-sample"))
        .filter(|dir| dir.is_dir());
    match sample {
        Some(dir) => (0..8)
            .flat_map(|i| [format!("cat.{i}.jpg"), format!("dog.{i}.jpg")])
            .map(|name| std::fs::read(dir.join(name)).unwrap())
            .collect(),
        None => (0..16).map(|i| jpeg(500 - 10 * i, 375)).collect(),
    }
}

/// One request's outcome, as the client saw it.
struct Sample {
    status: u16,
    latency: Duration,
    batch_size: u64,
}

#[test]
fn many_clients_for_a_bounded_time_get_no_error() {
    let seconds = setting("CATDOG_LOAD_SECONDS", 10);
    let clients = setting("CATDOG_LOAD_CLIENTS", 16) as usize;
    let model = tempfile::tempdir().unwrap();
    save_model(model.path(), 224);
    let server = start_with(model, config());
    let url = server.url("/v1/predict");
    let photos = Arc::new(photos());

    let start_line = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|client_index| {
            let (url, photos, start_line) = (url.clone(), photos.clone(), start_line.clone());
            std::thread::spawn(move || {
                let agent = client();
                start_line.wait();
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let mut samples = Vec::new();
                while Instant::now() < deadline && samples.len() < MAX_REQUESTS_PER_CLIENT {
                    let photo = &photos[(client_index + samples.len()) % photos.len()];
                    let sent = Instant::now();
                    let (status, answer) = json(
                        agent
                            .post(&url)
                            .header("Content-Type", "image/jpeg")
                            .send(&photo[..]),
                    );
                    samples.push(Sample {
                        status,
                        latency: sent.elapsed(),
                        batch_size: answer["batch_size"].as_u64().unwrap_or(0),
                    });
                }
                samples
            })
        })
        .collect();
    start_line.wait();
    let started = Instant::now();
    let samples: Vec<Sample> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();

    let errors = samples.iter().filter(|s| s.status != 200).count();
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    let percentile = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[i - 1].as_secs_f64() * 1e3
    };
    let (_, health) = get(&server.url("/healthz"));
    let sizes: Vec<u64> = serde_json::from_value(health["batch_sizes"].clone()).unwrap();
    let seen: Vec<String> = sizes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("{}x{n}", i + 1))
        .collect();
    let batches = health["batches"].as_u64().unwrap();
    let mean_batch =
        samples.iter().map(|s| s.batch_size).sum::<u64>() as f64 / samples.len() as f64;
    println!(
        "load: {clients} clients for {elapsed:.1} s: {} requests, {errors} errors, {:.1} requests/s",
        samples.len(),
        samples.len() as f64 / elapsed
    );
    println!(
        "latency: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        percentile(1.0)
    );
    println!(
        "batches: {batches}, sizes (size x count) {}; a request's batch held {mean_batch:.1} images on average",
        seen.join(" ")
    );

    assert_eq!(errors, 0, "every request must be answered with 200");
    assert!(samples.len() >= clients, "every client got answers");
    assert_eq!(health["images"], samples.len() as u64);
    assert!(
        health["largest_batch"].as_u64().unwrap() > 1,
        "concurrent requests share forward passes: {health}"
    );
}
