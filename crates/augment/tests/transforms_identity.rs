//! Transforms that must change nothing: HSV with zero gains, a flip done twice,
//! and the identity warp.

mod common;

use cardet_augment::AugmentConfig;
use cardet_augment::transforms::{
    self, LabeledBox, LabeledImage, PerspectiveParams, apply_hsv_gains, flip_horizontal,
    flip_vertical, random_hsv,
};
use cardet_detect::BoundingBox;
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn noisy_image() -> RgbImage {
    RgbImage::from_fn(67, 41, |x, y| {
        Rgb([
            (x * 37 + y * 11) as u8,
            (x * 5 + y * 53 + 17) as u8,
            (x * y + 3 * x + 7 * y) as u8,
        ])
    })
}

fn labeled() -> LabeledImage {
    LabeledImage {
        image: noisy_image(),
        boxes: vec![LabeledBox {
            class_id: 2,
            bbox: BoundingBox {
                x1: 3.5,
                y1: 1.0,
                x2: 40.25,
                y2: 33.0,
            },
        }],
    }
}

#[test]
fn hsv_with_zero_gains_is_the_identity() {
    let config = AugmentConfig {
        hsv_h: 0.0,
        hsv_s: 0.0,
        hsv_v: 0.0,
        ..AugmentConfig::default()
    };
    let mut image = noisy_image();
    random_hsv(&mut image, &config, &mut ChaCha8Rng::seed_from_u64(1));
    assert_eq!(image, noisy_image());

    // Through the 8-bit HSV round trip with identity tables, only OpenCV's hue
    // quantisation (2 degrees) remains: a few levels at most.
    let mut round_trip = noisy_image();
    apply_hsv_gains(&mut round_trip, [0.0, 0.0, 0.0]);
    let worst = round_trip
        .as_raw()
        .iter()
        .zip(noisy_image().as_raw())
        .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
        .max();
    assert!(worst.is_some_and(|worst| worst <= 5), "worst {worst:?}");
}

#[test]
fn hsv_with_gains_changes_the_image() {
    let mut image = noisy_image();
    random_hsv(
        &mut image,
        &AugmentConfig::default(),
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    assert_ne!(image, noisy_image());
}

#[test]
fn flipping_twice_is_the_identity() {
    let original = labeled();
    let mut twice = labeled();
    flip_horizontal(&mut twice);
    assert_ne!(twice, original);
    assert_eq!(twice.boxes[0].bbox.x1, 67.0 - 40.25);
    flip_horizontal(&mut twice);
    assert_eq!(twice, original);
    flip_vertical(&mut twice);
    assert_ne!(twice, original);
    assert_eq!(twice.boxes[0].bbox.y2, 41.0 - 1.0);
    flip_vertical(&mut twice);
    assert_eq!(twice, original);
}

#[test]
fn identity_perspective_into_the_same_size_is_the_identity() {
    let original = labeled();
    let output = transforms::perspective(
        &original,
        &PerspectiveParams::identity(),
        original.image.dimensions(),
    );
    assert_eq!(output, original);
}
