//! Drawing detections: a box per detection in its class's colour, with a
//! `class score` label set in DejaVu Sans Bold (embedded, rasterised by `ab_glyph`)
//! at a size that follows the image size, so labels stay readable from thumbnails to
//! 4K frames. Also the few primitives the PR-curve plot needs.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::classes::class_name;
use crate::geometry::{BoundingBox, Detection};

/// Ultralytics' 20-colour palette; class `c` gets `PALETTE[c % 20]`.
pub const PALETTE: [[u8; 3]; 20] = [
    [0x04, 0x2A, 0xFF],
    [0x0B, 0xDB, 0xEB],
    [0xF3, 0xF3, 0xF3],
    [0x00, 0xDF, 0xB7],
    [0x11, 0x1F, 0x68],
    [0xFF, 0x6F, 0xDD],
    [0xFF, 0x44, 0x4F],
    [0xCC, 0xED, 0x00],
    [0x00, 0xF3, 0x44],
    [0xBD, 0x00, 0xFF],
    [0x00, 0xB4, 0xFF],
    [0xDD, 0x00, 0xBA],
    [0x00, 0xFF, 0xFF],
    [0x26, 0xC0, 0x00],
    [0x01, 0xFF, 0xB3],
    [0x7D, 0x24, 0xFF],
    [0x7B, 0x00, 0x68],
    [0xFF, 0x1B, 0x6C],
    [0xFC, 0x6D, 0x2F],
    [0xA2, 0xFF, 0x0B],
];

/// The colour of a class.
pub fn class_color(class_id: usize) -> Rgb<u8> {
    Rgb(PALETTE[class_id % PALETTE.len()])
}

/// Line width and label font size for an image, as Ultralytics' annotator picks them.
pub fn annotation_sizes(width: u32, height: u32) -> (u32, f32) {
    let mean_side = (f64::from(width) + f64::from(height)) / 2.0;
    let line_width = ((mean_side * 0.003).round() as u32).max(2);
    let font_px = (mean_side * 0.035).round().max(12.0) as f32;
    (line_width, font_px)
}

/// Draws every detection's box and `class score` label onto the image.
pub fn draw_detections(image: &mut RgbImage, detections: &[Detection], names: &[String]) {
    let (line_width, font_px) = annotation_sizes(image.width(), image.height());
    for detection in detections {
        let label = format!(
            "{} {:.2}",
            class_name(names, detection.class_id),
            detection.confidence
        );
        draw_labelled_box(
            image,
            &detection.bbox,
            &label,
            class_color(detection.class_id),
            line_width,
            font_px,
        );
    }
}

/// One box with a filled label tab above it (inside it when there is no room above).
pub fn draw_labelled_box(
    image: &mut RgbImage,
    bbox: &BoundingBox,
    label: &str,
    color: Rgb<u8>,
    line_width: u32,
    font_px: f32,
) {
    draw_rectangle(image, bbox, color, line_width);
    let (text_width, text_height) = text_size(label, font_px);
    let margin = (font_px / 6.0).ceil();
    let tab_height = text_height + 2.0 * margin;
    let tab_width = text_width + 2.0 * margin;
    let left = bbox.x1.max(0.0);
    let top = if bbox.y1 - tab_height >= 0.0 {
        bbox.y1 - tab_height
    } else {
        bbox.y1.max(0.0)
    };
    let left = left.min((image.width() as f32 - tab_width).max(0.0));
    fill_rectangle(
        image,
        &BoundingBox {
            x1: left,
            y1: top,
            x2: left + tab_width,
            y2: top + tab_height,
        },
        color,
    );
    let text_color = if luminance(color) > 140.0 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    };
    draw_text(
        image,
        label,
        left + margin,
        top + margin,
        font_px,
        text_color,
    );
}

/// A rectangle outline `thickness` pixels wide, drawn inside `bbox`.
pub fn draw_rectangle(image: &mut RgbImage, bbox: &BoundingBox, color: Rgb<u8>, thickness: u32) {
    let thickness = thickness.max(1) as f32;
    let (x1, y1, x2, y2) = (bbox.x1, bbox.y1, bbox.x2, bbox.y2);
    fill_rectangle(
        image,
        &BoundingBox {
            x1,
            y1,
            x2,
            y2: y1 + thickness,
        },
        color,
    );
    fill_rectangle(
        image,
        &BoundingBox {
            x1,
            y1: y2 - thickness,
            x2,
            y2,
        },
        color,
    );
    fill_rectangle(
        image,
        &BoundingBox {
            x1,
            y1,
            x2: x1 + thickness,
            y2,
        },
        color,
    );
    fill_rectangle(
        image,
        &BoundingBox {
            x1: x2 - thickness,
            y1,
            x2,
            y2,
        },
        color,
    );
}

/// Fills the pixels whose centres fall inside `bbox` (clipped to the image).
pub fn fill_rectangle(image: &mut RgbImage, bbox: &BoundingBox, color: Rgb<u8>) {
    let clip = |value: f32, limit: u32| (value.round().max(0.0) as u32).min(limit);
    let (x1, x2) = (clip(bbox.x1, image.width()), clip(bbox.x2, image.width()));
    let (y1, y2) = (clip(bbox.y1, image.height()), clip(bbox.y2, image.height()));
    for y in y1..y2 {
        for x in x1..x2 {
            image.put_pixel(x, y, color);
        }
    }
}

