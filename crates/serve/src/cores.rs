//! How many threads "as many as there are cores" means for ONNX Runtime.

use std::collections::HashSet;
use std::path::Path;

/// One per physical core this process may run on, hyperthread siblings counted once,
/// and at most [`std::thread::available_parallelism`] (which also counts the cgroup's
/// CPU quota).
///
/// ONNX Runtime's own default is one intra-op thread per physical core: two threads of
/// one run on sibling hyperthreads share one core's arithmetic units, so the second
/// adds little and still has to be waited for at the end of every parallel section.
/// Where the topology cannot be read, every usable logical CPU counts.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, usize::from);
    let physical = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let allowed = status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
            count_physical_cores(allowed, Path::new("/sys/devices/system/cpu"))
        });
    physical.map_or(logical, |physical| physical.clamp(1, logical))
}

/// The number of distinct cores among the CPUs of `allowed_list` (the kernel's list
/// format, `0-3,8-11`), read from each CPU's topology under `cpu_sysfs`.
fn count_physical_cores(allowed_list: &str, cpu_sysfs: &Path) -> Option<usize> {
    let mut cores = HashSet::new();
    for cpu in parse_cpu_list(allowed_list)? {
        let topology = cpu_sysfs.join(format!("cpu{cpu}/topology"));
        // `core_cpus_list` is the current name; kernels before 5.3 only have the older one.
        let siblings = std::fs::read_to_string(topology.join("core_cpus_list"))
            .or_else(|_| std::fs::read_to_string(topology.join("thread_siblings_list")))
            .ok()?;
        cores.insert(siblings.trim().to_string());
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// `0-3,8,10-11` as the CPUs it names; `None` for anything else.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for range in list.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last): (usize, usize) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
        if last < first {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs `cpu` folder in which each listed CPU has the given siblings.
    fn topology(siblings: &[(usize, &str)]) -> tempfile::TempDir {
        let folder = tempfile::tempdir().expect("temp dir");
        for (cpu, list) in siblings {
            let topology = folder.path().join(format!("cpu{cpu}/topology"));
            std::fs::create_dir_all(&topology).expect("topology folder");
            std::fs::write(topology.join("core_cpus_list"), format!("{list}\n")).expect("write");
        }
        folder
    }

    #[test]
    fn hyperthread_siblings_count_once() {
        // Four logical CPUs on two cores, siblings numbered as Linux does on x86.
        let sysfs = topology(&[(0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")]);
        assert_eq!(count_physical_cores("0-3", sysfs.path()), Some(2));
        assert_eq!(count_physical_cores("0,2", sysfs.path()), Some(1));
        assert_eq!(count_physical_cores("0-1", sysfs.path()), Some(2));
    }

    #[test]
    fn one_thread_per_core_counts_every_cpu() {
        let sysfs = topology(&[(0, "0"), (1, "1")]);
        assert_eq!(count_physical_cores("0-1\n", sysfs.path()), Some(2));
    }

    #[test]
    fn an_unreadable_topology_counts_nothing() {
        let sysfs = topology(&[(0, "0")]);
        assert_eq!(count_physical_cores("0-1", sysfs.path()), None);
        assert_eq!(count_physical_cores("zero", sysfs.path()), None);
    }

    #[test]
    fn cpu_lists_parse_in_the_kernels_format() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
    }
}
