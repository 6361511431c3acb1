//! Bilinear resizing of 8-bit RGB the way OpenCV's `cv2.resize(INTER_LINEAR)` does
//! it, which is what Ultralytics' `load_image` and `LetterBox` call: source
//! positions `(d + 0.5) * scale - 0.5` clamped at the edges, 11-bit fixed-point
//! weights, a horizontal pass into `i32` rows, then the vertical blend with
//! OpenCV's vectorised rounding. Integer arithmetic throughout, two cached rows.

use cardet_detect::letterbox::PAD_VALUE;
use image::RgbImage;

/// Fixed-point bits of OpenCV's resize weights (`INTER_RESIZE_COEF_BITS`).
const COEF_BITS: i32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// The image resized to `size` (`(width, height)`, each at least 1).
pub fn resize_linear(image: &RgbImage, size: (u32, u32)) -> RgbImage {
    if size.0 == 0 || size.1 == 0 || image.width() == 0 || image.height() == 0 {
        // Nothing to sample from, or nothing to fill: grey, like padding.
        return RgbImage::from_pixel(size.0, size.1, image::Rgb([PAD_VALUE; 3]));
    }
    if image.dimensions() == size {
        return image.clone();
    }
    let (src_width, src_height) = (image.width() as usize, image.height() as usize);
    let (dst_width, dst_height) = (size.0 as usize, size.1 as usize);
    let taps_x = taps(src_width, dst_width);
    let taps_y = taps(src_height, dst_height);
    let source = image.as_raw();
    let src_stride = src_width * 3;
    let row_len = dst_width * 3;
    let mut output = vec![0_u8; dst_height * row_len];
    // Horizontally resampled source rows, by source row index.
    let mut rows: [(usize, Vec<i32>); 2] = [
        (usize::MAX, vec![0; row_len]),
        (usize::MAX, vec![0; row_len]),
    ];
    for (dst_y, tap_y) in taps_y.iter().enumerate() {
        for (slot, src_y) in [(0, tap_y.index), (1, (tap_y.index + 1).min(src_height - 1))] {
            if rows[slot].0 == src_y {
                continue;
            }
            if rows[1 - slot].0 == src_y {
                rows.swap(0, 1);
                continue;
            }
            let source_row = &source[src_y * src_stride..(src_y + 1) * src_stride];
            horizontal_pass(source_row, &taps_x, &mut rows[slot].1);
            rows[slot].0 = src_y;
        }
        let out_row = &mut output[dst_y * row_len..(dst_y + 1) * row_len];
        let (beta0, beta1) = (tap_y.weight0, tap_y.weight1);
        for ((out, &upper), &lower) in out_row.iter_mut().zip(&rows[0].1).zip(&rows[1].1) {
            // OpenCV's `VResizeLinearVec_32s8u`: each row shifted to 16 bits, the
            // high half of the 16x16 products, then rounded by 2 bits.
            let blended = (((upper >> 4) * beta0) >> 16) + (((lower >> 4) * beta1) >> 16) + 2;
            *out = (blended >> 2).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(size.0, size.1, output).unwrap_or_else(|| RgbImage::new(size.0, size.1))
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Tap {
    /// The first source pixel; the second is the next one, clamped to the edge.
    index: usize,
    weight0: i32,
    weight1: i32,
}

/// OpenCV's source positions and weights along one axis.
fn taps(src_len: usize, dst_len: usize) -> Vec<Tap> {
    let scale = 1.0 / (dst_len as f64 / src_len as f64);
    (0..dst_len)
        .map(|dst| {
            let position = ((dst as f64 + 0.5) * scale - 0.5) as f32;
            let floor = position.floor();
            let (index, fraction) = if floor < 0.0 {
                (0, 0.0)
            } else if floor as usize >= src_len - 1 {
                (src_len - 1, 0.0)
            } else {
                (floor as usize, position - floor)
            };
            Tap {
                index,
                weight0: ((1.0 - fraction) * COEF_SCALE).round_ties_even() as i32,
                weight1: (fraction * COEF_SCALE).round_ties_even() as i32,
            }
        })
        .collect()
}

fn horizontal_pass(source_row: &[u8], taps_x: &[Tap], row: &mut [i32]) {
    let last = source_row.len() / 3 - 1;
    for (out, tap) in row.chunks_exact_mut(3).zip(taps_x) {
        let left = &source_row[tap.index * 3..tap.index * 3 + 3];
        let right_index = (tap.index + 1).min(last);
        let right = &source_row[right_index * 3..right_index * 3 + 3];
        for channel in 0..3 {
            out[channel] =
                i32::from(left[channel]) * tap.weight0 + i32::from(right[channel]) * tap.weight1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src_len: usize, dst_len: usize, dst: usize, expected: (usize, i32, i32)) {
        let tap = taps(src_len, dst_len)[dst];
        assert_eq!(
            (tap.index, tap.weight0, tap.weight1),
            expected,
            "{src_len}->{dst_len}[{dst}]"
        );
    }

    #[test]
    fn taps_follow_opencv_positions_and_weights() {
        // Halving: every output pixel sits between two source pixels.
        check(640, 320, 0, (0, 1024, 1024));
        check(640, 320, 319, (638, 1024, 1024));
        // Doubling: the first output pixel would sit left of the first source pixel.
        check(100, 200, 0, (0, 2048, 0));
        check(100, 200, 1, (0, 1536, 512));
        check(100, 200, 199, (99, 2048, 0));
    }

    #[test]
    fn empty_images_give_grey_not_a_panic() {
        let empty = RgbImage::new(0, 5);
        let resized = resize_linear(&empty, (3, 2));
        assert!(resized.pixels().all(|pixel| pixel.0 == [PAD_VALUE; 3]));
        assert_eq!(
            resize_linear(&RgbImage::new(4, 4), (0, 3)).dimensions(),
            (0, 3)
        );
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let image = RgbImage::from_pixel(37, 23, image::Rgb([200, 7, 114]));
        let resized = resize_linear(&image, (16, 51));
        assert!(resized.pixels().all(|pixel| pixel.0 == [200, 7, 114]));
    }
}
