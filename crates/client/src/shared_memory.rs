//! The client's side of Triton's system shared-memory extension: a POSIX
//! shared-memory object this process creates and maps, registered with a server on
//! the same host ([`crate::KserveClient::create_region`]). A letterboxed batch is
//! written straight into an input region and the server writes the output into an
//! output region: neither crosses the socket, which on a 640x640 image saves the
//! kernel copying 4.9 MB out and 2.7 MB back, and the server reading and writing them.
//!
//! The object's name is unlinked as soon as the server has mapped it, so nothing is
//! left in `/dev/shm` if either process dies; the memory goes when both unmap it.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::Error;

/// Where `shm_open` objects live on Linux.
const SHM_DIR: &str = "/dev/shm";

/// A mapped shared-memory object of this process, with the name the server knows
/// it by. Not `Clone`: whoever holds it may write it (see [`SharedRegion::floats_mut`]).
#[derive(Debug)]
pub struct SharedRegion {
    mapping: Arc<Mapping>,
}

#[derive(Debug)]
struct Mapping {
    name: String,
    map: MmapRaw,
}

impl SharedRegion {
    /// Creates and maps `/dev/shm/KEY` of `byte_size` bytes (zeroed). The caller
    /// registers it and then calls [`SharedRegion::unlink`].
    pub(crate) fn create(name: &str, key: &str, byte_size: usize) -> Result<SharedRegion, Error> {
        let path = object_path(key);
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error)?;
        file.set_len(byte_size as u64).map_err(io_error)?;
        let map = MmapOptions::new()
            .len(byte_size)
            .map_raw(&file)
            .map_err(io_error)?;
        Ok(SharedRegion {
            mapping: Arc::new(Mapping {
                name: name.to_string(),
                map,
            }),
        })
    }

    /// Removes the object's name; the mappings keep the memory.
    pub(crate) fn unlink(key: &str) {
        let _ = std::fs::remove_file(object_path(key));
    }

    /// The name the server knows the region by.
    pub fn name(&self) -> &str {
        &self.mapping.name
    }

    pub fn byte_size(&self) -> usize {
        self.mapping.map.len()
    }

    /// The region as floats, to write an input into. The mapping is page-aligned.
    pub fn floats_mut(&mut self) -> &mut [f32] {
        let n_floats = self.byte_size() / 4;
        // SAFETY: the mapping is `byte_size` bytes, page-aligned (so aligned for f32),
        // lives as long as `self.mapping`, and `&mut self` is the only writer in this
        // process. The server reads it only while a request naming it runs, and the
        // caller does not write it then (it holds the region for the request).
        unsafe { std::slice::from_raw_parts_mut(self.mapping.map.as_mut_ptr().cast(), n_floats) }
    }

    /// A view of `range` (in bytes, 4-aligned) as floats, valid after the server has
    /// answered the request that wrote it.
    pub(crate) fn floats(&self, range: Range<usize>) -> Result<RegionFloats, String> {
        if range.end > self.byte_size()
            || !range.start.is_multiple_of(4)
            || !range.len().is_multiple_of(4)
        {
            return Err(format!(
                "bytes {range:?} of shared-memory region {} ({} bytes) are not whole floats inside it",
                self.name(),
                self.byte_size()
            ));
        }
        Ok(RegionFloats {
            mapping: self.mapping.clone(),
            range,
        })
    }
}

/// Floats the server wrote into a region: read in place.
#[derive(Clone, Debug)]
pub struct RegionFloats {
    mapping: Arc<Mapping>,
    range: Range<usize>,
}

impl RegionFloats {
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `range` was checked to be whole floats inside the page-aligned
        // mapping, which `self.mapping` keeps alive. The server wrote it before it
        // answered; nothing writes it until the region is used for another request,
        // and the holder of the region waits for this view to be dropped first.
        unsafe {
            std::slice::from_raw_parts(
                self.mapping.map.as_ptr().add(self.range.start).cast(),
                self.range.len() / 4,
            )
        }
    }
}

fn object_path(key: &str) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/{}", key.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_written_as_floats_and_read_back_in_place() {
        let key = format!("/cardet-client-test-{}", std::process::id());
        let mut region = SharedRegion::create("r", &key, 64).expect("creates");
        SharedRegion::unlink(&key);
        assert!(
            !object_path(&key).exists(),
            "the name is gone, the memory is not"
        );
        region.floats_mut()[3] = 2.5;
        let view = region.floats(8..16).expect("inside");
        assert_eq!(view.as_slice(), [0.0, 2.5]);
        assert!(region.floats(60..68).is_err());
        assert!(region.floats(2..6).is_err());
        let again = SharedRegion::create("r", &key, 64).expect("the key is free again");
        SharedRegion::unlink(&key);
        assert_eq!(again.byte_size(), 64);
    }
}
