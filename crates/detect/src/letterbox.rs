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
    let shape = batch_shape(images.len(), dst_size);
    // Zeroed pages cost nothing until written, and every element is written.
    let mut data = vec![0.0_f32; shape.iter().product()];
    let infos = letterbox_batch_into(images, dst_size, &mut data)?;
    Ok(Batch { data, shape, infos })
}

/// `[n, 3, height, width]` of `n` images letterboxed to `dst_size`.
pub fn batch_shape(n_images: usize, dst_size: (u32, u32)) -> [usize; 4] {
    [n_images, 3, dst_size.1 as usize, dst_size.0 as usize]
}

/// [`letterbox_batch`] into a buffer the caller owns (of [`batch_shape`]'s size),
/// overwriting every element: a client that reuses one buffer per request in
/// flight stops paying the kernel to fault in and zero 4.9 MB per image.
///
/// Each resized row goes straight from its 8-bit value to the three float planes,
/// and only the padding is filled: no intermediate image, no full-buffer fill.
pub fn letterbox_batch_into(
    images: &[RgbImage],
    dst_size: (u32, u32),
    data: &mut [f32],
) -> Result<Vec<TransformInfo>, Error> {
    if images.is_empty() {
        return Err(Error::InvalidArgument("an empty batch".to_string()));
    }
    let shape = batch_shape(images.len(), dst_size);
    if data.len() != shape.iter().product::<usize>() {
        return Err(Error::InvalidArgument(format!(
            "a letterbox buffer of {} values for a batch of shape {shape:?}",
            data.len()
        )));
    }
    let width = dst_size.0 as usize;
    let plane = width * dst_size.1 as usize;
    let mut infos = Vec::with_capacity(images.len());
    let to_float = unit_floats();
    let pad = to_float[usize::from(PAD_VALUE)];
    for (image, chw) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
        let info = TransformInfo::new(image.dimensions(), dst_size)?;
        let (red, rest) = chw.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        let (pad_left, pad_top) = (info.pad.0 as usize, info.pad.1 as usize);
        let (resized_width, resized_height) =
            (info.resized_size.0 as usize, info.resized_size.1 as usize);
        for channel in [&mut *red, &mut *green, &mut *blue] {
            channel[..pad_top * width].fill(pad);
            channel[(pad_top + resized_height) * width..].fill(pad);
            for y in pad_top..pad_top + resized_height {
                let row = &mut channel[y * width..(y + 1) * width];
                row[..pad_left].fill(pad);
                row[pad_left + resized_width..].fill(pad);
            }
        }
        resize_rows(image, info.resized_size, |y, row| {
            let start = (y + pad_top) * width + pad_left;
            let end = start + resized_width;
            for (((pixel, r), g), b) in row
                .chunks_exact(3)
                .zip(&mut red[start..end])
                .zip(&mut green[start..end])
                .zip(&mut blue[start..end])
            {
                *r = to_float[usize::from(pixel[0])];
                *g = to_float[usize::from(pixel[1])];
                *b = to_float[usize::from(pixel[2])];
            }
        });
        infos.push(info);
    }
    Ok(infos)
}

/// The 8-bit image converted to CHW floats in `0..=1`, `[3, height, width]`.
pub fn to_chw(image: &RgbImage) -> Vec<f32> {
    let to_float = unit_floats();
    let plane = image.width() as usize * image.height() as usize;
    let mut chw = vec![0.0; 3 * plane];
    let (red, rest) = chw.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (index, pixel) in image.as_raw().chunks_exact(3).enumerate() {
        red[index] = to_float[usize::from(pixel[0])];
        green[index] = to_float[usize::from(pixel[1])];
        blue[index] = to_float[usize::from(pixel[2])];
    }
    chw
}

/// `v / 255` for every 8-bit value: the network's input scaling, looked up.
fn unit_floats() -> [f32; 256] {
    std::array::from_fn(|value| value as f32 / 255.0)
}

/// Bilinear resize with OpenCV `INTER_LINEAR`'s sampling: pixel centres aligned,
/// edges clamped, no anti-aliasing, result rounded to 8 bits.
pub fn resize_bilinear(image: &RgbImage, size: (u32, u32)) -> RgbImage {
    let row_len = size.0 as usize * 3;
    let mut output = vec![0_u8; row_len * size.1 as usize];
    resize_rows(image, size, |y, row| {
        output[y * row_len..(y + 1) * row_len].copy_from_slice(row);
    });
    RgbImage::from_raw(size.0, size.1, output).unwrap_or_else(|| RgbImage::new(size.0, size.1))
}

