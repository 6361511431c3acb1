//! Post-processing of YOLOv8 outputs into detections in original image pixels.
//!
//! The output is `[N, 4 + classes, anchors]` ([`YoloV8Layout`]): for each anchor,
//! centre x, centre y, width and height in network-input pixels, then one score
//! per class, already sigmoid-ed, with no objectness. Post-processing follows
//! Ultralytics' `non_max_suppression` (single label per box): keep anchors whose
//! best class score is above the threshold, keep at most `max_candidates` by score,
//! NMS per class (or across classes), keep `max_detections`, and map boxes back
//! through the letterbox's [`TransformInfo`].

use crate::error::Error;
use crate::geometry::{BoundingBox, Detection};
use crate::letterbox::TransformInfo;
use crate::nms::batched_nms;
use crate::score_bits::{ascending_bits, from_ascending_bits};
use crate::simd::{Isa, kernel};

/// The YOLOv8 detection output, `[N, 4 + n_classes, n_anchors]`, channel-major:
/// row `c` of image `n` holds channel `c` for every anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct YoloV8Layout {
    pub n_classes: usize,
    pub n_anchors: usize,
}

impl YoloV8Layout {
    /// Reads the layout from a real output shape (Ultralytics' ONNX export names the
    /// channel axis symbolically, so the shape of the tensor is the truth).
    /// Returns the batch size and the layout.
    pub fn from_shape(shape: &[usize]) -> Result<(usize, YoloV8Layout), Error> {
        match shape {
            &[n_images, n_channels, n_anchors] if n_channels > 4 => Ok((
                n_images,
                YoloV8Layout {
                    n_classes: n_channels - 4,
                    n_anchors,
                },
            )),
            _ => Err(Error::InvalidArgument(format!(
                "a YOLOv8 output is [N, 4 + classes, anchors], got {shape:?}"
            ))),
        }
    }

    pub fn n_channels(&self) -> usize {
        4 + self.n_classes
    }

    /// Values of one image's output.
    pub fn values_per_image(&self) -> usize {
        self.n_channels() * self.n_anchors
    }
}

impl std::fmt::Display for YoloV8Layout {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "[N, 4 + {}, {}]", self.n_classes, self.n_anchors)
    }
}

/// Thresholds and limits, with Ultralytics' defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PostprocessConfig {
    /// Keep a box when its best class score is strictly above this.
    pub confidence_threshold: f32,
    /// Suppress a box whose IoU with a kept box is strictly above this.
    pub iou_threshold: f32,
    /// Detections kept per image after NMS.
    pub max_detections: usize,
    /// Candidates kept per image before NMS (by score).
    pub max_candidates: usize,
    /// One NMS across all classes instead of one per class.
    pub class_agnostic: bool,
}

impl Default for PostprocessConfig {
    fn default() -> PostprocessConfig {
        PostprocessConfig {
            confidence_threshold: 0.25,
            iou_threshold: 0.45,
            max_detections: 300,
            max_candidates: 30_000,
            class_agnostic: false,
        }
    }
}

/// Decodes a batch: `output` holds `infos.len()` images laid out as `layout`.
pub fn postprocess(
    output: &[f32],
    layout: YoloV8Layout,
    infos: &[TransformInfo],
    config: &PostprocessConfig,
) -> Result<Vec<Vec<Detection>>, Error> {
    let expected = layout.values_per_image() * infos.len();
    if output.len() != expected {
        return Err(Error::OutputShape {
            layout: layout.to_string(),
            expected,
            got: output.len(),
        });
    }
    Ok(output
        .chunks_exact(layout.values_per_image().max(1))
        .zip(infos)
        .map(|(image_output, info)| postprocess_image(image_output, layout, info, config))
        .collect())
}

/// Decodes one image's output (`layout.values_per_image()` values).
pub fn postprocess_image(
    image_output: &[f32],
    layout: YoloV8Layout,
    info: &TransformInfo,
    config: &PostprocessConfig,
) -> Vec<Detection> {
    let candidates = candidates(image_output, layout, config);
    let classes: Vec<usize> = if config.class_agnostic {
        vec![0; candidates.len()]
    } else {
        candidates
            .iter()
            .map(|candidate| candidate.class_id)
            .collect()
    };
    let boxes: Vec<BoundingBox> = candidates.iter().map(|candidate| candidate.bbox).collect();
    let scores: Vec<f32> = candidates.iter().map(|candidate| candidate.score).collect();
    batched_nms(
        &boxes,
        &scores,
        &classes,
        config.iou_threshold,
        config.max_detections,
    )
    .into_iter()
    .map(|kept| Detection {
        bbox: info.to_source(&candidates[kept].bbox),
        class_id: candidates[kept].class_id,
        confidence: candidates[kept].score,
    })
    .collect()
}

/// A box over the threshold, in network-input pixels.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    bbox: BoundingBox,
    class_id: usize,
    score: f32,
}

