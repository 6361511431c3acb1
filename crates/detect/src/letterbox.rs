//! Letterbox pre-processing with Ultralytics' semantics, and its exact inverse.
//!
//! The image is scaled to fit the target size keeping its aspect ratio (bilinear,
//! pixel centres aligned like OpenCV's `INTER_LINEAR`), rounded back to 8 bits, then
//! padded with grey 114 split evenly on both sides (`round(d - 0.1)` before,
//! `round(d + 0.1)` after). The network input is RGB, CHW, `f32` in `0..=1`.
//! [`TransformInfo`] records what was done so that boxes map back to the original.

use image::RgbImage;

use crate::error::Error;
use crate::geometry::BoundingBox;

/// The grey Ultralytics pads with.
pub const PAD_VALUE: u8 = 114;

/// How one image was letterboxed: everything needed to map boxes back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformInfo {
    /// The original image, `(width, height)`.
    pub src_size: (u32, u32),
    /// The network input, `(width, height)`.
    pub dst_size: (u32, u32),
    /// The scaled image inside the padding, `(width, height)`.
    pub resized_size: (u32, u32),
    /// Pixels of padding on the left and on the top.
    pub pad: (u32, u32),
}

impl TransformInfo {
    /// The transform Ultralytics' `LetterBox(auto=False, center=True)` applies.
    pub fn new(src_size: (u32, u32), dst_size: (u32, u32)) -> Result<TransformInfo, Error> {
        let (src_width, src_height) = src_size;
        let (dst_width, dst_height) = dst_size;
        if src_width == 0 || src_height == 0 || dst_width == 0 || dst_height == 0 {
            return Err(Error::InvalidArgument(format!(
                "cannot letterbox {src_width}x{src_height} to {dst_width}x{dst_height}"
            )));
        }
        let ratio = (f64::from(dst_height) / f64::from(src_height))
            .min(f64::from(dst_width) / f64::from(src_width));
        // Python's round() is round-half-to-even; Ultralytics keeps thin images 1 px wide.
        let resized_width = (f64::from(src_width) * ratio).round_ties_even().max(1.0) as u32;
        let resized_height = (f64::from(src_height) * ratio).round_ties_even().max(1.0) as u32;
        let resized_width = resized_width.min(dst_width);
        let resized_height = resized_height.min(dst_height);
        let half_width = f64::from(dst_width - resized_width) / 2.0;
        let half_height = f64::from(dst_height - resized_height) / 2.0;
        let pad_left = (half_width - 0.1).round_ties_even().max(0.0) as u32;
        let pad_top = (half_height - 0.1).round_ties_even().max(0.0) as u32;
        Ok(TransformInfo {
            src_size,
            dst_size,
            resized_size: (resized_width, resized_height),
            pad: (pad_left, pad_top),
        })
    }

    /// Scale from original to input pixels, per axis (the rounding of the resized
    /// size makes them differ slightly, and the inverse must use the real ones).
    pub fn scale(&self) -> (f32, f32) {
        (
            self.resized_size.0 as f32 / self.src_size.0 as f32,
            self.resized_size.1 as f32 / self.src_size.1 as f32,
        )
    }

    /// A box in network-input pixels mapped back to the original image, clipped to it.
    pub fn to_source(&self, bbox: &BoundingBox) -> BoundingBox {
        let (scale_x, scale_y) = self.scale();
        let (pad_left, pad_top) = (self.pad.0 as f32, self.pad.1 as f32);
        BoundingBox {
            x1: (bbox.x1 - pad_left) / scale_x,
            y1: (bbox.y1 - pad_top) / scale_y,
            x2: (bbox.x2 - pad_left) / scale_x,
            y2: (bbox.y2 - pad_top) / scale_y,
        }
        .clipped(self.src_size.0 as f32, self.src_size.1 as f32)
    }

    /// A box in original pixels mapped into the network input.
    pub fn to_input(&self, bbox: &BoundingBox) -> BoundingBox {
        let (scale_x, scale_y) = self.scale();
        let (pad_left, pad_top) = (self.pad.0 as f32, self.pad.1 as f32);
        BoundingBox {
            x1: bbox.x1 * scale_x + pad_left,
            y1: bbox.y1 * scale_y + pad_top,
            x2: bbox.x2 * scale_x + pad_left,
            y2: bbox.y2 * scale_y + pad_top,
        }
    }
}

/// Several letterboxed images in one contiguous `[n, 3, height, width]` buffer.
#[derive(Clone, Debug)]
pub struct Batch {
    pub data: Vec<f32>,
    /// `[n, 3, height, width]`.
    pub shape: [usize; 4],
    /// One per image, in order.
    pub infos: Vec<TransformInfo>,
}

