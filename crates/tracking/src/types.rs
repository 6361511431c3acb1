use std::borrow::Cow;

use crate::Error;

/// MLflow's documented limits (REST `log-batch` and the tracking store).
pub mod limits {
    /// Metrics in one `log-batch` call.
    pub const METRICS_PER_BATCH: usize = 1000;
    /// Params in one `log-batch` call.
    pub const PARAMS_PER_BATCH: usize = 100;
    /// Tags in one `log-batch` call.
    pub const TAGS_PER_BATCH: usize = 100;
    /// Metrics, params and tags together in one `log-batch` call.
    pub const ENTITIES_PER_BATCH: usize = 1000;
    /// Bytes of one `log-batch` request body (MLflow says 1 MB; we keep a margin for JSON framing).
    pub const BATCH_REQUEST_BYTES: usize = 900_000;
    /// Characters of a metric, param or tag key.
    pub const KEY_CHARS: usize = 250;
    /// Characters of a param value. MLflow 3.17.2 over SQLite stores longer values
    /// (we measured 8001), but its docs and other backends hold 6000: keep to that.
    pub const PARAM_VALUE_CHARS: usize = 6000;
    /// Characters of a tag value.
    pub const TAG_VALUE_CHARS: usize = 8000;
}

/// One metric point. `timestamp_ms` is milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    pub timestamp_ms: i64,
    pub step: i64,
}

/// A run parameter; MLflow refuses to change a param's value once logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: String,
}

/// A run tag; setting a tag again replaces its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Param {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Param {
        Param {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Tag {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A run's lifecycle state as MLflow names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_wire(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }

    pub(crate) fn from_wire(status: &str) -> RunStatus {
        match status {
            "SCHEDULED" => RunStatus::Scheduled,
            "FINISHED" => RunStatus::Finished,
            "FAILED" => RunStatus::Failed,
            "KILLED" => RunStatus::Killed,
            _ => RunStatus::Running,
        }
    }
}

/// What MLflow knows of a run apart from its data.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    pub run_name: String,
    pub status: RunStatus,
    pub start_time_ms: Option<i64>,
    pub end_time_ms: Option<i64>,
    /// `mlflow-artifacts:/<experiment>/<run>/artifacts` when the server proxies artifacts.
    pub artifact_uri: String,
}

/// A run with its latest metric values, params and tags.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub info: RunInfo,
    /// The latest value of each metric key (`get-history` has every step).
    pub metrics: Vec<Metric>,
    pub params: Vec<Param>,
    pub tags: Vec<Tag>,
}

impl Run {
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.key == key).map(|m| m.value)
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }
}

/// One entry of an artifact listing; `path` is relative to the run's artifact root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub path: String,
    pub is_dir: bool,
    pub file_size: Option<u64>,
}

/// A registered model's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    pub source: String,
    pub run_id: String,
    pub status: String,
    pub aliases: Vec<String>,
}

/// Makes a metric, param or tag key acceptable to MLflow.
///
/// MLflow takes only alphanumerics, `_ - . : /` and spaces in names (3.17.2
/// answers `INVALID_PARAMETER_VALUE` to `metrics/mAP50-95(B)`). Like
/// Ultralytics' MLflow callback we drop parentheses, so our runs and
/// Ultralytics' share key names (`metrics/mAP50-95B`); any other character
/// becomes `_`.
pub fn sanitize_key(key: &str) -> Cow<'_, str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:/ ".contains(c);
    if key.chars().all(allowed) {
        return Cow::Borrowed(key);
    }
    Cow::Owned(
        key.chars()
            .filter(|c| *c != '(' && *c != ')')
            .map(|c| if allowed(c) { c } else { '_' })
            .collect(),
    )
}

pub(crate) fn check_length(
    what: &'static str,
    key: &str,
    text: &str,
    limit: usize,
) -> Result<(), Error> {
    let len = text.chars().count();
    if len > limit {
        return Err(Error::TooLong {
            what,
            key: key.to_string(),
            len,
            limit,
        });
    }
    Ok(())
}

pub(crate) fn check_param(param: &Param) -> Result<(), Error> {
    check_length("param key", &param.key, &param.key, limits::KEY_CHARS)?;
    check_length(
        "value of param",
        &param.key,
        &param.value,
        limits::PARAM_VALUE_CHARS,
    )
}

pub(crate) fn check_tag(tag: &Tag) -> Result<(), Error> {
    check_length("tag key", &tag.key, &tag.key, limits::KEY_CHARS)?;
    check_length(
        "value of tag",
        &tag.key,
        &tag.value,
        limits::TAG_VALUE_CHARS,
    )
}

pub(crate) fn check_metric_key(key: &str) -> Result<(), Error> {
    check_length("metric key", key, key, limits::KEY_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, expected: &str) {
        assert_eq!(sanitize_key(key), expected);
    }

    #[test]
    fn sanitize_key_follows_ultralytics_for_parentheses() {
        check("metrics/mAP50-95(B)", "metrics/mAP50-95B");
        check("train/box_loss", "train/box_loss");
        check("lr/pg0", "lr/pg0");
        check("a,b=c", "a_b_c");
        check("val loss: 1", "val loss: 1");
    }

    #[test]
    fn param_over_6000_characters_is_refused_with_its_key() {
        let long = Param::new("model_yaml", "x".repeat(6001));
        let err = check_param(&long).expect_err("6001 characters is over the limit");
        assert!(err.to_string().contains("model_yaml"), "{err}");
        assert!(check_param(&Param::new("ok", "x".repeat(6000))).is_ok());
    }
}
