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
use crate::simd::{Isa, kernel};

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

/// The network input a model that takes any size gets for an image of `src_size`,
/// as Ultralytics' `LetterBox(auto=True)` chooses it: the image scaled to fit
/// `max_size`, each side then padded only up to the next multiple of `stride` (the
/// model's largest stride, 32 for YOLOv8). A 1280x720 frame with `max_size` 640x640
/// runs at 640x384: 40% fewer pixels through the network than the square, and the
/// same scale.
pub fn rect_size(
    src_size: (u32, u32),
    max_size: (u32, u32),
    stride: u32,
) -> Result<(u32, u32), Error> {
    if stride == 0 {
        return Err(Error::InvalidArgument("a stride of 0".to_string()));
    }
    let (resized_width, resized_height) = TransformInfo::new(src_size, max_size)?.resized_size;
    // Ultralytics pads by the remainder of the full padding, which is the next
    // multiple of the stride whenever `max_size` is one.
    let side = |resized: u32, max: u32| resized + (max - resized) % stride;
    Ok((
        side(resized_width, max_size.0),
        side(resized_height, max_size.1),
    ))
}

/// The network input size of a batch, for a model whose sides may be variable: a
/// variable side shrinks to what the batch's images need ([`rect_size`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputSize {
    /// `(width, height)`: the model's fixed sides, and the largest a variable one gets.
    pub max: (u32, u32),
    /// Which of `(width, height)` the model leaves variable and the client shrinks
    /// to the batch's images.
    pub shrink: (bool, bool),
}

impl InputSize {
    /// YOLOv8's largest stride: a variable side must be a multiple of it.
    pub const STRIDE: u32 = 32;

    /// The input for a batch of images of `sizes`: on each variable side, the most
    /// any of them needs.
    pub fn for_images(&self, sizes: impl Iterator<Item = (u32, u32)>) -> Result<(u32, u32), Error> {
        if self.shrink == (false, false) {
            return Ok(self.max);
        }
        let (mut width, mut height) = (0, 0);
        for size in sizes {
            let (rect_width, rect_height) = rect_size(size, self.max, Self::STRIDE)?;
            width = width.max(rect_width);
            height = height.max(rect_height);
        }
        Ok((
            if self.shrink.0 { width } else { self.max.0 },
            if self.shrink.1 { height } else { self.max.1 },
        ))
    }
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
/// The per-pixel loops take AVX2 where the CPU has it, with the same results.
pub fn letterbox_batch_into(
    images: &[RgbImage],
    dst_size: (u32, u32),
    data: &mut [f32],
) -> Result<Vec<TransformInfo>, Error> {
    let mut fresh = PaddingWritten::default();
    letterbox_batch_into_with(Isa::detect(), images, dst_size, data, &mut fresh)
}

/// [`letterbox_batch_into`] into a buffer that only this function writes, which
/// `written` follows from call to call: an image whose padding has the same layout
/// as the last one written into its slot leaves that padding as it is. A 16:9 frame
/// letterboxed to a square is 44% padding, and the camera's next frame has the same
/// size, so a client sending one stream skips that share of its writes.
///
/// Anything else that writes into `data`, or changes its length, must
/// [`PaddingWritten::forget`] first.
pub fn letterbox_batch_reusing(
    images: &[RgbImage],
    dst_size: (u32, u32),
    data: &mut [f32],
    written: &mut PaddingWritten,
) -> Result<Vec<TransformInfo>, Error> {
    letterbox_batch_into_with(Isa::detect(), images, dst_size, data, written)
}

/// Which padding layout each image slot of a reused batch buffer already holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PaddingWritten {
    slots: Vec<Option<PaddingLayout>>,
}

impl PaddingWritten {
    /// Nothing is known of the buffer any more.
    pub fn forget(&mut self) {
        self.slots.clear();
    }

    fn holds(&self, slot: usize, layout: PaddingLayout) -> bool {
        self.slots.get(slot) == Some(&Some(layout))
    }

    fn record(&mut self, slot: usize, layout: PaddingLayout) {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, None);
        }
        self.slots[slot] = Some(layout);
    }
}

