//! A mutation fuzzer for the decode-and-validate path (`data::decode::decode`,
//! what `catdog clean` runs on every file's bytes), on stable Rust.
//!
//! Seeds are small images generated here in every format catdog accepts;
//! each input is a seed (or an earlier input that reached a new outcome)
//! with a few mutations stacked: bit flips, byte sets, integer overwrites,
//! truncation, deleted / duplicated / spliced chunks, and header dimensions
//! set to huge or zero values. Every input must end usable or rejected. The
//! test fails on a panic that escapes `decode` or comes from catdog's own code
//! (decoder panics are caught by `decode` and counted), on an input that takes
//! longer than `MAX_INPUT_SECS` (a watchdog aborts the process, so a hang is a
//! failure, not a stuck CI job), and on an input whose peak heap use exceeds
//! `alloc_bound` (a counting global allocator measures it).
//!
//! CI runs it for 20 s. A long run:
//! `CATDOG_FUZZ_SECS=1800 nice -n 19 cargo test --release --test fuzz_decode -- --nocapture`
//! (`CATDOG_FUZZ_SEED` picks another deterministic sequence of inputs).
//! A failing input is written under `target/tmp/fuzz-failures/`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashSet};
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use catdog::data::decode::{self, Limits, Rejection};
use image::{DynamicImage, ImageFormat, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Counts live heap bytes and their high-water mark, so one input's peak can be measured.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn grow(n: usize) {
        let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            // Old and new blocks may coexist during the copy: count both at the peak.
            Self::grow(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Smaller than the defaults so that the allocation bound is tight and inputs stay fast.
const LIMITS: Limits = Limits {
    max_file_bytes: 1 << 20,
    max_pixels: 4_000_000,
};

/// Wall time one input may take (a hang is an input over this).
const MAX_INPUT_SECS: u64 = 5;

/// The most one input may allocate at its peak: the decoded image at the widest
/// sample type (RGBA 16-bit, 8 bytes a pixel), a rotated copy of it, the RGB8
/// result, plus 64 MiB for decoder tables and the input itself. `decode`
/// passes the same per-pixel figure to the `image` crate's allocation limit.
fn alloc_bound(limits: &Limits) -> usize {
    (limits.max_pixels as usize) * (8 + 8 + 3) + (64 << 20)
}

/// Where the panic hook records panics raised in catdog's own code (decoder
/// panics are expected on hostile data and `decode` turns them into rejections).
static OWN_PANIC: Mutex<Option<String>> = Mutex::new(None);
static DECODER_PANICS: AtomicU64 = AtomicU64::new(0);

fn install_panic_hook() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        // Our crate's files are named relative to it; dependencies' are absolute.
        if at.starts_with("src/") || at.starts_with("tests/") {
            *OWN_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{info}"));
            report(info);
        } else {
            DECODER_PANICS.fetch_add(1, Ordering::Relaxed);
        }
    }));
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// The seeds: a few KB each, every format and colour mode `decode` handles.
fn seeds() -> Vec<(Vec<u8>, &'static str)> {
    let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(32, 24, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 10) as u8, ((x + y) * 3) as u8])
    }));
    let gray = DynamicImage::ImageLuma8(rgb.to_luma8());
    let rgba = DynamicImage::ImageRgba8(rgb.to_rgba8());
    let deep = DynamicImage::ImageRgb16(rgb.to_rgb16());
    let jpeg = encode(&rgb, ImageFormat::Jpeg);
    // EXIF orientation 6 in an APP1 segment, so the orientation path is reached.
    let mut app1 = vec![0xFF, 0xE1, 0, 34];
    app1.extend(b"Exif\0\0MM\0\x2a\0\0\0\x08");
    app1.extend([0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
    let oriented = [&jpeg[..2], &app1[..], &jpeg[2..]].concat();
    vec![
        (jpeg, "jpg"),
        (oriented, "jpg"),
        (encode(&gray, ImageFormat::Jpeg), "jpg"),
        (encode(&rgb, ImageFormat::Png), "png"),
        (encode(&rgba, ImageFormat::Png), "png"),
        (encode(&deep, ImageFormat::Png), "png"),
        (encode(&gray, ImageFormat::Png), "png"),
        (encode(&rgb, ImageFormat::Gif), "gif"),
        (encode(&rgb, ImageFormat::Bmp), "bmp"),
        (encode(&rgba, ImageFormat::Bmp), "bmp"),
        (encode(&rgb, ImageFormat::WebP), "webp"),
        (encode(&rgba, ImageFormat::WebP), "webp"),
        (encode(&rgb, ImageFormat::Tiff), "tiff"),
    ]
}

const INTERESTING_U32: [u32; 10] = [
    0,
    1,
    0x7F,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    100_000,
];

/// Offsets of width/height fields in the headers of the formats we generate.
fn dimension_fields(b: &[u8]) -> Vec<(usize, usize, bool)> {
    // (offset, bytes, big endian)
    let mut out = Vec::new();
    if b.starts_with(b"\x89PNG") {
        out.extend([(16, 4, true), (20, 4, true)]);
    } else if b.starts_with(b"BM") {
        out.extend([(18, 4, false), (22, 4, false)]);
    } else if b.starts_with(b"GIF") {
        out.extend([(6, 2, false), (8, 2, false)]);
        if let Some(i) = b.iter().position(|&x| x == 0x2C) {
            out.extend([(i + 5, 2, false), (i + 7, 2, false)]);
        }
    } else if b.starts_with(&[0xFF, 0xD8]) {
        // SOF0..SOF15 except DHT/JPG/DAC: height then width after length and precision.
        for i in 0..b.len().saturating_sub(9) {
            if b[i] == 0xFF
                && matches!(b[i + 1], 0xC0..=0xCF)
                && !matches!(b[i + 1], 0xC4 | 0xC8 | 0xCC)
            {
                out.extend([(i + 5, 2, true), (i + 7, 2, true)]);
            }
        }
    } else if b.starts_with(b"RIFF") {
        // VP8L: 14-bit width-1 and height-1 packed after the signature byte.
        out.extend([(21, 4, false), (26, 2, false), (28, 2, false)]);
    }
    out.retain(|&(o, n, _)| o + n <= b.len());
    out
}

fn put_int(b: &mut [u8], at: usize, n: usize, big: bool, v: u32) {
    let bytes = if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    };
    let slice = if big { &bytes[4 - n..] } else { &bytes[..n] };
    b[at..at + n].copy_from_slice(slice);
}

