//! Criterion micro-benchmarks of the detection core: letterbox of a 1280x720 JPEG to
//! 640, decode + NMS of `[1, 84, 8400]` with about 300 and 3000 candidates over the
//! threshold, and drawing 50 labelled boxes.

#[path = "fixtures.rs"]
mod fixtures;

use std::hint::black_box;
use std::path::Path;

use cardet_detect::letterbox::{TransformInfo, letterbox_batch};
use cardet_detect::synth::render_scene;
use cardet_detect::{BoundingBox, Detection, PostprocessConfig, draw, image_io, postprocess};
use criterion::{Criterion, criterion_group, criterion_main};

fn letterbox_benchmarks(criterion: &mut Criterion) {
    let scene = render_scene(1, 0, (1280, 720));
    let jpeg = image_io::encode(&scene.image, Path::new("frame.jpg")).unwrap_or_default();
    let image = scene.image;
    criterion.bench_function("letterbox 1280x720 to 640", |bencher| {
        bencher.iter(|| letterbox_batch(std::slice::from_ref(black_box(&image)), (640, 640)))
    });
    criterion.bench_function("jpeg decode + letterbox 1280x720 to 640", |bencher| {
        bencher.iter(|| {
            image_io::decode_rgb(black_box(&jpeg), Path::new("frame.jpg"))
                .and_then(|decoded| letterbox_batch(&[decoded], (640, 640)))
        })
    });
}

fn postprocess_benchmarks(criterion: &mut Criterion) {
    let info = TransformInfo::new((1280, 720), (640, 640)).unwrap_or_else(|_| unreachable!());
    for n_over in [300, 3000] {
        let output = fixtures::yolo_output(n_over, 7);
        criterion.bench_function(
            &format!("decode + nms [1, 84, 8400], {n_over} candidates"),
            |bencher| {
                bencher.iter(|| {
                    postprocess(
                        black_box(&output),
                        fixtures::LAYOUT,
                        &[info],
                        &PostprocessConfig::default(),
                    )
                })
            },
        );
    }
}

fn draw_benchmarks(criterion: &mut Criterion) {
    let image = render_scene(2, 0, (1280, 720)).image;
    let names = cardet_detect::classes::coco_names();
    let detections: Vec<Detection> = (0..50)
        .map(|i| {
            let (x, y) = (
                (i % 10) as f32 * 120.0 + 10.0,
                (i / 10) as f32 * 130.0 + 40.0,
            );
            Detection {
                bbox: BoundingBox {
                    x1: x,
                    y1: y,
                    x2: x + 100.0,
                    y2: y + 80.0,
                },
                class_id: [2, 3, 5, 7][i % 4],
                confidence: 0.5 + i as f32 / 100.0,
            }
        })
        .collect();
    criterion.bench_function("draw 50 boxes on 1280x720", |bencher| {
        bencher.iter_batched_ref(
            || image.clone(),
            |canvas| draw::draw_detections(canvas, black_box(&detections), &names),
            criterion::BatchSize::LargeInput,
        )
    });
}

criterion_group!(
    benches,
    letterbox_benchmarks,
    postprocess_benchmarks,
    draw_benchmarks
);
criterion_main!(benches);
