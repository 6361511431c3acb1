//! The compact binary layout, version 1 (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `CDRB` |
//! | 1 | version, `1` |
//! | 32 | image id (SHA-256 of the image) |
//! | 4 + 4 | width, height (`u32`) |
//! | 1 | flags: bit 0 labels present, bit 1 split present; other bits zero |
//! | 2 + n | split (`u16` length, UTF-8), only when flag bit 1 is set |
//! | 2 + n | source path (`u16` length, UTF-8) |
//! | 4 + n | labels (`u32` length, UTF-8 YOLO label text), only when flag bit 0 is set |
//! | 4 + n | image (`u32` length, the encoded image file) |
//!
//! Nothing may follow the image. A reader that meets a version it does not know
//! rejects the record (it lands in the dead-letter table) instead of guessing.

use crate::{DecodeError, FORMAT_VERSION, ImageId, Labels, Record};

pub(crate) const MAGIC: &[u8; 4] = b"CDRB";
const HAS_LABELS: u8 = 1;
const HAS_SPLIT: u8 = 2;

pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(record));
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(record.image_id.as_bytes());
    out.extend_from_slice(&record.width.to_le_bytes());
    out.extend_from_slice(&record.height.to_le_bytes());
    let mut flags = 0;
    if record.labels.is_some() {
        flags |= HAS_LABELS;
    }
    if record.split.is_some() {
        flags |= HAS_SPLIT;
    }
    out.push(flags);
    if let Some(split) = &record.split {
        push_short(&mut out, split.as_bytes());
    }
    push_short(&mut out, record.source_path.as_bytes());
    if let Some(labels) = &record.labels {
        push_long(&mut out, labels.text().as_bytes());
    }
    push_long(&mut out, &record.image);
    out
}

pub(crate) fn encoded_len(record: &Record) -> usize {
    4 + 1
        + 32
        + 8
        + 1
        + record.split.as_ref().map_or(0, |split| 2 + split.len())
        + 2
        + record.source_path.len()
        + record
            .labels
            .as_ref()
            .map_or(0, |labels| 4 + labels.text().len())
        + 4
        + record.image.len()
}

pub(crate) fn decode(value: &[u8]) -> Result<Record, DecodeError> {
    let mut reader = Reader { rest: value };
    reader.take(4, "magic")?;
    let version = reader.take(1, "version")?[0];
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let image_id = ImageId::from_slice(reader.take(32, "image_id")?).ok_or_else(|| {
        DecodeError::Malformed {
            field: "image_id",
            reason: "not 32 bytes".into(),
        }
    })?;
    let width = reader.u32("width")?;
    let height = reader.u32("height")?;
    let flags = reader.take(1, "flags")?[0];
    if flags & !(HAS_LABELS | HAS_SPLIT) != 0 {
        return Err(DecodeError::Malformed {
            field: "flags",
            reason: format!("unknown bits in {flags:#04x}"),
        });
    }
    let split = if flags & HAS_SPLIT != 0 {
        Some(reader.short_text("split")?)
    } else {
        None
    };
    let source_path = reader.short_text("source_path")?;
    let labels = if flags & HAS_LABELS != 0 {
        let length = reader.u32("labels")? as usize;
        let text = utf8(reader.take(length, "labels")?, "labels")?;
        Some(Labels::parse(&text)?)
    } else {
        None
    };
    let length = reader.u32("image")? as usize;
    let image = reader.take(length, "image")?.to_vec();
    if !reader.rest.is_empty() {
        return Err(DecodeError::Malformed {
            field: "image",
            reason: format!("{} unexpected bytes after the image", reader.rest.len()),
        });
    }
    Ok(Record {
        image_id,
        image,
        labels,
        split,
        source_path,
        width,
        height,
    })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n_bytes: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n_bytes {
            return Err(DecodeError::Malformed {
                field,
                reason: format!("truncated: needs {n_bytes} bytes, {} left", self.rest.len()),
            });
        }
        let (head, tail) = self.rest.split_at(n_bytes);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn short_text(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.take(2, field)?;
        let length = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        utf8(self.take(length, field)?, field)
    }
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|error| DecodeError::Malformed {
        field,
        reason: error.to_string(),
    })
}

/// Lengths above `u16::MAX` cannot be written; paths and split names that long are
/// cut (they are names, and `Record::new` already bounds file names to 255 bytes).
fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&bytes[..usize::from(length)]);
}

fn push_long(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&bytes[..length as usize]);
}
