//! The COCO class table that YOLOv8's COCO weights use, and the four vehicle classes
//! the synthetic scenes draw.

/// The 80 COCO class names in YOLOv8's order (index = class id).
pub const COCO_NAMES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

pub const CAR: usize = 2;
pub const MOTORCYCLE: usize = 3;
pub const BUS: usize = 5;
pub const TRUCK: usize = 7;

/// The vehicle classes of the synthetic scenes, as COCO ids.
pub const VEHICLE_CLASSES: [usize; 4] = [CAR, BUS, TRUCK, MOTORCYCLE];

/// `names[class_id]`, or the id itself where the table has no name for it.
pub fn class_name(names: &[String], class_id: usize) -> String {
    names
        .get(class_id)
        .cloned()
        .unwrap_or_else(|| class_id.to_string())
}

/// The COCO table as owned strings (what `data.yaml` readers return).
pub fn coco_names() -> Vec<String> {
    COCO_NAMES.iter().map(|name| name.to_string()).collect()
}