/// A straight line `thickness` pixels wide (round caps), for plots.
pub fn draw_line(
    image: &mut RgbImage,
    from: (f32, f32),
    to: (f32, f32),
    color: Rgb<u8>,
    thickness: f32,
) {
    let length = ((to.0 - from.0).powi(2) + (to.1 - from.1).powi(2)).sqrt();
    let n_steps = (length * 2.0).ceil().max(1.0) as usize;
    let radius = (thickness / 2.0).max(0.5);
    for step in 0..=n_steps {
        let t = step as f32 / n_steps as f32;
        let (x, y) = (from.0 + (to.0 - from.0) * t, from.1 + (to.1 - from.1) * t);
        fill_disc(image, x, y, radius, color);
    }
}

/// A filled disc centred on `(x, y)`.
pub fn fill_disc(image: &mut RgbImage, x: f32, y: f32, radius: f32, color: Rgb<u8>) {
    let (x_min, x_max) = (
        (x - radius).floor().max(0.0) as i64,
        (x + radius).ceil() as i64,
    );
    let (y_min, y_max) = (
        (y - radius).floor().max(0.0) as i64,
        (y + radius).ceil() as i64,
    );
    for pixel_y in y_min..=y_max.min(i64::from(image.height()) - 1) {
        for pixel_x in x_min..=x_max.min(i64::from(image.width()) - 1) {
            let (dx, dy) = (pixel_x as f32 + 0.5 - x, pixel_y as f32 + 0.5 - y);
            if dx * dx + dy * dy <= radius * radius {
                image.put_pixel(pixel_x as u32, pixel_y as u32, color);
            }
        }
    }
}

/// Width and height in pixels that `text` takes at `font_px` (height = ascent - descent).
pub fn text_size(text: &str, font_px: f32) -> (f32, f32) {
    let Some(font) = label_font() else {
        return (0.0, 0.0);
    };
    let scaled = font.as_scaled(PxScale::from(font_px));
    let mut width = 0.0;
    let mut previous = None;
    for character in text.chars() {
        let glyph_id = scaled.glyph_id(character);
        if let Some(previous) = previous {
            width += scaled.kern(previous, glyph_id);
        }
        width += scaled.h_advance(glyph_id);
        previous = Some(glyph_id);
    }
    (width.ceil(), (scaled.ascent() - scaled.descent()).ceil())
}

/// Draws `text` with its top-left corner at `(left, top)`, anti-aliased.
pub fn draw_text(
    image: &mut RgbImage,
    text: &str,
    left: f32,
    top: f32,
    font_px: f32,
    color: Rgb<u8>,
) {
    let Some(font) = label_font() else {
        return;
    };
    let scaled = font.as_scaled(PxScale::from(font_px));
    let baseline = top + scaled.ascent();
    let mut caret = left;
    let mut previous = None;
    for character in text.chars() {
        let glyph_id = scaled.glyph_id(character);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, glyph_id);
        }
        let glyph = glyph_id
            .with_scale_and_position(PxScale::from(font_px), ab_glyph::point(caret, baseline));
        caret += scaled.h_advance(glyph_id);
        previous = Some(glyph_id);
        let Some(outlined) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outlined.px_bounds();
        outlined.draw(|glyph_x, glyph_y, coverage| {
            let x = bounds.min.x as i64 + i64::from(glyph_x);
            let y = bounds.min.y as i64 + i64::from(glyph_y);
            if x < 0 || y < 0 || x >= i64::from(image.width()) || y >= i64::from(image.height()) {
                return;
            }
            let pixel = image.get_pixel_mut(x as u32, y as u32);
            let coverage = coverage.clamp(0.0, 1.0);
            for channel in 0..3 {
                let blended = f32::from(pixel.0[channel]) * (1.0 - coverage)
                    + f32::from(color.0[channel]) * coverage;
                pixel.0[channel] = blended.round() as u8;
            }
        });
    }
}

fn label_font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(dejavu::sans::bold()).ok())
        .as_ref()
}

fn luminance(color: Rgb<u8>) -> f32 {
    0.299 * f32::from(color.0[0]) + 0.587 * f32::from(color.0[1]) + 0.114 * f32::from(color.0[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(image_size: (u32, u32), expected_line_width: u32, expected_font_px: f32) {
        let (line_width, font_px) = annotation_sizes(image_size.0, image_size.1);
        assert_eq!(
            (line_width, font_px),
            (expected_line_width, expected_font_px),
            "{image_size:?}"
        );
        let (text_width, text_height) = text_size("truck 0.87", font_px);
        assert!(
            text_height >= font_px * 0.9 && text_width > font_px * 3.0,
            "{text_width}x{text_height}"
        );
    }

    #[test]
    fn label_sizes_follow_the_image_size() {
        check((160, 120), 2, 12.0);
        check((640, 640), 2, 22.0);
        check((3840, 2160), 9, 105.0);
    }

    #[test]
    fn boxes_and_labels_are_drawn_in_the_class_colour() {
        let mut image = RgbImage::from_pixel(200, 120, Rgb([40, 40, 40]));
        let detection = Detection {
            bbox: BoundingBox {
                x1: 50.0,
                y1: 60.0,
                x2: 150.0,
                y2: 110.0,
            },
            class_id: 2,
            confidence: 0.87,
        };
        draw_detections(&mut image, &[detection], &crate::classes::coco_names());
        // The left edge of the box is the class colour.
        assert_eq!(*image.get_pixel(50, 80), class_color(2));
        // The label tab above the box holds dark text on the (light) class colour.
        let tab_pixels: Vec<Rgb<u8>> = (50..120)
            .flat_map(|x| (40..58).map(move |y| (x, y)))
            .map(|(x, y)| *image.get_pixel(x, y))
            .collect();
        assert!(tab_pixels.iter().any(|p| *p == class_color(2)));
        assert!(
            tab_pixels.iter().any(|p| p.0[0] < 60),
            "no text pixels in the tab"
        );
        // Inside the box is untouched.
        assert_eq!(*image.get_pixel(100, 90), Rgb([40, 40, 40]));
    }
}
