//! Fixtures shared by the integration tests: images of solid rectangles written as
//! a YOLO dataset, and ways to find a colour's pixels again.

#![allow(dead_code)]

use std::path::Path;

use cardet_augment::Batch;
use cardet_detect::BoundingBox;
use cardet_detect::dataset::{self, DatasetItem, YoloLabel};
use image::{Rgb, RgbImage};

/// Saturated colours far from each other and from the grey 114 background, so a
/// bilinear blend of any two is never mistaken for a third.
pub const PALETTE: [[u8; 3]; 8] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [255, 0, 255],
    [0, 255, 255],
    [0, 0, 0],
    [255, 255, 255],
];

/// Per-channel distance under which a pixel counts as a palette colour.
pub const COLOUR_TOLERANCE: i32 = 40;

/// The background: the pad grey, so padding and background look alike and only
/// the rectangles carry colour.
pub const BACKGROUND: [u8; 3] = [114, 114, 114];

/// A rectangle filling whole pixels `x1..x2`, `y1..y2`, in colour `PALETTE[class_id]`.
#[derive(Clone, Copy, Debug)]
pub struct Rectangle {
    pub class_id: usize,
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

impl Rectangle {
    pub fn bbox(&self) -> BoundingBox {
        BoundingBox {
            x1: self.x1 as f32,
            y1: self.y1 as f32,
            x2: self.x2 as f32,
            y2: self.y2 as f32,
        }
    }
}

pub fn render(size: (u32, u32), rectangles: &[Rectangle]) -> RgbImage {
    let mut image = RgbImage::from_pixel(size.0, size.1, Rgb(BACKGROUND));
    for rectangle in rectangles {
        for y in rectangle.y1..rectangle.y2 {
            for x in rectangle.x1..rectangle.x2 {
                image.put_pixel(x, y, Rgb(PALETTE[rectangle.class_id]));
            }
        }
    }
    image
}

/// Writes `images/train/<stem>.png` and its label file under `root`, and reads the
/// item back with the dataset reader the trainer uses.
pub fn write_item(
    root: &Path,
    stem: &str,
    size: (u32, u32),
    rectangles: &[Rectangle],
) -> DatasetItem {
    let images = root.join("images/train");
    let labels = root.join("labels/train");
    std::fs::create_dir_all(&images).expect("creates images/train");
    std::fs::create_dir_all(&labels).expect("creates labels/train");
    let image_path = images.join(format!("{stem}.png"));
    cardet_detect::image_io::save(&render(size, rectangles), &image_path).expect("writes png");
    let yolo_labels: Vec<YoloLabel> = rectangles
        .iter()
        .map(|rectangle| YoloLabel::from_box(rectangle.class_id, &rectangle.bbox(), size))
        .collect();
    dataset::write_label_file(&dataset::label_path_for_image(&image_path), &yolo_labels)
        .expect("writes labels");
    dataset::read_item(&image_path, PALETTE.len()).expect("reads the item back")
}

/// A dataset of `n_images` images of varied sizes, one or two rectangles each.
pub fn write_rectangles_dataset(root: &Path, n_images: usize) -> Vec<DatasetItem> {
    const SIZES: [(u32, u32); 5] = [(160, 120), (96, 144), (128, 128), (200, 90), (110, 170)];
    (0..n_images)
        .map(|image_idx| {
            let size = SIZES[image_idx % SIZES.len()];
            let (w, h) = size;
            let mut rectangles = vec![Rectangle {
                class_id: image_idx % PALETTE.len(),
                x1: w / 10,
                y1: h / 8 + (image_idx as u32 % 7),
                x2: w / 2 - 2,
                y2: h / 2 + 5,
            }];
            if image_idx % 2 == 0 {
                rectangles.push(Rectangle {
                    class_id: (image_idx + 3) % PALETTE.len(),
                    x1: w / 2 + 6,
                    y1: h / 2,
                    x2: w - w / 8,
                    y2: h - h / 10,
                });
            }
            write_item(root, &format!("rect_{image_idx:03}"), size, &rectangles)
        })
        .collect()
}

/// [`colour_extent`] of every palette colour, in one pass over the image.
pub fn palette_extents(image: &RgbImage) -> [Option<BoundingBox>; PALETTE.len()] {
    let mut extents: [Option<(u32, u32, u32, u32)>; PALETTE.len()] = [None; PALETTE.len()];
    for (x, y, pixel) in image.enumerate_pixels() {
        // Palette colours are at least 255 apart in some channel, so a pixel is
        // within the tolerance of one colour at most.
        let Some(class_id) = PALETTE.iter().position(|&colour| is_close(pixel.0, colour)) else {
            continue;
        };
        extents[class_id] = Some(match extents[class_id] {
            None => (x, y, x, y),
            Some((x1, y1, x2, y2)) => (x1.min(x), y1.min(y), x2.max(x), y2.max(y)),
        });
    }
    extents.map(|extent| {
        extent.map(|(x1, y1, x2, y2)| BoundingBox {
            x1: x1 as f32,
            y1: y1 as f32,
            x2: (x2 + 1) as f32,
            y2: (y2 + 1) as f32,
        })
    })
}

fn is_close(pixel: [u8; 3], colour: [u8; 3]) -> bool {
    pixel
        .iter()
        .zip(colour)
        .all(|(&a, b)| (i32::from(a) - i32::from(b)).abs() <= COLOUR_TOLERANCE)
}

/// The extent `[min, max + 1)` of the pixels within [`COLOUR_TOLERANCE`] of `colour`.
pub fn colour_extent(image: &RgbImage, colour: [u8; 3]) -> Option<BoundingBox> {
    let mut extent: Option<(u32, u32, u32, u32)> = None;
    for (x, y, pixel) in image.enumerate_pixels() {
        let close = pixel
            .0
            .iter()
            .zip(colour)
            .all(|(&a, b)| (i32::from(a) - i32::from(b)).abs() <= COLOUR_TOLERANCE);
        if close {
            extent = Some(match extent {
                None => (x, y, x, y),
                Some((x1, y1, x2, y2)) => (x1.min(x), y1.min(y), x2.max(x), y2.max(y)),
            });
        }
    }
    extent.map(|(x1, y1, x2, y2)| BoundingBox {
        x1: x1 as f32,
        y1: y1 as f32,
        x2: (x2 + 1) as f32,
        y2: (y2 + 1) as f32,
    })
}

/// Image `image_idx` of a batch as an RGB image.
pub fn batch_image(batch: &Batch, image_idx: usize) -> RgbImage {
    let [_, _, height, width] = batch.shape;
    let plane = height * width;
    let chw = &batch.images[image_idx * 3 * plane..(image_idx + 1) * 3 * plane];
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let offset = y as usize * width + x as usize;
        Rgb([chw[offset], chw[plane + offset], chw[2 * plane + offset]])
    })
}

/// The targets of image `image_idx` of a batch, in the batch image's pixels.
pub fn batch_boxes(batch: &Batch, image_idx: usize) -> Vec<(usize, BoundingBox)> {
    let [_, _, height, width] = batch.shape;
    let (w, h) = (width as f32, height as f32);
    batch
        .targets
        .iter()
        .filter(|target| target[0] as usize == image_idx)
        .map(|target| {
            (
                target[1] as usize,
                BoundingBox::from_cxcywh(
                    target[2] * w,
                    target[3] * h,
                    target[4] * w,
                    target[5] * h,
                ),
            )
        })
        .collect()
}