/// The anchors whose best class score is above the threshold, best class only.
fn candidates(
    image_output: &[f32],
    layout: YoloV8Layout,
    config: &PostprocessConfig,
) -> Vec<Candidate> {
    let n_anchors = layout.n_anchors;
    let row = |channel: usize| &image_output[channel * n_anchors..(channel + 1) * n_anchors];
    let (cx, cy, width, height) = (row(0), row(1), row(2), row(3));
    let over = scan_class_scores(
        Isa::detect(),
        &image_output[4 * n_anchors..],
        layout,
        config.confidence_threshold,
    );
    let mut found: Vec<Candidate> = over
        .into_iter()
        .map(|best| Candidate {
            bbox: BoundingBox::from_cxcywh(
                cx[best.anchor],
                cy[best.anchor],
                width[best.anchor],
                height[best.anchor],
            ),
            class_id: best.class_id,
            score: best.score,
        })
        .collect();
    if found.len() > config.max_candidates {
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        found.truncate(config.max_candidates);
    }
    found
}

/// An anchor's best class and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BestClass {
    anchor: usize,
    class_id: usize,
    score: f32,
}

/// Scores of one class row that [`scan_class_scores`] compares before it asks
/// whether any was over the threshold (four AVX2 vectors).
const SCAN_CHUNK: usize = 32;

kernel! {
    /// Every anchor whose best class score is above `threshold`, with the first
    /// class that has that score (numpy's `argmax`), in anchor order.
    ///
    /// The scan is most of post-processing: one output (80 classes x 8400 anchors)
    /// is 2.7 MB, more than L2, and every score must be read. It reads each class
    /// row once, front to back, a single stream that the hardware prefetcher follows
    /// at full speed. Almost every score is under the threshold, so a chunk of 32
    /// costs a compare and an `or` per vector; the rare chunk with a score over goes
    /// to [`BestScores::record`]. The earlier scan, 32-anchor blocks taken across all
    /// 80 rows with the maxima in registers, kept 80 streams going at once and ran at
    /// about half the speed of a plain read of the same bytes.
    fn scan_class_scores(
        class_rows: &[f32],
        layout: YoloV8Layout,
        threshold: f32,
    ) -> Vec<BestClass> {
        if layout.n_anchors == 0 {
            return Vec::new();
        }
        let mut best = BestScores::new(layout.n_anchors);
        let rows = class_rows.chunks_exact(layout.n_anchors).take(layout.n_classes);
        for (class_id, row) in rows.enumerate() {
            let (chunks, tail) = row.as_chunks::<SCAN_CHUNK>();
            for (chunk_idx, chunk) in chunks.iter().enumerate() {
                let mut any_over = false;
                for &score in chunk {
                    any_over |= score > threshold;
                }
                if any_over {
                    best.record(chunk_idx * SCAN_CHUNK, chunk, class_id, threshold);
                }
            }
            best.record(chunks.len() * SCAN_CHUNK, tail, class_id, threshold);
        }
        best.into_anchor_order()
    }
}

/// The best class so far of each anchor that had a score over the threshold.
struct BestScores {
    /// Per anchor: the score's order-preserving bits above the inverted class id,
    /// so that the larger key is the higher score, then the lower class.
    keys: Vec<u64>,
    /// One bit per anchor: whether `keys` holds an entry for it.
    seen: Vec<u64>,
}

impl BestScores {
    fn new(n_anchors: usize) -> BestScores {
        BestScores {
            keys: vec![0; n_anchors],
            seen: vec![0; n_anchors.div_ceil(64)],
        }
    }

    /// Notes the scores of `chunk` (at most 64, anchors from `start`, all of class
    /// `class_id`) that are over `threshold`. Rare, so kept out of the scan's loop.
    #[inline(never)]
    fn record(&mut self, start: usize, chunk: &[f32], class_id: usize, threshold: f32) {
        debug_assert!(chunk.len() <= 64, "one bit per score in a u64");
        let mut over = 0_u64;
        for (lane, &score) in chunk.iter().enumerate() {
            over |= u64::from(score > threshold) << lane;
        }
        while over != 0 {
            let lane = over.trailing_zeros() as usize;
            over &= over - 1;
            let anchor = start + lane;
            // `+ 0.0` turns -0.0 into 0.0: equal scores, so the lower class wins, as
            // with numpy's argmax.
            let key = (u64::from(ascending_bits(chunk[lane] + 0.0)) << 32)
                | u64::from(u32::MAX - class_id as u32);
            let (word, bit) = (anchor / 64, 1_u64 << (anchor % 64));
            if self.seen[word] & bit == 0 {
                self.seen[word] |= bit;
                self.keys[anchor] = key;
            } else {
                self.keys[anchor] = self.keys[anchor].max(key);
            }
        }
    }

