//! The augmentations, one function per Ultralytics transform, on an 8-bit RGB image
//! and its boxes in pixels, so that pixels and boxes always move together.
//!
//! Each random transform is split into a pure function of its parameters (tested
//! directly) and a `random_*` wrapper that draws the parameters as Ultralytics does.

use std::sync::OnceLock;

use cardet_detect::BoundingBox;
use cardet_detect::dataset::DatasetItem;
use cardet_detect::image_io;
use cardet_detect::letterbox::{PAD_VALUE, TransformInfo};
use image::{Rgb, RgbImage};
use rand::Rng;

use crate::config::AugmentConfig;
use crate::resize::resize_linear;

/// One object: its class and its box in the pixels of the image it belongs to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabeledBox {
    pub class_id: usize,
    pub bbox: BoundingBox,
}

/// An image with its objects.
#[derive(Clone, Debug, PartialEq)]
pub struct LabeledImage {
    pub image: RgbImage,
    pub boxes: Vec<LabeledBox>,
}

/// A dataset image as Ultralytics' `load_image` returns it: decoded and resized so
/// its long side is `imgsz`, with its labels in the resized pixels.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    pub labeled: LabeledImage,
    /// `(width, height)` of the file.
    pub original_size: (u32, u32),
}

/// Ultralytics' `load_image(rect_mode=True)`: decode, then resize (bilinear) so the
/// long side is `imgsz`, each side `min(ceil(side * r), imgsz)`.
pub fn load_resized(item: &DatasetItem, imgsz: u32) -> Result<LoadedImage, cardet_detect::Error> {
    let decoded = image_io::load_rgb(&item.image_path)?;
    let original_size = decoded.dimensions();
    let resized_size = long_side_size(original_size, imgsz);
    let image = if resized_size == original_size {
        decoded
    } else {
        resize_linear(&decoded, resized_size)
    };
    // Labels are normalised to the file's size, so they scale with whatever size the
    // image is now; the file's own dimensions win over the scanned ones.
    let (width, height) = (resized_size.0 as f32, resized_size.1 as f32);
    let boxes = item
        .labels
        .iter()
        .map(|label| LabeledBox {
            class_id: label.class_id,
            bbox: BoundingBox::from_cxcywh(
                label.cx * width,
                label.cy * height,
                label.width * width,
                label.height * height,
            ),
        })
        .collect();
    Ok(LoadedImage {
        labeled: LabeledImage { image, boxes },
        original_size,
    })
}

/// The size `load_image` resizes `(width, height)` to.
pub fn long_side_size(size: (u32, u32), imgsz: u32) -> (u32, u32) {
    let (width, height) = size;
    let ratio = f64::from(imgsz) / f64::from(width.max(height).max(1));
    if ratio == 1.0 {
        return size;
    }
    let scaled = |side: u32| ((f64::from(side) * ratio).ceil() as u32).clamp(1, imgsz);
    (scaled(width), scaled(height))
}

/// The 4-image mosaic on a `2 * imgsz` canvas of grey 114 with its centre at
/// `centre` (Ultralytics draws it in `[imgsz / 2, 3 * imgsz / 2)`): tile 0 ends at
/// the centre from the top left, 1 top right, 2 bottom left, 3 bottom right. Boxes
/// are shifted with their tile, clipped to the canvas, and dropped at zero area.
pub fn mosaic_at(tiles: [&LabeledImage; 4], imgsz: u32, centre: (i64, i64)) -> LabeledImage {
    mosaic_at_into(tiles, imgsz, centre, Vec::new())
}

/// [`mosaic_at`] painting into `buffer`'s memory (its contents do not matter), so a
/// worker can reuse one canvas allocation for every mosaic.
pub fn mosaic_at_into(
    tiles: [&LabeledImage; 4],
    imgsz: u32,
    centre: (i64, i64),
    buffer: Vec<u8>,
) -> LabeledImage {
    let side = i64::from(imgsz) * 2;
    // A centre off the canvas would place tiles outside it.
    let centre = (centre.0.clamp(0, side), centre.1.clamp(0, side));
    let placements: Vec<TilePlacement> = tiles
        .iter()
        .enumerate()
        .map(|(tile_idx, tile)| TilePlacement::new(tile_idx, tile, side, centre))
        .collect();
    let image = paint_mosaic(&tiles, &placements, side as usize, buffer);
    let mut boxes = Vec::new();
    for (tile, placement) in tiles.iter().zip(&placements) {
        let shift_x = (placement.x1a - placement.x1b) as f32;
        let shift_y = (placement.y1a - placement.y1b) as f32;
        for labeled in &tile.boxes {
            let bbox = BoundingBox {
                x1: labeled.bbox.x1 + shift_x,
                y1: labeled.bbox.y1 + shift_y,
                x2: labeled.bbox.x2 + shift_x,
                y2: labeled.bbox.y2 + shift_y,
            }
            .clipped(side as f32, side as f32);
            if bbox.width() > 0.0 && bbox.height() > 0.0 {
                boxes.push(LabeledBox {
                    class_id: labeled.class_id,
                    bbox,
                });
            }
        }
    }
    LabeledImage { image, boxes }
}

