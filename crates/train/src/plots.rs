//! The run's pictures: `results.png` (loss and metric curves per epoch),
//! `confusion_matrix.png` and validation images with true and predicted boxes, drawn
//! with `image` and the embedded font of [`cardet_detect::draw`].

use std::path::Path;

use cardet_detect::draw::{
    class_color, draw_detections, draw_line, draw_rectangle, draw_text, fill_rectangle,
};
use cardet_detect::{BoundingBox, image_io};
use image::{Rgb, RgbImage};

use crate::Error;
use crate::validate::{ConfusionMatrix, ValSample};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const BLUE: Rgb<u8> = Rgb([31, 119, 180]);

/// The ten panels of Ultralytics' `results.png`, in its order.
pub const RESULT_PANELS: [&str; 10] = [
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
];

/// Draws one line chart per panel from `results.csv` rows (`(column, value)` pairs).
pub fn results_png(rows: &[Vec<(String, f64)>], path: &Path) -> Result<(), Error> {
    let (panel_w, panel_h) = (320u32, 300u32);
    let mut image = RgbImage::from_pixel(panel_w * 5, panel_h * 2, WHITE);
    for (index, column) in RESULT_PANELS.iter().enumerate() {
        let left = (index as u32 % 5) * panel_w;
        let top = (index as u32 / 5) * panel_h;
        let values: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|row| {
                let epoch = row.iter().find(|(k, _)| k == "epoch")?.1;
                let value = row.iter().find(|(k, _)| k == column)?.1;
                value.is_finite().then_some((epoch, value))
            })
            .collect();
        draw_panel(&mut image, (left, top, panel_w, panel_h), column, &values);
    }
    save(&image, path)
}

fn draw_panel(
    image: &mut RgbImage,
    (left, top, width, height): (u32, u32, u32, u32),
    title: &str,
    values: &[(f64, f64)],
) {
    let font_px = 16.0;
    draw_text(
        image,
        title,
        left as f32 + 10.0,
        top as f32 + 6.0,
        font_px,
        BLACK,
    );
    let plot = BoundingBox {
        x1: left as f32 + 50.0,
        y1: top as f32 + 32.0,
        x2: (left + width) as f32 - 12.0,
        y2: (top + height) as f32 - 30.0,
    };
    draw_rectangle(image, &plot, GREY, 1);
    if values.is_empty() {
        return;
    }
    let (x_min, x_max) = min_max(values.iter().map(|v| v.0));
    let (y_min, y_max) = min_max(values.iter().map(|v| v.1));
    let to_px = |(x, y): (f64, f64)| {
        let fx = if x_max > x_min {
            (x - x_min) / (x_max - x_min)
        } else {
            0.5
        };
        let fy = if y_max > y_min {
            (y - y_min) / (y_max - y_min)
        } else {
            0.5
        };
        (
            plot.x1 + 4.0 + fx as f32 * (plot.width() - 8.0),
            plot.y2 - 4.0 - fy as f32 * (plot.height() - 8.0),
        )
    };
    for pair in values.windows(2) {
        draw_line(image, to_px(pair[0]), to_px(pair[1]), BLUE, 2.0);
    }
    for value in values {
        let (x, y) = to_px(*value);
        cardet_detect::draw::fill_disc(image, x, y, 2.5, BLUE);
    }
    let label_px = 12.0;
    draw_text(
        image,
        &format!("{y_max:.3}"),
        left as f32 + 4.0,
        plot.y1,
        label_px,
        BLACK,
    );
    draw_text(
        image,
        &format!("{y_min:.3}"),
        left as f32 + 4.0,
        plot.y2 - 14.0,
        label_px,
        BLACK,
    );
    draw_text(
        image,
        &format!("epoch {x_min:.0}"),
        plot.x1,
        plot.y2 + 6.0,
        label_px,
        BLACK,
    );
    draw_text(
        image,
        &format!("{x_max:.0}"),
        plot.x2 - 24.0,
        plot.y2 + 6.0,
        label_px,
        BLACK,
    );
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// The confusion matrix as a shaded grid (columns normalised, counts printed).
pub fn confusion_png(matrix: &ConfusionMatrix, names: &[String], path: &Path) -> Result<(), Error> {
    let n = matrix.num_classes + 1;
    let cell = 64u32;
    let margin = 140u32;
    let size = margin + cell * n as u32 + 20;
    let mut image = RgbImage::from_pixel(size, size, WHITE);
    let label = |i: usize| {
        if i == matrix.num_classes {
            "background".to_string()
        } else {
            names.get(i).cloned().unwrap_or_else(|| i.to_string())
        }
    };
    draw_text(
        &mut image,
        "True",
        (margin + cell * n as u32 / 2) as f32,
        4.0,
        16.0,
        BLACK,
    );
    draw_text(
        &mut image,
        "Predicted",
        4.0,
        (margin - 20) as f32,
        16.0,
        BLACK,
    );
    for truth in 0..n {
        let column_total: u64 = (0..n).map(|p| matrix.get(p, truth)).sum();
        let x = margin + cell * truth as u32;
        draw_text(
            &mut image,
            &label(truth),
            x as f32 + 2.0,
            (margin - 44) as f32,
            12.0,
            BLACK,
        );
        for predicted in 0..n {
            let y = margin + cell * predicted as u32;
            if truth == 0 {
                draw_text(
                    &mut image,
                    &label(predicted),
                    4.0,
                    y as f32 + cell as f32 / 2.0 - 8.0,
                    12.0,
                    BLACK,
                );
            }
            let count = matrix.get(predicted, truth);
            let share = if column_total > 0 {
                count as f64 / column_total as f64
            } else {
                0.0
            };
            let shade = (255.0 - share * 200.0) as u8;
            let bbox = BoundingBox {
                x1: x as f32,
                y1: y as f32,
                x2: (x + cell - 1) as f32,
                y2: (y + cell - 1) as f32,
            };
            fill_rectangle(&mut image, &bbox, Rgb([shade, shade, 255]));
            draw_rectangle(&mut image, &bbox, GREY, 1);
            let text_color = if share > 0.5 { WHITE } else { BLACK };
            draw_text(
                &mut image,
                &count.to_string(),
                x as f32 + 8.0,
                y as f32 + 22.0,
                16.0,
                text_color,
            );
        }
    }
    save(&image, path)
}

/// One validation image: true boxes in white, predictions above 0.25 in class colours.
pub fn val_sample_png(sample: &ValSample, names: &[String], path: &Path) -> Result<(), Error> {
    let mut image = image_io::load_rgb(&sample.image_path)?;
    for (class_id, bbox) in &sample.truth {
        draw_rectangle(&mut image, bbox, WHITE, 3);
        draw_rectangle(&mut image, bbox, class_color(*class_id), 1);
    }
    let confident: Vec<_> = sample
        .detections
        .iter()
        .filter(|d| d.confidence > ConfusionMatrix::CONFIDENCE)
        .cloned()
        .collect();
    draw_detections(&mut image, &confident, names);
    save(&image, path)
}

fn save(image: &RgbImage, path: &Path) -> Result<(), Error> {
    image_io::save(image, path)?;
    Ok(())
}
