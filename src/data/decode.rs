//! Reading one photo safely. Every file goes through here, in the clean step
//! and again when it is loaded for the model, so what was validated is what is
//! trained on.
//!
//! Safety: the file size and the pixel count are checked before anything large
//! is allocated (a decompression bomb is refused from its header), and decoder
//! panics on hostile input become a [`Rejection`], never a crash.

use std::fmt;
use std::io::{Cursor, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// Resource limits for one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Files larger than this are refused unread (default 64 MiB).
    pub max_file_bytes: u64,
    /// Images with more pixels are refused from their header (default 64 megapixels;
    /// the largest photo in the Cats vs Dogs set is under 1 megapixel).
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 64 << 20,
            max_pixels: 64_000_000,
        }
    }
}

/// Why a file cannot be used, as a person would say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Empty,
    Truncated,
    Corrupt,
    NotAnImage,
    TooLarge,
    Unreadable,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty file",
            RejectReason::Truncated => "truncated",
            RejectReason::Corrupt => "corrupt image data",
            RejectReason::NotAnImage => "not an image",
            RejectReason::TooLarge => "over the size limit",
            RejectReason::Unreadable => "unreadable",
        }
    }
}

/// A file refused by [`decode`]: the reason and the detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.label(), self.detail)
    }
}

/// Something a usable file needed done to it, worth telling the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// The content's format does not match the file's extension.
    FormatMismatch,
    /// The colour mode was converted to 8-bit RGB.
    Converted,
    /// The EXIF orientation tag was applied (the photo was rotated or flipped).
    Oriented,
    /// Bytes follow the end of the image data.
    TrailingBytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub detail: String,
}

/// A decoded photo: 8-bit RGB, upright.
#[derive(Debug)]
pub struct Decoded {
    pub image: RgbImage,
    pub format: ImageFormat,
    pub warnings: Vec<Warning>,
}

/// Reads a file within the byte limit; one that is not there "does not exist".
pub fn read_file(path: &Path, limits: &Limits) -> Result<Vec<u8>, Rejection> {
    read(path, limits, "the file does not exist")
}

/// [`read_file`] for a file found by listing its folder: if it is missing now,
/// it was moved or deleted since.
pub fn read_listed_file(path: &Path, limits: &Limits) -> Result<Vec<u8>, Rejection> {
    read(
        path,
        limits,
        "the file is gone (moved or deleted after the folder was listed)",
    )
}

fn read(path: &Path, limits: &Limits, missing: &str) -> Result<Vec<u8>, Rejection> {
    let file = std::fs::File::open(path).map_err(|e| {
        let detail = match e.kind() {
            std::io::ErrorKind::NotFound => missing.to_owned(),
            _ => e.to_string(),
        };
        Rejection::new(RejectReason::Unreadable, detail)
    })?;
    let mut bytes = Vec::new();
    // Read one byte past the limit to tell "at the limit" from "over it" without trusting metadata.
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Rejection::new(RejectReason::Unreadable, e.to_string()))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("file is over {} MiB", limits.max_file_bytes >> 20),
        ));
    }
    Ok(bytes)
}

/// Reads and decodes a file (see [`decode`]).
pub fn decode_file(path: &Path, limits: &Limits) -> Result<Decoded, Rejection> {
    let bytes = read_file(path, limits)?;
    decode(&bytes, extension(path).as_deref(), limits)
}

/// Decodes a whole image to upright 8-bit RGB, or says why not.
/// `extension` (lower case, no dot) is only used to warn about mismatches.
pub fn decode(
    bytes: &[u8],
    extension: Option<&str>,
    limits: &Limits,
) -> Result<Decoded, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(RejectReason::Empty, "the file has 0 bytes"));
    }
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, extension, limits))) {
        Ok(result) => result,
        Err(_) => Err(Rejection::new(
            RejectReason::Corrupt,
            "the decoder failed on this file's data",
        )),
    }
}

