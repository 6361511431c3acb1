//! Triton's system shared-memory extension: a client on the same host registers a
//! POSIX shared-memory object (`/dev/shm/KEY`) as a named region, then names the
//! region instead of sending tensor bytes. A 640x640 FP32 image is 4.9 MB; over
//! REST it is copied by the client's kernel, read, and its answer written back, all
//! on the cores ONNX Runtime needs. Through a region it is not copied at all: an
//! input is handed to the backend as a view of the mapping, and an output is
//! written straight into the client's region.
//!
//! Contract, as Triton's: the client does not write an input region, nor read an
//! output region, until the answer of the request using it has arrived.
//! Registration is off unless `serve` is started with `--allow-shared-memory`, as
//! Triton's `--allow-client-shm`: a registered key lets a client map any object in
//! `/dev/shm` the server can open.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use crate::error::ApiError;

/// Where POSIX shared-memory objects live on Linux (`shm_open` opens files here).
const SHM_DIR: &str = "/dev/shm";

/// One registered region: `byte_size` bytes from `offset` of the object `key`.
#[derive(Debug)]
pub struct Region {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
    map: MmapRaw,
}

/// A registered region's description, as the status calls report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// The regions registered with this server, by name.
#[derive(Debug)]
pub struct SharedMemory {
    allowed: bool,
    regions: RwLock<BTreeMap<String, Arc<Region>>>,
}

impl SharedMemory {
    pub fn new(allowed: bool) -> SharedMemory {
        SharedMemory {
            allowed,
            regions: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The protocol extensions server metadata lists: [`crate::EXTENSIONS`], and
    /// this one when it is on (both edges answer the same).
    pub fn extensions(&self) -> Vec<&'static str> {
        let mut extensions = crate::EXTENSIONS.to_vec();
        if self.allowed {
            extensions.push("system_shared_memory");
        }
        extensions
    }

    fn check_allowed(&self) -> Result<(), ApiError> {
        if self.allowed {
            Ok(())
        } else {
            Err(ApiError::validation(
                "shared memory is off on this server (start serve with --allow-shared-memory)",
            ))
        }
    }

    /// Maps `byte_size` bytes at `offset` of `/dev/shm/KEY` as region `name`.
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), ApiError> {
        self.check_allowed()?;
        let object = key.strip_prefix('/').unwrap_or(key);
        if object.is_empty() || object.contains('/') || object == "." || object == ".." {
            return Err(ApiError::validation(format!(
                "shared-memory key '{key}' is not a POSIX shared-memory name ('/name', no other '/')"
            )));
        }
        if byte_size == 0 {
            return Err(ApiError::validation(format!(
                "shared-memory region '{name}': byte_size must be positive"
            )));
        }
        let mut regions = self.regions.write().unwrap_or_else(PoisonError::into_inner);
        if regions.contains_key(name) {
            return Err(ApiError::validation(format!(
                "shared-memory region '{name}' is already registered"
            )));
        }
        let path = format!("{SHM_DIR}/{object}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| {
                ApiError::validation(format!(
                    "shared-memory region '{name}': cannot open key '{key}' ({path}): {error}"
                ))
            })?;
        let object_size = file
            .metadata()
            .map_err(|error| ApiError::validation(format!("{path}: {error}")))?
            .len();
        if offset
            .checked_add(byte_size)
            .is_none_or(|end| end > object_size)
        {
            return Err(ApiError::validation(format!(
                "shared-memory region '{name}': offset {offset} + byte_size {byte_size} is past the end of key '{key}' ({object_size} bytes)"
            )));
        }
        let length = usize::try_from(byte_size)
            .map_err(|_| ApiError::validation(format!("byte_size {byte_size} is too large")))?;
        let map = MmapOptions::new()
            .offset(offset)
            .len(length)
            .map_raw(&file)
            .map_err(|error| {
                ApiError::validation(format!(
                    "shared-memory region '{name}': mapping key '{key}' failed: {error}"
                ))
            })?;
        regions.insert(
            name.to_string(),
            Arc::new(Region {
                name: name.to_string(),
                key: key.to_string(),
                offset,
                byte_size,
                map,
            }),
        );
        Ok(())
    }

    /// Unregisters `name`, or every region for `None`. A region still used by a
    /// request in flight stays mapped until that request is done.
    pub fn unregister(&self, name: Option<&str>) -> Result<(), ApiError> {
        self.check_allowed()?;
        let mut regions = self.regions.write().unwrap_or_else(PoisonError::into_inner);
        match name {
            None => regions.clear(),
            // Triton answers success for a name that is not registered.
            Some(name) => {
                regions.remove(name);
            }
        }
        Ok(())
    }

    /// Every region, or the one named (an error when it is not registered).
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, ApiError> {
        self.check_allowed()?;
        let regions = self.regions.read().unwrap_or_else(PoisonError::into_inner);
        let status = |region: &Arc<Region>| RegionStatus {
            name: region.name.clone(),
            key: region.key.clone(),
            offset: region.offset,
            byte_size: region.byte_size,
        };
        match name {
            None => Ok(regions.values().map(status).collect()),
            Some(name) => regions
                .get(name)
                .map(|region| vec![status(region)])
                .ok_or_else(|| unknown_region(name)),
        }
    }

    fn region(&self, name: &str) -> Result<Arc<Region>, ApiError> {
        self.check_allowed()?;
        self.regions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| unknown_region(name))
    }

    /// The bytes of `reference`, as a view of the mapping (no copy).
    pub fn read(&self, reference: &RegionRef) -> Result<Bytes, ApiError> {
        let region = self.region(&reference.region)?;
        let range = region.range(reference)?;
        Ok(Bytes::from_owner(RegionBytes { region, range }))
    }

    /// Writes `data` at `reference`, whose byte size must hold it.
    pub fn write(&self, reference: &RegionRef, data: &[u8]) -> Result<(), ApiError> {
        let region = self.region(&reference.region)?;
        let range = region.range(reference)?;
        if data.len() > range.len() {
            return Err(ApiError::validation(format!(
                "shared-memory region '{}': the output is {} bytes, shared_memory_byte_size is {}",
                reference.region,
                data.len(),
                range.len()
            )));
        }
        // SAFETY: `range` lies inside the mapping (checked by `Region::range`), which
        // lives as long as `region`. The bytes are shared with the client process; by
        // the extension's contract it does not touch them while the request runs.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                region.map.as_mut_ptr().add(range.start),
                data.len(),
            );
        }
        Ok(())
    }
}