/// Where one tile of a mosaic lands: rectangle `a` on the canvas, taken from `b`
/// (same size) in the tile.
#[derive(Clone, Copy, Debug)]
struct TilePlacement {
    x1a: i64,
    y1a: i64,
    x2a: i64,
    y2a: i64,
    x1b: i64,
    y1b: i64,
}

impl TilePlacement {
    /// Tile 0 ends at the centre from the top left, 1 top right, 2 bottom left,
    /// 3 bottom right; each is cut at the canvas edge.
    fn new(tile_idx: usize, tile: &LabeledImage, side: i64, (xc, yc): (i64, i64)) -> TilePlacement {
        let (w, h) = (
            i64::from(tile.image.width()),
            i64::from(tile.image.height()),
        );
        let (x1a, y1a, x2a, y2a, x1b, y1b) = match tile_idx {
            0 => {
                let (x1a, y1a) = ((xc - w).max(0), (yc - h).max(0));
                (x1a, y1a, xc, yc, w - (xc - x1a), h - (yc - y1a))
            }
            1 => {
                let (y1a, x2a) = ((yc - h).max(0), (xc + w).min(side));
                (xc, y1a, x2a, yc, 0, h - (yc - y1a))
            }
            2 => {
                let (x1a, y2a) = ((xc - w).max(0), (yc + h).min(side));
                (x1a, yc, xc, y2a, w - (xc - x1a), 0)
            }
            _ => {
                let (x2a, y2a) = ((xc + w).min(side), (yc + h).min(side));
                (xc, yc, x2a, y2a, 0, 0)
            }
        };
        TilePlacement {
            x1a,
            y1a,
            x2a,
            y2a,
            x1b,
            y1b,
        }
    }
}

/// The `side x side` canvas, written once row by row: grey 114 where no tile
/// lands, each tile's pixels where it does (tiles of one row never overlap).
fn paint_mosaic(
    tiles: &[&LabeledImage; 4],
    placements: &[TilePlacement],
    side: usize,
    mut raw: Vec<u8>,
) -> RgbImage {
    raw.clear();
    raw.reserve(side * side * 3);
    // Left to right; the tiles a row crosses then come in that order too.
    let mut order = [0, 1, 2, 3];
    order.sort_by_key(|&tile_idx| placements[tile_idx].x1a);
    for y in 0..side as i64 {
        let row_start = raw.len();
        let covering = order
            .iter()
            .map(|&tile_idx| (tiles[tile_idx], &placements[tile_idx]))
            .filter(|(_, placement)| {
                placement.y1a <= y && y < placement.y2a && placement.x1a < placement.x2a
            });
        let mut x = 0_i64;
        for (tile, placement) in covering {
            let gap = (placement.x1a - x).max(0) as usize;
            raw.resize(raw.len() + gap * 3, PAD_VALUE);
            let tile_stride = tile.image.width() as usize * 3;
            let tile_y = (placement.y1b + y - placement.y1a) as usize;
            let start = tile_y * tile_stride + placement.x1b as usize * 3;
            let len = (placement.x2a - placement.x1a) as usize * 3;
            raw.extend_from_slice(&tile.image.as_raw()[start..start + len]);
            x = placement.x2a;
        }
        raw.resize(row_start + side * 3, PAD_VALUE);
    }
    RgbImage::from_raw(side as u32, side as u32, raw)
        .unwrap_or_else(|| RgbImage::from_pixel(side as u32, side as u32, Rgb([PAD_VALUE; 3])))
}

/// [`mosaic_at`] with Ultralytics' random centre: `int(uniform(imgsz / 2, 3 * imgsz / 2))`
/// for y, then x.
pub fn random_mosaic(tiles: [&LabeledImage; 4], imgsz: u32, rng: &mut impl Rng) -> LabeledImage {
    random_mosaic_into(tiles, imgsz, rng, Vec::new())
}

/// [`random_mosaic`] painting into `buffer`'s memory.
pub fn random_mosaic_into(
    tiles: [&LabeledImage; 4],
    imgsz: u32,
    rng: &mut impl Rng,
    buffer: Vec<u8>,
) -> LabeledImage {
    let low = f64::from(imgsz) / 2.0;
    let high = f64::from(imgsz) * 1.5;
    let yc = rng.random_range(low..high) as i64;
    let xc = rng.random_range(low..high) as i64;
    mosaic_at_into(tiles, imgsz, (xc, yc), buffer)
}

/// The parameters `RandomPerspective` draws, in the units its hyper-parameters use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerspectiveParams {
    /// Perspective terms of the projective row (x, y).
    pub perspective: (f64, f64),
    /// Rotation, degrees (counter-clockwise, as `cv2.getRotationMatrix2D`).
    pub angle: f64,
    pub scale: f64,
    /// Shear, degrees (x, y).
    pub shear: (f64, f64),
    /// Where the input's centre lands, as fractions of the output size (x, y).
    pub translate: (f64, f64),
}

impl PerspectiveParams {
    /// No rotation, scale 1, centred: the image is only centred in the output.
    pub fn identity() -> PerspectiveParams {
        PerspectiveParams {
            perspective: (0.0, 0.0),
            angle: 0.0,
            scale: 1.0,
            shear: (0.0, 0.0),
            translate: (0.5, 0.5),
        }
    }