/// Fixed-point weights, as OpenCV's 8-bit `INTER_LINEAR` uses: 11 fractional bits.
const WEIGHT_BITS: u32 = 11;
const WEIGHT_ONE: u32 = 1 << WEIGHT_BITS;

/// Resizes `image` to `size` one output row at a time, handing each 8-bit RGB row
/// to `emit` with its index.
///
/// Integer arithmetic throughout: horizontal and vertical weights sum to 2^11
/// each, products are kept exact in `u32` and rounded once from 22 fractional bits.
/// With a single rounding the order of the two passes does not change a value, so
/// the cheaper order is taken: when shrinking vertically, the two source rows are
/// blended first (a contiguous, vectorised pass) and only the blended row is
/// resampled horizontally; otherwise each source row is resampled horizontally once
/// and cached while consecutive output rows reuse it (they do when enlarging).
fn resize_rows(image: &RgbImage, size: (u32, u32), mut emit: impl FnMut(usize, &[u8])) {
    let (src_width, src_height) = image.dimensions();
    let (dst_width, dst_height) = size;
    if dst_width == 0 || dst_height == 0 || src_width == 0 || src_height == 0 {
        return;
    }
    if image.dimensions() == size {
        let row_len = src_width as usize * 3;
        for (y, row) in image.as_raw().chunks_exact(row_len).enumerate() {
            emit(y, row);
        }
        return;
    }
    if src_height > dst_height {
        resize_rows_vertical_first(image, size, emit);
    } else {
        resize_rows_horizontal_first(image, size, emit);
    }
}

/// [`resize_rows`] resampling each source row once, for images that do not shrink
/// vertically.
fn resize_rows_horizontal_first(
    image: &RgbImage,
    size: (u32, u32),
    mut emit: impl FnMut(usize, &[u8]),
) {
    let (src_width, src_height) = image.dimensions();
    let (dst_width, dst_height) = size;
    let taps_x = linear_taps(src_width, dst_width);
    let taps_y = linear_taps(src_height, dst_height);
    let source = image.as_raw();
    let src_stride = src_width as usize * 3;
    let row_len = dst_width as usize * 3;
    let mut row_cache: [(usize, Vec<u32>); 2] = [
        (usize::MAX, vec![0; row_len]),
        (usize::MAX, vec![0; row_len]),
    ];
    let mut out_row = vec![0_u8; row_len];
    for (dst_y, tap_y) in taps_y.iter().enumerate() {
        for (slot, src_y) in [(0, tap_y.index0), (1, tap_y.index1)] {
            if row_cache[slot].0 == src_y {
                continue;
            }
            let other = 1 - slot;
            if row_cache[other].0 == src_y {
                let [first, second] = &mut row_cache;
                let (to, from) = if slot == 0 {
                    (first, &*second)
                } else {
                    (second, &*first)
                };
                to.1.copy_from_slice(&from.1);
                to.0 = src_y;
                continue;
            }
            let row = &source[src_y * src_stride..(src_y + 1) * src_stride];
            let cached = &mut row_cache[slot].1;
            for (out, tap_x) in cached.chunks_exact_mut(3).zip(&taps_x) {
                let left = &row[tap_x.index0 * 3..tap_x.index0 * 3 + 3];
                let right = &row[tap_x.index1 * 3..tap_x.index1 * 3 + 3];
                let (w0, w1) = (WEIGHT_ONE - tap_x.weight1, tap_x.weight1);
                for channel in 0..3 {
                    out[channel] = u32::from(left[channel]) * w0 + u32::from(right[channel]) * w1;
                }
            }
            row_cache[slot].0 = src_y;
        }
        let (top, bottom) = (&row_cache[0].1, &row_cache[1].1);
        let (w0, w1) = (WEIGHT_ONE - tap_y.weight1, tap_y.weight1);
        for ((out, top), bottom) in out_row.iter_mut().zip(top).zip(bottom) {
            *out = round_weighted(top * w0 + bottom * w1);
        }
        emit(dst_y, &out_row);
    }
}

