//! COCO-style evaluation of detections: mAP@0.5 and mAP@0.5:0.95 with 101-point
//! interpolated precision, per-class AP, precision and recall at the best F1, and a
//! precision-recall plot.
//!
//! The matching and accumulation follow `pycocotools.cocoeval.COCOeval` for boxes
//! with area range "all" and at most 100 detections per image and class: detections
//! are matched greedily by score to the unmatched ground truth of best IoU (crowd
//! boxes match any number of detections with IoU = intersection / detection area,
//! and neither count as true nor false positives), precision is made monotone from
//! the right and sampled at recall `0, 0.01, ..., 1`; a class with no ground truth
//! is left out of the mean. Boxes are `[x, y, w, h]` in `f64`, like COCO JSON.
//! Inputs come from COCO JSON (annotations and results) or YOLO label folders.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use crate::classes::class_name;
use crate::dataset::{YoloLabel, read_label_file};
use crate::draw;
use crate::error::{Diagnostic, Error};
use crate::geometry::BoundingBox;

/// Detections kept per image and class (COCO's `maxDets[-1]`).
pub const MAX_DETECTIONS_PER_IMAGE: usize = 100;

/// The label files of a YOLO folder by stem.
pub type LabelFiles = BTreeMap<String, Vec<YoloLabel>>;

/// One ground-truth object.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundTruthBox {
    pub category_id: usize,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// A crowd region: detections inside it are neither right nor wrong.
    pub iscrowd: bool,
}

/// One image of the ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalImage {
    pub id: u64,
    /// The file name (COCO `file_name`) or label stem, to match YOLO predictions.
    pub name: String,
    /// `(width, height)` where known; needed to read normalised YOLO predictions
    /// against pixel ground truth.
    pub size: Option<(u32, u32)>,
    pub objects: Vec<GroundTruthBox>,
}

/// The ground truth: images and the categories evaluated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroundTruth {
    pub images: Vec<EvalImage>,
    /// `(category id, name)`.
    pub categories: Vec<(usize, String)>,
}

/// One predicted box.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictedBox {
    pub image_id: u64,
    pub category_id: usize,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    pub score: f64,
}

/// The metrics of one category.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassReport {
    pub category_id: usize,
    pub name: String,
    pub n_ground_truth: usize,
    pub n_predictions: usize,
    pub ap50: f64,
    pub ap50_95: f64,
    /// Precision, recall and F1 at the score threshold of best F1 (IoU 0.5).
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub best_f1_score_threshold: f64,
    /// Interpolated precision at recall 0, 0.01, ..., 1 (IoU 0.5).
    pub pr_curve: Vec<f64>,
}

/// The whole evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub map50: f64,
    pub map50_95: f64,
    /// Mean precision and recall over classes at the one score threshold that
    /// maximises their mean F1 (Ultralytics' "P" and "R").
    pub precision: f64,
    pub recall: f64,
    pub score_threshold: f64,
    pub n_images: usize,
    /// Categories with ground truth, by id.
    pub per_class: Vec<ClassReport>,
}

/// The ten IoU thresholds, `np.linspace(0.5, 0.95, 10)`.
pub fn iou_thresholds() -> [f64; 10] {
    linspace::<10>(0.5, 0.95)
}

/// The 101 recall points, `np.linspace(0, 1, 101)`.
pub fn recall_thresholds() -> [f64; 101] {
    linspace::<101>(0.0, 1.0)
}

