//! Boxes and the detections made of them.

/// An axis-aligned box in pixels, corners `(x1, y1)` top-left and `(x2, y2)` bottom-right.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BoundingBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoundingBox {
    /// From centre, width and height (the YOLO layout).
    pub fn from_cxcywh(cx: f32, cy: f32, width: f32, height: f32) -> BoundingBox {
        BoundingBox {
            x1: cx - width / 2.0,
            y1: cy - height / 2.0,
            x2: cx + width / 2.0,
            y2: cy + height / 2.0,
        }
    }

    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    /// Zero for an inverted box, so it never counts as overlap.
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Intersection over union, with areas as `(x2 - x1) * (y2 - y1)` like torchvision.
    pub fn iou(&self, other: &BoundingBox) -> f32 {
        let intersection = self.intersection_area(other);
        let union = self.area() + other.area() - intersection;
        if union <= 0.0 {
            0.0
        } else {
            intersection / union
        }
    }

    pub fn intersection_area(&self, other: &BoundingBox) -> f32 {
        let width = self.x2.min(other.x2) - self.x1.max(other.x1);
        let height = self.y2.min(other.y2) - self.y1.max(other.y1);
        width.max(0.0) * height.max(0.0)
    }

    /// Clamped to `[0, width] x [0, height]`.
    pub fn clipped(&self, width: f32, height: f32) -> BoundingBox {
        BoundingBox {
            x1: self.x1.clamp(0.0, width),
            y1: self.y1.clamp(0.0, height),
            x2: self.x2.clamp(0.0, width),
            y2: self.y2.clamp(0.0, height),
        }
    }
}

/// One detected object in original image coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    pub bbox: BoundingBox,
    pub class_id: usize,
    pub confidence: f32,
}

impl Detection {
    /// `{"class_id", "class_name", "confidence", "box": [x1, y1, x2, y2]}`, pixels of
    /// the original image.
    pub fn to_json(&self, names: &[String]) -> serde_json::Value {
        serde_json::json!({
            "class_id": self.class_id,
            "class_name": crate::classes::class_name(names, self.class_id),
            "confidence": self.confidence,
            "box": [self.bbox.x1, self.bbox.y1, self.bbox.x2, self.bbox.y2],
        })
    }

    /// A YOLO label line with a confidence column, `class cx cy w h conf`, normalised
    /// by the image size (what Ultralytics writes with `save_txt` and `save_conf`).
    pub fn to_yolo_line(&self, image_size: (u32, u32)) -> String {
        let (width, height) = (image_size.0 as f32, image_size.1 as f32);
        format!(
            "{} {:.6} {:.6} {:.6} {:.6} {:.6}",
            self.class_id,
            (self.bbox.x1 + self.bbox.x2) / 2.0 / width,
            (self.bbox.y1 + self.bbox.y2) / 2.0 / height,
            self.bbox.width() / width,
            self.bbox.height() / height,
            self.confidence
        )
    }
}

/// All detections of one image as a JSON array.
pub fn detections_to_json(detections: &[Detection], names: &[String]) -> serde_json::Value {
    serde_json::Value::Array(
        detections
            .iter()
            .map(|detection| detection.to_json(names))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(detection: Detection, expected_json: &str, expected_line: &str) {
        let names = crate::classes::coco_names();
        assert_eq!(detection.to_json(&names).to_string(), expected_json);
        assert_eq!(detection.to_yolo_line((200, 100)), expected_line);
    }

    #[test]
    fn detections_serialise_to_json_and_yolo_lines() {
        check(
            Detection {
                bbox: BoundingBox {
                    x1: 10.0,
                    y1: 20.0,
                    x2: 60.0,
                    y2: 70.0,
                },
                class_id: 2,
                confidence: 0.5,
            },
            r#"{"box":[10.0,20.0,60.0,70.0],"class_id":2,"class_name":"car","confidence":0.5}"#,
            "2 0.175000 0.450000 0.250000 0.500000 0.500000",
        );
    }

    #[test]
    fn iou_of_disjoint_nested_and_equal_boxes() {
        let a = BoundingBox {
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
        };
        let b = BoundingBox {
            x1: 5.0,
            y1: 0.0,
            x2: 15.0,
            y2: 10.0,
        };
        let far = BoundingBox {
            x1: 50.0,
            y1: 50.0,
            x2: 60.0,
            y2: 60.0,
        };
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&far), 0.0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
    }
}
