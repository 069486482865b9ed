//! The page at `/` in a real headless Chromium, driven through chromedriver: a person picks a
//! photo, sees the prediction, the probability bars and the Grad-CAM overlay, at desktop and
//! phone width. Screenshots go to a temporary folder, or with `CATDOG_SCREENSHOT=PATH` to PATH
//! (desktop) and PATH with `-phone` before the extension (phone).
//!
//! The WebDriver protocol is JSON over HTTP, and the few commands needed here are a handful of
//! `ureq` calls: lighter than a WebDriver crate with its own async HTTP stack.
//! Skips, saying so, without chromium and chromedriver (`apt-get install chromium
//! chromium-driver`); needs `../shared` (the photo and the weights), so it is ignored unless
//! asked for with `--include-ignored`.

use crate::common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::serve_common::*;
use base64::Engine as _;
use burn::prelude::Device;
use catdog::model::ResNet18;
use catdog::model::checkpoint::{self, CheckpointMeta};
use catdog::model::weights::load_into;
use catdog::preprocess::Preprocessing;
use serde_json::{Value, json};

/// The element key of the WebDriver protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const PHOTO: &str = "data/kaggle-sample/cat.3.jpg";

#[test]
#[ignore = "needs ../shared"]
fn a_person_picks_a_photo_and_sees_the_prediction() {
    let (Some(chromium), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
        eprintln!(
            "skipped serve_browser: chromium and chromedriver are not both installed \
             (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let shared = common::shared();
    let photo = shared.join(PHOTO).canonicalize().unwrap();
    let model = tempfile::tempdir().unwrap();
    save_golden_model(&shared, model.path());
    let server = start_with(model, config());
    // What the API says about the photo: the page must show the same.
    let (status, expected) = post(
        &server.url("/v1/predict"),
        Some("image/jpeg"),
        &std::fs::read(&photo).unwrap(),
    );
    assert_eq!(status, 200, "{expected}");

    let profile = tempfile::tempdir().unwrap();
    let driver = ChromeDriver::start(&chromedriver);
    let browser = driver.session(&chromium, profile.path());
    let shots = tempfile::tempdir().unwrap();
    let chosen = std::env::var_os("CATDOG_SCREENSHOT").map(PathBuf::from);
    for (width, height, suffix) in [(1280, 900, ""), (390, 1300, "-phone")] {
        browser.post("window/rect", json!({"width": width, "height": height}));
        browser.post("url", json!({"url": server.url("/")}));
        let input = browser.element("#file");
        browser.post(
            &format!("element/{input}/value"),
            json!({"text": photo.to_str().unwrap()}),
        );
        let shown = browser.wait_for(
            "const r = document.getElementById('result');
             const g = document.getElementById('gradcam');
             if (r.dataset.state === 'error') return {error: document.getElementById('status').textContent};
             if (r.dataset.state !== 'done' || !g.complete || g.naturalWidth === 0) return null;
             return {
               class: document.getElementById('verdict-class').textContent,
               probability: document.getElementById('verdict-prob').textContent,
               bars: [...document.querySelectorAll('.bar')].map(b => b.querySelector('.name').textContent),
               gradcam: [g.naturalWidth, g.naturalHeight],
               photoLoaded: document.getElementById('photo').naturalWidth > 0,
               model: document.getElementById('model').textContent,
               overflow: document.documentElement.scrollWidth > window.innerWidth,
             };",
        );
        assert!(
            shown.get("error").is_none(),
            "the page shows an error: {shown}"
        );
        assert_eq!(shown["class"], expected["decision"], "{shown}");
        let percent: f64 = shown["probability"]
            .as_str()
            .and_then(|p| p.strip_suffix('%')?.parse().ok())
            .unwrap_or_else(|| panic!("{shown}"));
        assert!(
            (percent - 100.0 * expected["probability"].as_f64().unwrap()).abs() <= 0.051,
            "{shown} vs {expected}"
        );
        assert_eq!(shown["bars"], json!(CLASSES));
        assert_eq!(shown["gradcam"], json!([224, 224]));
        assert_eq!(shown["photoLoaded"], true);
        assert!(
            shown["model"].as_str().unwrap().contains("cat, dog"),
            "{shown}"
        );
        assert_eq!(
            shown["overflow"], false,
            "wider than a {width}-pixel screen"
        );

        // Let the bars finish growing, then check they show the probabilities.
        std::thread::sleep(Duration::from_millis(800));
        let fills = browser.post(
            "execute/sync",
            json!({"script": "return [...document.querySelectorAll('.bar')].map(b =>
                b.querySelector('.fill').getBoundingClientRect().width /
                b.querySelector('.track').getBoundingClientRect().width)", "args": []}),
        );
        for (fill, p) in fills
            .as_array()
            .unwrap()
            .iter()
            .zip(probabilities(&expected))
        {
            assert!((fill.as_f64().unwrap() - p).abs() < 0.02, "{fills} vs {p}");
        }
        save_screenshot(&browser, shots.path(), chosen.as_deref(), suffix);
    }

    // A file that is not an image: the page says why, in words.
    let notes = shots.path().join("notes.txt");
    std::fs::write(&notes, "not a photo").unwrap();
    let input = browser.element("#file");
    browser.post(
        &format!("element/{input}/value"),
        json!({"text": notes.to_str().unwrap()}),
    );
    let error = browser.wait_for(
        "return document.getElementById('result').dataset.state === 'error'
             ? document.getElementById('status').textContent : null;",
    );
    assert!(error.as_str().unwrap().contains("not an image"), "{error}");
    save_screenshot(&browser, shots.path(), chosen.as_deref(), "-error");
}

/// Saves the page as `page{suffix}.png` in `dir`, and beside `chosen` when given.
fn save_screenshot(browser: &Browser, dir: &Path, chosen: Option<&Path>, suffix: &str) {
    let png = browser.screenshot();
    std::fs::write(dir.join(format!("page{suffix}.png")), &png).unwrap();
    if let Some(chosen) = chosen {
        let path = with_suffix(chosen, suffix);
        std::fs::write(&path, &png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

/// The golden ResNet-18 (random weights, batch-norm statistics from real photos) with a
/// two-class head: an untrained classifier, but one whose Grad-CAM has real structure to show.
fn save_golden_model(shared: &Path, dir: &Path) {
    let device = Device::flex();
    let mut model = ResNet18::new(1000, &device);
    load_into(&mut model, &shared.join("golden/resnet18/resnet18.pth")).unwrap();
    let model = model.with_head(2, 7, &device);
    let meta = CheckpointMeta::new(
        CLASSES.iter().map(|c| c.to_string()).collect(),
        Preprocessing::default(),
    );
    checkpoint::save(dir, &model, &meta).unwrap();
}

/// `name` on the PATH.
fn find(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// `shot.png` with suffix `-phone` is `shot-phone.png`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let extension = path
        .extension()
        .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!("{stem}{suffix}{extension}"))
}

/// A chromedriver process on a free loopback port, ended when dropped.
struct ChromeDriver {
    process: Child,
    url: String,
}

impl ChromeDriver {
    fn start(program: &Path) -> ChromeDriver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let driver = ChromeDriver {
            process,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = client()
                .get(&format!("{}/status", driver.url))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .is_some_and(|status| status["value"]["ready"] == true);
            if ready {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A headless Chromium with a fresh profile, offline apart from loopback.
    fn session(&self, chromium: &Path, profile: &Path) -> Browser {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let created = webdriver(
            "POST",
            &format!("{}/session", self.url),
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
            }}}),
        );
        Browser {
            url: format!(
                "{}/session/{}",
                self.url,
                created["sessionId"].as_str().unwrap()
            ),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One WebDriver session; closed when dropped.
struct Browser {
    url: String,
}

impl Browser {
    fn post(&self, command: &str, body: Value) -> Value {
        webdriver("POST", &format!("{}/{command}", self.url), body)
    }

    /// The id of the element that `css` selects.
    fn element(&self, css: &str) -> String {
        let found = self.post("element", json!({"using": "css selector", "value": css}));
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {found}"))
            .to_owned()
    }

    /// Runs `script` until it returns something other than null (60 s at most).
    fn wait_for(&self, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.post("execute/sync", json!({"script": script, "args": []}));
            if !value.is_null() {
                return value;
            }
            assert!(Instant::now() < deadline, "the page never got there");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        let shot = webdriver("GET", &format!("{}/screenshot", self.url), Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = client().delete(&self.url).call();
    }
}

/// One WebDriver command: its `value`, or a panic with the driver's error.
fn webdriver(method: &str, url: &str, body: Value) -> Value {
    let agent = client();
    let response = match method {
        "GET" => agent.get(url).call(),
        _ => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes()),
    };
    let (status, answer) = json(response);
    assert_eq!(status, 200, "{method} {url}: {answer}");
    answer["value"].clone()
}