/// What decides which elements of an image's planes are padding.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PaddingLayout {
    dst_size: (u32, u32),
    resized_size: (u32, u32),
    pad: (u32, u32),
}

impl From<&TransformInfo> for PaddingLayout {
    fn from(info: &TransformInfo) -> PaddingLayout {
        PaddingLayout {
            dst_size: info.dst_size,
            resized_size: info.resized_size,
            pad: info.pad,
        }
    }
}

/// The 8-bit image converted to CHW floats in `0..=1`, `[3, height, width]`.
pub fn to_chw(image: &RgbImage) -> Vec<f32> {
    let plane = image.width() as usize * image.height() as usize;
    let mut chw = vec![0.0; 3 * plane];
    let (red, rest) = chw.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    scatter_planes(Isa::detect(), image.as_raw(), red, green, blue);
    chw
}

/// Bilinear resize with OpenCV `INTER_LINEAR`'s sampling: pixel centres aligned,
/// edges clamped, no anti-aliasing, result rounded to 8 bits.
pub fn resize_bilinear(image: &RgbImage, size: (u32, u32)) -> RgbImage {
    let row_len = size.0 as usize * 3;
    let mut output = vec![0_u8; row_len * size.1 as usize];
    resize_rows(Isa::detect(), image, size, |y, row| {
        output[y * row_len..(y + 1) * row_len].copy_from_slice(row);
    });
    RgbImage::from_raw(size.0, size.1, output).unwrap_or_else(|| RgbImage::new(size.0, size.1))
}

/// [`letterbox_batch_into`] with the per-pixel loops compiled for `isa`.
fn letterbox_batch_into_with(
    isa: Isa,
    images: &[RgbImage],
    dst_size: (u32, u32),
    data: &mut [f32],
    written: &mut PaddingWritten,
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
    let pad = unit_float(PAD_VALUE);
    for (slot, (image, chw)) in images
        .iter()
        .zip(data.chunks_exact_mut(3 * plane))
        .enumerate()
    {
        let info = match TransformInfo::new(image.dimensions(), dst_size) {
            Ok(info) => info,
            Err(error) => {
                written.forget();
                return Err(error);
            }
        };
        let (red, rest) = chw.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        let (pad_left, pad_top) = (info.pad.0 as usize, info.pad.1 as usize);
        let (resized_width, resized_height) =
            (info.resized_size.0 as usize, info.resized_size.1 as usize);
        let layout = PaddingLayout::from(&info);
        let padded = written.holds(slot, layout);
        written.record(slot, layout);
        if !padded {
            for channel in [&mut *red, &mut *green, &mut *blue] {
                fill(isa, &mut channel[..pad_top * width], pad);
                fill(isa, &mut channel[(pad_top + resized_height) * width..], pad);
                for y in pad_top..pad_top + resized_height {
                    let row = &mut channel[y * width..(y + 1) * width];
                    fill(isa, &mut row[..pad_left], pad);
                    fill(isa, &mut row[pad_left + resized_width..], pad);
                }
            }
        }
        resize_rows(isa, image, info.resized_size, |y, row| {
            let start = (y + pad_top) * width + pad_left;
            let end = start + resized_width;
            scatter_planes(
                isa,
                row,
                &mut red[start..end],
                &mut green[start..end],
                &mut blue[start..end],
            );
        });
        infos.push(info);
    }
    Ok(infos)
}

/// `v / 255`: the network's input scaling. Division is correctly rounded in IEEE
/// arithmetic, so the scalar and the vector instructions give the same bits.
#[inline(always)]
fn unit_float(value: u8) -> f32 {
    f32::from(value) / 255.0
}

kernel! {
    /// Every element set to `value`.
    fn fill(values: &mut [f32], value: f32) {
        values.fill(value);
    }
}

kernel! {
    /// Interleaved RGB bytes into three float planes, each scaled to `0..=1`.
    fn scatter_planes(rgb: &[u8], red: &mut [f32], green: &mut [f32], blue: &mut [f32]) {
        for (((pixel, r), g), b) in rgb.chunks_exact(3).zip(red).zip(green).zip(blue) {
            *r = unit_float(pixel[0]);
            *g = unit_float(pixel[1]);
            *b = unit_float(pixel[2]);
        }
    }
}