    /// Drawn in Ultralytics' order: perspective x, y; angle; scale; shear x, y;
    /// translation x, y.
    pub fn random(config: &AugmentConfig, rng: &mut impl Rng) -> PerspectiveParams {
        let mut symmetric = |range: f32| -> f64 {
            let range = f64::from(range);
            if range > 0.0 {
                rng.random_range(-range..range)
            } else {
                0.0
            }
        };
        let perspective = (symmetric(config.perspective), symmetric(config.perspective));
        let angle = symmetric(config.degrees);
        let scale = 1.0 + symmetric(config.scale);
        let shear = (symmetric(config.shear), symmetric(config.shear));
        let translate = (
            0.5 + symmetric(config.translate),
            0.5 + symmetric(config.translate),
        );
        PerspectiveParams {
            perspective,
            angle,
            scale,
            shear,
            translate,
        }
    }

    /// `M = T @ S @ R @ P @ C` for an input of `input_size` and an output of `output_size`.
    pub fn matrix(&self, input_size: (u32, u32), output_size: (u32, u32)) -> Matrix3 {
        let centre = [
            [1.0, 0.0, -f64::from(input_size.0) / 2.0],
            [0.0, 1.0, -f64::from(input_size.1) / 2.0],
            [0.0, 0.0, 1.0],
        ];
        let perspective = [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [self.perspective.0, self.perspective.1, 1.0],
        ];
        let (sin, cos) = self.angle.to_radians().sin_cos();
        let (alpha, beta) = (self.scale * cos, self.scale * sin);
        let rotation = [[alpha, beta, 0.0], [-beta, alpha, 0.0], [0.0, 0.0, 1.0]];
        let shear = [
            [1.0, self.shear.0.to_radians().tan(), 0.0],
            [self.shear.1.to_radians().tan(), 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ];
        let translation = [
            [1.0, 0.0, self.translate.0 * f64::from(output_size.0)],
            [0.0, 1.0, self.translate.1 * f64::from(output_size.1)],
            [0.0, 0.0, 1.0],
        ];
        let m = multiply(&translation, &shear);
        let m = multiply(&m, &rotation);
        let m = multiply(&m, &perspective);
        Matrix3(multiply(&m, &centre))
    }
}

/// A 3x3 projective transform of pixel coordinates, row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matrix3(pub [[f64; 3]; 3]);

impl Matrix3 {
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        let w = m[2][0] * x + m[2][1] * y + m[2][2];
        (
            (m[0][0] * x + m[0][1] * y + m[0][2]) / w,
            (m[1][0] * x + m[1][1] * y + m[1][2]) / w,
        )
    }

    /// Whether the last row is `[0, 0, 1]` (an affine map, no division per pixel).
    pub fn is_affine(&self) -> bool {
        self.0[2] == [0.0, 0.0, 1.0]
    }

    /// The inverse of the affine part, as OpenCV's `invertAffineTransform` computes
    /// it, or `None` when singular. Meaningful only when [`Matrix3::is_affine`].
    pub fn affine_inverse(&self) -> Option<Matrix3> {
        let m = &self.0;
        let determinant = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        if determinant == 0.0 || !determinant.is_finite() {
            return None;
        }
        let d = 1.0 / determinant;
        let (a11, a12, a21, a22) = (m[1][1] * d, -m[0][1] * d, -m[1][0] * d, m[0][0] * d);
        let b1 = -a11 * m[0][2] - a12 * m[1][2];
        let b2 = -a21 * m[0][2] - a22 * m[1][2];
        Some(Matrix3([[a11, a12, b1], [a21, a22, b2], [0.0, 0.0, 1.0]]))
    }

    /// The inverse, or `None` for a singular matrix.
    pub fn inverse(&self) -> Option<Matrix3> {
        let m = &self.0;
        let cofactor = |r0: usize, r1: usize, c0: usize, c1: usize| {
            m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
        };
        let det = m[0][0] * cofactor(1, 2, 1, 2) - m[0][1] * cofactor(1, 2, 0, 2)
            + m[0][2] * cofactor(1, 2, 0, 1);
        if det.abs() < 1e-12 || !det.is_finite() {
            return None;
        }
        let adjugate = [
            [
                cofactor(1, 2, 1, 2),
                -cofactor(0, 2, 1, 2),
                cofactor(0, 1, 1, 2),
            ],
            [
                -cofactor(1, 2, 0, 2),
                cofactor(0, 2, 0, 2),
                -cofactor(0, 1, 0, 2),
            ],
            [
                cofactor(1, 2, 0, 1),
                -cofactor(0, 2, 0, 1),
                cofactor(0, 1, 0, 1),
            ],
        ];
        Some(Matrix3(adjugate.map(|row| row.map(|value| value / det))))
    }
}

/// Ultralytics' `RandomPerspective` with drawn parameters: the warp into
/// `output_size`, each box's four corners through the same matrix (their extent,
/// clipped), then `box_candidates` against the box scaled by `scale`.
pub fn perspective(
    input: &LabeledImage,
    params: &PerspectiveParams,
    output_size: (u32, u32),
) -> LabeledImage {
    perspective_into(input, params, output_size, Vec::new())
}

