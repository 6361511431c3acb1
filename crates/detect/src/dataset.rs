//! Datasets in the Ultralytics YOLO format: read, validate, write.
//!
//! A dataset is a `data.yaml` (`path`, `train`, `val`, `names`) plus
//! `images/{train,val}/*` and `labels/{train,val}/*.txt`, where each label line is
//! `class cx cy w h`, normalised to `0..=1` by the image size. Predictions use the
//! same lines with a sixth column, the confidence. As in Ultralytics, an image
//! without a label file is an image with no objects, and the label file of
//! `.../images/x/a.jpg` is `.../labels/x/a.txt`.
//!
//! Strict readers ([`read_label_file`]) stop at the first malformed line with an
//! error naming the file and line; dataset readers ([`read_dataset`]) skip the image
//! instead and return a [`Diagnostic`] for it, so one bad file never stops training.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{Diagnostic, Error};
use crate::geometry::BoundingBox;
use crate::image_io;
use crate::yaml::{self, YamlValue};

/// One object of a label file, normalised to the image size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YoloLabel {
    pub class_id: usize,
    pub cx: f32,
    pub cy: f32,
    pub width: f32,
    pub height: f32,
    /// The sixth column of prediction files.
    pub confidence: Option<f32>,
}

impl YoloLabel {
    /// From a box in pixels of an image of `image_size`.
    pub fn from_box(class_id: usize, bbox: &BoundingBox, image_size: (u32, u32)) -> YoloLabel {
        let (width, height) = (image_size.0 as f32, image_size.1 as f32);
        YoloLabel {
            class_id,
            cx: (bbox.x1 + bbox.x2) / 2.0 / width,
            cy: (bbox.y1 + bbox.y2) / 2.0 / height,
            width: bbox.width() / width,
            height: bbox.height() / height,
            confidence: None,
        }
    }

    /// The box in pixels of an image of `image_size`.
    pub fn to_box(&self, image_size: (u32, u32)) -> BoundingBox {
        let (width, height) = (image_size.0 as f32, image_size.1 as f32);
        BoundingBox::from_cxcywh(
            self.cx * width,
            self.cy * height,
            self.width * width,
            self.height * height,
        )
    }

    /// `class cx cy w h` (and ` conf` when there is one), six decimals.
    pub fn to_line(&self) -> String {
        let mut line = format!(
            "{} {:.6} {:.6} {:.6} {:.6}",
            self.class_id, self.cx, self.cy, self.width, self.height
        );
        if let Some(confidence) = self.confidence {
            line.push_str(&format!(" {confidence:.6}"));
        }
        line
    }
}

/// Parses one line; `Ok(None)` for a blank line. The error is the reason, without
/// the file and line (the caller adds them).
pub fn parse_label_line(line: &str) -> Result<Option<YoloLabel>, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.is_empty() {
        return Ok(None);
    }
    if fields.len() != 5 && fields.len() != 6 {
        return Err(format!(
            "expected `class cx cy w h [confidence]`, got {} fields",
            fields.len()
        ));
    }
    let class_id = parse_class_id(fields[0])?;
    let mut numbers = [0.0_f32; 5];
    for (slot, (name, field)) in numbers.iter_mut().zip(
        ["cx", "cy", "w", "h", "confidence"]
            .iter()
            .zip(&fields[1..]),
    ) {
        let value: f32 = field
            .parse()
            .map_err(|_| format!("{name} is not a number: {field:?}"))?;
        if !value.is_finite() {
            return Err(format!("{name} is not finite: {field:?}"));
        }
        *slot = value;
    }
    let [cx, cy, width, height, confidence] = numbers;
    for (name, value) in [("cx", cx), ("cy", cy), ("w", width), ("h", height)] {
        if !(0.0..=1.0).contains(&value) {
            return Err(format!("{name} {value} is not normalised to 0..1"));
        }
    }
    Ok(Some(YoloLabel {
        class_id,
        cx,
        cy,
        width,
        height,
        confidence: (fields.len() == 6).then_some(confidence),
    }))
}

