//! The `catdog imagenet` command end to end.

use crate::common;

use crate::common::catdog;

#[test]
#[ignore = "needs ../shared"]
fn imagenet_json_gives_torchvisions_top_class_per_photo() {
    let shared = common::shared();
    let golden = shared.join("golden/resnet18");
    let photos = shared.join("data/kaggle-sample");
    // images.txt lists cat.0, cat.1, cat.10, cat.100, dog.0, ...: take the first and the fifth.
    let names = std::fs::read_to_string(golden.join("images.txt")).unwrap();
    let names: Vec<&str> = names.lines().collect();
    let out = catdog()
        .arg("imagenet")
        .arg("--weights")
        .arg(golden.join("resnet18.pth"))
        .args(["--json", "--top", "3", "--batch-size", "1"])
        .arg(photos.join(names[0]))
        .arg(photos.join(names[4]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, logits) = common::read_npy_f32(&golden.join("logits.npy"));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, image) in lines.iter().zip([0, 4]) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["path"].as_str().unwrap().ends_with(names[image]));
        let top = v["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let row = &logits[image * 1000..][..1000];
        let best = (0..1000)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(top[0]["index"].as_u64().unwrap() as usize, best);
        assert_eq!(
            top[0]["name"].as_str().unwrap(),
            catdog::model::imagenet_classes::NAMES[best]
        );
        let p: Vec<f64> = top
            .iter()
            .map(|c| c["probability"].as_f64().unwrap())
            .collect();
        assert!(p[0] >= p[1] && p[1] >= p[2] && p[2] > 0.0);
    }
}

#[test]
#[ignore = "needs ../shared"]
fn imagenet_searches_folders_as_predict_does() {
    let shared = common::shared();
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("more")).unwrap();
    let sample = shared.join("data/kaggle-sample");
    std::fs::copy(sample.join("cat.0.jpg"), photos.join("a.jpg")).unwrap();
    std::fs::copy(sample.join("dog.0.jpg"), photos.join("more/b.jpg")).unwrap();
    let out = catdog()
        .arg("imagenet")
        .arg("--weights")
        .arg(shared.join("golden/resnet18/resnet18.pth"))
        .arg("--json")
        .arg(&photos)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let paths: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected = [photos.join("a.jpg"), photos.join("more/b.jpg")];
    assert_eq!(paths, expected.map(|p| p.display().to_string()));
}

#[test]
fn imagenet_without_weights_says_where_to_put_them() {
    let cache = tempfile::tempdir().unwrap();
    let out = catdog()
        .args(["imagenet", "photo.jpg"])
        .env("CATDOG_CACHE", cache.path().join("catdog"))
        .env("TORCH_HOME", cache.path().join("torch"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let place = cache.path().join("catdog/resnet18-f37072fd.pth");
    assert!(
        stderr.contains(&format!("copy it to {}", place.display())),
        "{stderr}"
    );
    assert!(stderr.contains("catdog weights download"), "{stderr}");
}