/// [`perspective`] warping into `buffer`'s memory (its contents do not matter).
pub fn perspective_into(
    input: &LabeledImage,
    params: &PerspectiveParams,
    output_size: (u32, u32),
    buffer: Vec<u8>,
) -> LabeledImage {
    let matrix = params.matrix(input.image.dimensions(), output_size);
    let image = warp_into(&input.image, &matrix, output_size, buffer);
    let (width, height) = (output_size.0 as f32, output_size.1 as f32);
    let boxes = input
        .boxes
        .iter()
        .filter_map(|labeled| {
            let moved = transform_box(&labeled.bbox, &matrix).clipped(width, height);
            let scale = params.scale as f32;
            let before = BoundingBox {
                x1: labeled.bbox.x1 * scale,
                y1: labeled.bbox.y1 * scale,
                x2: labeled.bbox.x2 * scale,
                y2: labeled.bbox.y2 * scale,
            };
            box_candidate(&before, &moved).then_some(LabeledBox {
                class_id: labeled.class_id,
                bbox: moved,
            })
        })
        .collect();
    LabeledImage { image, boxes }
}

/// [`perspective`] with parameters drawn from `config`.
pub fn random_perspective(
    input: &LabeledImage,
    config: &AugmentConfig,
    output_size: (u32, u32),
    rng: &mut impl Rng,
) -> LabeledImage {
    let params = PerspectiveParams::random(config, rng);
    perspective(input, &params, output_size)
}

/// The extent of the box's four corners through `matrix`.
pub fn transform_box(bbox: &BoundingBox, matrix: &Matrix3) -> BoundingBox {
    let corners = [
        (bbox.x1, bbox.y1),
        (bbox.x2, bbox.y2),
        (bbox.x1, bbox.y2),
        (bbox.x2, bbox.y1),
    ]
    .map(|(x, y)| matrix.apply(f64::from(x), f64::from(y)));
    let xs = corners.map(|corner| corner.0);
    let ys = corners.map(|corner| corner.1);
    let min = |values: [f64; 4]| values.into_iter().fold(f64::INFINITY, f64::min) as f32;
    let max = |values: [f64; 4]| values.into_iter().fold(f64::NEG_INFINITY, f64::max) as f32;
    BoundingBox {
        x1: min(xs),
        y1: min(ys),
        x2: max(xs),
        y2: max(ys),
    }
}

/// Ultralytics' `box_candidates(wh_thr=2, ar_thr=100, area_thr=0.1)`: the warped box
/// is wider and taller than 2 px, keeps more than a tenth of its (scaled) area, and
/// is not thinner than 1:100.
pub fn box_candidate(before: &BoundingBox, after: &BoundingBox) -> bool {
    const WH_THRESHOLD: f32 = 2.0;
    const ASPECT_THRESHOLD: f32 = 100.0;
    const AREA_THRESHOLD: f32 = 0.1;
    const EPS: f32 = 1e-16;
    let (w1, h1) = (before.width(), before.height());
    let (w2, h2) = (after.width(), after.height());
    let aspect = (w2 / (h2 + EPS)).max(h2 / (w2 + EPS));
    w2 > WH_THRESHOLD
        && h2 > WH_THRESHOLD
        && w2 * h2 / (w1 * h1 + EPS) > AREA_THRESHOLD
        && aspect < ASPECT_THRESHOLD
}

/// `cv2.warpAffine` / `cv2.warpPerspective` with `INTER_LINEAR` and a constant
/// grey 114 border, as OpenCV's current warp kernels compute it: the inverse matrix
/// in `f32`, each output pixel `(x, y)` sampled at `M⁻¹ (x, y)` (pixel centres at
/// integer coordinates), bilinear in `f32`, rounded to nearest even. One pass over
/// output rows, no allocation but the output. A singular matrix gives a grey image.
pub fn warp(input: &RgbImage, matrix: &Matrix3, output_size: (u32, u32)) -> RgbImage {
    warp_into(input, matrix, output_size, Vec::new())
}

/// [`warp`] into `buffer`'s memory (its contents do not matter), so a worker can
/// reuse one allocation for every output.
pub fn warp_into(
    input: &RgbImage,
    matrix: &Matrix3,
    output_size: (u32, u32),
    mut output: Vec<u8>,
) -> RgbImage {
    let (out_width, out_height) = (output_size.0 as usize, output_size.1 as usize);
    if out_width == 0 || out_height == 0 {
        return RgbImage::new(output_size.0, output_size.1);
    }
    output.clear();
    output.resize(out_width * out_height * 3, PAD_VALUE);
    let affine = matrix.is_affine();
    let inverse = if affine {
        matrix.affine_inverse()
    } else {
        matrix.inverse()
    };
    if let Some(inverse) = inverse {
        let m = inverse.0.map(|row| row.map(|value| value as f32));
        let sampler = Sampler::new(input);
        let rows = output.chunks_exact_mut(out_width * 3).enumerate();
        // Two loops rather than a test per pixel.
        if affine {
            for (y, row) in rows {
                let y = y as f32;
                for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
                    let x = x as f32;
                    let source_x = x * m[0][0] + y * m[0][1] + m[0][2];
                    let source_y = x * m[1][0] + y * m[1][1] + m[1][2];
                    sampler.sample(source_x, source_y, pixel);
                }
            }
        } else {
            for (y, row) in rows {
                let y = y as f32;
                for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
                    let x = x as f32;
                    let source_x = x * m[0][0] + y * m[0][1] + m[0][2];
                    let source_y = x * m[1][0] + y * m[1][1] + m[1][2];
                    let w = x * m[2][0] + y * m[2][1] + m[2][2];
                    sampler.sample(source_x / w, source_y / w, pixel);
                }
            }
        }
    }
    RgbImage::from_raw(output_size.0, output_size.1, output)
        .unwrap_or_else(|| RgbImage::new(output_size.0, output_size.1))
}

