//! Inputs shared by the criterion benchmarks and the `postprocess_bench` example:
//! a YOLOv8 output `[1, 84, 8400]` with a chosen number of anchors over the
//! threshold, clustered around objects as a trained detector's are.

use cardet_detect::YoloV8Layout;
use cardet_detect::synth::Rng;

pub const LAYOUT: YoloV8Layout = YoloV8Layout {
    n_classes: 80,
    n_anchors: 8400,
};

/// `n_over` anchors score above 0.25 (about ten per object); the rest stay below.
pub fn yolo_output(n_over: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let n_anchors = LAYOUT.n_anchors;
    let mut values = vec![0.0_f32; LAYOUT.values_per_image()];
    for anchor in 0..n_anchors {
        let (cx, cy, w, h) = (
            rng.uniform(0.0, 640.0),
            rng.uniform(140.0, 500.0),
            rng.uniform(4.0, 200.0),
            rng.uniform(4.0, 150.0),
        );
        for (channel, value) in [cx, cy, w, h].into_iter().enumerate() {
            values[channel * n_anchors + anchor] = value;
        }
        for class_id in 0..LAYOUT.n_classes {
            values[(4 + class_id) * n_anchors + anchor] = rng.unit().powi(4) * 0.2;
        }
    }
    let n_objects = (n_over / 10).max(1);
    let objects: Vec<(f32, f32, f32, f32, usize)> = (0..n_objects)
        .map(|_| {
            (
                rng.uniform(20.0, 620.0),
                rng.uniform(160.0, 480.0),
                rng.uniform(8.0, 220.0),
                rng.uniform(8.0, 160.0),
                rng.pick(&[2, 3, 5, 7, 0, 1, 9]),
            )
        })
        .collect();
    // Spread the chosen anchors over the whole range without repeats.
    let stride = n_anchors / n_over.max(1);
    for over_idx in 0..n_over.min(n_anchors) {
        let anchor = (over_idx * stride.max(1) + rng.below(0, stride.max(1))) % n_anchors;
        let (cx, cy, w, h, class_id) = objects[over_idx % n_objects];
        let jitter = [
            rng.normal() * w * 0.06,
            rng.normal() * h * 0.06,
            rng.normal() * w * 0.08,
            rng.normal() * h * 0.08,
        ];
        for (channel, value) in [
            cx + jitter[0],
            cy + jitter[1],
            (w + jitter[2]).max(2.0),
            (h + jitter[3]).max(2.0),
        ]
        .into_iter()
        .enumerate()
        {
            values[channel * n_anchors + anchor] = value;
        }
        values[(4 + class_id) * n_anchors + anchor] = rng.uniform(0.3, 0.95);
    }
    values
}

/// How many anchors of `output` have a best class score above `threshold`.
#[allow(dead_code)]
pub fn n_over_threshold(output: &[f32], threshold: f32) -> usize {
    let n_anchors = LAYOUT.n_anchors;
    (0..n_anchors)
        .filter(|&anchor| {
            (0..LAYOUT.n_classes)
                .any(|class_id| output[(4 + class_id) * n_anchors + anchor] > threshold)
        })
        .count()
}