/// The letterboxed image as 8-bit RGB (what OpenCV would show), with its transform.
pub fn letterbox(
    image: &RgbImage,
    dst_size: (u32, u32),
) -> Result<(RgbImage, TransformInfo), Error> {
    let info = TransformInfo::new(image.dimensions(), dst_size)?;
    let resized = resize_bilinear(image, info.resized_size);
    let mut padded = RgbImage::from_pixel(dst_size.0, dst_size.1, image::Rgb([PAD_VALUE; 3]));
    image::imageops::replace(
        &mut padded,
        &resized,
        i64::from(info.pad.0),
        i64::from(info.pad.1),
    );
    Ok((padded, info))
}

/// Letterboxes every image to `dst_size` into one CHW float buffer.
pub fn letterbox_batch(images: &[RgbImage], dst_size: (u32, u32)) -> Result<Batch, Error> {
    if images.is_empty() {
        return Err(Error::InvalidArgument("an empty batch".to_string()));
    }
    let (width, height) = (dst_size.0 as usize, dst_size.1 as usize);
    let plane = width * height;
    let mut data = vec![f32::from(PAD_VALUE) / 255.0; images.len() * 3 * plane];
    let mut infos = Vec::with_capacity(images.len());
    for (image_idx, image) in images.iter().enumerate() {
        let info = TransformInfo::new(image.dimensions(), dst_size)?;
        let resized = resize_bilinear(image, info.resized_size);
        let chw = &mut data[image_idx * 3 * plane..(image_idx + 1) * 3 * plane];
        write_chw(&resized, info.pad, dst_size, chw);
        infos.push(info);
    }
    Ok(Batch {
        data,
        shape: [images.len(), 3, height, width],
        infos,
    })
}

/// The 8-bit image converted to CHW floats in `0..=1`, `[3, height, width]`.
pub fn to_chw(image: &RgbImage) -> Vec<f32> {
    let mut chw = vec![0.0; 3 * image.width() as usize * image.height() as usize];
    write_chw(image, (0, 0), image.dimensions(), &mut chw);
    chw
}