/// Ultralytics' `RandomHSV` with the gains already drawn (`r` in `[-1, 1] * gain`):
/// RGB to OpenCV's 8-bit HSV (hue in `0..180`), through the three lookup tables
/// (`(h + r_h * 180) mod 180`, `s * (1 + r_s)`, `v * (1 + r_v)`, clipped and
/// truncated), and back.
pub fn apply_hsv_gains(image: &mut RgbImage, gains: [f64; 3]) {
    let mut lut_hue = [0_u8; 256];
    let mut lut_saturation = [0_u8; 256];
    let mut lut_value = [0_u8; 256];
    for x in 0..256 {
        let value = x as f64;
        lut_hue[x] = (value + gains[0] * 180.0).rem_euclid(180.0) as u8;
        lut_saturation[x] = (value * (gains[1] + 1.0)).clamp(0.0, 255.0) as u8;
        lut_value[x] = (value * (gains[2] + 1.0)).clamp(0.0, 255.0) as u8;
    }
    lut_saturation[0] = 0;
    let tables = HsvTables::new();
    let factors = hsv_to_rgb_factors();
    for pixel in image.pixels_mut() {
        let [hue, saturation, value] = tables.rgb_to_hsv(pixel.0);
        let hue = usize::from(lut_hue[usize::from(hue)]).min(HUE_RANGE - 1);
        let saturation = usize::from(lut_saturation[usize::from(saturation)]);
        let value = f32::from(lut_value[usize::from(value)]) * (1.0 / 255.0);
        let factor = &factors[hue * 256 + saturation];
        // The same two roundings as OpenCV: `v * factor`, then `* 255`, truncated.
        pixel.0 = factor.map(|factor| (value * factor * 255.0) as u8);
    }
}

/// OpenCV's 8-bit hue range.
const HUE_RANGE: usize = 180;

/// For every hue and saturation, the factors `tab[k] / v` of OpenCV's HSV to RGB
/// (red, green, blue), so a pixel costs three multiplications.
fn hsv_to_rgb_factors() -> &'static [[f32; 3]] {
    static FACTORS: OnceLock<Vec<[f32; 3]>> = OnceLock::new();
    FACTORS.get_or_init(|| {
        let mut factors = Vec::with_capacity(HUE_RANGE * 256);
        for hue in 0..HUE_RANGE as u8 {
            for saturation in 0..=255 {
                factors.push(hsv_factors(hue, saturation));
            }
        }
        factors
    })
}

/// [`apply_hsv_gains`] with gains drawn uniformly in `[-1, 1] * (hsv_h, hsv_s, hsv_v)`;
/// all gains zero leaves the image untouched, as in Ultralytics.
pub fn random_hsv(image: &mut RgbImage, config: &AugmentConfig, rng: &mut impl Rng) {
    if config.hsv_h == 0.0 && config.hsv_s == 0.0 && config.hsv_v == 0.0 {
        return;
    }
    let mut draw = |gain: f32| rng.random_range(-1.0..1.0) * f64::from(gain);
    let gains = [draw(config.hsv_h), draw(config.hsv_s), draw(config.hsv_v)];
    apply_hsv_gains(image, gains);
}

/// Mirrors the image left to right, and its boxes with it.
pub fn flip_horizontal(labeled: &mut LabeledImage) {
    image::imageops::flip_horizontal_in_place(&mut labeled.image);
    let width = labeled.image.width() as f32;
    for labeled_box in &mut labeled.boxes {
        let bbox = labeled_box.bbox;
        labeled_box.bbox.x1 = width - bbox.x2;
        labeled_box.bbox.x2 = width - bbox.x1;
    }
}

/// Mirrors the image top to bottom, and its boxes with it.
pub fn flip_vertical(labeled: &mut LabeledImage) {
    image::imageops::flip_vertical_in_place(&mut labeled.image);
    let height = labeled.image.height() as f32;
    for labeled_box in &mut labeled.boxes {
        let bbox = labeled_box.bbox;
        labeled_box.bbox.y1 = height - bbox.y2;
        labeled_box.bbox.y2 = height - bbox.y1;
    }
}

/// Ultralytics' transforms after the warp: `RandomHSV`, then `RandomFlip` vertical
/// (`flipud`), then horizontal (`fliplr`).
pub fn random_colour_and_flips(
    labeled: &mut LabeledImage,
    config: &AugmentConfig,
    rng: &mut impl Rng,
) {
    random_hsv(&mut labeled.image, config, rng);
    if rng.random::<f32>() < config.flipud {
        flip_vertical(labeled);
    }
    if rng.random::<f32>() < config.fliplr {
        flip_horizontal(labeled);
    }
}

