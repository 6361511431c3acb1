//! Per-model counters, shared by the statistics extension and Prometheus `/metrics`.
//!
//! Counters are atomics updated on the request path; [`render`] writes them in the
//! Prometheus text format under Triton's metric names (`nv_inference_*`), so
//! dashboards built for Triton read `serve` unchanged.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and a total duration, as Triton's `StatisticDuration`.
#[derive(Debug, Default)]
pub struct Duration64 {
    pub count: AtomicU64,
    pub nanos: AtomicU64,
}

impl Duration64 {
    pub fn add(&self, duration: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(
            u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.nanos.load(Ordering::Relaxed),
        )
    }
}

/// Statistics of one model version.
#[derive(Debug, Default)]
pub struct ModelStats {
    pub success: Duration64,
    pub failure: Duration64,
    pub queue: Duration64,
    pub compute_input: Duration64,
    pub compute_infer: Duration64,
    pub compute_output: Duration64,
    /// Inferences, counting each batch row.
    pub inference_count: AtomicU64,
    /// Backend calls.
    pub execution_count: AtomicU64,
    /// Backend calls a split instance ran on half of its threads, beside another.
    pub half_width_executions: AtomicU64,
    /// Milliseconds since the epoch of the last inference.
    pub last_inference_ms: AtomicU64,
    /// Backend calls and compute time by batch size.
    pub batches: Mutex<Vec<(u64, u64, u64)>>,
    /// Requests queued or running now.
    pub pending: AtomicU64,
}

impl ModelStats {
    pub fn record_batch(&self, rows: usize, compute: Duration) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.compute_infer.add(compute);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Ordering::Relaxed);
        let mut batches = match self.batches.lock() {
            Ok(batches) => batches,
            Err(poisoned) => poisoned.into_inner(),
        };
        let nanos = u64::try_from(compute.as_nanos()).unwrap_or(u64::MAX);
        match batches.iter_mut().find(|(size, _, _)| *size == rows as u64) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 = entry.2.saturating_add(nanos);
            }
            None => {
                batches.push((rows as u64, 1, nanos));
                batches.sort_unstable();
            }
        }
    }

    /// `(batch size, count, compute ns)` rows, smallest size first.
    pub fn batch_rows(&self) -> Vec<(u64, u64, u64)> {
        match self.batches.lock() {
            Ok(batches) => batches.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A metric family: name, type, help, and how to read it from the stats.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ModelStats) -> u64,
);

/// Prometheus text for every `(model, version, stats)`.
pub fn render(models: &[(String, i64, std::sync::Arc<ModelStats>)]) -> String {
    let mut text = String::new();
    let families: [Family; 10] = [
        (
            "nv_inference_pending_request_count",
            "gauge",
            "Number of inference requests queued or running",
            |s| s.pending.load(Ordering::Relaxed),
        ),
        (
            "nv_inference_request_success",
            "counter",
            "Number of successful inference requests",
            |s| s.success.get().0,
        ),
        (
            "nv_inference_request_failure",
            "counter",
            "Number of failed inference requests",
            |s| s.failure.get().0,
        ),
        (
            "nv_inference_count",
            "counter",
            "Number of inferences performed (batch rows)",
            |s| s.inference_count.load(Ordering::Relaxed),
        ),
        (
            "nv_inference_exec_count",
            "counter",
            "Number of model executions (batches)",
            |s| s.execution_count.load(Ordering::Relaxed),
        ),
        (
            "nv_inference_request_duration_us",
            "counter",
            "Cumulative request duration in microseconds",
            |s| (s.success.get().1 + s.failure.get().1) / 1000,
        ),
        (
            "nv_inference_queue_duration_us",
            "counter",
            "Cumulative queue duration in microseconds",
            |s| s.queue.get().1 / 1000,
        ),
        (
            "nv_inference_compute_infer_duration_us",
            "counter",
            "Cumulative compute duration in microseconds",
            |s| s.compute_infer.get().1 / 1000,
        ),
        (
            "nv_inference_compute_input_duration_us",
            "counter",
            "Cumulative input preparation duration in microseconds",
            |s| s.compute_input.get().1 / 1000,
        ),
        (
            "cardet_inference_half_width_exec_count",
            "counter",
            "Model executions a split CPU instance ran on half of its threads, beside another",
            |s| s.half_width_executions.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (model, version, stats) in models {
            let _ = writeln!(
                text,
                "{name}{{model=\"{}\",version=\"{version}\"}} {}",
                escape(model),
                value(stats)
            );
        }
    }
    let name = "cardet_batch_size_total";
    let _ = writeln!(
        text,
        "# HELP {name} Model executions by batch size\n# TYPE {name} counter"
    );
    for (model, version, stats) in models {
        for (size, count, _) in stats.batch_rows() {
            let _ = writeln!(
                text,
                "{name}{{model=\"{}\",version=\"{version}\",batch_size=\"{size}\"}} {count}",
                escape(model)
            );
        }
    }
    text
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn check(stats: ModelStats, expected_lines: &[&str]) {
        let text = render(&[("yo\"lo".to_string(), 1, Arc::new(stats))]);
        for line in expected_lines {
            assert!(text.contains(line), "{text} lacks {line}");
        }
    }

    #[test]
    fn batches_are_counted_by_size() {
        let stats = ModelStats::default();
        stats.record_batch(4, Duration::from_millis(2));
        stats.record_batch(4, Duration::from_millis(2));
        stats.record_batch(1, Duration::from_millis(1));
        stats.success.add(Duration::from_millis(5));
        assert_eq!(
            stats.batch_rows(),
            vec![(1, 1, 1_000_000), (4, 2, 4_000_000)]
        );
        check(
            stats,
            &[
                "# TYPE nv_inference_count counter",
                "cardet_batch_size_total{model=\"yo\\\"lo\",version=\"1\",batch_size=\"4\"} 2",
                "nv_inference_request_success{model=\"yo\\\"lo\",version=\"1\"} 1",
                "nv_inference_count{model=\"yo\\\"lo\",version=\"1\"} 9",
                "nv_inference_exec_count{model=\"yo\\\"lo\",version=\"1\"} 3",
            ],
        );
    }
}
