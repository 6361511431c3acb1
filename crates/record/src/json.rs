//! The Kafka Connect "JSON with schema" envelope: `{"schema": ..., "payload": ...}`
//! as Connect's `JsonConverter` writes and reads it with `schemas.enable=true`.
//! `bytes` travel as base64 strings; every other field is a Connect primitive, so
//! the stock JDBC sink can write the record to a table of plain columns.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::{DecodeError, FORMAT_VERSION, ImageId, Labels, Record, SCHEMA_NAME};

/// The schema half of every envelope; it never changes within a version.
const SCHEMA: &str = concat!(
    r#"{"type":"struct","name":"cardet.ImageRecord","version":1,"optional":false,"fields":["#,
    r#"{"type":"string","optional":false,"field":"image_id"},"#,
    r#"{"type":"bytes","optional":false,"field":"image_data"},"#,
    r#"{"type":"string","optional":true,"field":"labels"},"#,
    r#"{"type":"string","optional":true,"field":"split"},"#,
    r#"{"type":"string","optional":false,"field":"source_path"},"#,
    r#"{"type":"int32","optional":false,"field":"width"},"#,
    r#"{"type":"int32","optional":false,"field":"height"}]}"#
);

pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len_estimate(record));
    out.extend_from_slice(br#"{"schema":"#);
    out.extend_from_slice(SCHEMA.as_bytes());
    out.extend_from_slice(br#","payload":{"image_id":""#);
    out.extend_from_slice(record.image_id.to_hex().as_bytes());
    out.extend_from_slice(br#"","image_data":""#);
    let start = out.len();
    out.resize(start + base64_len(record.image.len()), 0);
    let written = STANDARD
        .encode_slice(&record.image, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.extend_from_slice(br#"","labels":"#);
    push_optional_string(&mut out, record.labels.as_ref().map(Labels::text));
    out.extend_from_slice(br#","split":"#);
    push_optional_string(&mut out, record.split.as_deref());
    out.extend_from_slice(br#","source_path":"#);
    push_string(&mut out, &record.source_path);
    out.extend_from_slice(
        format!(
            r#","width":{},"height":{}}}}}"#,
            record.width, record.height
        )
        .as_bytes(),
    );
    out
}

/// An upper bound of [`encode`]'s length (strings counted as if fully escaped).
pub(crate) fn encoded_len_estimate(record: &Record) -> usize {
    let text = record
        .labels
        .as_ref()
        .map_or(0, |labels| labels.text().len())
        + record.split.as_ref().map_or(0, String::len)
        + record.source_path.len();
    SCHEMA.len() + 200 + base64_len(record.image.len()) + 6 * text
}

pub(crate) fn decode(value: &[u8]) -> Result<Record, DecodeError> {
    let envelope: WireEnvelope<'_> = serde_json::from_slice(value)
        .map_err(|error| DecodeError::NotOurs(format!("not a JSON envelope: {error}")))?;
    let schema = envelope
        .schema
        .ok_or_else(|| DecodeError::NotOurs("the envelope has no schema".into()))?;
    match schema.name.as_deref() {
        Some(SCHEMA_NAME) => {}
        other => {
            return Err(DecodeError::NotOurs(format!(
                "schema {:?} is not {SCHEMA_NAME:?}",
                other.unwrap_or("(unnamed)")
            )));
        }
    }
    if schema.version != Some(i64::from(FORMAT_VERSION)) {
        let version = schema.version.unwrap_or(0);
        return Err(DecodeError::UnsupportedVersion(
            u8::try_from(version).unwrap_or(u8::MAX),
        ));
    }
    let payload = envelope.payload.ok_or_else(|| DecodeError::Malformed {
        field: "payload",
        reason: "missing".into(),
    })?;
    let payload: WirePayload<'_> =
        serde_json::from_str(payload.get()).map_err(|error| DecodeError::Malformed {
            field: "payload",
            reason: error.to_string(),
        })?;
    let image_id = ImageId::from_hex(&payload.image_id).ok_or_else(|| DecodeError::Malformed {
        field: "image_id",
        reason: format!("{:?} is not 64 hex digits", payload.image_id),
    })?;
    let image = STANDARD
        .decode(payload.image_data.as_bytes())
        .map_err(|error| DecodeError::Malformed {
            field: "image_data",
            reason: format!("not base64: {error}"),
        })?;
    let labels = payload
        .labels
        .map(|text| Labels::parse(&text))
        .transpose()?;
    Ok(Record {
        image_id,
        image,
        labels,
        split: payload.split.map(Cow::into_owned),
        source_path: payload.source_path.into_owned(),
        width: payload.width,
        height: payload.height,
    })
}

/// The envelope as it arrives; the payload stays raw until the schema says it is ours.
#[derive(Deserialize)]
struct WireEnvelope<'a> {
    schema: Option<WireSchema>,
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct WireSchema {
    name: Option<String>,
    version: Option<i64>,
}

#[derive(Deserialize)]
struct WirePayload<'a> {
    #[serde(borrow)]
    image_id: Cow<'a, str>,
    #[serde(borrow)]
    image_data: Cow<'a, str>,
    #[serde(borrow)]
    labels: Option<Cow<'a, str>>,
    #[serde(borrow)]
    split: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source_path: Cow<'a, str>,
    width: u32,
    height: u32,
}

fn base64_len(n_bytes: usize) -> usize {
    n_bytes.div_ceil(3) * 4
}

fn push_optional_string(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => push_string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string literal, escaped by RFC 8259's rules.
fn push_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for ch in text.chars() {
        match ch {
            '"' => out.extend_from_slice(br#"\""#),
            '\\' => out.extend_from_slice(br"\\"),
            '\n' => out.extend_from_slice(br"\n"),
            '\r' => out.extend_from_slice(br"\r"),
            '\t' => out.extend_from_slice(br"\t"),
            ch if u32::from(ch) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(ch)).as_bytes());
            }
            ch => {
                let mut buffer = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    out.push(b'"');
}