/// Evaluates `predictions` against `ground_truth`.
pub fn evaluate(ground_truth: &GroundTruth, predictions: &[PredictedBox]) -> EvalReport {
    let iou_thresholds = iou_thresholds();
    let mut images: Vec<&EvalImage> = ground_truth.images.iter().collect();
    images.sort_by_key(|image| image.id);
    let image_slot: HashMap<u64, usize> = images
        .iter()
        .enumerate()
        .map(|(slot, image)| (image.id, slot))
        .collect();
    let mut categories: Vec<(usize, String)> = ground_truth.categories.clone();
    categories.sort_by_key(|(id, _)| *id);
    categories.dedup_by_key(|(id, _)| *id);
    // Detections grouped by (image slot, category), in file order.
    let mut detections_by_key: HashMap<(usize, usize), Vec<&PredictedBox>> = HashMap::new();
    for prediction in predictions {
        if let Some(&slot) = image_slot.get(&prediction.image_id) {
            detections_by_key
                .entry((slot, prediction.category_id))
                .or_default()
                .push(prediction);
        }
    }
    let mut per_class = Vec::new();
    for (category_id, name) in &categories {
        let mut evaluated = Vec::new();
        for (slot, image) in images.iter().enumerate() {
            let objects: Vec<&GroundTruthBox> = image
                .objects
                .iter()
                .filter(|object| object.category_id == *category_id)
                .collect();
            let detections = detections_by_key
                .get(&(slot, *category_id))
                .cloned()
                .unwrap_or_default();
            if let Some(result) = evaluate_image(&objects, &detections, &iou_thresholds) {
                evaluated.push(result);
            }
        }
        let n_ground_truth: usize = evaluated
            .iter()
            .map(|result| result.n_counted_ground_truth)
            .sum();
        if n_ground_truth == 0 {
            continue;
        }
        let n_predictions = evaluated.iter().map(|result| result.scores.len()).sum();
        per_class.push(accumulate(
            *category_id,
            name,
            &evaluated,
            n_ground_truth,
            n_predictions,
        ));
    }
    let mean = |values: Vec<f64>| {
        if values.is_empty() {
            -1.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        }
    };
    let map50 = mean(per_class.iter().map(|class| class.ap50).collect());
    let map50_95 = mean(per_class.iter().map(|class| class.ap50_95).collect());
    let (precision, recall, score_threshold) = best_mean_f1(
        &per_class,
        predictions,
        ground_truth,
        &image_slot,
        &iou_thresholds,
    );
    EvalReport {
        map50,
        map50_95,
        precision,
        recall,
        score_threshold,
        n_images: images.len(),
        per_class,
    }
}

impl EvalReport {
    /// `{"map50", "map50_95", "precision", "recall", "n_images", "per_class": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "map50": self.map50,
            "map50_95": self.map50_95,
            "precision": self.precision,
            "recall": self.recall,
            "score_threshold": self.score_threshold,
            "n_images": self.n_images,
            "per_class": self.per_class.iter().map(|class| serde_json::json!({
                "class_id": class.category_id,
                "name": class.name,
                "n_ground_truth": class.n_ground_truth,
                "n_predictions": class.n_predictions,
                "ap50": class.ap50,
                "ap50_95": class.ap50_95,
                "precision": class.precision,
                "recall": class.recall,
                "f1": class.f1,
            })).collect::<Vec<_>>(),
        })
    }

    /// A fixed-width table, one row per class and an `all` row.
    pub fn to_table(&self) -> String {
        let mut table = format!(
            "{:<16} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
            "class", "labels", "preds", "P", "R", "mAP50", "mAP50-95"
        );
        let n_labels: usize = self
            .per_class
            .iter()
            .map(|class| class.n_ground_truth)
            .sum();
        let n_predictions: usize = self.per_class.iter().map(|class| class.n_predictions).sum();
        table.push_str(&format!(
            "{:<16} {:>8} {:>8} {:>9.4} {:>9.4} {:>9.4} {:>9.4}\n",
            "all", n_labels, n_predictions, self.precision, self.recall, self.map50, self.map50_95
        ));
        for class in &self.per_class {
            table.push_str(&format!(
                "{:<16} {:>8} {:>8} {:>9.4} {:>9.4} {:>9.4} {:>9.4}\n",
                class.name,
                class.n_ground_truth,
                class.n_predictions,
                class.precision,
                class.recall,
                class.ap50,
                class.ap50_95
            ));
        }
        table
    }
}

