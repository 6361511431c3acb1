//! The image record that travels from `produce` through Kafka to `sink`: one image,
//! its YOLO labels, its split and where it came from, keyed by the SHA-256 of the
//! image bytes.
//!
//! [`Record`] is the internal type; [`Labels`] is a validated YOLO label file
//! (kept as its exact text, so an export reproduces it byte for byte, and as parsed
//! [`BoxLabel`]s). Two wire formats carry it, chosen by [`Format`]:
//!
//! - [`Format::Json`]: the Kafka Connect "JSON with schema" envelope that Connect's
//!   `JsonConverter` (`schemas.enable=true`) and the stock JDBC sink understand,
//!   with the image as base64 `bytes` and the labels as a string field;
//! - [`Format::Binary`]: a compact, versioned binary layout (magic `CDRB`, version 1)
//!   with no base64 and no JSON, for our own `sink` only.
//!
//! [`decode`] tells the two apart by their first bytes and checks that the id is
//! the SHA-256 of the image, so a corrupted or foreign record is rejected with a
//! reason instead of being stored. The layouts are documented in `FORMAT.md` beside
//! this crate. `produce`, `sink` and `triton_client --kafka-topic` use this crate: it is the
//! wire edge, and [`KafkaUnreachable`] is the error all three give for a broker that
//! does not answer.
//!
//! ```
//! use cardet_record::{Format, Labels, Record, decode, encode};
//! let labels = Labels::parse("0 0.5 0.5 0.25 0.25\n").expect("valid labels");
//! let record = Record::new(vec![0xff, 0xd8, 0xff, 0xd9], Some(labels), Some("train".into()),
//!     "images/train/a.jpg".into(), (64, 48)).expect("valid record");
//! for format in [Format::Json, Format::Binary] {
//!     assert_eq!(decode(&encode(&record, format)).expect("decodes"), record);
//! }
//! ```

mod binary;
mod error;
mod json;
mod labels;

use sha2::{Digest, Sha256};

pub use crate::error::{DecodeError, KafkaUnreachable, LabelError};
pub use crate::labels::{BoxLabel, Labels};

/// The Connect schema name our JSON records carry; anything else is not ours.
pub const SCHEMA_NAME: &str = "cardet.ImageRecord";
/// The version of both wire formats described in `FORMAT.md`.
pub const FORMAT_VERSION: u8 = 1;

/// One image with everything needed to train on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// SHA-256 of `image`: the Kafka key and the store's primary key.
    pub image_id: ImageId,
    /// The encoded image file (JPEG, PNG, ...), exactly as read from disk.
    pub image: Vec<u8>,
    /// The YOLO label file, or `None` when the image had none (not the same as an
    /// empty file, which marks an image with no object).
    pub labels: Option<Labels>,
    /// The dataset split the image came from (`train`, `val`, ...), if any.
    pub split: Option<String>,
    /// The image's path relative to the folder it was streamed from.
    pub source_path: String,
    pub width: u32,
    pub height: u32,
}

impl Record {
    /// Builds a record, computing its id; the split and path are checked because
    /// an export turns them into folder and file names.
    pub fn new(
        image: Vec<u8>,
        labels: Option<Labels>,
        split: Option<String>,
        source_path: String,
        (width, height): (u32, u32),
    ) -> Result<Record, DecodeError> {
        let image_id = ImageId::of(&image);
        let record = Record {
            image_id,
            image,
            labels,
            split,
            source_path,
            width,
            height,
        };
        record.check_names()?;
        Ok(record)
    }

    /// The file name an export should use: the last component of the source path.
    pub fn file_name(&self) -> &str {
        self.source_path
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(&self.source_path)
    }

    fn check_names(&self) -> Result<(), DecodeError> {
        if let Some(split) = self.split.as_ref().filter(|split| !is_safe_name(split)) {
            return Err(DecodeError::Malformed {
                field: "split",
                reason: format!("{split:?} is not a plain folder name"),
            });
        }
        if !is_safe_name(self.file_name()) {
            return Err(DecodeError::Malformed {
                field: "source_path",
                reason: format!("{:?} does not end in a plain file name", self.source_path),
            });
        }
        Ok(())
    }
}

/// SHA-256 of an image's bytes: the same image always gets the same id, so a
/// record sent twice lands on the same row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub [u8; 32]);

impl ImageId {
    pub fn of(image: &[u8]) -> ImageId {
        ImageId(Sha256::digest(image).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<ImageId> {
        bytes.try_into().ok().map(ImageId)
    }

    /// Lowercase hex, 64 characters: the Kafka key and the JSON `image_id`.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(64);
        for byte in self.0 {
            text.push(DIGITS[usize::from(byte >> 4)] as char);
            text.push(DIGITS[usize::from(byte & 0xf)] as char);
        }
        text
    }

    pub fn from_hex(text: &str) -> Option<ImageId> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut id = [0u8; 32];
        for (slot, pair) in id.iter_mut().zip(bytes.chunks_exact(2)) {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            *slot = u8::try_from(high * 16 + low).ok()?;
        }
        Some(ImageId(id))
    }

    /// A number in [0, 1) spread uniformly over ids: a stable train/val split.
    pub fn unit_interval(&self) -> f64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl std::fmt::Debug for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageId({})", self.to_hex())
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Which wire format a record is encoded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Kafka Connect JSON with schema, readable by Connect's JDBC sink.
    Json,
    /// The compact binary layout, version [`FORMAT_VERSION`].
    Binary,
}

