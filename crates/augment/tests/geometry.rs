//! Boxes and pixels move together through mosaic, random perspective and flips:
//! each output box must match the extent of its rectangle's colour in the output.

mod common;

use cardet_augment::AugmentConfig;
use cardet_augment::transforms::{
    self, LabeledBox, LabeledImage, PerspectiveParams, flip_horizontal, flip_vertical,
};
use cardet_detect::BoundingBox;
use common::{PALETTE, Rectangle, colour_extent, palette_extents, render};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const IMGSZ: u32 = 320;
/// Boxes thinner than this are not compared: one pixel of blended edge would
/// dominate their IoU.
const MIN_CHECKED_SIDE: f32 = 24.0;

/// Tile `tile_idx` of a mosaic: two rectangles of its own two colours.
fn random_tile(tile_idx: usize, rng: &mut ChaCha8Rng) -> LabeledImage {
    let width = rng.random_range(160..=IMGSZ);
    let height = rng.random_range(160..=IMGSZ);
    let mut rectangles = Vec::new();
    for half in 0..2 {
        let (left, right) = if half == 0 {
            (0, width / 2 - 4)
        } else {
            (width / 2 + 4, width)
        };
        let x1 = rng.random_range(left..left + (right - left) / 3);
        let x2 = rng.random_range(x1 + (right - left) / 3..=right);
        let y1 = rng.random_range(0..height / 3);
        let y2 = rng.random_range(y1 + height / 3..=height);
        rectangles.push(Rectangle {
            class_id: tile_idx * 2 + half,
            x1,
            y1,
            x2,
            y2,
        });
    }
    LabeledImage {
        image: render((width, height), &rectangles),
        boxes: rectangles
            .iter()
            .map(|rectangle| LabeledBox {
                class_id: rectangle.class_id,
                bbox: rectangle.bbox(),
            })
            .collect(),
    }
}

#[test]
fn boxes_follow_pixels_through_mosaic_scale_translate_and_flips() {
    // Axis-aligned transforms: even boxes clipped at the border are exact.
    let config = AugmentConfig::default();
    let n_checked = check_trials(&config, 0..32, true);
    assert!(
        n_checked >= 60,
        "only {n_checked} boxes were large enough to compare"
    );
}

#[test]
fn boxes_follow_pixels_through_rotation_shear_and_perspective() {
    // Ultralytics boxes a rotated rectangle by its four corners and then clips the
    // box, so a rotated box cut by the border covers more than the visible pixels
    // (segments would fix that; detection labels have none). Boxes inside the
    // image are exact, and those are the ones compared.
    let config = AugmentConfig {
        degrees: 10.0,
        shear: 3.0,
        perspective: 0.0003,
        ..AugmentConfig::default()
    };
    let n_checked = check_trials(&config, 100..140, false);
    assert!(
        n_checked >= 30,
        "only {n_checked} boxes were inside the image"
    );
}

/// Runs mosaic, perspective and flips for each seed; returns how many boxes were compared.
fn check_trials(
    config: &AugmentConfig,
    seeds: std::ops::Range<u64>,
    compare_clipped: bool,
) -> usize {
    let mut n_checked = 0;
    for trial in seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(trial);
        let tiles: Vec<LabeledImage> = (0..4).map(|tile| random_tile(tile, &mut rng)).collect();
        let mosaic = transforms::random_mosaic(
            [&tiles[0], &tiles[1], &tiles[2], &tiles[3]],
            IMGSZ,
            &mut rng,
        );
        assert_eq!(mosaic.image.dimensions(), (2 * IMGSZ, 2 * IMGSZ));
        let params = PerspectiveParams::random(config, &mut rng);
        let mut output = transforms::perspective(&mosaic, &params, (IMGSZ, IMGSZ));
        if trial % 2 == 1 {
            flip_horizontal(&mut output);
        }
        if trial % 3 == 0 {
            flip_vertical(&mut output);
        }
        assert_eq!(output.image.dimensions(), (IMGSZ, IMGSZ));

        let side = IMGSZ as f32;
        let extents = palette_extents(&output.image);
        for labeled in &output.boxes {
            let bbox = labeled.bbox;
            assert!(
                bbox.x1 >= 0.0 && bbox.y1 >= 0.0 && bbox.x2 <= side && bbox.y2 <= side,
                "trial {trial}: {bbox:?} is not clipped"
            );
            let Some(extent) = extents[labeled.class_id] else {
                panic!(
                    "trial {trial}: class {} has a box {bbox:?} but no pixels",
                    labeled.class_id
                );
            };
            let touches_border =
                bbox.x1 < 1.0 || bbox.y1 < 1.0 || bbox.x2 > side - 1.0 || bbox.y2 > side - 1.0;
            if bbox.width() < MIN_CHECKED_SIDE
                || bbox.height() < MIN_CHECKED_SIDE
                || (touches_border && !compare_clipped)
            {
                continue;
            }
            let iou = bbox.iou(&extent);
            assert!(
                iou > 0.9,
                "trial {trial} ({params:?}): class {} box {bbox:?} vs pixels {extent:?}, IoU {iou}",
                labeled.class_id
            );
            n_checked += 1;
        }

        // The other way round: a rectangle still plainly visible kept its box
        // (`box_candidates` drops only boxes under a tenth of their scaled area).
        for before in &mosaic.boxes {
            let Some(extent) = extents[before.class_id] else {
                continue;
            };
            let scaled_area = before.bbox.area() * (params.scale * params.scale) as f32;
            if extent.width() > 4.0 && extent.height() > 4.0 && extent.area() > 0.15 * scaled_area {
                assert!(
                    output
                        .boxes
                        .iter()
                        .any(|labeled| labeled.class_id == before.class_id),
                    "trial {trial}: class {} is visible at {extent:?} but lost its box",
                    before.class_id
                );
            }
        }
    }
    n_checked
}

#[test]
fn mosaic_places_each_tile_at_its_corner_of_the_centre() {
    let tiles: Vec<LabeledImage> = (0..4)
        .map(|tile_idx| {
            let rectangle = Rectangle {
                class_id: tile_idx,
                x1: 0,
                y1: 0,
                x2: 100,
                y2: 80,
            };
            LabeledImage {
                image: render((100, 80), &[rectangle]),
                boxes: vec![LabeledBox {
                    class_id: tile_idx,
                    bbox: rectangle.bbox(),
                }],
            }
        })
        .collect();
    let centre = (300, 250);
    let mosaic = transforms::mosaic_at([&tiles[0], &tiles[1], &tiles[2], &tiles[3]], IMGSZ, centre);
    let expected = [
        BoundingBox {
            x1: 200.0,
            y1: 170.0,
            x2: 300.0,
            y2: 250.0,
        },
        BoundingBox {
            x1: 300.0,
            y1: 170.0,
            x2: 400.0,
            y2: 250.0,
        },
        BoundingBox {
            x1: 200.0,
            y1: 250.0,
            x2: 300.0,
            y2: 330.0,
        },
        BoundingBox {
            x1: 300.0,
            y1: 250.0,
            x2: 400.0,
            y2: 330.0,
        },
    ];
    for (tile_idx, expected_box) in expected.iter().enumerate() {
        assert_eq!(mosaic.boxes[tile_idx].bbox, *expected_box);
        assert_eq!(
            colour_extent(&mosaic.image, PALETTE[tile_idx]),
            Some(*expected_box),
            "tile {tile_idx}"
        );
    }
    // Outside the tiles the canvas is the pad grey.
    assert_eq!(mosaic.image.get_pixel(10, 10).0, [114, 114, 114]);
}
