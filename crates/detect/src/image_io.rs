//! Reading and writing images: JPEG, PNG and WebP in, PNG and JPEG out.
//!
//! A bad or truncated file is an [`Error::Decode`] that names the file, so a caller
//! that walks a folder can report which image to look at.

use std::path::Path;

use std::io::Cursor;

use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::error::Error;

/// Decodes the file into 8-bit RGB, whatever its channels (grey and RGBA convert).
pub fn load_rgb(path: &Path) -> Result<RgbImage, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb(&bytes, path)
}

/// Decodes bytes that came from `origin` (a file name, used only in errors).
///
/// The format is sniffed from the bytes, not the name, as the Kafka sink has no name.
pub fn decode_rgb(bytes: &[u8], origin: &Path) -> Result<RgbImage, Error> {
    decode_rgb_reusing(bytes, origin, Vec::new())
}

/// [`decode_rgb`] into `buffer`'s memory when the image is 8-bit RGB already (every
/// JPEG in colour is): a caller decoding frame after frame hands back the last
/// frame's buffer (`RgbImage::into_raw`) and stops faulting in fresh pages for each.
pub fn decode_rgb_reusing(
    bytes: &[u8],
    origin: &Path,
    mut buffer: Vec<u8>,
) -> Result<RgbImage, Error> {
    let decode_error = |source| Error::Decode {
        path: origin.to_path_buf(),
        source,
    };
    let format = image::guess_format(bytes).map_err(decode_error)?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
    ) {
        return Err(Error::UnsupportedFormat {
            path: origin.to_path_buf(),
        });
    }
    let decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(decode_error)?;
    if decoder.color_type() != ColorType::Rgb8 {
        let decoded = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
        return Ok(decoded.into_rgb8());
    }
    let (width, height) = decoder.dimensions();
    let n_bytes = usize::try_from(decoder.total_bytes()).map_err(|_| {
        Error::InvalidArgument(format!(
            "{}: a {width}x{height} image is too large",
            origin.display()
        ))
    })?;
    // Only a larger image than the buffer's last one pays for zeroing the new part.
    buffer.resize(n_bytes, 0);
    decoder.read_image(&mut buffer).map_err(decode_error)?;
    RgbImage::from_raw(width, height, buffer).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: the decoder's {width}x{height} RGB image has the wrong size",
            origin.display()
        ))
    })
}

/// The width and height from the file's header, without decoding the pixels.
pub fn image_size(path: &Path) -> Result<(u32, u32), Error> {
    image::image_dimensions(path).map_err(|source| match source {
        image::ImageError::IoError(io) => Error::Io {
            path: path.to_path_buf(),
            source: io,
        },
        other => Error::Decode {
            path: path.to_path_buf(),
            source: other,
        },
    })
}

/// Writes PNG or JPEG (quality 90), chosen by the extension.
pub fn save(image: &RgbImage, path: &Path) -> Result<(), Error> {
    let bytes = encode(image, path)?;
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a PNG of at most 256 colours (NeuQuant), a third the size of a full-colour
/// one for noisy pictures: for documentation, not for datasets.
pub fn save_png_with_palette(image: &RgbImage, path: &Path) -> Result<(), Error> {
    let rgba: Vec<u8> = image
        .pixels()
        .flat_map(|pixel| [pixel.0[0], pixel.0[1], pixel.0[2], 255])
        .collect();
    let quantizer = color_quant::NeuQuant::new(10, 256, &rgba);
    let indices: Vec<u8> = rgba
        .chunks_exact(4)
        .map(|pixel| quantizer.index_of(pixel) as u8)
        .collect();
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(quantizer.color_map_rgb());
    encoder.set_compression(png::Compression::High);
    let encode_error = |error: png::EncodingError| Error::Encode {
        path: path.to_path_buf(),
        source: image::ImageError::IoError(std::io::Error::other(error.to_string())),
    };
    let mut writer = encoder.write_header().map_err(encode_error)?;
    writer.write_image_data(&indices).map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Encodes as the extension of `path` asks (`png`, `jpg`, `jpeg`), without writing.
pub fn encode(image: &RgbImage, path: &Path) -> Result<Vec<u8>, Error> {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    let mut bytes = Vec::new();
    let result = match extension.as_deref() {
        Some("png") => image.write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes)),
        Some("jpg" | "jpeg") => encode_jpeg(image, &mut bytes),
        _ => {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
            });
        }
    };
    result.map_err(|source| Error::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes)
}