/// Ultralytics' `LetterBox(scaleup=False, center=True)` of an image `load_image`
/// already resized: shrink only if it does not fit `dst_size`, then pad with grey
/// 114 split evenly. The transform maps from the *original* file's pixels
/// (`original_size`) to the padded image.
pub fn letterbox_loaded(
    loaded: &LoadedImage,
    dst_size: (u32, u32),
) -> (LabeledImage, TransformInfo) {
    let image = &loaded.labeled.image;
    let (width, height) = image.dimensions();
    let ratio = (f64::from(dst_size.0) / f64::from(width))
        .min(f64::from(dst_size.1) / f64::from(height))
        .min(1.0);
    let unpadded = (
        ((f64::from(width) * ratio).round_ties_even() as u32).clamp(1, dst_size.0),
        ((f64::from(height) * ratio).round_ties_even() as u32).clamp(1, dst_size.1),
    );
    let resized = if unpadded == (width, height) {
        image.clone()
    } else {
        resize_linear(image, unpadded)
    };
    let half_width = f64::from(dst_size.0 - unpadded.0) / 2.0;
    let half_height = f64::from(dst_size.1 - unpadded.1) / 2.0;
    let pad = (
        (half_width - 0.1).round_ties_even().max(0.0) as u32,
        (half_height - 0.1).round_ties_even().max(0.0) as u32,
    );
    let mut padded = RgbImage::from_pixel(dst_size.0, dst_size.1, Rgb([PAD_VALUE; 3]));
    image::imageops::replace(&mut padded, &resized, i64::from(pad.0), i64::from(pad.1));
    let info = TransformInfo {
        src_size: loaded.original_size,
        dst_size,
        resized_size: unpadded,
        pad,
    };
    let boxes = loaded
        .labeled
        .boxes
        .iter()
        .map(|labeled| {
            let sx = unpadded.0 as f32 / width as f32;
            let sy = unpadded.1 as f32 / height as f32;
            LabeledBox {
                class_id: labeled.class_id,
                bbox: BoundingBox {
                    x1: labeled.bbox.x1 * sx + pad.0 as f32,
                    y1: labeled.bbox.y1 * sy + pad.1 as f32,
                    x2: labeled.bbox.x2 * sx + pad.0 as f32,
                    y2: labeled.bbox.y2 * sy + pad.1 as f32,
                },
            }
        })
        .collect();
    (
        LabeledImage {
            image: padded,
            boxes,
        },
        info,
    )
}

fn multiply(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut product = [[0.0; 3]; 3];
    for (row, product_row) in product.iter_mut().enumerate() {
        for (column, cell) in product_row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| a[row][k] * b[k][column]).sum();
        }
    }
    product
}

/// OpenCV's bilinear warp kernel for 8-bit RGB with `BORDER_CONSTANT`.
struct Sampler<'a> {
    raw: &'a [u8],
    width: i32,
    height: i32,
    stride: usize,
}