/// [`resize_rows`] blending rows before columns, for images that shrink vertically.
fn resize_rows_vertical_first(
    image: &RgbImage,
    size: (u32, u32),
    mut emit: impl FnMut(usize, &[u8]),
) {
    let (src_width, src_height) = image.dimensions();
    let taps_x = linear_taps(src_width, size.0);
    let taps_y = linear_taps(src_height, size.1);
    let source = image.as_raw();
    let src_stride = src_width as usize * 3;
    let mut blended = vec![0_u32; src_stride];
    let mut out_row = vec![0_u8; size.0 as usize * 3];
    for (dst_y, tap_y) in taps_y.iter().enumerate() {
        let top = &source[tap_y.index0 * src_stride..(tap_y.index0 + 1) * src_stride];
        let bottom = &source[tap_y.index1 * src_stride..(tap_y.index1 + 1) * src_stride];
        let (w0, w1) = (WEIGHT_ONE - tap_y.weight1, tap_y.weight1);
        for ((out, &top), &bottom) in blended.iter_mut().zip(top).zip(bottom) {
            *out = u32::from(top) * w0 + u32::from(bottom) * w1;
        }
        for (out, tap_x) in out_row.chunks_exact_mut(3).zip(&taps_x) {
            let left = &blended[tap_x.index0 * 3..tap_x.index0 * 3 + 3];
            let right = &blended[tap_x.index1 * 3..tap_x.index1 * 3 + 3];
            let (w0, w1) = (WEIGHT_ONE - tap_x.weight1, tap_x.weight1);
            for channel in 0..3 {
                out[channel] = round_weighted(left[channel] * w0 + right[channel] * w1);
            }
        }
        emit(dst_y, &out_row);
    }
}

/// A pixel from a value with 22 fractional bits (two weights of 2^11 applied),
/// rounded half up. At most 255 * 2^22 + 2^21: fits in `u32`, and the result in `u8`.
fn round_weighted(value: u32) -> u8 {
    const ROUND: u32 = 1 << (2 * WEIGHT_BITS - 1);
    ((value + ROUND) >> (2 * WEIGHT_BITS)) as u8
}

struct LinearTap {
    index0: usize,
    index1: usize,
    /// The second sample's weight, in units of 2^-11.
    weight1: u32,
}

/// OpenCV's `INTER_LINEAR` source positions: `(dst + 0.5) * src / dst - 0.5`, clamped.
fn linear_taps(src_len: u32, dst_len: u32) -> Vec<LinearTap> {
    let scale = f64::from(src_len) / f64::from(dst_len);
    let last = src_len as usize - 1;
    (0..dst_len)
        .map(|dst| {
            let position = (f64::from(dst) + 0.5) * scale - 0.5;
            let floor = position.floor();
            let (index0, fraction) = if floor < 0.0 {
                (0, 0.0)
            } else if floor as usize >= last {
                (last, 0.0)
            } else {
                (floor as usize, position - floor)
            };
            LinearTap {
                index0,
                index1: (index0 + 1).min(last),
                weight1: (fraction * f64::from(WEIGHT_ONE)).round() as u32,
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

    #[test]
    fn a_reused_buffer_is_overwritten_everywhere() {
        let images = [
            RgbImage::from_pixel(7, 3, image::Rgb([10, 200, 30])),
            RgbImage::from_pixel(2, 9, image::Rgb([0, 0, 255])),
        ];
        let fresh = letterbox_batch(&images, (8, 8)).expect("letterboxes");
        let mut reused = vec![f32::NAN; fresh.data.len()];
        let infos = letterbox_batch_into(&images, (8, 8), &mut reused).expect("letterboxes");
        assert_eq!(infos, fresh.infos);
        assert_eq!(reused, fresh.data);
        let mut wrong_size = vec![0.0; fresh.data.len() - 1];
        assert!(letterbox_batch_into(&images, (8, 8), &mut wrong_size).is_err());
    }

    #[test]
    fn both_pass_orders_give_the_same_pixels() {
        let mut state = 0x2545_f491_u32;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        };
        for (src, dst) in [
            ((1280, 720), (640, 360)),
            ((37, 91), (20, 50)),
            ((50, 40), (90, 33)),
            ((13, 7), (40, 5)),
            ((999, 101), (640, 65)),
        ] {
            let image =
                RgbImage::from_fn(src.0, src.1, |_, _| image::Rgb([noise(), noise(), noise()]));
            let rows = |vertical_first: bool| {
                let mut rows = Vec::new();
                let emit = |y: usize, row: &[u8]| rows.push((y, row.to_vec()));
                if vertical_first {
                    resize_rows_vertical_first(&image, dst, emit);
                } else {
                    resize_rows_horizontal_first(&image, dst, emit);
                }
                rows
            };
            let vertical_first = rows(true);
            assert_eq!(vertical_first.len(), dst.1 as usize);
            assert_eq!(vertical_first, rows(false), "{src:?} -> {dst:?}");
        }
    }
}
