use crate::error::LabelError;

/// A validated YOLO label file: its exact text (an export writes it back byte for
/// byte) and the boxes parsed from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Labels {
    text: String,
    boxes: Vec<BoxLabel>,
}

/// One `class cx cy w h` line, coordinates normalised to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxLabel {
    pub class_id: u32,
    pub cx: f64,
    pub cy: f64,
    pub w: f64,
    pub h: f64,
}

impl Labels {
    /// Parses a label file: one `class cx cy w h` box per line, blank lines
    /// allowed, the class a non-negative integer and every coordinate in [0, 1].
    pub fn parse(text: &str) -> Result<Labels, LabelError> {
        let mut boxes = Vec::new();
        for (line_idx, line) in text.lines().enumerate() {
            let fail = |reason: String| LabelError {
                line: line_idx + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            if fields.len() != 5 {
                return Err(fail(format!(
                    "expected 5 fields `class cx cy w h`, found {}",
                    fields.len()
                )));
            }
            let class_id = fields[0].parse::<u32>().map_err(|_| {
                fail(format!(
                    "class {:?} is not a non-negative integer",
                    fields[0]
                ))
            })?;
            let mut coords = [0f64; 4];
            for (slot, (name, field)) in coords
                .iter_mut()
                .zip(["cx", "cy", "w", "h"].into_iter().zip(&fields[1..]))
            {
                let value = field
                    .parse::<f64>()
                    .map_err(|_| fail(format!("{name} {field:?} is not a number")))?;
                if !(0.0..=1.0).contains(&value) {
                    return Err(fail(format!("{name} {field} is outside [0, 1]")));
                }
                *slot = value;
            }
            let [cx, cy, w, h] = coords;
            boxes.push(BoxLabel {
                class_id,
                cx,
                cy,
                w,
                h,
            });
        }
        Ok(Labels {
            text: text.to_string(),
            boxes,
        })
    }

    /// The label file exactly as it was read.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn boxes(&self) -> &[BoxLabel] {
        &self.boxes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<usize, (usize, &str)>) {
        match (Labels::parse(text), expected) {
            (Ok(labels), Ok(n_boxes)) => {
                assert_eq!(labels.boxes().len(), n_boxes);
                assert_eq!(labels.text(), text);
            }
            (Err(error), Err((line, reason))) => {
                assert_eq!(error.line, line, "{error}");
                assert!(error.reason.contains(reason), "{error}");
            }
            (actual, expected) => panic!("{text:?}: got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn label_files() {
        check("", Ok(0));
        check("0 0.5 0.5 0.2 0.3\n\n2 0.1 0.1 0.05 0.05", Ok(2));
        check("0 0.500000 0.5 1 0\r\n", Ok(1));
        check("0 0.5 0.5 0.2\n", Err((1, "expected 5 fields")));
        check(
            "0 0.5 0.5 0.2 0.3\n-1 0.5 0.5 0.2 0.3\n",
            Err((2, "class \"-1\"")),
        );
        check("0 0.5 0.5 0.2 abc\n", Err((1, "h \"abc\" is not a number")));
        check("0 1.5 0.5 0.2 0.3\n", Err((1, "cx 1.5 is outside")));
        check("0 NaN 0.5 0.2 0.3\n", Err((1, "outside")));
        check("0 0.1 0.2 0.3 0.4 0.5 0.6\n", Err((1, "found 7")));
    }
}
