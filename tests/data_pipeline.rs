//! The data stage end to end: odd files of every kind, quarantine, split, the
//! command line's errors, and the real sample when ../shared is present.

use crate::common;

use std::fs;
use std::io::Cursor;
use std::path::Path;

use crate::common::run_catdog;
use catdog::data::decode::{RejectReason, WarningKind};
use catdog::data::{self, FileStatus, Layout, Limits, Manifest, Prepare, Ratios, Split};
use catdog::progress::Quiet;
use image::{DynamicImage, ImageFormat, RgbImage};

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn photo(w: u32, h: u32, seed: u8) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([x as u8 ^ seed, y as u8, seed])
    }))
}

/// A JPEG carrying an EXIF orientation tag (6 = rotate 90 degrees clockwise).
fn jpeg_with_orientation(w: u32, h: u32, orientation: u16) -> Vec<u8> {
    let jpeg = encode(photo(w, h, 1), ImageFormat::Jpeg);
    let mut app1 = vec![0xFF, 0xE1, 0, 34];
    app1.extend(b"Exif\0\0MM\0\x2a\0\0\0\x08");
    app1.extend([0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    app1.extend(orientation.to_be_bytes());
    app1.extend([0, 0, 0, 0, 0, 0]);
    [&jpeg[..2], &app1[..], &jpeg[2..]].concat()
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// A data folder with one file for every case the clean step distinguishes.
fn odd_folder(root: &Path) {
    let good = encode(photo(64, 48, 3), ImageFormat::Jpeg);
    for i in 0..10 {
        write(
            root,
            &format!("Cat/{i}.jpg"),
            &encode(photo(64, 48, i), ImageFormat::Jpeg),
        );
        write(
            root,
            &format!("Dog/{i}.jpg"),
            &encode(photo(48, 64, 100 + i), ImageFormat::Jpeg),
        );
    }
    write(root, "Cat/empty.jpg", b"");
    write(root, "Cat/truncated.jpg", &good[..good.len() / 2]);
    write(root, "Cat/text.jpg", b"this is not an image\n");
    // A BMP header claiming 65536 x 65536 pixels (BMP has no checksum to fix up).
    let mut bomb = encode(photo(1, 1, 0), ImageFormat::Bmp);
    bomb[18..26].copy_from_slice(&[0, 0, 1, 0, 0, 0, 1, 0]);
    write(root, "Cat/bomb.bmp", &bomb);
    write(
        root,
        "Dog/png-named.jpg",
        &encode(photo(40, 40, 7), ImageFormat::Png),
    );
    write(
        root,
        "Dog/gray.jpg",
        &encode(
            DynamicImage::ImageLuma8(photo(40, 40, 8).into_luma8()),
            ImageFormat::Jpeg,
        ),
    );
    write(
        root,
        "Dog/deep.png",
        &encode(
            DynamicImage::ImageRgb16(photo(40, 40, 9).into_rgb16()),
            ImageFormat::Png,
        ),
    );
    write(
        root,
        "Dog/alpha.png",
        &encode(
            DynamicImage::ImageRgba8(photo(40, 40, 10).into_rgba8()),
            ImageFormat::Png,
        ),
    );
    write(
        root,
        "Dog/palette.gif",
        &encode(photo(40, 40, 11), ImageFormat::Gif),
    );
    write(root, "Dog/rotated.jpg", &jpeg_with_orientation(40, 30, 6));
    write(root, "Dog/trailing.jpg", &[&good[..], b"extra"].concat());
    write(root, "Dog/Thumbs.db", b"\xD0\xCF\x11\xE0");
    write(root, "Cat/.DS_Store", b"\0\0\0\x01Bud1");
}

fn clean(root: &Path) -> data::CleanReport {
    let scan = data::scan::scan(root, None, None).unwrap();
    data::clean::clean(&scan, &Limits::default(), &Quiet)
}

#[test]
fn every_odd_file_is_sorted_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    odd_folder(dir.path());
    let report = clean(dir.path());
    let file = |p: &str| {
        report
            .files
            .iter()
            .find(|f| f.path == p)
            .unwrap_or_else(|| panic!("{p} not in report"))
    };
    let rejected = |p: &str| file(p).rejection.as_ref().map(|r| r.reason);
    assert_eq!(rejected("Cat/empty.jpg"), Some(RejectReason::Empty));
    assert_eq!(rejected("Cat/truncated.jpg"), Some(RejectReason::Truncated));
    assert_eq!(rejected("Cat/text.jpg"), Some(RejectReason::NotAnImage));
    assert_eq!(rejected("Cat/bomb.bmp"), Some(RejectReason::TooLarge));
    let warned = |p: &str| -> Vec<WarningKind> {
        let f = file(p);
        assert_eq!(f.status, FileStatus::Usable, "{p}: {:?}", f.rejection);
        f.warnings.iter().map(|w| w.kind).collect()
    };
    assert_eq!(warned("Dog/png-named.jpg"), [WarningKind::FormatMismatch]);
    for p in [
        "Dog/gray.jpg",
        "Dog/deep.png",
        "Dog/alpha.png",
        "Dog/palette.gif",
    ] {
        assert_eq!(warned(p), [WarningKind::Converted], "{p}");
    }
    assert_eq!(warned("Dog/rotated.jpg"), [WarningKind::Oriented]);
    assert_eq!(
        (
            file("Dog/rotated.jpg").width,
            file("Dog/rotated.jpg").height
        ),
        (Some(30), Some(40))
    );
    assert_eq!(warned("Dog/trailing.jpg"), [WarningKind::TrailingBytes]);
    assert!(warned("Cat/3.jpg").is_empty());
    for p in ["Dog/Thumbs.db", "Cat/.DS_Store"] {
        assert_eq!(file(p).status, FileStatus::Ignored, "{p}");
    }
    let cat = &report.summary[0];
    assert_eq!(
        (cat.class.as_str(), cat.usable, cat.ignored),
        ("Cat", 10, 1)
    );
    assert_eq!(cat.rejected.values().sum::<usize>(), 4);
    let dog = &report.summary[1];
    assert_eq!((dog.usable, dog.converted, dog.with_warnings), (17, 4, 7));
    let table = report.table();
    assert!(
        table.contains("rej: truncated") && table.contains("total"),
        "{table}"
    );
}

#[test]
fn quarantine_moves_rejected_files_once_and_touches_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    odd_folder(&root);
    let before: Vec<(String, Vec<u8>)> = ["Cat/0.jpg", "Dog/gray.jpg", "Dog/Thumbs.db"]
        .iter()
        .map(|p| (p.to_string(), fs::read(root.join(p)).unwrap()))
        .collect();
    // The quarantine folder sits inside the data folder: the scan must skip it.
    let q = root.join("Cat/quarantine");
    fs::create_dir_all(&q).unwrap();
    let scan = data::scan::scan(&root, None, Some(&q)).unwrap();
    let mut report = data::clean::clean(&scan, &Limits::default(), &Quiet);
    assert_eq!(data::clean::quarantine(&mut report, &q).unwrap(), 4);
    assert!(!root.join("Cat/truncated.jpg").exists());
    assert!(q.join("Cat/truncated.jpg").exists());
    let moved = report
        .files
        .iter()
        .find(|f| f.path == "Cat/empty.jpg")
        .unwrap();
    assert_eq!(moved.quarantined_to.as_deref(), Some("Cat/empty.jpg"));
    for (p, bytes) in &before {
        assert_eq!(&fs::read(root.join(p)).unwrap(), bytes, "{p} changed");
    }
    let scan = data::scan::scan(&root, None, Some(&q)).unwrap();
    let mut again = data::clean::clean(&scan, &Limits::default(), &Quiet);
    assert_eq!(again.rejected().count(), 0);
    assert_eq!(data::clean::quarantine(&mut again, &q).unwrap(), 0);
}

fn prepare(root: &Path, seed: u64) -> Manifest {
    let p = Prepare {
        root,
        layout: None,
        ratios: Ratios::default(),
        seed,
        limits: Limits::default(),
        exclude: None,
        // The generated photos here are gradients that hash alike across the classes;
        // near-duplicates have their tests in tests/audit.rs.
        keep_near_conflicts: true,
    };
    data::prepare(&p, &Quiet).unwrap().0
}

#[test]
fn manifest_round_trips_and_records_rejects_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    odd_folder(&root);
    fs::copy(root.join("Cat/1.jpg"), root.join("Cat/copy-of-1.jpg")).unwrap();
    let m = prepare(&root, 42);
    assert_eq!(m.classes, ["Cat", "Dog"]);
    assert_eq!(m.rejected.len(), 4);
    assert_eq!(m.ignored.len(), 2);
    assert_eq!(m.files.len(), 11 + 17);
    assert_eq!(m.duplicates.len(), 1);
    assert_eq!(m.duplicates[0].paths, ["Cat/1.jpg", "Cat/copy-of-1.jpg"]);
    let splits: Vec<Split> = m
        .files
        .iter()
        .filter(|f| f.hash == m.duplicates[0].hash)
        .map(|f| f.split)
        .collect();
    assert_eq!(splits[0], splits[1]);
    let path = dir.path().join("manifest.json");
    m.save(&path).unwrap();
    let back = Manifest::load(&path).unwrap();
    assert_eq!(back.files, m.files);
    back.verify(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let first = &json["files"][0];
    for key in ["path", "label", "split", "hash"] {
        assert!(first.get(key).is_some(), "manifest files lack '{key}'");
    }
    fs::remove_file(root.join("Dog/3.jpg")).unwrap();
    let err = back.verify(&path).unwrap_err().to_string();
    assert!(
        err.contains("Dog/3.jpg") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn identical_files_with_different_labels_are_listed_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    for (class, seed) in [("Cat", 0), ("Dog", 10)] {
        for i in 0..4u8 {
            let png = encode(photo(8, 8, seed + i), ImageFormat::Png);
            write(&root, &format!("{class}/{i}.png"), &png);
        }
    }
    let same = encode(photo(8, 8, 99), ImageFormat::Png);
    write(&root, "Cat/x.png", &same);
    write(&root, "Dog/x.png", &same);
    let m = prepare(&root, 42);
    let listed: Vec<(&str, &str)> = m
        .conflicts
        .iter()
        .flat_map(|c| &c.files)
        .map(|f| (f.path.as_str(), f.label.as_str()))
        .collect();
    assert_eq!(listed, [("Cat/x.png", "Cat"), ("Dog/x.png", "Dog")]);
    assert_eq!(m.files.len(), 8);
    assert!(m.files.iter().all(|f| !f.path.ends_with("x.png")));
    let report = clean(&root);
    assert_eq!(
        report.conflicts, m.conflicts,
        "the clean report lists them too"
    );
    let (ok, stdout, stderr) = run_catdog(&[
        "clean",
        root.to_str().unwrap(),
        "--report",
        dir.path().join("r.json").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Cat/x.png (Cat) = Dog/x.png (Dog)"),
        "{stdout}"
    );

    let out = dir.path().join("m.json");
    let (ok, stdout, stderr) = run_catdog(&[
        "split",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("left out of every split")
            && stdout.contains("Cat/x.png (Cat) = Dog/x.png (Dog)"),
        "{stdout}"
    );
}

#[test]
fn command_line_errors_are_clear_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let one_class = dir.path().join("one");
    write(
        &one_class,
        "Cat/1.jpg",
        &encode(photo(8, 8, 0), ImageFormat::Jpeg),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["split", missing.to_str().unwrap()], "no-such-folder"),
        (vec!["clean", missing.to_str().unwrap()], "no-such-folder"),
        (vec!["split", one_class.to_str().unwrap()], "only one class"),
        (
            vec![
                "split",
                one_class.to_str().unwrap(),
                "--ratios",
                "0.5,0.5,0.5",
            ],
            "--ratios",
        ),
    ];
    for (args, expect) in cases {
        let (ok, _, err) = run_catdog(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn split_command_writes_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    odd_folder(&root);
    let out = dir.path().join("m.json");
    let (ok, stdout, stderr) = run_catdog(&[
        "split",
        root.to_str().unwrap(),
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("manifest:") && stdout.contains("train"),
        "{stdout}"
    );
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.seed, 3);
    assert_eq!(m.layout, Layout::Folders);
    assert!(!stderr.contains("warning"), "{stderr}");

    // Splits left empty are written (a manifest for another use), with a warning.
    let (ok, _, stderr) = run_catdog(&[
        "split",
        root.to_str().unwrap(),
        "--ratios",
        "1,0,0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for split in ["val", "test"] {
        assert!(
            stderr.contains(&format!("warning: the {split} split is empty")),
            "{stderr}"
        );
    }
    assert!(!stderr.contains("the train split is empty"), "{stderr}");
}

#[test]
#[ignore = "needs ../shared"]
fn real_sample_is_clean_stratified_and_reproducible() {
    let shared = common::shared();
    let root = shared.join("data/kaggle-sample");
    let m = prepare(&root, 42);
    assert_eq!(m.layout, Layout::Flat);
    assert_eq!(m.classes, ["cat", "dog"]);
    assert_eq!(m.files.len() + m.rejected.len(), 2002);
    for class in ["cat", "dog"] {
        let n: usize = Split::ALL.iter().map(|s| m.counts[s][class]).sum();
        let test = m.counts[&Split::Test][class] as f64;
        let val = m.counts[&Split::Val][class] as f64;
        assert!(
            (val / n as f64 - 0.1).abs() < 0.01 && (test / n as f64 - 0.1).abs() < 0.01,
            "{class}: {:?}",
            m.counts
        );
    }
    let again = prepare(&root, 42);
    assert_eq!(again.files, m.files);
    eprintln!("{}", m.table());
}