fn decode_inner(
    bytes: &[u8],
    extension: Option<&str>,
    limits: &Limits,
) -> Result<Decoded, Rejection> {
    let format = image::guess_format(bytes).map_err(|_| {
        let what = if bytes.iter().take(512).all(|b| b.is_ascii()) {
            "text"
        } else {
            "data"
        };
        Rejection::new(
            RejectReason::NotAnImage,
            format!("the content is {what}, not a known image format"),
        )
    })?;
    let mut warnings = Vec::new();
    if let Some(ext) = extension
        && !format.extensions_str().contains(&ext)
    {
        warnings.push(Warning {
            kind: WarningKind::FormatMismatch,
            detail: format!("{} content under a .{ext} name", format_name(format)),
        });
    }
    let mut cmyk = false;
    if format == ImageFormat::Jpeg {
        let info = jpeg_structure(bytes);
        match info.end {
            None => {
                return Err(Rejection::new(
                    RejectReason::Truncated,
                    "the JPEG data ends before its end-of-image marker",
                ));
            }
            Some(end) if end < bytes.len() => warnings.push(Warning {
                kind: WarningKind::TrailingBytes,
                detail: format!("{} bytes after the end of the image", bytes.len() - end),
            }),
            Some(_) => {}
        }
        cmyk = info.components == Some(4);
    }
    if format == ImageFormat::Tiff {
        check_tiff_tags(bytes)?;
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels * 8 + (64 << 20));
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(reject_from)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Rejection::new(
            RejectReason::Corrupt,
            format!("the image is {w}x{h} pixels"),
        ));
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "{w}x{h} pixels is over the limit of {} megapixels",
                limits.max_pixels / 1_000_000
            ),
        ));
    }
    let color = decoder.color_type();
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(reject_from)?;
    if orientation != image::metadata::Orientation::NoTransforms {
        image.apply_orientation(orientation);
        warnings.push(Warning {
            kind: WarningKind::Oriented,
            detail: format!("EXIF orientation applied ({orientation:?})"),
        });
    }
    if cmyk || color != ColorType::Rgb8 {
        let from = if cmyk {
            "CMYK".to_owned()
        } else {
            format!("{color:?}")
        };
        warnings.push(Warning {
            kind: WarningKind::Converted,
            detail: format!("colour mode {from} converted to RGB8"),
        });
    }
    Ok(Decoded {
        image: image.into_rgb8(),
        format,
        warnings,
    })
}

fn reject_from(e: image::ImageError) -> Rejection {
    use image::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Rejection::new(RejectReason::Truncated, "the image data ends early")
        }
        E::Limits(l) => Rejection::new(RejectReason::TooLarge, l.to_string()),
        E::Unsupported(u) => Rejection::new(RejectReason::NotAnImage, u.to_string()),
        other => {
            let text = other.to_string();
            let lower = text.to_ascii_lowercase();
            let truncated = [
                "eof",
                "end of file",
                "unexpected end",
                "truncat",
                "no more bytes",
            ];
            if truncated.iter().any(|t| lower.contains(t)) {
                Rejection::new(RejectReason::Truncated, text)
            } else if lower.contains("too large") {
                // Some decoders enforce their own dimension limits from the header.
                Rejection::new(RejectReason::TooLarge, text)
            } else {
                Rejection::new(RejectReason::Corrupt, text)
            }
        }
    }
}

/// The file's extension, lower-cased.
pub fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "another image format's",
    }
}

struct JpegInfo {
    /// Offset just past the end-of-image marker, if one was reached.
    end: Option<usize>,
    /// Colour components of the frame (1 grey, 3 YCbCr, 4 CMYK).
    components: Option<u8>,
}

/// Walks the JPEG marker segments to find the real end of the image. Looking
/// for the last FFD9 would be fooled by an EXIF thumbnail, whose own
/// end marker sits inside a length-prefixed segment that this skips.
fn jpeg_structure(b: &[u8]) -> JpegInfo {
    let mut info = JpegInfo {
        end: None,
        components: None,
    };
    let mut i = 2; // after SOI
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            return info; // lost sync: treat as no end marker found
        }
        let marker = b[i + 1];
        match marker {
            0xFF => i += 1, // fill byte
            0xD9 => {
                info.end = Some(i + 2);
                return info;
            }
            0x01 | 0xD0..=0xD7 => i += 2, // no length
            _ => {
                if i + 3 >= b.len() {
                    return info;
                }
                let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
                if is_sof && i + 9 < b.len() {
                    info.components = Some(b[i + 9]);
                }
                i += 2 + len;
                if marker == 0xDA {
                    // Entropy-coded data: runs until a marker other than a stuffed
                    // zero or a restart marker.
                    while i + 1 < b.len() {
                        if b[i] == 0xFF && !matches!(b[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
                            break;
                        }
                        i += 1;
                    }
                }
            }
        }
    }
    info
}

/// The most values one TIFF tag may hold. The `tiff` crate reads a tag's
/// values into a list of about 24 bytes each before any limit of ours applies,
/// so a header claiming billions of values would cost gigabytes; real tags
/// (strip and tile offsets included) hold far fewer.
const MAX_TIFF_TAG_VALUES: u64 = 1 << 20;