/// Recomputes every PNG chunk's CRC, so a mutated header reaches the decoder
/// instead of failing the checksum.
fn fix_png_crcs(b: &mut [u8]) {
    let mut i = 8;
    while i + 12 <= b.len() {
        let len = u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        let Some(end) = (i + 8).checked_add(len).filter(|&e| e + 4 <= b.len()) else {
            return;
        };
        let crc = crc32fast::hash(&b[i + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        i = end + 4;
    }
}

fn mutate(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, donor: &[u8]) {
    let len = input.len().max(1);
    match rng.random_range(0..10) {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                if let Some(b) = input.get_mut(rng.random_range(0..len)) {
                    *b ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => {
            let v = [0x00, 0xFF, 0x7F, 0x80, rng.random()][rng.random_range(0..5)];
            if let Some(b) = input.get_mut(rng.random_range(0..len)) {
                *b = v;
            }
        }
        2 => {
            let n = [1, 2, 4][rng.random_range(0..3)];
            if input.len() > n {
                let at = rng.random_range(0..=input.len() - n);
                let v = INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())];
                put_int(input, at, n, rng.random(), v);
            }
        }
        3 => input.truncate(rng.random_range(0..len)),
        4 => {
            // Delete a chunk.
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=256)).min(input.len());
            if a < b {
                input.drain(a..b);
            }
        }
        5 => {
            // Duplicate a chunk in place.
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=512)).min(input.len());
            if a < b {
                let chunk = input[a..b].to_vec();
                input.splice(b..b, chunk);
            }
        }
        6 => {
            // Splice in a chunk of another input (possibly another format).
            if !donor.is_empty() {
                let a = rng.random_range(0..donor.len());
                let b = (a + rng.random_range(1..=512)).min(donor.len());
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, donor[a..b].iter().copied());
            }
        }
        7 | 8 => {
            // A width or height field set to a huge, zero or random value.
            let fields = dimension_fields(input);
            if !fields.is_empty() {
                let (at, n, big) = fields[rng.random_range(0..fields.len())];
                let v = if rng.random_bool(0.7) {
                    INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())]
                } else {
                    rng.random()
                };
                put_int(input, at, n, big, v);
            }
        }
        _ => {
            let n = rng.random_range(1..=64);
            input.extend((0..n).map(|_| rng.random::<u8>()));
        }
    }
}

