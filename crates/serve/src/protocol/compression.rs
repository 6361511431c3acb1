//! HTTP content coding of infer bodies, as Triton's HTTP endpoint does it.
//!
//! tritonclient's `infer(request_compression_algorithm=..., response_compression_algorithm=...)`
//! sends the request with `Content-Encoding: gzip` or `deflate` and asks for the
//! answer with `Accept-Encoding`. `Inference-Header-Content-Length` always counts
//! the JSON header of the *decoded* body, so the body is decoded before it is
//! parsed and the answer is encoded after it is written. "deflate" is the zlib
//! format (RFC 9110), which is what tritonclient's `zlib.compress` makes.
//!
//! The size limit applies to the decoded body too: a small compressed request
//! that expands past `--http-max-body-bytes` is refused like a large plain one.

use std::io::{Read, Write};

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use flate2::Compression;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};

use crate::error::ApiError;

/// A body's content coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
}

impl Coding {
    fn parse(token: &str) -> Option<Coding> {
        match token.trim().to_ascii_lowercase().as_str() {
            "identity" | "" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            _ => None,
        }
    }

    /// The value for `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    /// The request body's coding, from `Content-Encoding` (identity without one).
    /// One coding at most: a chain such as `gzip, deflate` is refused, as Triton does.
    pub fn of_request(headers: &HeaderMap) -> Result<Coding, ApiError> {
        let mut found = Coding::Identity;
        for value in headers.get_all(header::CONTENT_ENCODING) {
            let text = value.to_str().map_err(|_| {
                ApiError::validation("Content-Encoding header is not text".to_string())
            })?;
            for token in text.split(',') {
                let coding = Coding::parse(token).ok_or_else(|| {
                    ApiError::validation(format!(
                        "unsupported Content-Encoding '{}' (serve decodes gzip and deflate)",
                        token.trim()
                    ))
                })?;
                if coding == Coding::Identity {
                    continue;
                }
                if found != Coding::Identity {
                    return Err(ApiError::validation(format!(
                        "Content-Encoding '{text}': one coding at most (gzip or deflate)"
                    )));
                }
                found = coding;
            }
        }
        Ok(found)
    }

    /// The answer's coding: whichever of gzip and deflate the client weighs highest
    /// in `Accept-Encoding` (the first listed on a tie), identity when it names
    /// neither or weighs identity higher. A malformed weight counts as 0 (refused).
    pub fn for_answer(headers: &HeaderMap) -> Coding {
        let mut best = (Coding::Identity, 0.0f32);
        let mut identity_weight = 0.0f32;
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(text) = value.to_str() else { continue };
            for entry in text.split(',') {
                let mut fields = entry.split(';');
                let name = fields.next().unwrap_or_default();
                let weight = fields
                    .find_map(|field| field.trim().strip_prefix("q="))
                    .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
                match Coding::parse(name) {
                    Some(Coding::Identity) if !name.trim().is_empty() => {
                        identity_weight = identity_weight.max(weight);
                    }
                    Some(coding @ (Coding::Gzip | Coding::Deflate)) if weight > best.1 => {
                        best = (coding, weight);
                    }
                    _ => {}
                }
            }
        }
        if best.1 > 0.0 && best.1 >= identity_weight {
            best.0
        } else {
            Coding::Identity
        }
    }
}

/// Decodes `compressed` onto the end of `buffer` (which may already hold alignment
/// padding), refusing more than `limit` decoded bytes.
pub fn decode(
    coding: Coding,
    compressed: &[u8],
    mut buffer: Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let start = buffer.len();
    let bound = limit as u64 + 1;
    let result = match coding {
        Coding::Identity => {
            buffer.extend_from_slice(compressed);
            Ok(compressed.len())
        }
        Coding::Gzip => GzDecoder::new(compressed)
            .take(bound)
            .read_to_end(&mut buffer),
        Coding::Deflate => ZlibDecoder::new(compressed)
            .take(bound)
            .read_to_end(&mut buffer),
    };
    result.map_err(|error| {
        ApiError::validation(format!(
            "request body is not valid {} data (Content-Encoding): {error}",
            coding.name()
        ))
    })?;
    if buffer.len() - start > limit {
        return Err(ApiError::validation(format!(
            "request body over the {limit}-byte limit once decoded from {} (raise it with --http-max-body-bytes)",
            coding.name()
        )));
    }
    Ok(buffer)
}