/// Refuses a TIFF whose first image's tags claim more values than the file
/// could hold or than [`MAX_TIFF_TAG_VALUES`], before the decoder reads them.
fn check_tiff_tags(b: &[u8]) -> Result<(), Rejection> {
    let big_endian = b.starts_with(b"MM");
    let int = |at: usize, n: usize| -> Option<u64> {
        let bytes = b.get(at..at.checked_add(n)?)?;
        let fold = |acc: u64, &x: &u8| (acc << 8) | u64::from(x);
        Some(if big_endian {
            bytes.iter().fold(0, fold)
        } else {
            bytes.iter().rev().fold(0, fold)
        })
    };
    // Classic TIFF: 2-byte entry count, 12-byte entries with 4-byte counts;
    // BigTIFF (version 43): 8-byte entry count, 20-byte entries with 8-byte counts.
    let (first_ifd, entries_bytes, count_bytes, entry_bytes) = match int(2, 2) {
        Some(43) => (int(8, 8), 8, 8, 20),
        _ => (int(4, 4), 2, 4, 12),
    };
    // A header or entry that is out of range is left to the decoder to report.
    let Some(ifd) = first_ifd.and_then(|o| usize::try_from(o).ok()) else {
        return Ok(());
    };
    let entries = int(ifd, entries_bytes).unwrap_or(0);
    for i in 0..entries {
        let Some(entry) = usize::try_from(i)
            .ok()
            .and_then(|i| (ifd + entries_bytes).checked_add(i.checked_mul(entry_bytes)?))
        else {
            break;
        };
        let (Some(kind), Some(count)) = (int(entry + 2, 2), int(entry + 4, count_bytes)) else {
            break;
        };
        let value_size = match kind {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16..=18 => 8,
            _ => continue,
        };
        if count.saturating_mul(value_size) > b.len() as u64 {
            return Err(Rejection::new(
                RejectReason::Corrupt,
                format!("a TIFF tag claims {count} values, more than the file holds"),
            ));
        }
        if count > MAX_TIFF_TAG_VALUES {
            return Err(Rejection::new(
                RejectReason::TooLarge,
                format!("a TIFF tag holds {count} values, over the limit of {MAX_TIFF_TAG_VALUES}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn reason(bytes: &[u8], ext: &str) -> RejectReason {
        decode(bytes, Some(ext), &Limits::default())
            .unwrap_err()
            .reason
    }

    #[test]
    fn clean_jpeg_decodes_without_warnings() {
        let d = decode(&jpeg(40, 30), Some("jpg"), &Limits::default()).unwrap();
        assert_eq!(d.image.dimensions(), (40, 30));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn broken_files_are_rejected_with_the_right_reason() {
        let good = jpeg(64, 48);
        assert_eq!(reason(&[], "jpg"), RejectReason::Empty);
        assert_eq!(
            reason(&good[..good.len() / 2], "jpg"),
            RejectReason::Truncated
        );
        assert_eq!(
            reason(b"<html>not found</html>", "jpg"),
            RejectReason::NotAnImage
        );
        let png_bytes = png(DynamicImage::ImageRgb8(RgbImage::new(30, 20)));
        assert_eq!(
            reason(&png_bytes[..png_bytes.len() - 30], "png"),
            RejectReason::Truncated
        );
        // JPEG header, garbage body.
        let mut garbage = good[..200].to_vec();
        garbage.extend(std::iter::repeat_n(0x55u8, 400));
        garbage.extend([0xFF, 0xD9]);
        assert!(matches!(
            reason(&garbage, "jpg"),
            RejectReason::Corrupt | RejectReason::Truncated
        ));
    }

    #[test]
    fn mismatch_conversion_and_trailing_bytes_are_warnings() {
        let gray = png(DynamicImage::ImageLuma8(image::GrayImage::new(8, 8)));
        let d = decode(&gray, Some("jpg"), &Limits::default()).unwrap();
        let kinds: Vec<_> = d.warnings.iter().map(|w| w.kind).collect();
        assert_eq!(kinds, [WarningKind::FormatMismatch, WarningKind::Converted]);

        let mut trailing = jpeg(16, 16);
        trailing.extend_from_slice(b"junk after the image");
        let d = decode(&trailing, Some("jpg"), &Limits::default()).unwrap();
        assert_eq!(d.warnings[0].kind, WarningKind::TrailingBytes);
        assert!(d.warnings[0].detail.starts_with("20 bytes"));
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        // A valid PNG header claiming 100k x 100k pixels: refused before allocation.
        let mut bytes = png(DynamicImage::ImageRgb8(RgbImage::new(1, 1)));
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let r = decode(&bytes, Some("png"), &Limits::default()).unwrap_err();
        assert_eq!(r.reason, RejectReason::TooLarge, "{r}");
    }

    #[test]
    fn file_over_the_byte_limit_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.jpg");
        std::fs::write(&p, vec![0u8; 2048]).unwrap();
        let limits = Limits {
            max_file_bytes: 1024,
            ..Limits::default()
        };
        assert_eq!(
            read_file(&p, &limits).unwrap_err().reason,
            RejectReason::TooLarge
        );
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