    fn into_anchor_order(self) -> Vec<BestClass> {
        let mut found = Vec::new();
        for (word_idx, &word) in self.seen.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let anchor = word_idx * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                let key = self.keys[anchor];
                found.push(BestClass {
                    anchor,
                    class_id: (u32::MAX - key as u32) as usize,
                    score: from_ascending_bits((key >> 32) as u32),
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an output of `n_anchors` anchors from `(anchor, cx, cy, w, h, class, score)`.
    fn output(
        layout: YoloV8Layout,
        anchors: &[(usize, f32, f32, f32, f32, usize, f32)],
    ) -> Vec<f32> {
        let mut values = vec![0.0; layout.values_per_image()];
        for &(anchor, cx, cy, width, height, class_id, score) in anchors {
            for (channel, value) in [cx, cy, width, height].into_iter().enumerate() {
                values[channel * layout.n_anchors + anchor] = value;
            }
            values[(4 + class_id) * layout.n_anchors + anchor] = score;
        }
        values
    }

    fn check(
        anchors: &[(usize, f32, f32, f32, f32, usize, f32)],
        config: PostprocessConfig,
        expected: &[(usize, f32, [f32; 4])],
    ) {
        let layout = YoloV8Layout {
            n_classes: 3,
            n_anchors: 8,
        };
        // 200x100 letterboxed to 64x64: scale 0.32, 16 rows of padding on top.
        let info = TransformInfo::new((200, 100), (64, 64)).expect("sizes");
        let detections =
            postprocess(&output(layout, anchors), layout, &[info], &config).expect("shape");
        let actual: Vec<(usize, f32, [f32; 4])> = detections[0]
            .iter()
            .map(|d| {
                (
                    d.class_id,
                    d.confidence,
                    [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]
                        .map(|v| (v * 100.0).round() / 100.0),
                )
            })
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn decodes_filters_suppresses_and_maps_back() {
        let anchors = [
            (0, 32.0, 32.0, 16.0, 16.0, 1, 0.9),
            (1, 33.6, 32.0, 16.0, 16.0, 1, 0.8),
            (2, 33.6, 32.0, 16.0, 16.0, 2, 0.7),
            (3, 10.0, 30.0, 4.0, 4.0, 0, 0.2),
        ];
        check(
            &anchors,
            PostprocessConfig::default(),
            &[
                (1, 0.9, [75.0, 25.0, 125.0, 75.0]),
                (2, 0.7, [80.0, 25.0, 130.0, 75.0]),
            ],
        );
        check(
            &anchors,
            PostprocessConfig {
                class_agnostic: true,
                ..PostprocessConfig::default()
            },
            &[(1, 0.9, [75.0, 25.0, 125.0, 75.0])],
        );
        check(
            &anchors,
            PostprocessConfig {
                confidence_threshold: 0.1,
                max_detections: 2,
                ..PostprocessConfig::default()
            },
            &[
                (1, 0.9, [75.0, 25.0, 125.0, 75.0]),
                (2, 0.7, [80.0, 25.0, 130.0, 75.0]),
            ],
        );
    }

    #[test]
    fn the_class_scan_matches_a_plain_argmax_in_chunks_and_the_tail() {
        // Two full chunks and a tail of 5 (over 64 anchors, so two words of the seen
        // bits), scores that peak in every class, with ties; thresholds where few
        // scores are over, where several classes of one anchor are, and where all are.
        let layout = YoloV8Layout {
            n_classes: 7,
            n_anchors: 2 * SCAN_CHUNK + 5,
        };
        let class_rows: Vec<f32> = (0..layout.n_classes * layout.n_anchors)
            .map(|i| ((i * 7919) % 100) as f32 / 100.0)
            .collect();
        for threshold in [0.9, 0.5, -1.0] {
            let plain: Vec<BestClass> = (0..layout.n_anchors)
                .filter_map(|anchor| {
                    let score_of =
                        |class_id: usize| class_rows[class_id * layout.n_anchors + anchor];
                    let class_id = (0..layout.n_classes)
                        .reduce(|best, class_id| {
                            if score_of(class_id) > score_of(best) {
                                class_id
                            } else {
                                best
                            }
                        })
                        .unwrap_or(0);
                    (score_of(class_id) > threshold).then(|| BestClass {
                        anchor,
                        class_id,
                        score: score_of(class_id),
                    })
                })
                .collect();
            assert!(plain.len() > 10, "the data must exercise the scan");
            for isa in [Isa::Baseline, Isa::detect()] {
                let over = scan_class_scores(isa, &class_rows, layout, threshold);
                assert_eq!(over, plain, "{isa:?}, threshold {threshold}");
            }
        }
    }

    #[test]
    fn a_wrong_output_size_is_an_error() {
        let layout = YoloV8Layout {
            n_classes: 80,
            n_anchors: 8400,
        };
        let info = TransformInfo::new((640, 640), (640, 640)).expect("sizes");
        let error = postprocess(&[0.0; 10], layout, &[info], &PostprocessConfig::default())
            .expect_err("too short");
        assert!(error.to_string().contains("[N, 4 + 80, 8400]"), "{error}");
        assert_eq!(
            YoloV8Layout::from_shape(&[2, 84, 8400]).expect("valid"),
            (2, layout)
        );
        assert!(YoloV8Layout::from_shape(&[84, 8400]).is_err());
    }
}
