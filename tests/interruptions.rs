//! What a long run meets: SIGKILL at any moment, a torn feature-cache entry,
//! a full disk. Afterwards every file of the run is complete (the old version
//! or the new one), `--resume` ends with exactly the numbers of an
//! uninterrupted run, and the previous checkpoint is intact.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Mount, catdog, demo_data, fill, history, random_weights};
use catdog::model::checkpoint::{self, CheckpointMeta};
use catdog::report::EpochRecord;
use catdog::run::{RunDir, RunLock, Which};
use catdog::train::state::TrainState;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `catdog train` on `data` into `out`, 32 px, batch 8, plus `extra`.
fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--data", data.to_str().unwrap(), "--out"]
        .map(String::from)
        .to_vec();
    args.push(out.to_str().unwrap().to_owned());
    args.extend(
        ["--image-size", "32", "--batch-size", "8"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    args
}

/// `catdog train --resume RUN`.
fn resume(run: &Path) -> Vec<String> {
    ["train", "--resume", run.to_str().unwrap()]
        .map(String::from)
        .to_vec()
}

fn finetune(epochs: &'static str) -> [&'static str; 6] {
    [
        "--weights",
        "none",
        "--mode",
        "finetune",
        "--epochs",
        epochs,
    ]
}

/// Runs catdog to the end; panics with its output on failure; returns stdout.
fn run_ok(args: &[String]) -> String {
    let out = catdog().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "catdog {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn spawn(args: &[String]) -> Child {
    catdog()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Ctrl-C, as a terminal sends it.
fn interrupt(child: &Child) {
    // SAFETY: a plain system call on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

/// Waits (up to two minutes) until `ready` holds.
fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILL: no chance to save or clean anything.
fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn json(path: &Path) -> serde_json::Value {
    let bytes = fs::read(path).unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is torn: {e}", path.display()))
}

fn numbers(r: &EpochRecord) -> [f64; 4] {
    [r.train_loss, r.train_acc, r.val_loss, r.val_acc]
}

/// Checks every file a killed run left against the finished uninterrupted run
/// `whole`: each parses completely and holds what `whole` held at that stage
/// (the old version or the new one, never a mix). Hidden files are the
/// unfinished new versions of writes in progress; they must never be read.
fn check_run_folder(run: &Path, whole: &Path) {
    let epochs: Vec<[f64; 4]> = history(whole);
    let is_prefix = |got: &[[f64; 4]], what: &Path| {
        assert!(
            got.len() <= epochs.len() && got == &epochs[..got.len()],
            "{}: {got:?} is not a stage of {epochs:?}",
            what.display()
        )
    };
    let mut stack = vec![run.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let rel = path.strip_prefix(run).unwrap().to_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = fs::read(&path).unwrap();
            match name.as_str() {
                "config.json" | "manifest.json" | "eval-test.json" => {
                    assert_eq!(json(&path), json(&whole.join(&rel)), "{}", rel.display())
                }
                "model.json" => {
                    let _: CheckpointMeta = serde_json::from_value(json(&path)).unwrap();
                }
                "train-state.json" => {
                    let state: TrainState = serde_json::from_value(json(&path)).unwrap();
                    let done: Vec<_> = state.history.iter().map(numbers).collect();
                    assert_eq!(done.len(), state.epochs_done);
                    is_prefix(&done, &path);
                }
                "metrics.jsonl" => {
                    let text = String::from_utf8(bytes).unwrap();
                    assert!(text.is_empty() || text.ends_with('\n'), "torn: {text}");
                    let got: Vec<_> = text
                        .lines()
                        .map(|l| numbers(&serde_json::from_str(l).unwrap()))
                        .collect();
                    is_prefix(&got, &path);
                }
                "metrics.csv" => {
                    let text = String::from_utf8(bytes).unwrap();
                    let mut lines = text.lines();
                    assert_eq!(
                        lines.next(),
                        Some("epoch,train_loss,train_acc,val_loss,val_acc,seconds,lr")
                    );
                    let got: Vec<[f64; 4]> = lines
                        .map(|l| {
                            let f: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
                            assert_eq!(f.len(), 7, "torn row: {l}");
                            [f[1], f[2], f[3], f[4]]
                        })
                        .collect();
                    assert!(text.ends_with('\n'));
                    is_prefix(&got, &path);
                }
                "model.safetensors" | "optimizer.safetensors" | "ood.safetensors" => {
                    // Checks the header and that the data is exactly as long as it says.
                    let tensors = safetensors::SafeTensors::deserialize(&bytes)
                        .unwrap_or_else(|e| panic!("{} is torn: {e}", rel.display()));
                    let full = fs::read(whole.join(&rel)).unwrap();
                    let expected = safetensors::SafeTensors::deserialize(&full).unwrap();
                    // The optimizer of the head-only first phase holds the head's moments
                    // alone: a subset of the finished run's.
                    let known = expected.names();
                    for tensor in tensors.names() {
                        assert!(known.contains(&tensor), "{}: {tensor}", rel.display());
                    }
                    if name != "optimizer.safetensors" {
                        assert_eq!(tensors.len(), expected.len(), "{}", rel.display());
                    }
                }
                "index.html" => {
                    let text = String::from_utf8(bytes).unwrap();
                    assert!(text.trim_end().ends_with("</html>"), "torn index.html");
                }
                // The PID of the last process that trained in the folder.
                "train.lock" => {
                    let pid = String::from_utf8(bytes).unwrap();
                    assert!(
                        pid.trim().parse::<u32>().is_ok(),
                        "train.lock holds {pid:?}"
                    );
                }
                _ if name.ends_with(".png") => {
                    image::load_from_memory(&bytes)
                        .unwrap_or_else(|e| panic!("{} is torn: {e}", rel.display()));
                }
                _ => panic!("unexpected file {}", rel.display()),
            }
        }
    }
}

/// Hidden files and folders left in a run after it finished: none may be.
fn leftovers(run: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![run.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with('.') {
                found.push(path);
            } else if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn sigkill_at_random_moments_never_tears_a_file_and_resume_ends_the_same() {
    let seed: u64 = std::env::var("CATDOG_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 12);
    // A head-only first epoch, then two of every layer, on a schedule: the phase change and
    // the rates must survive a kill too.
    let options: Vec<&str> = finetune("3")
        .into_iter()
        .chain(["--freeze-epochs", "1", "--schedule", "one-cycle"])
        .collect();
    let whole = dir.path().join("whole");
    let t = Instant::now();
    run_ok(&train_args(&data, &whole, &options));
    let full = t.elapsed();

    // Kill the same run again and again at moments drawn over a whole run's
    // length, checking its folder each time, then let it finish.
    let run = dir.path().join("killed");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut kills = Vec::new();
    for k in 0..4 {
        let args = if run.join("config.json").exists() {
            resume(&run)
        } else {
            // Killed before its config was written: nothing to resume, so the
            // documented remedy is the same command again.
            train_args(&data, &run, &options)
        };
        let child = spawn(&args);
        let at = full.mul_f64(rng.random_range(0.05..0.9));
        std::thread::sleep(at);
        kills.push(format!("{:.2} s", at.as_secs_f64()));
        kill(child);
        check_run_folder(&run, &whole);
        let done = fs::read(run.join("last/train-state.json")).map(|b| {
            serde_json::from_slice::<TrainState>(&b)
                .unwrap()
                .epochs_done
        });
        eprintln!("kill {k} after {}: epochs done {done:?}", kills[k]);
    }
    if run.join("config.json").exists() {
        run_ok(&resume(&run));
    } else {
        run_ok(&train_args(&data, &run, &options));
    }
    eprintln!(
        "seed {seed}: whole run {:.1} s, killed after {}",
        full.as_secs_f64(),
        kills.join(", ")
    );
    check_run_folder(&run, &whole);
    assert_eq!(history(&run), history(&whole));
    assert_eq!(
        json(&run.join("eval-test.json")),
        json(&whole.join("eval-test.json"))
    );
    assert_eq!(leftovers(&run), Vec::<PathBuf>::new());
}

/// Every feature-cache entry file under `cache`, by path relative to it, with its bytes.
fn cache_entries(cache: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![cache.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "f32") {
                let bytes = fs::read(&path).unwrap();
                out.insert(path.strip_prefix(cache).unwrap().to_owned(), bytes);
            }
        }
    }
    out
}

/// `N from the feature cache, M computed`, summed over the log's lines.
fn cache_use(log: &str) -> (usize, usize) {
    let mut total = (0, 0);
    for line in log.lines().filter(|l| l.contains("from the feature cache")) {
        let n: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        let [.., hits, computed] = n[..] else {
            panic!("{line}")
        };
        total = (total.0 + hits, total.1 + computed);
    }
    total
}

#[test]
fn a_kill_during_feature_extraction_then_torn_entries_are_recomputed_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 40);
    let weights = random_weights(dir.path());
    let args = |out: &Path, cache: &Path| {
        let w = weights.to_str().unwrap();
        let c = cache.to_str().unwrap();
        let extra = ["--weights", w, "--mode", "frozen", "--epochs", "2"];
        let mut a = train_args(&data, out, &extra);
        a.extend(["--cache-dir".to_owned(), c.to_owned()]);
        a
    };
    let whole = dir.path().join("whole");
    let whole_cache = dir.path().join("cache-whole");
    run_ok(&args(&whole, &whole_cache));
    let complete = cache_entries(&whole_cache);

    let run = dir.path().join("killed");
    let cache = dir.path().join("cache");
    let child = spawn(&args(&run, &cache));
    let deadline = Instant::now() + Duration::from_secs(120);
    while cache_entries(&cache).len() < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    kill(child);
    let mut written = cache_entries(&cache);
    assert!(
        written.len() >= 8 && written.len() < complete.len(),
        "not killed during extraction: {} of {} entries",
        written.len(),
        complete.len()
    );
    // A kill cannot tear an entry (each is renamed into place), a power cut
    // can: cut one short, flip a bit in another, empty a third.
    let mut torn = written
        .keys()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .into_iter();
    let (short, flipped, empty) = (
        torn.next().unwrap(),
        torn.next().unwrap(),
        torn.next().unwrap(),
    );
    let bytes = &written[&short];
    fs::write(cache.join(&short), &bytes[..bytes.len() / 2]).unwrap();
    let mut bits = written[&flipped].clone();
    bits[100] ^= 0x10;
    fs::write(cache.join(&flipped), &bits).unwrap();
    fs::write(cache.join(&empty), b"").unwrap();
    for path in [&short, &flipped, &empty] {
        written.remove(path);
    }
    for (path, bytes) in &written {
        assert_eq!(&complete[path], bytes, "{} differs", path.display());
    }

    // No epoch was complete, so the resume starts over from the weights: not from other ones.
    let original = fs::read(&weights).unwrap();
    fs::write(&weights, b"another file").unwrap();
    let out = catdog().args(resume(&run)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("changed since the run began"),
        "{stderr}"
    );
    fs::write(&weights, original).unwrap();

    let log = run_ok(&resume(&run));
    assert!(log.contains("no epoch was complete"), "{log}");
    let (hits, computed) = cache_use(&log);
    assert_eq!(
        (hits, computed),
        (written.len(), complete.len() - written.len()),
        "{log}"
    );
    assert_eq!(cache_entries(&cache), complete, "recomputed entries differ");
    assert_eq!(history(&run), history(&whole));
}

#[test]
fn a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint() {
    let test = "a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint";
    // A checkpoint of ResNet-18 is 45 MB, last/ with the optimizer's moments 134 MB:
    // the first epoch's best/ and last/ fit in 260 MB, the second epoch's new
    // last/ beside the old one does not.
    let Some(disk) = Mount::tmpfs(test, "size=260m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 12);
    let run = disk.path.join("run");
    let out = catdog()
        .args(train_args(&data, &run, &finetune("2")))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the disk was not full");
    let written = run.join("last").to_string_lossy().into_owned();
    assert!(
        stderr.contains("No space left on device")
            && stderr.contains("disk is full")
            && stderr.contains(&written),
        "{stderr}"
    );
    let last = RunDir::new(&run).checkpoint(Which::Last);
    let state: TrainState = serde_json::from_value(json(&last.join("train-state.json"))).unwrap();
    assert_eq!(state.epochs_done, 1);
    let device = burn::prelude::Device::flex();
    for which in [Which::Last, Which::Best] {
        checkpoint::load(&RunDir::new(&run).checkpoint(which), &device)
            .unwrap_or_else(|e| panic!("{which:?} damaged: {e}"));
    }
    assert_eq!(leftovers(&run), Vec::<PathBuf>::new());

    // With space again, the run resumes from the intact checkpoint and finishes.
    disk.remount("remount,size=600m");
    let log = run_ok(&resume(&run));
    assert!(log.contains("after epoch 1"), "{log}");
    assert_eq!(history(&run).len(), 2);

    // A report on a full disk: a clear error, and the previous report intact.
    let report = RunDir::new(&run).report_dir();
    let before: BTreeMap<_, _> = fs::read_dir(&report)
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain([RunDir::new(&run).eval(Which::Best, catdog::data::Split::Test)])
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    fill(&disk.path.join("filler"));
    let out = catdog()
        .args(["report", run.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("disk is full"), "{stderr}");
    for (path, bytes) in &before {
        assert_eq!(
            &fs::read(path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
    assert_eq!(leftovers(&run), Vec::<PathBuf>::new());
}

#[test]
fn ctrl_c_saves_last_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 12);
    let run = dir.path().join("run");
    // More epochs than it can finish before the interrupt.
    let child = catdog()
        .args(train_args(&data, &run, &finetune("1000")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the run has begun", || run.join("config.json").exists());
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "a stopped run must not look finished:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "Resume with: catdog train --resume {}",
            run.display()
        )),
        "{stdout}"
    );
    assert!(TrainState::load(&RunDir::new(&run).checkpoint(Which::Last)).is_ok());
}

#[test]
fn a_second_train_into_a_busy_run_folder_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 12);
    let run = dir.path().join("run");
    let first = spawn(&train_args(&data, &run, &finetune("1000")));
    wait_until("the run has begun", || run.join("config.json").exists());
    let holder = format!("PID {}", first.id());
    for args in [train_args(&data, &run, &finetune("1")), resume(&run)] {
        let out = catdog().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran beside another run");
        assert!(
            stderr.contains("is in use") && stderr.contains(&holder),
            "{args:?}: {stderr}"
        );
    }
    // The OS releases the lock of a killed process: nothing stale blocks --resume.
    kill(first);
    RunLock::acquire(&RunDir::new(&run)).unwrap();
}

#[test]
fn ctrl_c_during_feature_extraction_stops_within_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = demo_data(dir.path(), 40);
    let weights = random_weights(dir.path());
    let run = dir.path().join("run");
    let cache = dir.path().join("cache");
    let mut args = train_args(
        &data,
        &run,
        &["--weights", weights.to_str().unwrap(), "--mode", "frozen"],
    );
    args.extend(["--cache-dir".to_owned(), cache.to_str().unwrap().to_owned()]);
    let child = catdog()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("8 features are cached", || cache_entries(&cache).len() >= 8);
    interrupt(&child);
    let seen = cache_entries(&cache).len();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(
        stdout.contains("stopped during feature extraction"),
        "{stdout}"
    );
    let manifest = catdog::data::Manifest::load(&RunDir::new(&run).manifest()).unwrap();
    let photos = manifest
        .files
        .iter()
        .filter(|f| f.split != catdog::data::Split::Test)
        .count();
    let cached = cache_entries(&cache).len();
    // A batch is 8 photos: the one in progress when Ctrl-C came, perhaps the next.
    assert!(
        cached <= seen + 2 * 8 && cached < photos,
        "{cached} of {photos} features computed ({seen} at Ctrl-C)"
    );
    assert!(!RunDir::new(&run).checkpoint(Which::Last).exists());
}