/// A tensor's place in a region: the `shared_memory_*` parameters of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionRef {
    pub region: String,
    pub offset: u64,
    pub byte_size: u64,
}

impl Region {
    fn range(&self, reference: &RegionRef) -> Result<std::ops::Range<usize>, ApiError> {
        let end = reference.offset.checked_add(reference.byte_size);
        match end {
            Some(end) if end <= self.byte_size => {
                // Both fit in the mapping's `usize` length.
                Ok(reference.offset as usize..end as usize)
            }
            _ => Err(ApiError::validation(format!(
                "shared-memory region '{}': offset {} + byte_size {} is past its {} bytes",
                self.name, reference.offset, reference.byte_size, self.byte_size
            ))),
        }
    }
}

fn unknown_region(name: &str) -> ApiError {
    ApiError::validation(format!("shared-memory region '{name}' is not registered"))
}

/// Part of a region, the owner behind an input tensor's `Bytes`: the mapping stays
/// while a request uses it, even if the region is unregistered meanwhile.
struct RegionBytes {
    region: Arc<Region>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for RegionBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `range` was checked against the mapping's length, and the mapping
        // lives as long as `self.region`. See the module's contract for writes.
        unsafe {
            std::slice::from_raw_parts(
                self.region.map.as_ptr().add(self.range.start),
                self.range.len(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A POSIX shared-memory object of `size` bytes, removed on drop.
    struct Object {
        key: String,
    }

    impl Object {
        fn new(tag: &str, size: u64) -> Object {
            let key = format!("/cardet-test-{}-{tag}", std::process::id());
            let file = std::fs::File::create(format!("{SHM_DIR}{key}")).expect("creates");
            file.set_len(size).expect("sizes");
            Object { key }
        }
    }

    impl Drop for Object {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(format!("{SHM_DIR}{}", self.key));
        }
    }

    fn at(region: &str, offset: u64, byte_size: u64) -> RegionRef {
        RegionRef {
            region: region.to_string(),
            offset,
            byte_size,
        }
    }

    #[test]
    fn a_region_is_read_and_written_where_its_offsets_say() {
        let object = Object::new("rw", 4096 + 64);
        let memory = SharedMemory::new(true);
        memory
            .register("r", &object.key, 4096, 64)
            .expect("registers");
        memory.write(&at("r", 8, 8), b"abcdefgh").expect("writes");
        assert_eq!(&memory.read(&at("r", 8, 4)).expect("reads")[..], b"abcd");
        // What the client sees through its own mapping of the object.
        let contents = std::fs::read(format!("{SHM_DIR}{}", object.key)).expect("reads file");
        assert_eq!(&contents[4096 + 8..4096 + 16], b"abcdefgh");
        let view = memory.read(&at("r", 0, 64)).expect("reads");
        memory.unregister(Some("r")).expect("unregisters");
        assert_eq!(
            &view[8..16],
            b"abcdefgh",
            "a view outlives its region's registration"
        );
        assert!(memory.status(None).expect("status").is_empty());
    }

    #[test]
    fn bad_registrations_and_references_are_refused_with_their_reason() {
        let object = Object::new("bad", 100);
        let memory = SharedMemory::new(true);
        let refused = |result: Result<(), ApiError>, fragment: &str| {
            let message = result.expect_err(fragment).message;
            assert!(message.contains(fragment), "{message}");
        };
        refused(memory.register("r", "/../etc/passwd", 0, 10), "not a POSIX");
        refused(
            memory.register("r", "/cardet-missing", 0, 10),
            "cannot open",
        );
        refused(memory.register("r", &object.key, 50, 51), "past the end");
        refused(memory.register("r", &object.key, 0, 0), "must be positive");
        memory
            .register("r", &object.key, 0, 100)
            .expect("registers");
        refused(
            memory.register("r", &object.key, 0, 10),
            "already registered",
        );
        refused(memory.write(&at("r", 90, 20), b"x"), "past its 100 bytes");
        refused(memory.write(&at("r", 0, 2), b"xyz"), "output is 3 bytes");
        assert!(memory.read(&at("nope", 0, 1)).is_err());
        assert!(memory.status(Some("nope")).is_err());
        let off = SharedMemory::new(false);
        refused(
            off.register("r", &object.key, 0, 100),
            "--allow-shared-memory",
        );
        assert!(off.status(None).is_err());
    }
}
