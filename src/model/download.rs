//! Fetching weight files over HTTP(S): streamed to a temporary file beside the destination,
//! checked (size and SHA-256) while streaming, then renamed into place. The destination name
//! only ever holds a complete, verified file; on any error the temporary file is removed.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::weights::{RESNET18_SHA256, RESNET18_SIZE, RESNET18_URL};
use crate::error::{Error, Result};
use crate::fsio;
use crate::progress::Progress;

/// What [`download_resnet18`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downloaded {
    /// A verified copy was already at the destination.
    AlreadyThere,
    Fetched,
}

/// Makes sure torchvision's ImageNet ResNet-18 weights are at `dest`: keeps a copy already
/// there if its checksum is right, downloads them otherwise.
pub fn download_resnet18(dest: &Path, progress: &dyn Progress) -> Result<Downloaded> {
    if dest.is_file() && fsio::sha256_file(dest)? == RESNET18_SHA256 {
        return Ok(Downloaded::AlreadyThere);
    }
    download(RESNET18_URL, RESNET18_SHA256, RESNET18_SIZE, dest, progress)?;
    Ok(Downloaded::Fetched)
}

/// Downloads `url` to `dest`, which must end up `size` bytes long with SHA-256 `sha256`
/// (lower-case hex). `progress` counts bytes.
pub fn download(
    url: &str,
    sha256: &str,
    size: u64,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let fail = |problem: String| {
        Error::weights(
            dest,
            problem,
            format!(
                "nothing was saved. Without internet access, download {url} on another machine and copy it to \
                 {} (sha256 {sha256}); or pass `--weights PATH`",
                dest.display()
            ),
        )
    };
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| Error::io("cannot create folder", dir, e))?;
    }
    let tmp = fsio::temp_sibling(dest);
    progress.set_total(size);
    let result = fetch(url, sha256, size, &tmp, progress)
        .map_err(fail)
        .and_then(|()| {
            fs::rename(&tmp, dest)
                .map_err(|e| Error::io("cannot move the download into place at", dest, e))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Streams the body into `tmp`, checking length and checksum; the error says what went wrong.
fn fetch(
    url: &str,
    sha256: &str,
    size: u64,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<(), String> {
    // Generous per-phase limits: a dead network fails in a minute, a slow one still finishes.
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| format!("cannot download {url}: {e}"))?;
    if let Some(announced) = response.body().content_length().filter(|&n| n != size) {
        return Err(format!(
            "{url} is {announced} bytes, expected {size}: not the expected file"
        ));
    }
    let mut body = response.into_body().into_reader();
    let mut file =
        File::create(tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| {
            format!("download of {url} broke off after {received} of {size} bytes: {e}")
        })?;
        if n == 0 {
            break;
        }
        received += n as u64;
        if received > size {
            return Err(format!(
                "{url} sent more than the expected {size} bytes: not the expected file"
            ));
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        progress.advance(n as u64);
    }
    if received != size {
        return Err(format!(
            "download of {url} stopped after {received} of {size} bytes"
        ));
    }
    let actual = format!("{:x}", hasher.finalize());
    if actual != sha256 {
        return Err(format!(
            "{url} has SHA-256 {actual}, expected {sha256}: corrupted or not the expected file"
        ));
    }
    file.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Quiet;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::thread;

    /// Serves one HTTP request on 127.0.0.1: announces `content_length`, sends `body`, closes.
    fn serve_once(content_length: usize, body: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut stream = stream;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {content_length}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        });
        format!("http://{addr}/resnet18.pth")
    }

    fn payload() -> Vec<u8> {
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    /// The names in `dir` (none when it was never created).
    fn entries(dir: &Path) -> Vec<String> {
        let Ok(listing) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut names: Vec<_> = listing
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Serves `body` once, announcing `content_length`, and downloads it into
    /// a fresh folder expecting `payload()`: the result, the folder and the target.
    fn fetch(
        content_length: usize,
        body: Vec<u8>,
    ) -> (Result<()>, tempfile::TempDir, std::path::PathBuf) {
        let data = payload();
        let url = serve_once(content_length, body);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cache/w.pth");
        let result = download(
            &url,
            &fsio::sha256_hex(&data),
            data.len() as u64,
            &dest,
            &Quiet,
        );
        (result, dir, dest)
    }

    #[test]
    fn good_file_is_verified_and_moved_into_place() {
        let data = payload();
        let (result, dir, dest) = fetch(data.len(), data.clone());
        result.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert_eq!(entries(&dir.path().join("cache")), ["w.pth"]);
    }

    #[test]
    fn corrupted_file_is_refused_and_nothing_is_left() {
        let mut corrupted = payload();
        corrupted[1234] ^= 0x40;
        let (result, dir, dest) = fetch(corrupted.len(), corrupted);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("has SHA-256") && err.contains("corrupted"),
            "{err}"
        );
        assert!(
            err.contains(&format!("copy it to {}", dest.display())),
            "{err}"
        );
        assert!(entries(&dir.path().join("cache")).is_empty());
    }

    #[test]
    fn interrupted_transfer_is_refused_and_nothing_is_left() {
        let data = payload();
        let (result, dir, _) = fetch(data.len(), data[..data.len() / 3].to_vec());
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("broke off") || err.contains("stopped after"),
            "{err}"
        );
        assert!(entries(&dir.path().join("cache")).is_empty());
    }

    #[test]
    fn wrong_size_is_refused_before_reading_the_body() {
        let data = payload();
        let (result, dir, _) = fetch(data.len() - 1, data[1..].to_vec());
        let err = result.unwrap_err().to_string();
        assert!(err.contains("expected 200000"), "{err}");
        assert!(entries(&dir.path().join("cache")).is_empty());
    }

    #[test]
    fn unreachable_server_says_where_to_put_the_file() {
        // A port that was just free: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("w.pth");
        let err = download(&format!("http://{addr}/w.pth"), "00", 10, &dest, &Quiet)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot download"), "{err}");
        assert!(
            err.contains(&format!("copy it to {}", dest.display())),
            "{err}"
        );
        assert!(entries(dir.path()).is_empty());
    }
}