impl<'a> Sampler<'a> {
    fn new(image: &'a RgbImage) -> Sampler<'a> {
        Sampler {
            raw: image.as_raw(),
            width: i32::try_from(image.width()).unwrap_or(i32::MAX),
            height: i32::try_from(image.height()).unwrap_or(i32::MAX),
            stride: image.width() as usize * 3,
        }
    }

    /// Samples at `(x, y)`; leaves `out` alone (the border) when no tap falls inside.
    #[inline(always)]
    fn sample(&self, x: f32, y: f32, out: &mut [u8]) {
        // Far outside, or NaN: the border, and no integer conversion to overflow.
        if !(x > -1.0 && y > -1.0 && x < self.width as f32 && y < self.height as f32) {
            return;
        }
        // `floor` above -1 without a libm call (x86-64's baseline has no rounding
        // instruction): truncation, one less below zero.
        let x0 = x as i32 - i32::from(x < 0.0);
        let y0 = y as i32 - i32::from(y < 0.0);
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        if x0 >= 0 && y0 >= 0 && x0 < self.width - 1 && y0 < self.height - 1 {
            let top = y0 as usize * self.stride + x0 as usize * 3;
            let bottom = top + self.stride;
            let (upper, lower) = (&self.raw[top..top + 6], &self.raw[bottom..bottom + 6]);
            let blended = blend_rgb(upper, lower, fx, fy);
            out.copy_from_slice(&blended);
            return;
        }
        self.sample_at_border(x0, y0, fx, fy, out);
    }

    /// The taps outside the image read as the border: the rare path, kept out of
    /// the per-pixel loop.
    #[cold]
    #[inline(never)]
    fn sample_at_border(&self, x0: i32, y0: i32, fx: f32, fy: f32, out: &mut [u8]) {
        let tap = |xi: i32, yi: i32, channel: usize| -> u8 {
            if xi < 0 || yi < 0 || xi >= self.width || yi >= self.height {
                PAD_VALUE
            } else {
                self.raw[yi as usize * self.stride + xi as usize * 3 + channel]
            }
        };
        for (channel, value) in out.iter_mut().enumerate() {
            *value = blend(
                [
                    tap(x0, y0, channel),
                    tap(x0 + 1, y0, channel),
                    tap(x0, y0 + 1, channel),
                    tap(x0 + 1, y0 + 1, channel),
                ],
                fx,
                fy,
            );
        }
    }
}

/// [`blend`] for the three channels of two neighbouring pixels on two rows
/// (`upper` and `lower` hold 6 bytes each), the channels side by side in SSE2
/// lanes: the same IEEE operations lane by lane, so the same bits as [`blend`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn blend_rgb(upper: &[u8], lower: &[u8], fx: f32, fy: f32) -> [u8; 3] {
    // SAFETY: SSE2 is part of the x86-64 baseline; every x86-64 CPU has it.
    unsafe { blend_rgb_sse2(upper, lower, fx, fy) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn blend_rgb_sse2(upper: &[u8], lower: &[u8], fx: f32, fy: f32) -> [u8; 3] {
    use std::arch::x86_64::{
        _mm_add_ps, _mm_cvtps_epi32, _mm_cvtsi128_si32, _mm_mul_ps, _mm_packs_epi32,
        _mm_packus_epi16, _mm_set1_ps, _mm_setzero_si128, _mm_sub_ps,
    };
    let (p00, p01) = (rgb_lanes(&upper[..3]), rgb_lanes(&upper[3..6]));
    let (p10, p11) = (rgb_lanes(&lower[..3]), rgb_lanes(&lower[3..6]));
    let (fx, fy) = (_mm_set1_ps(fx), _mm_set1_ps(fy));
    let top = _mm_add_ps(p00, _mm_mul_ps(fx, _mm_sub_ps(p01, p00)));
    let bottom = _mm_add_ps(p10, _mm_mul_ps(fx, _mm_sub_ps(p11, p10)));
    let value = _mm_add_ps(top, _mm_mul_ps(fy, _mm_sub_ps(bottom, top)));
    // Round to nearest even (the default rounding mode), then saturate to bytes.
    let rounded = _mm_cvtps_epi32(value);
    let bytes = _mm_packus_epi16(_mm_packs_epi32(rounded, rounded), _mm_setzero_si128());
    let [red, green, blue, _] = _mm_cvtsi128_si32(bytes).to_le_bytes();
    [red, green, blue]
}

/// Three bytes as floats in the low three lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn rgb_lanes(pixel: &[u8]) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::{
        _mm_cvtepi32_ps, _mm_cvtsi32_si128, _mm_setzero_si128, _mm_unpacklo_epi8,
        _mm_unpacklo_epi16,
    };
    let packed = i32::from_le_bytes([pixel[0], pixel[1], pixel[2], 0]);
    let zero = _mm_setzero_si128();
    let words = _mm_unpacklo_epi8(_mm_cvtsi32_si128(packed), zero);
    _mm_cvtepi32_ps(_mm_unpacklo_epi16(words, zero))
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn blend_rgb(upper: &[u8], lower: &[u8], fx: f32, fy: f32) -> [u8; 3] {
    std::array::from_fn(|channel| {
        blend(
            [
                upper[channel],
                upper[channel + 3],
                lower[channel],
                lower[channel + 3],
            ],
            fx,
            fy,
        )
    })
}

/// OpenCV's order of operations: along x on both rows, then along y, then
/// `saturate_cast<uchar>` (nearest, ties to even).
#[inline]
fn blend([p00, p01, p10, p11]: [u8; 4], fx: f32, fy: f32) -> u8 {
    let (p00, p01, p10, p11) = (
        f32::from(p00),
        f32::from(p01),
        f32::from(p10),
        f32::from(p11),
    );
    let upper = p00 + fx * (p01 - p00);
    let lower = p10 + fx * (p11 - p10);
    let value = upper + fy * (lower - upper);
    // Adding and removing 2^23 rounds to nearest even in the default rounding mode,
    // without the libm call `round_ties_even` becomes on x86-64's baseline.
    const MAGIC: f32 = 8_388_608.0;
    ((value + MAGIC) - MAGIC) as u8
}

/// OpenCV's fixed-point tables for 8-bit RGB to HSV (`hsv_shift` 12).
struct HsvTables {
    saturation_div: [i32; 256],
    hue_div: [i32; 256],
}

const HSV_SHIFT: i32 = 12;

impl HsvTables {
    fn new() -> HsvTables {
        let mut saturation_div = [0; 256];
        let mut hue_div = [0; 256];
        for i in 1..256 {
            saturation_div[i] = (f64::from(255 << HSV_SHIFT) / i as f64).round_ties_even() as i32;
            hue_div[i] = (f64::from(180 << HSV_SHIFT) / (6.0 * i as f64)).round_ties_even() as i32;
        }
        HsvTables {
            saturation_div,
            hue_div,
        }
    }