/// How one input ended, for the counts and for "new outcome" feedback.
fn outcome(result: &Result<decode::Decoded, Rejection>) -> (String, String) {
    match result {
        Ok(d) if d.warnings.is_empty() => ("usable".into(), "usable".into()),
        Ok(d) => {
            let kinds: Vec<String> = d.warnings.iter().map(|w| format!("{:?}", w.kind)).collect();
            ("usable with warnings".into(), kinds.join(","))
        }
        Err(r) => {
            // The detail without numbers: a new message means a new path through a decoder.
            let shape: String = r.detail.chars().filter(|c| !c.is_ascii_digit()).collect();
            (format!("rejected: {}", r.reason.label()), shape)
        }
    }
}

/// Checks what a usable result promises; the error says what is wrong.
fn check(result: &Result<decode::Decoded, Rejection>) -> Result<(), String> {
    match result {
        Ok(d) => {
            let (w, h) = d.image.dimensions();
            if w == 0 || h == 0 || u64::from(w) * u64::from(h) > LIMITS.max_pixels {
                return Err(format!("usable image of {w}x{h} pixels"));
            }
            if d.image.as_raw().len() != (w * h * 3) as usize {
                return Err("usable image's buffer does not match its size".into());
            }
        }
        Err(r) if r.detail.is_empty() => return Err(format!("rejection without a detail: {r:?}")),
        Err(_) => {}
    }
    Ok(())
}

/// Milliseconds since the test started, shared by the loop and the watchdog.
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Saves a failing input under target/tmp/fuzz-failures and returns the message to fail with.
fn failure(name: &str, input: &[u8], what: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}.bin"));
    let _ = std::fs::write(&path, input);
    format!(
        "{name} ({} bytes, saved to {}; rerun it with CATDOG_FUZZ_REPLAY={}): {what}",
        input.len(),
        path.display(),
        path.display()
    )
}

/// Runs inputs through `decode` one at a time, measuring each, with a
/// watchdog that aborts the process when one runs longer than
/// `MAX_INPUT_SECS`: a hung decoder cannot be interrupted, and a stuck test
/// would hide it.
struct Probe {
    current: Arc<Mutex<(String, Vec<u8>)>>,
    started_ms: Arc<AtomicU64>,
}

/// What one input did.
struct Trial {
    /// `None` when a panic escaped `decode`.
    result: Option<Result<decode::Decoded, Rejection>>,
    took: Duration,
    peak_bytes: usize,
}

impl Probe {
    fn new() -> Probe {
        install_panic_hook();
        let current = Arc::new(Mutex::new((String::new(), Vec::new())));
        let started_ms = Arc::new(AtomicU64::new(u64::MAX));
        let (c, s) = (current.clone(), started_ms.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let since = s.load(Ordering::Relaxed);
                if since != u64::MAX && now_ms().saturating_sub(since) > MAX_INPUT_SECS * 1000 {
                    let (name, input) = c.lock().unwrap().clone();
                    let what = format!("still running after {MAX_INPUT_SECS} s (a hang)");
                    eprintln!("{}", failure(&name, &input, &what));
                    std::process::abort();
                }
            }
        });
        Probe {
            current,
            started_ms,
        }
    }

    fn run(&self, name: &str, input: &[u8], ext: Option<&str>) -> Trial {
        *self.current.lock().unwrap() = (name.to_owned(), input.to_vec());
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        self.started_ms.store(now_ms(), Ordering::Relaxed);
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| decode::decode(input, ext, &LIMITS))).ok();
        let took = t.elapsed();
        self.started_ms.store(u64::MAX, Ordering::Relaxed);
        Trial {
            result,
            took,
            peak_bytes: PEAK.load(Ordering::Relaxed).saturating_sub(base),
        }
    }
}

