#!/usr/bin/env python3
"""Packs ONNX Runtime's GPU build small enough to carry to a GPU machine that cannot
reach PyPI (BENCHMARKS.md "serve on a GPU"): a call to such a machine carries at
most 64 MiB, and the wheel's libonnxruntime_providers_cuda.so alone is 284 MB.

    ort_gpu_pack.py WHEEL SM OUT.tar.xz      # e.g. onnxruntime_gpu-1.31.1-...whl 90 ort.tar.xz

Writes libonnxruntime.so.*, libonnxruntime_providers_shared.so and the CUDA provider
with the CUDA kernels of every GPU architecture but SM overwritten with zeros
(same size, so nothing in the ELF moves; the CUDA runtime loads only the entries of
the GPU it runs on). Compressed, the zeros cost nothing: 57 MiB for sm_90 of 1.31.1.
For device checks only: `cargo xtask setup --gpu` installs the unmodified wheel.

The fatbin layout (NVIDIA does not document it; these offsets are the ones
cuobjdump's output agrees with): a container header (magic 0xBA55ED50, u16
version, u16 header size, u64 payload size), then entries, each a header (u16
kind, u16, u32 header size, u64 payload size, ..., u32 architecture at byte 28)
followed by its payload.
"""

import io
import struct
import sys
import tarfile
import zipfile

FATBIN_MAGIC = 0xBA55ED50


def section(elf: bytes, wanted: str) -> tuple[int, int]:
    """(offset, size) of an ELF64 little-endian section, by name."""
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    def header(index):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size
    _, names_offset, _ = header(shstrndx)
    for index in range(shnum):
        name, offset, size = header(index)
        end = elf.index(b"\0", names_offset + name)
        if elf[names_offset + name:end].decode() == wanted:
            return offset, size
    raise SystemExit(f"no {wanted} section")


def keep_only(elf: bytearray, sm: int) -> int:
    """Zeroes every fatbin entry not built for `sm`; returns the bytes zeroed."""
    start, size = section(elf, ".nv_fatbin")
    position, end, zeroed = start, start + size, 0
    while position + 16 <= end:
        magic, _version, header_size, payload = struct.unpack_from("<IHHQ", elf, position)
        if magic != FATBIN_MAGIC:
            position += 8  # containers are 8-byte aligned, padding between them
            continue
        entry, container_end = position + header_size, position + header_size + payload
        while entry < container_end:
            _kind, _, entry_header, entry_payload = struct.unpack_from("<HHIQ", elf, entry)
            arch = struct.unpack_from("<I", elf, entry + 28)[0]
            if arch != sm:
                body = entry + entry_header
                elf[body:body + entry_payload] = bytes(entry_payload)
                zeroed += entry_payload
            entry += entry_header + entry_payload
        position = container_end
    return zeroed


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    wheel, sm, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with zipfile.ZipFile(wheel) as archive, tarfile.open(out, "w:xz", preset=9) as tar:
        for name in archive.namelist():
            base = name.rsplit("/", 1)[-1]
            if not (base.startswith("libonnxruntime.so.")
                    or base in ("libonnxruntime_providers_shared.so",
                                "libonnxruntime_providers_cuda.so")):
                continue
            data = bytearray(archive.read(name))
            if base == "libonnxruntime_providers_cuda.so":
                zeroed = keep_only(data, sm)
                print(f"{base}: {zeroed >> 20} MiB of other GPUs' kernels zeroed", file=sys.stderr)
            info = tarfile.TarInfo(base)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(bytes(data)))
    print(out)


if __name__ == "__main__":
    main()