/// Encodes a record for Kafka's message value.
pub fn encode(record: &Record, format: Format) -> Vec<u8> {
    match format {
        Format::Json => json::encode(record),
        Format::Binary => binary::encode(record),
    }
}

/// The encoded size without encoding, to report records over the broker's limit
/// before they are built.
pub fn encoded_len(record: &Record, format: Format) -> usize {
    match format {
        Format::Json => json::encoded_len_estimate(record),
        Format::Binary => binary::encoded_len(record),
    }
}

/// Decodes a message value in either format and checks it: the id must be the
/// SHA-256 of the image and the labels must parse.
pub fn decode(value: &[u8]) -> Result<Record, DecodeError> {
    let record = if value.starts_with(binary::MAGIC) {
        binary::decode(value)?
    } else if value.first().is_some_and(|byte| *byte == b'{') || value.is_empty() {
        json::decode(value)?
    } else {
        let first = value.get(..4).unwrap_or(value);
        return Err(DecodeError::NotOurs(format!(
            "starts with {first:02x?}, neither a JSON envelope nor the binary magic"
        )));
    };
    if ImageId::of(&record.image) != record.image_id {
        return Err(DecodeError::IdMismatch(record.image_id));
    }
    record.check_names()?;
    Ok(record)
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(labels: Option<&str>, split: Option<&str>) -> Record {
        Record::new(
            b"\xff\xd8not really a jpeg\xff\xd9".to_vec(),
            labels.map(|text| Labels::parse(text).expect("labels")),
            split.map(str::to_string),
            "images/train/car \"1\".jpg".into(),
            (64, 48),
        )
        .expect("record")
    }

    fn check(value: &[u8], expected: Result<&Record, &str>) {
        match (decode(value), expected) {
            (Ok(actual), Ok(expected)) => assert_eq!(&actual, expected),
            (Err(actual), Err(expected)) => {
                let message = actual.to_string();
                assert!(message.contains(expected), "{message:?} lacks {expected:?}")
            }
            (actual, expected) => panic!("got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn both_formats_round_trip() {
        for record in [
            record(
                Some("0 0.5 0.5 0.1 0.2\n3 0.25 0.75 0.5 0.5\n"),
                Some("train"),
            ),
            record(Some(""), None),
            record(None, Some("val")),
        ] {
            for format in [Format::Json, Format::Binary] {
                let value = encode(&record, format);
                check(&value, Ok(&record));
                if format == Format::Binary {
                    assert_eq!(value.len(), encoded_len(&record, format));
                } else {
                    assert!(value.len() <= encoded_len(&record, format));
                }
            }
        }
    }

    #[test]
    fn json_is_a_connect_envelope() {
        let record = record(Some("0 0.5 0.5 0.1 0.2\n"), Some("train"));
        let value: serde_json::Value =
            serde_json::from_slice(&encode(&record, Format::Json)).expect("json");
        assert_eq!(value["schema"]["type"], "struct");
        assert_eq!(value["schema"]["name"], SCHEMA_NAME);
        let fields: Vec<(&str, &str)> = value["schema"]["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .map(|field| {
                (
                    field["field"].as_str().expect("name"),
                    field["type"].as_str().expect("type"),
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                ("image_id", "string"),
                ("image_data", "bytes"),
                ("labels", "string"),
                ("split", "string"),
                ("source_path", "string"),
                ("width", "int32"),
                ("height", "int32"),
            ]
        );
        assert_eq!(value["payload"]["image_id"], record.image_id.to_hex());
        assert_eq!(
            value["payload"]["image_data"],
            "/9hub3QgcmVhbGx5IGEganBlZ//Z"
        );
        assert_eq!(value["payload"]["labels"], "0 0.5 0.5 0.1 0.2\n");
        assert_eq!(
            value["payload"]["source_path"],
            "images/train/car \"1\".jpg"
        );
    }

    #[test]
    fn foreign_and_damaged_records_are_rejected_with_a_reason() {
        let good = record(Some("0 0.5 0.5 0.1 0.2\n"), Some("train"));
        check(
            b"hello",
            Err("neither a JSON envelope nor the binary magic"),
        );
        check(b"", Err("not a cardet record"));
        check(b"{\"a\": 1}", Err("not a cardet record"));
        check(
            br#"{"schema":{"type":"struct","name":"other"},"payload":{}}"#,
            Err("schema \"other\""),
        );
        let mut binary = encode(&good, Format::Binary);
        binary[4] = 9;
        check(&binary, Err("unsupported record format version 9"));
        let mut binary = encode(&good, Format::Binary);
        let last = binary.len() - 1;
        binary[last] ^= 1;
        check(&binary, Err("is not the sha-256 of the image"));
        let binary = encode(&good, Format::Binary);
        check(&binary[..binary.len() - 3], Err("truncated"));
        let json = String::from_utf8(encode(&good, Format::Json)).expect("utf-8");
        check(
            json.replace("0 0.5 0.5 0.1 0.2", "0 0.5 oops 0.1 0.2")
                .as_bytes(),
            Err("line 1"),
        );
        check(
            json.replace(r#"images/train/car \"1\".jpg"#, "images/..")
                .as_bytes(),
            Err("source_path"),
        );
    }

    #[test]
    fn ids_are_hex_and_split_stably() {
        let id = ImageId::of(b"abc");
        assert_eq!(
            id.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ImageId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ImageId::from_hex("zz"), None);
        let fraction = (0..10_000u32)
            .filter(|n| ImageId::of(&n.to_le_bytes()).unit_interval() < 0.2)
            .count() as f64
            / 10_000.0;
        assert!((fraction - 0.2).abs() < 0.02, "{fraction}");
    }
}