kernel! {
    /// `top * (2^11 - weight1) + bottom * weight1` for every byte of two rows, exact.
    fn blend_rows(top: &[u8], bottom: &[u8], weight1: u16, out: &mut [u32]) {
        // At most 2^11; the mask tells LLVM that it fits in 15 bits.
        let weight1 = i32::from(weight1 & 0x7fff);
        for ((out, &top), &bottom) in out.iter_mut().zip(top).zip(bottom) {
            let (top, bottom) = (i32::from(top), i32::from(bottom));
            // The same sum, as the weights add up to 2^11, with one multiply of two
            // 16-bit values (which x86 does 8 or 16 at a time with `pmaddwd`).
            *out = ((top << WEIGHT_BITS) + (bottom - top) * weight1) as u32;
        }
    }
}

kernel! {
    /// A row of [`blend_rows`] sampled at `taps`, rounded to 8 bits.
    ///
    /// Each pixel is computed as four lanes, its three channels and the next value
    /// (a vector of four where the CPU has one), and written as four bytes, the
    /// last overwritten by the next pixel: `blended` and `out` hold one spare value
    /// past their pixels. Every lane blends two values of `blended`, so none overflows.
    fn resample_blended(blended: &[u32], taps: &[LinearTap], out: &mut [u8]) {
        for (x, tap) in taps.iter().enumerate() {
            let (Some(left), Some(right), Some(pixel)) = (
                blended[tap.index0 * 3..].first_chunk::<4>(),
                blended[tap.index1 * 3..].first_chunk::<4>(),
                out[x * 3..].first_chunk_mut::<4>(),
            ) else {
                return;
            };
            let weight1 = tap.weight1;
            for lane in 0..4 {
                // `left * (2^11 - weight1) + right * weight1` with one multiply: the
                // true value is below 2^31, so arithmetic modulo 2^32 gives it exactly.
                let sum = (left[lane] << WEIGHT_BITS)
                    .wrapping_add(right[lane].wrapping_sub(left[lane]).wrapping_mul(weight1));
                pixel[lane] = round_weighted(sum);
            }
        }
    }
}

kernel! {
    /// A source row sampled at `taps`, unrounded (11 fractional bits).
    fn resample_source(row: &[u8], taps: &[LinearTap], out: &mut [u32]) {
        for (out, tap) in out.chunks_exact_mut(3).zip(taps) {
            let left = &row[tap.index0 * 3..tap.index0 * 3 + 3];
            let right = &row[tap.index1 * 3..tap.index1 * 3 + 3];
            let (w0, w1) = (WEIGHT_ONE - tap.weight1, tap.weight1);
            for channel in 0..3 {
                out[channel] = u32::from(left[channel]) * w0 + u32::from(right[channel]) * w1;
            }
        }
    }
}

kernel! {
    /// Two rows of [`resample_source`] blended, rounded to 8 bits.
    fn blend_resampled(top: &[u32], bottom: &[u32], weight1: u32, out: &mut [u8]) {
        for ((out, &top), &bottom) in out.iter_mut().zip(top).zip(bottom) {
            // `top * (2^11 - weight1) + bottom * weight1` with one multiply: the true
            // value is below 2^31, so arithmetic modulo 2^32 gives it exactly.
            let sum = (top << WEIGHT_BITS).wrapping_add(bottom.wrapping_sub(top).wrapping_mul(weight1));
            *out = round_weighted(sum);
        }
    }
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
fn resize_rows(isa: Isa, image: &RgbImage, size: (u32, u32), mut emit: impl FnMut(usize, &[u8])) {
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
        resize_rows_vertical_first(isa, image, size, emit);
    } else {
        resize_rows_horizontal_first(isa, image, size, emit);
    }
}

/// [`resize_rows`] resampling each source row once, for images that do not shrink
/// vertically.
fn resize_rows_horizontal_first(
    isa: Isa,
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
            resample_source(isa, row, &taps_x, &mut row_cache[slot].1);
            row_cache[slot].0 = src_y;
        }
        let (top, bottom) = (&row_cache[0].1, &row_cache[1].1);
        blend_resampled(isa, top, bottom, tap_y.weight1, &mut out_row);
        emit(dst_y, &out_row);
    }
}