impl Trial {
    /// Everything wrong with how the input ended, as one message, if anything is.
    fn problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        if let Some(p) = OWN_PANIC.lock().unwrap().take() {
            problems.push(format!("panic in catdog's code: {p}"));
        }
        match &self.result {
            None => problems.push("a panic escaped decode".into()),
            Some(r) => problems.extend(check(r).err()),
        }
        let bound = alloc_bound(&LIMITS);
        if self.peak_bytes > bound {
            problems.push(format!(
                "allocated {} bytes at its peak, over the bound of {bound}",
                self.peak_bytes
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// Inputs the fuzzer once found wrong, rebuilt from a seed.
fn regressions() -> Vec<(&'static str, Vec<u8>)> {
    // A TIFF tag claiming 8 million values: the tiff crate allocated ~250 MiB for
    // their list while reading the header, before any limit applied.
    let mut tiff = seeds().into_iter().find(|(_, e)| *e == "tiff").unwrap().0;
    let ifd = u32::from_le_bytes(tiff[4..8].try_into().unwrap()) as usize;
    tiff[ifd + 2 + 4..ifd + 2 + 8].copy_from_slice(&8_323_073u32.to_le_bytes());
    vec![("tiff-tag-count", tiff)]
}

#[test]
fn mutated_images_end_usable_or_rejected_within_time_and_memory() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (secs, seed) = (env("CATDOG_FUZZ_SECS", 20), env("CATDOG_FUZZ_SEED", 1));
    let probe = Probe::new();
    if let Ok(path) = std::env::var("CATDOG_FUZZ_REPLAY") {
        let input = std::fs::read(&path).unwrap();
        let trial = probe.run("replay", &input, None);
        eprintln!(
            "{path}: {:?} in {:?}, peak allocation {} bytes",
            trial
                .result
                .as_ref()
                .map(|r| r.as_ref().map(|d| d.image.dimensions())),
            trial.took,
            trial.peak_bytes
        );
        assert_eq!(trial.problem(), None);
        return;
    }
    for (name, input) in regressions() {
        let trial = probe.run(name, &input, None);
        if let Some(p) = trial.problem() {
            panic!("{}", failure(name, &input, &p));
        }
        assert!(trial.result.unwrap().is_err(), "{name} is usable");
    }
    let seeds = seeds();
    for (bytes, ext) in &seeds {
        assert!(bytes.len() < 8192, "seed .{ext} is {} bytes", bytes.len());
        let d = decode::decode(bytes, Some(ext), &LIMITS);
        assert!(d.is_ok(), "seed .{ext} is not usable: {:?}", d.err());
    }
    let mut corpus: Vec<Vec<u8>> = seeds.iter().map(|(b, _)| b.clone()).collect();
    let exts: Vec<&str> = seeds.iter().map(|(_, e)| *e).collect();

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let (mut max_time, mut max_alloc, mut max_alloc_len) = (Duration::ZERO, 0usize, 0usize);
    let t0 = Instant::now();
    let mut index = 0u64;
    let mut failed = None;
    while t0.elapsed() < Duration::from_secs(secs) && failed.is_none() {
        let mut input = corpus[rng.random_range(0..corpus.len())].clone();
        let donor = &corpus[rng.random_range(0..corpus.len())];
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut rng, &mut input, donor);
        }
        if input.starts_with(b"\x89PNG") && rng.random_bool(0.5) {
            fix_png_crcs(&mut input);
        }
        let ext = exts[rng.random_range(0..exts.len())];
        let name = format!("seed{seed}-input{index}");
        let trial = probe.run(&name, &input, Some(ext));
        if trial.peak_bytes > max_alloc {
            (max_alloc, max_alloc_len) = (trial.peak_bytes, input.len());
        }
        max_time = max_time.max(trial.took);
        if let Some(p) = trial.problem() {
            failed = Some(failure(&name, &input, &p));
        }
        if let Some(r) = &trial.result {
            let (kind, shape) = outcome(r);
            *counts.entry(kind.clone()).or_default() += 1;
            // Inputs that reach a new outcome are kept to mutate further.
            if seen.insert(format!("{kind}|{shape}")) && corpus.len() < 1024 {
                corpus.push(input);
            }
        }
        index += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    eprintln!(
        "fuzz_decode: seed {seed}, {index} inputs in {elapsed:.0} s ({:.0} execs/s), corpus {} ({} seeds)",
        index as f64 / elapsed,
        corpus.len(),
        seeds.len()
    );
    for (kind, n) in &counts {
        eprintln!("  {kind:<40} {n}");
    }
    eprintln!(
        "  decoder panics caught by decode: {}\n  slowest input: {:.1} ms (limit {MAX_INPUT_SECS} s)\n  largest peak allocation: {:.1} MiB (a {max_alloc_len}-byte input; bound {:.0} MiB)",
        DECODER_PANICS.load(Ordering::Relaxed),
        max_time.as_secs_f64() * 1e3,
        max_alloc as f64 / (1 << 20) as f64,
        alloc_bound(&LIMITS) as f64 / (1 << 20) as f64
    );
    if let Some(f) = failed {
        panic!("{f}");
    }
    assert!(index > 100, "only {index} inputs tried");
}