/// Reads a label file, failing at the first malformed line (naming file and line).
/// A missing file is an image with no objects.
pub fn read_label_file(path: &Path) -> Result<Vec<YoloLabel>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut labels = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        match parse_label_line(line) {
            Ok(Some(label)) => labels.push(label),
            Ok(None) => {}
            Err(reason) => {
                return Err(Error::LabelLine {
                    path: path.to_path_buf(),
                    line: line_idx + 1,
                    reason,
                });
            }
        }
    }
    Ok(labels)
}

/// Writes label lines (one per object; an empty file for no objects).
pub fn write_label_file(path: &Path, labels: &[YoloLabel]) -> Result<(), Error> {
    let mut text = String::new();
    for label in labels {
        text.push_str(&label.to_line());
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

/// Ultralytics' rule: the last `/images/` becomes `/labels/` and the extension `.txt`.
pub fn label_path_for_image(image_path: &Path) -> PathBuf {
    let text = image_path.to_string_lossy();
    let separator = std::path::MAIN_SEPARATOR;
    let images = format!("{separator}images{separator}");
    let labels = format!("{separator}labels{separator}");
    let swapped = match text.rfind(&images) {
        Some(at) => format!("{}{labels}{}", &text[..at], &text[at + images.len()..]),
        None => text.to_string(),
    };
    PathBuf::from(swapped).with_extension("txt")
}

/// The parsed `data.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct DataYaml {
    /// The dataset root, resolved (relative `path` values are taken from the yaml's folder).
    pub root: PathBuf,
    /// `train` and `val` as written (a folder or a `.txt` list, relative to `root`).
    pub train: String,
    pub val: String,
    /// Class names, index = class id.
    pub names: Vec<String>,
}

impl DataYaml {
    /// The images of a split: every image file under the folder (sorted), or the
    /// paths listed in a `.txt` file.
    pub fn split_images(&self, split: &str) -> Result<Vec<PathBuf>, Error> {
        let relative = match split {
            "train" => &self.train,
            "val" => &self.val,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown split {other:?} (expected train or val)"
                )));
            }
        };
        let location = self.root.join(relative);
        if location
            .extension()
            .is_some_and(|extension| extension == "txt")
        {
            let text = std::fs::read_to_string(&location).map_err(|source| Error::Io {
                path: location.clone(),
                source,
            })?;
            return Ok(text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| {
                    let listed = Path::new(line);
                    if listed.is_absolute() {
                        listed.to_path_buf()
                    } else {
                        self.root.join(line.trim_start_matches("./"))
                    }
                })
                .collect());
        }
        let mut images = Vec::new();
        collect_images(&location, &mut images)?;
        images.sort();
        Ok(images)
    }
}

/// Reads `data.yaml`: `names` as a list or an id map, `path` optional.
pub fn read_data_yaml(path: &Path) -> Result<DataYaml, Error> {
    let yaml_error = |reason: String| Error::DataYaml {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let entries = yaml::parse(&text).map_err(|(line, reason)| Error::LabelLine {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    };
    let scalar = |key: &str| -> Result<Option<String>, Error> {
        match get(key) {
            None => Ok(None),
            Some(YamlValue::Scalar(value)) => Ok(Some(value.clone())),
            Some(_) => Err(yaml_error(format!("`{key}` must be a single value"))),
        }
    };
    let yaml_folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = match scalar("path")? {
        None => yaml_folder.clone(),
        Some(value) => {
            let written = PathBuf::from(&value);
            if written.is_absolute() {
                // A dataset moved with its yaml still reads: fall back to the yaml's folder.
                if written.exists() || !yaml_folder.join("images").exists() {
                    written
                } else {
                    yaml_folder.clone()
                }
            } else {
                yaml_folder.join(written)
            }
        }
    };
    let train = scalar("train")?.ok_or_else(|| yaml_error("missing `train`".to_string()))?;
    let val = scalar("val")?.ok_or_else(|| yaml_error("missing `val`".to_string()))?;
    let names = match get("names") {
        None => return Err(yaml_error("missing `names`".to_string())),
        Some(YamlValue::List(names)) => names.clone(),
        Some(YamlValue::Map(pairs)) => {
            let mut names = vec![None; pairs.len()];
            for (key, name) in pairs {
                let class_id: usize = key.parse().map_err(|_| {
                    yaml_error(format!("class id {key:?} in `names` is not a number"))
                })?;
                let slot = names.get_mut(class_id).ok_or_else(|| {
                    yaml_error(format!(
                        "class ids in `names` must be 0..{}, got {class_id}",
                        pairs.len()
                    ))
                })?;
                *slot = Some(name.clone());
            }
            names.into_iter().map(Option::unwrap_or_default).collect()
        }
        Some(YamlValue::Scalar(_)) => {
            return Err(yaml_error("`names` must be a list or a map".to_string()));
        }
    };
    if let Some(nc) = scalar("nc")?
        && nc.parse::<usize>().ok() != Some(names.len())
    {
        return Err(yaml_error(format!(
            "`nc` is {nc} but `names` has {} entries",
            names.len()
        )));
    }
    Ok(DataYaml {
        root,
        train,
        val,
        names,
    })
}

/// One image of a split with its objects.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetItem {
    pub image_path: PathBuf,
    pub image_size: (u32, u32),
    pub labels: Vec<YoloLabel>,
}

/// A read and validated dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub data: DataYaml,
    pub train: Vec<DatasetItem>,
    pub val: Vec<DatasetItem>,
}