/// Encodes the answer's parts as one body, at the fastest level: on YOLOv8n's
/// 2.8 MB answer zlib's default level took three times as long (22.1 ms against
/// 6.8 ms, `benches/compression_cost.py`) for a body already 1.5% of the plain one.
pub fn encode(coding: Coding, parts: &[Bytes]) -> std::io::Result<Bytes> {
    fn through<W: Write>(mut encoder: W, parts: &[Bytes]) -> std::io::Result<W> {
        for part in parts {
            encoder.write_all(part)?;
        }
        Ok(encoder)
    }
    let capacity = parts.iter().map(Bytes::len).sum::<usize>() / 2;
    let encoded = match coding {
        Coding::Identity => parts.concat(),
        Coding::Gzip => through(
            GzEncoder::new(Vec::with_capacity(capacity), Compression::fast()),
            parts,
        )?
        .finish()?,
        Coding::Deflate => through(
            ZlibEncoder::new(Vec::with_capacity(capacity), Compression::fast()),
            parts,
        )?
        .finish()?,
    };
    Ok(Bytes::from(encoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn request_codings_are_read_and_unknown_ones_refused() {
        let of = |value| Coding::of_request(&headers(header::CONTENT_ENCODING, value));
        assert_eq!(of("gzip"), Ok(Coding::Gzip));
        assert_eq!(of("Deflate"), Ok(Coding::Deflate));
        assert_eq!(of("identity"), Ok(Coding::Identity));
        assert_eq!(of("identity, gzip"), Ok(Coding::Gzip));
        assert_eq!(Coding::of_request(&HeaderMap::new()), Ok(Coding::Identity));
        let error = of("br").expect_err("br");
        assert!(error.message.contains("'br'"), "{error}");
        let error = of("gzip, deflate").expect_err("a chain");
        assert!(error.message.contains("one coding"), "{error}");
    }

    #[test]
    fn the_answer_takes_the_clients_heaviest_coding() {
        let answer = |value| Coding::for_answer(&headers(header::ACCEPT_ENCODING, value));
        assert_eq!(answer("gzip"), Coding::Gzip);
        assert_eq!(answer("deflate"), Coding::Deflate);
        assert_eq!(answer("gzip, deflate"), Coding::Gzip);
        assert_eq!(answer("gzip;q=0.5, deflate"), Coding::Deflate);
        assert_eq!(answer("gzip;q=0"), Coding::Identity);
        assert_eq!(answer("gzip;q=0.2, identity"), Coding::Identity);
        assert_eq!(answer("br, *"), Coding::Identity);
        assert_eq!(answer("gzip;q=nonsense"), Coding::Identity);
        assert_eq!(Coding::for_answer(&HeaderMap::new()), Coding::Identity);
    }

    #[test]
    fn what_is_encoded_decodes_to_the_same_bytes() {
        let parts = [
            Bytes::from_static(b"{\"outputs\":[]}"),
            Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<_>>()),
        ];
        let plain = parts.concat();
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Identity] {
            let encoded = encode(coding, &parts).expect("encode");
            let decoded = decode(coding, &encoded, vec![0; 3], plain.len()).expect("decode");
            assert_eq!(&decoded[..3], &[0, 0, 0], "{coding:?}: padding kept");
            assert_eq!(&decoded[3..], &plain[..], "{coding:?}");
        }
    }

    #[test]
    fn a_body_that_expands_past_the_limit_is_refused() {
        let bomb = encode(Coding::Gzip, &[Bytes::from(vec![0u8; 1 << 20])]).expect("encode");
        assert!(bomb.len() < 10_000);
        let error = decode(Coding::Gzip, &bomb, Vec::new(), 1 << 19).expect_err("refused");
        assert!(error.message.contains("once decoded from gzip"), "{error}");
        assert!(decode(Coding::Gzip, &bomb, Vec::new(), 1 << 20).is_ok());
    }

    #[test]
    fn corrupt_data_names_the_coding() {
        let error =
            decode(Coding::Deflate, b"not zlib at all", Vec::new(), 1000).expect_err("refused");
        assert!(error.message.contains("not valid deflate data"), "{error}");
        let mut truncated = encode(Coding::Gzip, &[Bytes::from(vec![7u8; 5000])])
            .expect("encode")
            .to_vec();
        truncated.truncate(truncated.len() / 2);
        let error = decode(Coding::Gzip, &truncated, Vec::new(), 10_000).expect_err("refused");
        assert!(error.message.contains("not valid gzip data"), "{error}");
    }
}