/// Reads a COCO annotations file (`images`, `annotations`, `categories`).
pub fn read_coco_ground_truth(path: &Path) -> Result<GroundTruth, Error> {
    let json = read_json(path)?;
    let coco_error = |reason: String| Error::CocoJson {
        path: path.to_path_buf(),
        reason,
    };
    let array = |key: &str| -> Result<&Vec<serde_json::Value>, Error> {
        json.get(key)
            .and_then(|value| value.as_array())
            .ok_or_else(|| coco_error(format!("no `{key}` array")))
    };
    let mut images = Vec::new();
    let mut slot_of_image = HashMap::new();
    for (index, image) in array("images")?.iter().enumerate() {
        let id = image["id"]
            .as_u64()
            .ok_or_else(|| coco_error(format!("images[{index}] has no integer `id`")))?;
        let size = match (image["width"].as_u64(), image["height"].as_u64()) {
            (Some(width), Some(height)) => Some((width as u32, height as u32)),
            _ => None,
        };
        slot_of_image.insert(id, images.len());
        images.push(EvalImage {
            id,
            name: image["file_name"].as_str().unwrap_or_default().to_string(),
            size,
            objects: Vec::new(),
        });
    }
    for (index, annotation) in array("annotations")?.iter().enumerate() {
        let context = |what: &str| coco_error(format!("annotations[{index}]: {what}"));
        let image_id = annotation["image_id"]
            .as_u64()
            .ok_or_else(|| context("no integer `image_id`"))?;
        let category_id = annotation["category_id"]
            .as_u64()
            .ok_or_else(|| context("no integer `category_id`"))? as usize;
        let bbox =
            read_bbox(&annotation["bbox"]).ok_or_else(|| context("`bbox` is not [x, y, w, h]"))?;
        let iscrowd = annotation["iscrowd"].as_u64().is_some_and(|flag| flag != 0)
            || annotation["iscrowd"].as_bool() == Some(true);
        let slot = *slot_of_image
            .get(&image_id)
            .ok_or_else(|| context(&format!("image {image_id} is not in `images`")))?;
        images[slot].objects.push(GroundTruthBox {
            category_id,
            bbox,
            iscrowd,
        });
    }
    let mut categories = Vec::new();
    for (index, category) in array("categories")?.iter().enumerate() {
        let id = category["id"]
            .as_u64()
            .ok_or_else(|| coco_error(format!("categories[{index}] has no integer `id`")))?
            as usize;
        categories.push((
            id,
            category["name"].as_str().unwrap_or_default().to_string(),
        ));
    }
    Ok(GroundTruth { images, categories })
}

/// Reads a COCO results file (`[{image_id, category_id, bbox, score}]`). A result on
/// an image the ground truth lacks is skipped with a diagnostic.
pub fn read_coco_results(
    path: &Path,
    ground_truth: &GroundTruth,
) -> Result<(Vec<PredictedBox>, Vec<Diagnostic>), Error> {
    let json = read_json(path)?;
    let results = json.as_array().ok_or_else(|| Error::CocoJson {
        path: path.to_path_buf(),
        reason: "a results file is a JSON array".to_string(),
    })?;
    let known: BTreeSet<u64> = ground_truth.images.iter().map(|image| image.id).collect();
    let mut predictions = Vec::new();
    let mut diagnostics = Vec::new();
    for (index, result) in results.iter().enumerate() {
        let parsed = (|| {
            Some(PredictedBox {
                image_id: result["image_id"].as_u64()?,
                category_id: result["category_id"].as_u64()? as usize,
                bbox: read_bbox(&result["bbox"])?,
                score: result["score"].as_f64()?,
            })
        })();
        match parsed {
            Some(prediction) if known.contains(&prediction.image_id) => predictions.push(prediction),
            Some(prediction) => diagnostics.push(Diagnostic {
                path: path.to_path_buf(),
                line: None,
                message: format!("result {index}: image {} is not in the ground truth", prediction.image_id),
            }),
            None => diagnostics.push(Diagnostic {
                path: path.to_path_buf(),
                line: None,
                message: format!("result {index}: needs integer image_id and category_id, bbox [x, y, w, h] and score"),
            }),
        }
    }
    Ok((predictions, diagnostics))
}

/// Every `*.txt` of a YOLO label folder by stem. A malformed file is left out with a
/// diagnostic naming its line.
pub fn read_yolo_folder(folder: &Path) -> Result<(LabelFiles, Vec<Diagnostic>), Error> {
    let entries = std::fs::read_dir(folder).map_err(|source| Error::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    let mut files = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| Error::Io {
                path: folder.to_path_buf(),
                source,
            })?
            .path();
        if path.extension().is_none_or(|extension| extension != "txt") {
            continue;
        }
        let stem = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().to_string())
            .unwrap_or_default();
        match read_label_file(&path) {
            Ok(labels) => {
                files.insert(stem, labels);
            }
            Err(error) => diagnostics.push(error.into()),
        }
    }
    Ok((files, diagnostics))
}