/// Bilinear resize with OpenCV `INTER_LINEAR`'s sampling: pixel centres aligned,
/// edges clamped, no anti-aliasing, result rounded to 8 bits.
pub fn resize_bilinear(image: &RgbImage, size: (u32, u32)) -> RgbImage {
    if image.dimensions() == size {
        return image.clone();
    }
    let (src_width, src_height) = image.dimensions();
    let (dst_width, dst_height) = size;
    let taps_x = linear_taps(src_width, dst_width);
    let taps_y = linear_taps(src_height, dst_height);
    let source = image.as_raw();
    let src_stride = src_width as usize * 3;
    let mut output = vec![0_u8; dst_width as usize * dst_height as usize * 3];
    // One horizontally resampled source row per tap, cached while consecutive
    // output rows reuse it (they do whenever the image is scaled up).
    let mut row_cache: [(usize, Vec<f32>); 2] = [
        (usize::MAX, vec![0.0; dst_width as usize * 3]),
        (usize::MAX, vec![0.0; dst_width as usize * 3]),
    ];
    for (dst_y, tap_y) in taps_y.iter().enumerate() {
        for (slot, src_y) in [(0, tap_y.index0), (1, tap_y.index1)] {
            if row_cache[slot].0 == src_y {
                continue;
            }
            let other = 1 - slot;
            if row_cache[other].0 == src_y {
                let copied = row_cache[other].1.clone();
                row_cache[slot] = (src_y, copied);
                continue;
            }
            let row = &source[src_y * src_stride..(src_y + 1) * src_stride];
            let cached = &mut row_cache[slot].1;
            for (dst_x, tap_x) in taps_x.iter().enumerate() {
                let left = &row[tap_x.index0 * 3..tap_x.index0 * 3 + 3];
                let right = &row[tap_x.index1 * 3..tap_x.index1 * 3 + 3];
                for channel in 0..3 {
                    cached[dst_x * 3 + channel] = f32::from(left[channel]) * (1.0 - tap_x.weight1)
                        + f32::from(right[channel]) * tap_x.weight1;
                }
            }
            row_cache[slot].0 = src_y;
        }
        let out_row =
            &mut output[dst_y * dst_width as usize * 3..(dst_y + 1) * dst_width as usize * 3];
        let (top, bottom) = (&row_cache[0].1, &row_cache[1].1);
        let weight1 = tap_y.weight1;
        for ((out, top), bottom) in out_row.iter_mut().zip(top).zip(bottom) {
            let value = top * (1.0 - weight1) + bottom * weight1;
            *out = (value + 0.5).clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage::from_raw(dst_width, dst_height, output)
        .unwrap_or_else(|| RgbImage::new(dst_width, dst_height))
}

/// Writes `resized` into a CHW buffer of `dst_size` at offset `pad`; the caller has
/// already filled the padding.
fn write_chw(resized: &RgbImage, pad: (u32, u32), dst_size: (u32, u32), chw: &mut [f32]) {
    let (dst_width, dst_height) = (dst_size.0 as usize, dst_size.1 as usize);
    let plane = dst_width * dst_height;
    let (width, height) = (resized.width() as usize, resized.height() as usize);
    let (pad_left, pad_top) = (pad.0 as usize, pad.1 as usize);
    let raw = resized.as_raw();
    let (red, rest) = chw.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for y in 0..height.min(dst_height.saturating_sub(pad_top)) {
        let start = (y + pad_top) * dst_width + pad_left;
        let row = &raw[y * width * 3..(y + 1) * width * 3];
        let n_pixels = width.min(dst_width.saturating_sub(pad_left));
        for (x, pixel) in row.chunks_exact(3).take(n_pixels).enumerate() {
            red[start + x] = f32::from(pixel[0]) / 255.0;
            green[start + x] = f32::from(pixel[1]) / 255.0;
            blue[start + x] = f32::from(pixel[2]) / 255.0;
        }
    }
}

struct LinearTap {
    index0: usize,
    index1: usize,
    weight1: f32,
}

/// OpenCV's `INTER_LINEAR` source positions: `(dst + 0.5) * src / dst - 0.5`, clamped.
fn linear_taps(src_len: u32, dst_len: u32) -> Vec<LinearTap> {
    let scale = f64::from(src_len) / f64::from(dst_len);
    let last = src_len as usize - 1;
    (0..dst_len)
        .map(|dst| {
            let position = (f64::from(dst) + 0.5) * scale - 0.5;
            let floor = position.floor();
            let (index0, weight1) = if floor < 0.0 {
                (0, 0.0)
            } else if floor as usize >= last {
                (last, 0.0)
            } else {
                (floor as usize, (position - floor) as f32)
            };
            LinearTap {
                index0,
                index1: (index0 + 1).min(last),
                weight1,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src_size: (u32, u32), dst_size: (u32, u32), expected: (u32, u32, u32, u32)) {
        let info = TransformInfo::new(src_size, dst_size).expect("valid sizes");
        assert_eq!(
            (
                info.resized_size.0,
                info.resized_size.1,
                info.pad.0,
                info.pad.1
            ),
            expected,
            "{src_size:?} -> {dst_size:?}"
        );
    }

    #[test]
    fn transform_matches_ultralytics_rounding() {
        // (resized width, resized height, left pad, top pad)
        check((1280, 720), (640, 640), (640, 360, 0, 140));
        check((640, 480), (640, 640), (640, 480, 0, 80));
        check((333, 517), (640, 640), (412, 640, 114, 0));
        // 101 * (640 / 999) = 64.7 rounds to 65; padding 575 splits 287 / 288.
        check((999, 101), (640, 640), (640, 65, 0, 287));
        check((1, 1000), (640, 640), (1, 640, 319, 0));
        assert!(TransformInfo::new((0, 5), (640, 640)).is_err());
    }

    #[test]
    fn boxes_round_trip_through_the_transform() {
        let info = TransformInfo::new((333, 517), (640, 640)).expect("valid sizes");
        let original = BoundingBox {
            x1: 10.5,
            y1: 20.25,
            x2: 300.0,
            y2: 517.0,
        };
        let back = info.to_source(&info.to_input(&original));
        for (a, b) in [
            (original.x1, back.x1),
            (original.y1, back.y1),
            (original.x2, back.x2),
            (original.y2, back.y2),
        ] {
            assert!((a - b).abs() < 1e-3, "{original:?} != {back:?}");
        }
    }

    #[test]
    fn batches_are_contiguous_chw_with_grey_padding() {
        let image = RgbImage::from_pixel(4, 2, image::Rgb([255, 0, 51]));
        let batch = letterbox_batch(&[image.clone(), image], (4, 4)).expect("letterboxes");
        assert_eq!(batch.shape, [2, 3, 4, 4]);
        assert_eq!(batch.data.len(), 2 * 3 * 16);
        let grey = 114.0 / 255.0;
        // Row 0 is padding, rows 1 and 2 the image, row 3 padding.
        assert_eq!(batch.data[0], grey);
        assert_eq!(batch.data[4], 1.0);
        assert_eq!(batch.data[16 + 4], 0.0);
        assert_eq!(batch.data[32 + 4], 0.2);
        assert_eq!(batch.data[12], grey);
        assert_eq!(&batch.data[..48], &batch.data[48..]);
    }
}
