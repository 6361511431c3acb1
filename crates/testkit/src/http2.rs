//! What an HTTP/2 peer announces first, read off a bare socket: its SETTINGS and
//! the connection-level WINDOW_UPDATE that raises its receive window. Tests use it
//! to check the flow control `serve` and our gRPC client ask for.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;

/// Frame types and SETTINGS identifiers (RFC 9113, sections 6.5.2 and 6.9).
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
/// Every connection's window before any WINDOW_UPDATE (RFC 9113, 6.9.2).
pub const DEFAULT_CONNECTION_WINDOW: u32 = 65_535;
/// What a client writes before its first frame (RFC 9113, 3.4).
pub const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A peer's opening announcements.
#[derive(Debug)]
pub struct Announced {
    /// Its SETTINGS, by identifier.
    pub settings: BTreeMap<u16, u32>,
    /// Its receive window for the whole connection, after its first WINDOW_UPDATE.
    pub connection_window: u32,
}

/// Reads one frame: its type, flags, stream and payload.
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload)?;
    Ok((header[3], header[4], stream_id, payload))
}

/// Reads the peer's first frames (at most `max_frames`) until its SETTINGS and a
/// connection WINDOW_UPDATE have come; a peer that keeps the default connection
/// window sends no WINDOW_UPDATE, so the window stays at the default.
pub fn read_announcements(stream: &mut TcpStream, max_frames: usize) -> std::io::Result<Announced> {
    let mut settings = BTreeMap::new();
    let mut increment = 0u32;
    for _ in 0..max_frames {
        let (kind, flags, stream_id, payload) = read_frame(stream)?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                for entry in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([entry[0], entry[1]]);
                    let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                    settings.insert(id, value);
                }
            }
            WINDOW_UPDATE if stream_id == 0 && payload.len() >= 4 => {
                increment = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
            }
            _ => {}
        }
        if !settings.is_empty() && increment > 0 {
            break;
        }
    }
    Ok(Announced {
        settings,
        connection_window: DEFAULT_CONNECTION_WINDOW + increment,
    })
}

/// Reads a client's preface off `stream`, then its announcements.
pub fn read_client_announcements(stream: &mut TcpStream) -> std::io::Result<Announced> {
    let mut preface = [0u8; CLIENT_PREFACE.len()];
    stream.read_exact(&mut preface)?;
    if preface != CLIENT_PREFACE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP/2 client preface: {preface:?}"),
        ));
    }
    read_announcements(stream, 4)
}