/// Loads ground truth and predictions, each a COCO JSON file or a YOLO label folder.
/// YOLO ground truth is read in normalised coordinates (IoU does not change under
/// per-axis scaling); YOLO predictions against COCO ground truth are scaled by the
/// COCO image sizes and matched to images by file stem.
pub fn load_inputs(
    ground_truth_path: &Path,
    predictions_path: &Path,
    names: &[String],
) -> Result<(GroundTruth, Vec<PredictedBox>, Vec<Diagnostic>), Error> {
    let mut diagnostics = Vec::new();
    if ground_truth_path.is_dir() {
        let (ground_truth_files, mut read_diagnostics) = read_yolo_folder(ground_truth_path)?;
        diagnostics.append(&mut read_diagnostics);
        if !predictions_path.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: COCO results need COCO ground truth (with image ids); {} is a YOLO folder",
                predictions_path.display(),
                ground_truth_path.display()
            )));
        }
        let (prediction_files, mut read_diagnostics) = read_yolo_folder(predictions_path)?;
        diagnostics.append(&mut read_diagnostics);
        // Images are the union of both folders: a missing ground-truth file is an
        // image with no objects, as in Ultralytics.
        let stems: BTreeSet<&String> = ground_truth_files
            .keys()
            .chain(prediction_files.keys())
            .collect();
        let mut ground_truth = GroundTruth::default();
        let mut predictions = Vec::new();
        let mut category_ids = BTreeSet::new();
        for (index, stem) in stems.into_iter().enumerate() {
            let id = index as u64 + 1;
            let objects = ground_truth_files
                .get(stem)
                .map(|labels| {
                    labels
                        .iter()
                        .map(|label| {
                            category_ids.insert(label.class_id);
                            GroundTruthBox {
                                category_id: label.class_id,
                                bbox: yolo_to_xywh(label, (1, 1)),
                                iscrowd: false,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            ground_truth.images.push(EvalImage {
                id,
                name: stem.clone(),
                size: None,
                objects,
            });
            for label in prediction_files.get(stem).into_iter().flatten() {
                predictions.push(yolo_prediction(
                    id,
                    label,
                    (1, 1),
                    predictions_path,
                    stem,
                    &mut diagnostics,
                ));
            }
        }
        ground_truth.categories = category_ids
            .into_iter()
            .map(|id| (id, class_name(names, id)))
            .collect();
        return Ok((ground_truth, predictions, diagnostics));
    }
    let mut ground_truth = read_coco_ground_truth(ground_truth_path)?;
    if !names.is_empty() {
        for (id, name) in &mut ground_truth.categories {
            if name.is_empty() {
                *name = class_name(names, *id);
            }
        }
    }
    if !predictions_path.is_dir() {
        let (predictions, mut read_diagnostics) =
            read_coco_results(predictions_path, &ground_truth)?;
        diagnostics.append(&mut read_diagnostics);
        return Ok((ground_truth, predictions, diagnostics));
    }
    let (prediction_files, mut read_diagnostics) = read_yolo_folder(predictions_path)?;
    diagnostics.append(&mut read_diagnostics);
    let mut predictions = Vec::new();
    let by_stem: HashMap<String, (u64, Option<(u32, u32)>)> = ground_truth
        .images
        .iter()
        .map(|image| {
            let stem = Path::new(&image.name)
                .file_stem()
                .map(|stem| stem.to_string_lossy().to_string())
                .unwrap_or_default();
            (stem, (image.id, image.size))
        })
        .collect();
    for (stem, labels) in &prediction_files {
        match by_stem.get(stem) {
            Some(&(image_id, Some(size))) => {
                for label in labels {
                    predictions.push(yolo_prediction(
                        image_id,
                        label,
                        size,
                        predictions_path,
                        stem,
                        &mut diagnostics,
                    ));
                }
            }
            Some(&(_, None)) => diagnostics.push(Diagnostic {
                path: predictions_path.join(format!("{stem}.txt")),
                line: None,
                message: "the COCO image has no width and height to scale normalised boxes"
                    .to_string(),
            }),
            None => diagnostics.push(Diagnostic {
                path: predictions_path.join(format!("{stem}.txt")),
                line: None,
                message: "no image with this stem in the ground truth".to_string(),
            }),
        }
    }
    Ok((ground_truth, predictions, diagnostics))
}

/// Draws the IoU-0.5 precision-recall curve of every class and their mean.
pub fn plot_pr_curves(report: &EvalReport, size: (u32, u32)) -> RgbImage {
    let (width, height) = size;
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let font_px = (height as f32 / 32.0).max(11.0);
    let (left, right, top, bottom) = (
        font_px * 4.0,
        width as f32 - font_px,
        font_px * 2.5,
        height as f32 - font_px * 3.5,
    );
    let to_pixel = |recall: f64, precision: f64| {
        (
            left + (right - left) * recall as f32,
            bottom - (bottom - top) * precision as f32,
        )
    };
    let grey = Rgb([220, 220, 220]);
    let black = Rgb([0, 0, 0]);
    for tick in 0..=5 {
        let value = f64::from(tick) / 5.0;
        let (x, _) = to_pixel(value, 0.0);
        let (_, y) = to_pixel(0.0, value);
        draw::draw_line(&mut image, (x, top), (x, bottom), grey, 1.0);
        draw::draw_line(&mut image, (left, y), (right, y), grey, 1.0);
        let label = format!("{value:.1}");
        let (label_width, label_height) = draw::text_size(&label, font_px * 0.8);
        draw::draw_text(
            &mut image,
            &label,
            x - label_width / 2.0,
            bottom + font_px * 0.3,
            font_px * 0.8,
            black,
        );
        draw::draw_text(
            &mut image,
            &label,
            left - label_width - font_px * 0.4,
            y - label_height / 2.0,
            font_px * 0.8,
            black,
        );
    }
    draw::draw_line(&mut image, (left, bottom), (right, bottom), black, 1.5);
    draw::draw_line(&mut image, (left, top), (left, bottom), black, 1.5);
    let (x_label_width, _) = draw::text_size("Recall", font_px);
    draw::draw_text(
        &mut image,
        "Recall",
        (left + right - x_label_width) / 2.0,
        bottom + font_px * 1.6,
        font_px,
        black,
    );
    draw::draw_text(
        &mut image,
        "Precision",
        font_px * 0.3,
        font_px * 0.8,
        font_px,
        black,
    );
    let title = "Precision-recall at IoU 0.5";
    let (title_width, _) = draw::text_size(title, font_px);
    draw::draw_text(
        &mut image,
        title,
        (left + right - title_width) / 2.0,
        font_px * 0.8,
        font_px,
        black,
    );
    let recalls = recall_thresholds();
    let mut legend = Vec::new();
    for class in &report.per_class {
        let color = draw::class_color(class.category_id);
        let color = Rgb(color.0.map(|channel| (f32::from(channel) * 0.8) as u8));
        draw_curve(&mut image, &recalls, &class.pr_curve, color, 2.0, &to_pixel);
        legend.push((format!("{} {:.3}", class.name, class.ap50), color));
    }
    if !report.per_class.is_empty() {
        let mean_curve: Vec<f64> = (0..recalls.len())
            .map(|point| {
                report
                    .per_class
                    .iter()
                    .map(|class| class.pr_curve[point])
                    .sum::<f64>()
                    / report.per_class.len() as f64
            })
            .collect();
        let blue = Rgb([20, 60, 200]);
        draw_curve(&mut image, &recalls, &mean_curve, blue, 4.0, &to_pixel);
        legend.push((format!("all classes {:.3} mAP@0.5", report.map50), blue));
    }
    let legend_px = font_px * 0.8;
    for (row, (text, color)) in legend.iter().enumerate() {
        let (text_width, _) = draw::text_size(text, legend_px);
        let y = top + legend_px * 0.5 + row as f32 * legend_px * 1.4;
        let x = right - text_width - legend_px * 2.5;
        draw::draw_line(
            &mut image,
            (x, y + legend_px * 0.6),
            (x + legend_px * 1.5, y + legend_px * 0.6),
            *color,
            3.0,
        );
        draw::draw_text(&mut image, text, x + legend_px * 2.0, y, legend_px, black);
    }
    image
}

fn draw_curve(
    image: &mut RgbImage,
    recalls: &[f64],
    precisions: &[f64],
    color: Rgb<u8>,
    thickness: f32,
    to_pixel: &dyn Fn(f64, f64) -> (f32, f32),
) {
    for point in 1..recalls.len().min(precisions.len()) {
        let from = to_pixel(recalls[point - 1], precisions[point - 1]);
        let to = to_pixel(recalls[point], precisions[point]);
        draw::draw_line(image, from, to, color, thickness);
    }
}

/// What COCOeval's `evaluateImg` returns for one image and category.
struct ImageResult {
    /// Scores of the kept detections, by decreasing score.
    scores: Vec<f64>,
    /// `[iou threshold][detection]`: matched to a ground truth.
    matched: Vec<Vec<bool>>,
    /// `[iou threshold][detection]`: matched to a crowd (ignored) ground truth.
    ignored: Vec<Vec<bool>>,
    n_counted_ground_truth: usize,
}

fn evaluate_image(
    objects: &[&GroundTruthBox],
    detections: &[&PredictedBox],
    iou_thresholds: &[f64],
) -> Option<ImageResult> {
    if objects.is_empty() && detections.is_empty() {
        return None;
    }
    // Non-crowd ground truth first (stable), detections by score (stable), top 100.
    let mut objects: Vec<&GroundTruthBox> = objects.to_vec();
    objects.sort_by_key(|object| object.iscrowd);
    let mut detections: Vec<&PredictedBox> = detections.to_vec();
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    detections.truncate(MAX_DETECTIONS_PER_IMAGE);
    let ious: Vec<Vec<f64>> = detections
        .iter()
        .map(|detection| {
            objects
                .iter()
                .map(|object| coco_iou(&detection.bbox, &object.bbox, object.iscrowd))
                .collect()
        })
        .collect();
    let mut matched = vec![vec![false; detections.len()]; iou_thresholds.len()];
    let mut ignored = vec![vec![false; detections.len()]; iou_thresholds.len()];
    for (threshold_idx, &threshold) in iou_thresholds.iter().enumerate() {
        let mut object_taken = vec![false; objects.len()];
        for detection_idx in 0..detections.len() {
            let mut best_iou = threshold.min(1.0 - 1e-10);
            let mut best_object: Option<usize> = None;
            for (object_idx, object) in objects.iter().enumerate() {
                if object_taken[object_idx] && !object.iscrowd {
                    continue;
                }
                // Once matched to a real object, stop before the crowd ones.
                if let Some(best) = best_object
                    && !objects[best].iscrowd
                    && object.iscrowd
                {
                    break;
                }
                let iou = ious[detection_idx][object_idx];
                if iou < best_iou {
                    continue;
                }
                best_iou = iou;
                best_object = Some(object_idx);
            }
            if let Some(object_idx) = best_object {
                ignored[threshold_idx][detection_idx] = objects[object_idx].iscrowd;
                matched[threshold_idx][detection_idx] = true;
                object_taken[object_idx] = true;
            }
        }
    }
    Some(ImageResult {
        scores: detections.iter().map(|detection| detection.score).collect(),
        matched,
        ignored,
        n_counted_ground_truth: objects.iter().filter(|object| !object.iscrowd).count(),
    })
}

/// COCOeval's `accumulate` for one category, plus the best-F1 point.
fn accumulate(
    category_id: usize,
    name: &str,
    evaluated: &[ImageResult],
    n_ground_truth: usize,
    n_predictions: usize,
) -> ClassReport {
    let recall_thresholds = recall_thresholds();
    let mut entries: Vec<(f64, usize, usize)> = Vec::new();
    for (result_idx, result) in evaluated.iter().enumerate() {
        for (detection_idx, &score) in result.scores.iter().enumerate() {
            entries.push((score, result_idx, detection_idx));
        }
    }
    // np.argsort(-scores, kind="mergesort"): stable.
    entries.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n_thresholds = evaluated.first().map_or(0, |result| result.matched.len());
    let mut average_precisions = Vec::with_capacity(n_thresholds);
    let mut pr_curve = vec![0.0; recall_thresholds.len()];
    let (mut best_f1, mut best_precision, mut best_recall, mut best_threshold) =
        (0.0, 0.0, 0.0, 0.0);
    for threshold_idx in 0..n_thresholds {
        let (mut true_positives, mut false_positives) = (0.0_f64, 0.0_f64);
        let mut recalls = Vec::with_capacity(entries.len());
        let mut precisions = Vec::with_capacity(entries.len());
        for &(score, result_idx, detection_idx) in &entries {
            let result = &evaluated[result_idx];
            let matched = result.matched[threshold_idx][detection_idx];
            let ignored = result.ignored[threshold_idx][detection_idx];
            if !ignored {
                if matched {
                    true_positives += 1.0;
                } else {
                    false_positives += 1.0;
                }
            }
            let recall = true_positives / n_ground_truth as f64;
            let precision = true_positives / (false_positives + true_positives + f64::EPSILON);
            if threshold_idx == 0 && !ignored {
                let f1 = 2.0 * precision * recall / (precision + recall + f64::EPSILON);
                if f1 > best_f1 {
                    (best_f1, best_precision, best_recall, best_threshold) =
                        (f1, precision, recall, score);
                }
            }
            recalls.push(recall);
            precisions.push(precision);
        }
        for index in (1..precisions.len()).rev() {
            if precisions[index] > precisions[index - 1] {
                precisions[index - 1] = precisions[index];
            }
        }
        let mut sampled = vec![0.0; recall_thresholds.len()];
        for (point, &recall_threshold) in recall_thresholds.iter().enumerate() {
            // searchsorted(side="left"): the first recall >= the threshold.
            let position = recalls.partition_point(|&recall| recall < recall_threshold);
            match precisions.get(position) {
                Some(&precision) => sampled[point] = precision,
                None => break,
            }
        }
        average_precisions.push(sampled.iter().sum::<f64>() / sampled.len() as f64);
        if threshold_idx == 0 {
            pr_curve = sampled;
        }
    }
    let ap50 = average_precisions.first().copied().unwrap_or(0.0);
    let ap50_95 = if average_precisions.is_empty() {
        0.0
    } else {
        average_precisions.iter().sum::<f64>() / average_precisions.len() as f64
    };
    ClassReport {
        category_id,
        name: name.to_string(),
        n_ground_truth,
        n_predictions,
        ap50,
        ap50_95,
        precision: best_precision,
        recall: best_recall,
        f1: best_f1,
        best_f1_score_threshold: best_threshold,
        pr_curve,
    }
}

/// Ultralytics' overall P and R: the one score threshold (on a 0.001 grid) that
/// maximises the mean F1 over classes, at IoU 0.5 with COCO's matching.
fn best_mean_f1(
    per_class: &[ClassReport],
    predictions: &[PredictedBox],
    ground_truth: &GroundTruth,
    image_slot: &HashMap<u64, usize>,
    iou_thresholds: &[f64],
) -> (f64, f64, f64) {
    if per_class.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    // Per class: (score, is true positive) of counted detections, by decreasing score.
    let mut class_outcomes: Vec<(Vec<(f64, bool)>, usize)> = Vec::new();
    for class in per_class {
        let mut outcomes = Vec::new();
        for image in &ground_truth.images {
            let Some(&slot) = image_slot.get(&image.id) else {
                continue;
            };
            let objects: Vec<&GroundTruthBox> = image
                .objects
                .iter()
                .filter(|object| object.category_id == class.category_id)
                .collect();
            let detections: Vec<&PredictedBox> = predictions
                .iter()
                .filter(|prediction| {
                    image_slot.get(&prediction.image_id) == Some(&slot)
                        && prediction.category_id == class.category_id
                })
                .collect();
            if let Some(result) = evaluate_image(&objects, &detections, &iou_thresholds[..1]) {
                for (detection_idx, &score) in result.scores.iter().enumerate() {
                    if !result.ignored[0][detection_idx] {
                        outcomes.push((score, result.matched[0][detection_idx]));
                    }
                }
            }
        }
        outcomes.sort_by(|a, b| b.0.total_cmp(&a.0));
        class_outcomes.push((outcomes, class.n_ground_truth));
    }
    let mut best = (f64::NEG_INFINITY, 0.0, 0.0, 0.0);
    for step in 0..=1000 {
        let threshold = f64::from(step) / 1000.0;
        let (mut sum_f1, mut sum_precision, mut sum_recall) = (0.0, 0.0, 0.0);
        for (outcomes, n_ground_truth) in &class_outcomes {
            let n_kept = outcomes.partition_point(|(score, _)| *score >= threshold);
            let n_true = outcomes[..n_kept]
                .iter()
                .filter(|(_, is_true)| *is_true)
                .count() as f64;
            let precision = if n_kept == 0 {
                1.0
            } else {
                n_true / n_kept as f64
            };
            let recall = n_true / *n_ground_truth as f64;
            sum_f1 += 2.0 * precision * recall / (precision + recall + 1e-16);
            sum_precision += precision;
            sum_recall += recall;
        }
        if sum_f1 > best.0 {
            best = (sum_f1, sum_precision, sum_recall, threshold);
        }
    }
    let n_classes = class_outcomes.len() as f64;
    (best.1 / n_classes, best.2 / n_classes, best.3)
}

/// pycocotools' `bbIou`: `inter / union`, or `inter / detection area` for a crowd box.
fn coco_iou(detection: &[f64; 4], object: &[f64; 4], iscrowd: bool) -> f64 {
    let width =
        (detection[0] + detection[2]).min(object[0] + object[2]) - detection[0].max(object[0]);
    if width <= 0.0 {
        return 0.0;
    }
    let height =
        (detection[1] + detection[3]).min(object[1] + object[3]) - detection[1].max(object[1]);
    if height <= 0.0 {
        return 0.0;
    }
    let intersection = width * height;
    let detection_area = detection[2] * detection[3];
    let union = if iscrowd {
        detection_area
    } else {
        detection_area + object[2] * object[3] - intersection
    };
    intersection / union
}

/// numpy's `linspace`: `start + i * step`, with the last value exactly `stop`.
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut values = [0.0; N];
    for (index, value) in values.iter_mut().enumerate() {
        *value = index as f64 * step + start;
    }
    values[N - 1] = stop;
    values
}

fn read_json(path: &Path) -> Result<serde_json::Value, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|error| Error::CocoJson {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

fn read_bbox(value: &serde_json::Value) -> Option<[f64; 4]> {
    let array = value.as_array()?;
    if array.len() != 4 {
        return None;
    }
    Some([
        array[0].as_f64()?,
        array[1].as_f64()?,
        array[2].as_f64()?,
        array[3].as_f64()?,
    ])
}

fn yolo_to_xywh(label: &YoloLabel, size: (u32, u32)) -> [f64; 4] {
    let (width, height) = (f64::from(size.0), f64::from(size.1));
    let (cx, cy, w, h) = (
        f64::from(label.cx) * width,
        f64::from(label.cy) * height,
        f64::from(label.width) * width,
        f64::from(label.height) * height,
    );
    [cx - w / 2.0, cy - h / 2.0, w, h]
}

fn yolo_prediction(
    image_id: u64,
    label: &YoloLabel,
    size: (u32, u32),
    folder: &Path,
    stem: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> PredictedBox {
    if label.confidence.is_none() {
        diagnostics.push(Diagnostic {
            path: PathBuf::from(folder).join(format!("{stem}.txt")),
            line: None,
            message: "a prediction without a confidence column counts as confidence 1".to_string(),
        });
    }
    PredictedBox {
        image_id,
        category_id: label.class_id,
        bbox: yolo_to_xywh(label, size),
        score: f64::from(label.confidence.unwrap_or(1.0)),
    }
}

/// A box in `[x1, y1, x2, y2]` pixels as COCO's `[x, y, w, h]`.
pub fn xyxy_to_xywh(bbox: &BoundingBox) -> [f64; 4] {
    let (x1, y1) = (f64::from(bbox.x1), f64::from(bbox.y1));
    [x1, y1, f64::from(bbox.x2) - x1, f64::from(bbox.y2) - y1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(category_id: usize, bbox: [f64; 4]) -> GroundTruthBox {
        GroundTruthBox {
            category_id,
            bbox,
            iscrowd: false,
        }
    }

    fn prediction(image_id: u64, category_id: usize, bbox: [f64; 4], score: f64) -> PredictedBox {
        PredictedBox {
            image_id,
            category_id,
            bbox,
            score,
        }
    }

    fn check(
        objects: Vec<GroundTruthBox>,
        predictions: &[PredictedBox],
        expected_map50: f64,
        expected_map50_95: f64,
    ) {
        let ground_truth = GroundTruth {
            images: vec![EvalImage {
                id: 1,
                name: "a".into(),
                size: None,
                objects,
            }],
            categories: vec![(2, "car".into()), (7, "truck".into())],
        };
        let report = evaluate(&ground_truth, predictions);
        assert!(
            (report.map50 - expected_map50).abs() < 1e-9,
            "mAP50 {} != {expected_map50}",
            report.map50
        );
        assert!(
            (report.map50_95 - expected_map50_95).abs() < 1e-9,
            "mAP50-95 {} != {expected_map50_95}",
            report.map50_95
        );
    }

    #[test]
    fn perfect_missing_and_half_right_predictions() {
        let car = [10.0, 10.0, 50.0, 30.0];
        check(
            vec![object(2, car)],
            &[prediction(1, 2, car, 0.9)],
            1.0,
            1.0,
        );
        check(vec![object(2, car)], &[], 0.0, 0.0);
        // A truck class with no ground truth is left out of the mean; the false
        // positive truck box does not lower the car AP.
        check(
            vec![object(2, car)],
            &[prediction(1, 2, car, 0.9), prediction(1, 7, car, 0.95)],
            1.0,
            1.0,
        );
        // Two cars, one found at the top score: precision 1 up to recall 0.5.
        check(
            vec![object(2, car), object(2, [200.0, 10.0, 50.0, 30.0])],
            &[prediction(1, 2, car, 0.9)],
            51.0 / 101.0,
            51.0 / 101.0,
        );
    }

    #[test]
    fn thresholds_are_numpy_linspace() {
        let thresholds = iou_thresholds();
        assert_eq!(thresholds[0], 0.5);
        assert_eq!(thresholds[9], 0.95);
        assert_eq!(recall_thresholds()[100], 1.0);
        assert_eq!(recall_thresholds()[1], 0.01);
    }
}