    /// OpenCV's `RGB2HSV_b`: hue in `0..180`, saturation and value in `0..=255`.
    fn rgb_to_hsv(&self, [red, green, blue]: [u8; 3]) -> [u8; 3] {
        let (r, g, b) = (i32::from(red), i32::from(green), i32::from(blue));
        let value = r.max(g).max(b);
        let diff = value - r.min(g).min(b);
        let round = 1 << (HSV_SHIFT - 1);
        let saturation = (diff * self.saturation_div[value as usize] + round) >> HSV_SHIFT;
        let hue_numerator = if value == r {
            g - b
        } else if value == g {
            b - r + 2 * diff
        } else {
            r - g + 4 * diff
        };
        let mut hue = (hue_numerator * self.hue_div[diff as usize] + round) >> HSV_SHIFT;
        if hue < 0 {
            hue += 180;
        }
        [hue as u8, saturation as u8, value as u8]
    }
}

/// OpenCV's vectorised `HSV2RGB_b` (hue range 180), which converts all but the
/// last pixels of each row, as factors of the value: `f32` arithmetic, saturation
/// multiplied by `1/255`; the caller multiplies by the value and 255 and truncates.
fn hsv_factors(hue: u8, saturation: u8) -> [f32; 3] {
    let s = f32::from(saturation) * (1.0 / 255.0);
    let h = f32::from(hue) * (6.0_f32 / 180.0);
    // Truncation by a cast: `trunc` is a libm call on x86-64's baseline.
    let sector = h as usize;
    let fraction = h - sector as f32;
    // OpenCV's build fuses `1 - s * x` into one rounding (FMA); the product of two
    // `f32`s is exact in `f64`, which gives the same bits on any CPU. Checked
    // against cv2 on all 180 * 256 * 256 inputs.
    let one_minus = |x: f32| (1.0 - f64::from(s) * f64::from(x)) as f32;
    let tab = [1.0, 1.0 - s, one_minus(fraction), one_minus(1.0 - fraction)];
    // OpenCV's table gives (b, g, r) per sector.
    const SECTORS: [[usize; 3]; 6] = [
        [1, 3, 0],
        [1, 0, 2],
        [3, 0, 1],
        [0, 2, 1],
        [0, 1, 3],
        [2, 1, 0],
    ];
    let [blue, green, red] = SECTORS[sector % 6];
    [tab[red], tab[green], tab[blue]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_long_side(size: (u32, u32), imgsz: u32, expected: (u32, u32)) {
        assert_eq!(long_side_size(size, imgsz), expected, "{size:?} at {imgsz}");
    }

    #[test]
    fn load_image_resizes_the_long_side_with_ceil() {
        check_long_side((1280, 720), 640, (640, 360));
        // 333 * 640 / 517 = 412.2 rounds up.
        check_long_side((333, 517), 640, (413, 640));
        check_long_side((640, 480), 640, (640, 480));
        check_long_side((100, 50), 320, (320, 160));
    }

    #[test]
    fn inverse_undoes_the_matrix() {
        let params = PerspectiveParams {
            perspective: (0.0004, -0.0003),
            angle: 12.0,
            scale: 0.8,
            shear: (3.0, -2.0),
            translate: (0.45, 0.55),
        };
        let matrix = params.matrix((640, 640), (320, 320));
        let inverse = matrix.inverse().expect("invertible");
        let (x, y) = matrix.apply(100.0, 250.0);
        let (bx, by) = inverse.apply(x, y);
        assert!((bx - 100.0).abs() < 1e-6 && (by - 250.0).abs() < 1e-6);
    }

    #[test]
    fn identity_params_only_centre_the_image() {
        let matrix = PerspectiveParams::identity().matrix((100, 60), (128, 128));
        assert_eq!(matrix.apply(0.0, 0.0), (14.0, 34.0));
        assert!(matrix.is_affine());
    }

    #[test]
    fn vector_blend_matches_scalar_blend_bit_for_bit() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..100_000 {
            let bytes = next().to_le_bytes();
            let more = next().to_le_bytes();
            let (upper, lower) = (
                &bytes[..6],
                &[bytes[6], bytes[7], more[0], more[1], more[2], more[3]],
            );
            let fx = (next() % 1_000_000) as f32 / 1_000_000.0;
            let fy = (next() % 1024) as f32 / 1024.0;
            let scalar: [u8; 3] = std::array::from_fn(|channel| {
                blend(
                    [
                        upper[channel],
                        upper[channel + 3],
                        lower[channel],
                        lower[channel + 3],
                    ],
                    fx,
                    fy,
                )
            });
            assert_eq!(
                blend_rgb(upper, lower, fx, fy),
                scalar,
                "{upper:?} {lower:?} {fx} {fy}"
            );
        }
    }

    #[test]
    fn box_candidates_follow_ultralytics_thresholds() {
        let before = BoundingBox {
            x1: 0.0,
            y1: 0.0,
            x2: 100.0,
            y2: 100.0,
        };
        let kept = BoundingBox {
            x1: 10.0,
            y1: 10.0,
            x2: 90.0,
            y2: 90.0,
        };
        let too_small = BoundingBox {
            x1: 0.0,
            y1: 0.0,
            x2: 2.0,
            y2: 50.0,
        };
        let mostly_cut = BoundingBox {
            x1: 0.0,
            y1: 0.0,
            x2: 30.0,
            y2: 30.0,
        };
        assert!(box_candidate(&before, &kept));
        assert!(!box_candidate(&before, &too_small));
        assert!(!box_candidate(&before, &mostly_cut));
    }
}
