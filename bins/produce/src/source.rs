//! What to send: the images of a YOLO dataset (`images/<split>/...` with
//! `labels/<split>/<stem>.txt`) or of any folder (labels beside the images, if any),
//! and how one file becomes a [`Record`] or the reason it is skipped.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use cardet_record::{Labels, Record};

use crate::error::Error;

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp"];

/// One image file to send, with where its labels would be.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceItem {
    pub path: PathBuf,
    /// Relative to the source folder, with `/` separators.
    pub relative_path: String,
    pub split: Option<String>,
    pub label_path: PathBuf,
}

/// How hard to look at an image before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Parse the header (format and size) and check the file is not cut short
    /// (a JPEG ends with its EOI marker, a PNG with its IEND chunk).
    Structure,
    /// Decode every pixel as well: slower, catches corrupt data inside the file.
    Decode,
}

/// Lists the images under `root`, sorted, YOLO layout first.
pub fn scan(root: &Path) -> Result<Vec<SourceItem>, Error> {
    let images_dir = root.join("images");
    let mut items = Vec::new();
    if images_dir.is_dir() {
        for path in walk(&images_dir)? {
            let inside = path.strip_prefix(&images_dir).unwrap_or(&path);
            let components: Vec<String> = inside
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let split = (components.len() > 1).then(|| components[0].clone());
            let label_path = root.join("labels").join(inside).with_extension("txt");
            items.push(SourceItem {
                relative_path: format!("images/{}", components.join("/")),
                path,
                split,
                label_path,
            });
        }
    } else {
        for path in walk(root)? {
            let inside = path.strip_prefix(root).unwrap_or(&path);
            let relative_path = inside
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            items.push(SourceItem {
                label_path: path.with_extension("txt"),
                path,
                relative_path,
                split: None,
            });
        }
    }
    if items.is_empty() {
        return Err(Error::EmptySource(root.to_path_buf()));
    }
    Ok(items)
}

/// Reads one image and its labels into a record, or says why it is skipped.
pub fn load(item: &SourceItem, verify: Verify) -> Result<Record, String> {
    let image = std::fs::read(&item.path).map_err(|error| format!("unreadable: {error}"))?;
    let size = check_image(&image, verify)?;
    let labels = match std::fs::read(&item.label_path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("label file {} is not UTF-8", item.label_path.display()))?;
            Some(Labels::parse(&text).map_err(|error| {
                format!(
                    "malformed label file {}: {error}",
                    item.label_path.display()
                )
            })?)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(format!(
                "label file {} unreadable: {error}",
                item.label_path.display()
            ));
        }
    };
    Record::new(
        image,
        labels,
        item.split.clone(),
        item.relative_path.clone(),
        size,
    )
    .map_err(|error| error.to_string())
}

/// The image's size, or why it is not a whole image.
pub fn check_image(bytes: &[u8], verify: Verify) -> Result<(u32, u32), String> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|error| format!("unreadable: {error}"))?;
    let format = reader
        .format()
        .ok_or_else(|| "not an image (unknown format)".to_string())?;
    let size = match verify {
        Verify::Structure => reader.into_dimensions(),
        Verify::Decode => reader
            .decode()
            .map(|decoded| (decoded.width(), decoded.height())),
    }
    .map_err(|error| format!("corrupt {format:?}: {error}"))?;
    match format {
        image::ImageFormat::Jpeg if !jpeg_is_complete(bytes) => {
            Err("truncated JPEG (no end-of-image marker)".into())
        }
        image::ImageFormat::Png if !png_is_complete(bytes) => {
            Err("truncated PNG (no IEND chunk)".into())
        }
        _ => Ok(size),
    }
}

/// A JPEG ends with FF D9; some writers pad after it, so allow trailing zero bytes.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |last| last + 1);
    end >= 2 && bytes[end - 2..end] == [0xff, 0xd9]
}

/// A PNG's last chunk is IEND: length 0, type `IEND`, its CRC.
fn png_is_complete(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[bytes.len() - 8..bytes.len() - 4] == b"IEND"
}

fn walk(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Source {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Source {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(|source| Error::Source {
                path: path.clone(),
                source,
            })?;
            if file_type.is_dir() {
                pending.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(extension))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8], expected: Result<(u32, u32), &str>) {
        match (check_image(bytes, Verify::Structure), expected) {
            (Ok(size), Ok(expected)) => assert_eq!(size, expected),
            (Err(reason), Err(expected)) => assert!(reason.contains(expected), "{reason}"),
            (actual, expected) => panic!("got {actual:?}, expected {expected:?}"),
        }
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, 99])
        });
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .expect("encodes");
        bytes
    }

    #[test]
    fn whole_and_cut_images() {
        let whole = jpeg(64, 48);
        check(&whole, Ok((64, 48)));
        check(&whole[..whole.len() / 2], Err("truncated JPEG"));
        check(b"hello world, not an image", Err("not an image"));
        let mut png = Vec::new();
        image::DynamicImage::new_rgb8(3, 2)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("encodes");
        check(&png, Ok((3, 2)));
        check(&png[..png.len() - 6], Err("truncated PNG"));
    }

    #[test]
    fn yolo_layout_and_plain_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for (path, bytes) in [
            ("images/train/a.jpg", jpeg(8, 8)),
            ("images/val/b.JPG", jpeg(8, 8)),
            ("images/c.png", jpeg(8, 8)),
            ("images/notes.md", b"x".to_vec()),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        }
        let items = scan(root).expect("scan");
        let summary: Vec<(&str, Option<&str>, PathBuf)> = items
            .iter()
            .map(|item| {
                (
                    item.relative_path.as_str(),
                    item.split.as_deref(),
                    item.label_path
                        .strip_prefix(root)
                        .expect("inside")
                        .to_path_buf(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("images/c.png", None, PathBuf::from("labels/c.txt")),
                (
                    "images/train/a.jpg",
                    Some("train"),
                    PathBuf::from("labels/train/a.txt")
                ),
                (
                    "images/val/b.JPG",
                    Some("val"),
                    PathBuf::from("labels/val/b.txt")
                ),
            ]
        );
        let plain = scan(&root.join("images/train")).expect("scan");
        assert_eq!(plain[0].relative_path, "a.jpg");
        assert_eq!(plain[0].label_path, root.join("images/train/a.txt"));
        assert!(matches!(
            scan(&root.join("labels-none")),
            Err(Error::Source { .. })
        ));
    }
}