/// JPEG at quality 90 with `jpeg-encoder`, whose SIMD path encodes a 1280x720
/// frame several times faster than `image`'s encoder: that encoder was 60% of the
/// client's CPU time per annotated image.
fn encode_jpeg(image: &RgbImage, bytes: &mut Vec<u8>) -> Result<(), image::ImageError> {
    let (Ok(width), Ok(height)) = (u16::try_from(image.width()), u16::try_from(image.height()))
    else {
        return Err(image::ImageError::Limits(
            image::error::LimitError::from_kind(image::error::LimitErrorKind::DimensionError),
        ));
    };
    let mut encoder = jpeg_encoder::Encoder::new(bytes, 90);
    // 4:2:0 chroma, what libjpeg (OpenCV's `imwrite`) writes by default: half the
    // work of 4:4:4 for a picture that is looked at, not measured.
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder
        .encode(image.as_raw(), width, height, jpeg_encoder::ColorType::Rgb)
        .map_err(|error| {
            image::ImageError::Encoding(image::error::EncodingError::new(
                image::error::ImageFormatHint::Exact(ImageFormat::Jpeg),
                error,
            ))
        })
}

/// Whether the extension is one of the image formats Ultralytics datasets use that
/// this crate decodes.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            matches!(
                extension.to_ascii_lowercase().as_str(),
                "jpg" | "jpeg" | "png" | "webp"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8], expected: Result<(u32, u32), &str>) {
        let origin = Path::new("camera/frame-7.jpg");
        let actual = decode_rgb(bytes, origin)
            .map(|image| image.dimensions())
            .map_err(|error| error.to_string());
        match (actual, expected) {
            (Ok(size), Ok(expected_size)) => assert_eq!(size, expected_size),
            (Err(message), Err(fragment)) => {
                assert!(message.contains("camera/frame-7.jpg"), "{message}");
                assert!(message.contains(fragment), "{message}");
            }
            (actual, expected) => panic!("got {actual:?}, expected {expected:?}"),
        }
    }

    fn encoded(extension: &str) -> Vec<u8> {
        let image = RgbImage::from_fn(37, 21, |x, y| image::Rgb([x as u8 * 5, y as u8 * 9, 77]));
        encode(&image, Path::new(&format!("x.{extension}"))).expect("encodes")
    }

    #[test]
    fn decodes_jpeg_and_png_and_names_the_file_when_bytes_are_bad() {
        check(&encoded("jpg"), Ok((37, 21)));
        check(&encoded("png"), Ok((37, 21)));
        let jpeg = encoded("jpg");
        check(&jpeg[..jpeg.len() / 3], Err("cannot decode image"));
        check(b"definitely not an image", Err("cannot decode image"));
        let png = encoded("png");
        check(&png[..png.len() - 30], Err("cannot decode image"));
    }

    #[test]
    fn decodes_webp() {
        let image = RgbImage::from_fn(16, 9, |x, _| image::Rgb([x as u8 * 10, 3, 200]));
        let mut bytes = Vec::new();
        image
            .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut bytes))
            .expect("encodes webp");
        check(&bytes, Ok((16, 9)));
    }

    #[test]
    fn a_reused_buffer_decodes_the_same_pixels() {
        let origin = Path::new("frame.jpg");
        let jpeg = encoded("jpg");
        let fresh = decode_rgb(&jpeg, origin).expect("decodes");
        // A larger image's buffer, full of something else.
        let reused = decode_rgb_reusing(&jpeg, origin, vec![9; 100 * 100 * 3]).expect("decodes");
        assert_eq!(reused, fresh);
        // Grey converts to RGB whatever the buffer.
        let grey = image::GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
        let mut png = Vec::new();
        grey.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .expect("encodes png");
        let rgb = decode_rgb_reusing(&png, origin, vec![1; 3]).expect("decodes");
        assert_eq!(rgb.dimensions(), (5, 4));
        assert_eq!(rgb.get_pixel(2, 1).0, [81, 81, 81]);
    }
}