/// Reads `data.yaml` and both splits. The yaml itself must be valid (an error);
/// a bad image or label file skips that image with a [`Diagnostic`], as Ultralytics
/// skips corrupt images.
pub fn read_dataset(data_yaml: &Path) -> Result<(Dataset, Vec<Diagnostic>), Error> {
    let data = read_data_yaml(data_yaml)?;
    let mut diagnostics = Vec::new();
    let train = read_split(&data, "train", &mut diagnostics)?;
    let val = read_split(&data, "val", &mut diagnostics)?;
    Ok((Dataset { data, train, val }, diagnostics))
}

fn read_split(
    data: &DataYaml,
    split: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<Vec<DatasetItem>, Error> {
    let mut items = Vec::new();
    for image_path in data.split_images(split)? {
        match read_item(&image_path, data.names.len()) {
            Ok(item) => items.push(item),
            Err(error) => diagnostics.push(error.into()),
        }
    }
    Ok(items)
}

/// One image's size (from its header) and labels, validated against `n_classes`.
pub fn read_item(image_path: &Path, n_classes: usize) -> Result<DatasetItem, Error> {
    let image_size = image_io::image_size(image_path)?;
    let label_path = label_path_for_image(image_path);
    let labels = read_label_file(&label_path)?;
    for (label_idx, label) in labels.iter().enumerate() {
        if label.class_id >= n_classes {
            return Err(Error::LabelLine {
                path: label_path,
                line: label_idx + 1,
                reason: format!(
                    "class {} is not below the {n_classes} names of data.yaml",
                    label.class_id
                ),
            });
        }
        if label.confidence.is_some() {
            return Err(Error::LabelLine {
                path: label_path,
                line: label_idx + 1,
                reason: "a ground-truth label has a confidence column".to_string(),
            });
        }
    }
    Ok(DatasetItem {
        image_path: image_path.to_path_buf(),
        image_size,
        labels,
    })
}

/// Writes a dataset image by image, then its `data.yaml`.
pub struct DatasetWriter {
    root: PathBuf,
    names: Vec<String>,
    image_extension: &'static str,
}

impl DatasetWriter {
    /// Creates `root/images/{train,val}` and `root/labels/{train,val}`.
    /// `image_extension` is `png` or `jpg`.
    pub fn create(
        root: &Path,
        names: Vec<String>,
        image_extension: &'static str,
    ) -> Result<DatasetWriter, Error> {
        for folder in ["images/train", "images/val", "labels/train", "labels/val"] {
            let path = root.join(folder);
            std::fs::create_dir_all(&path).map_err(|source| Error::Io { path, source })?;
        }
        Ok(DatasetWriter {
            root: root.to_path_buf(),
            names,
            image_extension,
        })
    }

    /// Writes `images/<split>/<stem>.<ext>` and its label file.
    pub fn add(
        &self,
        split: &str,
        stem: &str,
        image: &RgbImage,
        labels: &[YoloLabel],
    ) -> Result<PathBuf, Error> {
        if split != "train" && split != "val" {
            return Err(Error::InvalidArgument(format!("unknown split {split:?}")));
        }
        let image_path = self
            .root
            .join("images")
            .join(split)
            .join(format!("{stem}.{}", self.image_extension));
        image_io::save(image, &image_path)?;
        write_label_file(&label_path_for_image(&image_path), labels)?;
        Ok(image_path)
    }

    /// Writes `data.yaml` and returns its path.
    pub fn finish(self) -> Result<PathBuf, Error> {
        let absolute_root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut text = format!(
            "# Written by cardet-detect. Ultralytics YOLO format.\npath: {}\ntrain: images/train\nval: images/val\nnames:\n",
            yaml::quote_if_needed(&absolute_root.to_string_lossy())
        );
        for (class_id, name) in self.names.iter().enumerate() {
            text.push_str(&format!("  {class_id}: {}\n", yaml::quote_if_needed(name)));
        }
        let path = self.root.join("data.yaml");
        write_file(&path, text.as_bytes())?;
        Ok(path)
    }
}

fn collect_images(folder: &Path, images: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(folder).map_err(|source| Error::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: folder.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_images(&path, images)?;
        } else if image_io::is_image_path(&path) {
            images.push(path);
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::create(path).map_err(io_error)?;
    file.write_all(bytes).map_err(io_error)
}

fn parse_class_id(field: &str) -> Result<usize, String> {
    // Ultralytics writes integer ids but reads floats like `2.0` too.
    if let Ok(class_id) = field.parse::<usize>() {
        return Ok(class_id);
    }
    match field.parse::<f64>() {
        Ok(value) if value >= 0.0 && value.fract() == 0.0 && value < 1e9 => Ok(value as usize),
        _ => Err(format!("class {field:?} is not a non-negative integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(class, [cx, cy, w, h], confidence)`.
    type Parsed = Option<(usize, [f32; 4], Option<f32>)>;

    fn check(line: &str, expected: Result<Parsed, &str>) {
        let actual = parse_label_line(line);
        match (actual, expected) {
            (Ok(actual), Ok(expected)) => assert_eq!(
                actual.map(|l| (l.class_id, [l.cx, l.cy, l.width, l.height], l.confidence)),
                expected,
                "{line:?}"
            ),
            (Err(reason), Err(fragment)) => {
                assert!(reason.contains(fragment), "{line:?}: {reason}")
            }
            (actual, expected) => panic!("{line:?}: got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn label_lines_parse_or_say_why_not() {
        check(
            "2 0.5 0.5 0.25 0.125",
            Ok(Some((2, [0.5, 0.5, 0.25, 0.125], None))),
        );
        check(
            "7 0.1 0.2 0.3 0.4 0.91",
            Ok(Some((7, [0.1, 0.2, 0.3, 0.4], Some(0.91)))),
        );
        check(
            "3.0 0.1 0.2 0.3 0.4",
            Ok(Some((3, [0.1, 0.2, 0.3, 0.4], None))),
        );
        check("   ", Ok(None));
        check("2 0.5 0.5 0.25", Err("got 4 fields"));
        check("car 0.5 0.5 0.25 0.1", Err("class \"car\""));
        check("2 0.5 x 0.25 0.1", Err("cy is not a number"));
        check("2 0.5 0.5 1.25 0.1", Err("w 1.25 is not normalised"));
        check("-1 0.5 0.5 0.25 0.1", Err("not a non-negative integer"));
    }

    #[test]
    fn label_paths_follow_ultralytics() {
        assert_eq!(
            label_path_for_image(Path::new("/d/images/train/images/a.b.jpg")),
            PathBuf::from("/d/images/train/labels/a.b.txt")
        );
        assert_eq!(
            label_path_for_image(Path::new("/d/images/val/x.png")),
            PathBuf::from("/d/labels/val/x.txt")
        );
    }
}
