//! `allocator`: a large freed block is reused without faulting its pages in again,
//! and the idle release hands it back to the system. The checks run in a child
//! process of this test binary: glibc's settings are process-wide, and hold only for
//! threads that get their arena after them.

use std::hint::black_box;

const BLOCK: usize = 96 << 20;

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    // The command name (field 2) may hold spaces; the fields after it do not.
    let after_name = &stat[stat.rfind(')').expect("stat has a name") + 2..];
    after_name
        .split_whitespace()
        .nth(7)
        .and_then(|field| field.parse().ok())
        .expect("minflt")
}

fn resident_kib() -> u64 {
    cardet_testkit::own_status_kib("VmRSS:").expect("VmRSS in /proc/self/status")
}

/// Allocates a block, writes every page, frees it.
fn touch_block() {
    let mut block = vec![0u8; BLOCK];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&block);
}

/// A freed block is reused without faults, and the release hands it back.
fn check_reuse_and_release() {
    let pages = (BLOCK / 4096) as u64;
    touch_block();
    let before = minor_faults();
    touch_block();
    let reused = minor_faults() - before;
    assert!(
        reused < pages / 10,
        "the second block of {pages} pages faulted {reused} times: glibc mapped it afresh"
    );
    let kept = resident_kib();
    cardet_serve::allocator::release_free_memory();
    let released = resident_kib();
    assert!(
        kept.saturating_sub(released) > (BLOCK as u64 / 1024) / 2,
        "the release returned {} KiB of a freed {} KiB block",
        kept.saturating_sub(released),
        BLOCK / 1024
    );
}

const CHILD: &str = "CARDET_ALLOCATOR_TEST_CHILD";

#[test]
fn freed_blocks_are_reused_until_released() {
    if std::env::var_os(CHILD).is_some() {
        // The harness's test thread already has an arena of its own. A thread started
        // after the settings gets an existing arena, and glibc hands out the main one
        // first, as it does to every thread of `serve`, whose `main` sets them.
        assert!(
            cardet_serve::allocator::keep_freed_memory(),
            "glibc's allocator was not set"
        );
        std::thread::spawn(check_reuse_and_release)
            .join()
            .expect("the checks passed");
        return;
    }
    // A process of its own: the settings are process-wide.
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([
            "--exact",
            "freed_blocks_are_reused_until_released",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env_remove("GLIBC_TUNABLES");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MALLOC_") {
            child.env_remove(name);
        }
    }
    let output = child.output().expect("running the test binary again");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