/// [`resize_rows`] blending rows before columns, for images that shrink vertically.
fn resize_rows_vertical_first(
    isa: Isa,
    image: &RgbImage,
    size: (u32, u32),
    mut emit: impl FnMut(usize, &[u8]),
) {
    let (src_width, src_height) = image.dimensions();
    let taps_x = linear_taps(src_width, size.0);
    let taps_y = linear_taps(src_height, size.1);
    let source = image.as_raw();
    let src_stride = src_width as usize * 3;
    // One spare value each, for `resample_blended`'s four-lane pixels.
    let mut blended = vec![0_u32; src_stride + 1];
    let row_len = size.0 as usize * 3;
    let mut out_row = vec![0_u8; row_len + 1];
    for (dst_y, tap_y) in taps_y.iter().enumerate() {
        let top = &source[tap_y.index0 * src_stride..(tap_y.index0 + 1) * src_stride];
        let bottom = &source[tap_y.index1 * src_stride..(tap_y.index1 + 1) * src_stride];
        // A weight is at most 2^11, so it fits.
        blend_rows(isa, top, bottom, tap_y.weight1 as u16, &mut blended);
        resample_blended(isa, &blended, &taps_x, &mut out_row);
        emit(dst_y, &out_row[..row_len]);
    }
}

/// A pixel from a value with 22 fractional bits (two weights of 2^11 applied),
/// rounded half up. At most 255 * 2^22 + 2^21: fits in `u32`, and the result in `u8`.
#[inline(always)]
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
    fn rect_sizes_match_ultralytics_auto_letterbox() {
        // What ultralytics.data.augment.LetterBox((640, 640), auto=True, stride=32)
        // gives these images, (width, height).
        let max = (640, 640);
        for (src, expected) in [
            ((1280, 720), (640, 384)),
            ((1920, 1080), (640, 384)),
            ((640, 480), (640, 480)),
            ((333, 517), (416, 640)),
            ((999, 101), (640, 96)),
            ((1, 1000), (32, 640)),
        ] {
            assert_eq!(rect_size(src, max, 32).ok(), Some(expected), "{src:?}");
        }
        assert!(rect_size((1280, 720), max, 0).is_err());
        assert!(rect_size((0, 720), max, 32).is_err());
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
    fn padding_already_in_place_is_kept_and_a_new_layout_rewrites_it() {
        let frame = |width, height, value| {
            RgbImage::from_fn(width, height, |x, y| {
                image::Rgb([value, (x * 7 + y) as u8, (x + y * 5) as u8])
            })
        };
        // Two slots; slot 1 changes layout on the third call, then changes back.
        let calls = [
            [frame(16, 9, 10), frame(16, 9, 20)],
            [frame(16, 9, 30), frame(32, 18, 40)],
            [frame(16, 9, 50), frame(9, 16, 60)],
            [frame(16, 9, 70), frame(16, 9, 80)],
        ];
        let mut reused = vec![f32::NAN; 2 * 3 * 12 * 12];
        let mut written = PaddingWritten::default();
        for (call, images) in calls.iter().enumerate() {
            let fresh = letterbox_batch(images, (12, 12)).expect("letterboxes");
            let infos = letterbox_batch_reusing(images, (12, 12), &mut reused, &mut written)
                .expect("letterboxes");
            assert_eq!(infos, fresh.infos);
            assert_eq!(reused, fresh.data, "call {call}");
        }
        // Padding that something else overwrote comes back once forgotten.
        reused.fill(0.5);
        written.forget();
        let fresh = letterbox_batch(&calls[3], (12, 12)).expect("letterboxes");
        letterbox_batch_reusing(&calls[3], (12, 12), &mut reused, &mut written)
            .expect("letterboxes");
        assert_eq!(reused, fresh.data);
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
                    resize_rows_vertical_first(Isa::Baseline, &image, dst, emit);
                } else {
                    resize_rows_horizontal_first(Isa::Baseline, &image, dst, emit);
                }
                rows
            };
            let vertical_first = rows(true);
            assert_eq!(vertical_first.len(), dst.1 as usize);
            assert_eq!(vertical_first, rows(false), "{src:?} -> {dst:?}");
        }
    }

    /// Random RGB noise, the same for the same seed.
    fn noise_image(seed: u32, (width, height): (u32, u32)) -> RgbImage {
        let mut state = seed | 1;
        RgbImage::from_fn(width, height, |_, _| {
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            };
            image::Rgb([next(), next(), next()])
        })
    }

    #[test]
    fn the_avx2_and_baseline_paths_give_the_same_bits() {
        let fastest = Isa::detect();
        if fastest == Isa::Baseline {
            eprintln!("no AVX2 on this CPU: only the baseline path runs");
        }
        // Shrinking (rows blended first), enlarging (columns first), the same size
        // (no resize), odd widths that leave vector tails, thin images.
        let cases = [
            ((1280, 720), (640, 640)),
            ((1279, 721), (640, 640)),
            ((333, 517), (640, 640)),
            ((999, 101), (640, 640)),
            ((37, 91), (61, 33)),
            ((13, 7), (41, 29)),
            ((61, 45), (61, 61)),
            ((1, 1000), (63, 65)),
            ((1000, 3), (97, 35)),
        ];
        for (seed, &(src, dst)) in (1_u32..).zip(&cases) {
            let images = [noise_image(seed, src), noise_image(seed + 100, src)];
            let n_values: usize = batch_shape(images.len(), dst).iter().product();
            let mut baseline = vec![f32::NAN; n_values];
            let mut fast = vec![f32::NAN; n_values];
            letterbox_batch_into_with(
                Isa::Baseline,
                &images,
                dst,
                &mut baseline,
                &mut PaddingWritten::default(),
            )
            .expect("letterboxes");
            letterbox_batch_into_with(
                fastest,
                &images,
                dst,
                &mut fast,
                &mut PaddingWritten::default(),
            )
            .expect("letterboxes");
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(bits(&baseline) == bits(&fast), "{src:?} -> {dst:?}");

            let info = TransformInfo::new(src, dst).expect("valid sizes");
            let mut rows = [Vec::new(), Vec::new()];
            for (isa, rows) in [Isa::Baseline, fastest].into_iter().zip(&mut rows) {
                resize_rows(isa, &images[0], info.resized_size, |_, row| {
                    rows.extend_from_slice(row)
                });
            }
            assert!(rows[0] == rows[1], "{src:?} -> {dst:?}, 8-bit");
        }
    }

    #[test]
    fn every_byte_scales_to_its_float() {
        let rgb: Vec<u8> = (0..=255).flat_map(|v| [v, 255 - v, v / 3]).collect();
        for isa in [Isa::Baseline, Isa::detect()] {
            let (mut red, mut green, mut blue) = (vec![0.0; 256], vec![0.0; 256], vec![0.0; 256]);
            scatter_planes(isa, &rgb, &mut red, &mut green, &mut blue);
            for value in 0..=255_u8 {
                let index = usize::from(value);
                assert_eq!(red[index].to_bits(), (f32::from(value) / 255.0).to_bits());
                assert_eq!(green[index], f32::from(255 - value) / 255.0);
                assert_eq!(blue[index], f32::from(value / 3) / 255.0);
            }
        }
    }

    #[test]
    fn variable_sides_shrink_to_the_batch() {
        let any_size = InputSize {
            max: (640, 640),
            shrink: (true, true),
        };
        let frames = [(1280, 720), (1920, 1080)];
        assert_eq!(
            any_size.for_images(frames.into_iter()).ok(),
            Some((640, 384))
        );
        // A portrait image in the batch widens it to hold both.
        let mixed = [(1280, 720), (720, 1280)];
        assert_eq!(
            any_size.for_images(mixed.into_iter()).ok(),
            Some((640, 640))
        );
        let fixed = InputSize {
            shrink: (false, false),
            ..any_size
        };
        assert_eq!(fixed.for_images(frames.into_iter()).ok(), Some((640, 640)));
        let only_height = InputSize {
            max: (640, 480),
            shrink: (false, true),
        };
        // 1280x720 into at most 640x480: 640x360, padded to 384 high.
        assert_eq!(
            only_height.for_images(frames.into_iter()).ok(),
            Some((640, 384))
        );
    }
}
