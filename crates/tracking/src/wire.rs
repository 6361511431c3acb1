//! MLflow REST 2.0's JSON shapes, and nothing else: the only module that knows
//! field names on the wire. Public types in `types.rs` are converted by hand.

use serde::{Deserialize, Serialize};

use crate::types::{FileInfo, Metric, ModelVersion, Param, Run, RunInfo, RunStatus, Tag};

#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub error_code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
pub(crate) struct GetExperimentResponse {
    pub experiment: ExperimentJson,
}

#[derive(Deserialize)]
pub(crate) struct ExperimentJson {
    pub experiment_id: String,
    #[serde(default)]
    pub lifecycle_stage: String,
}

#[derive(Deserialize)]
pub(crate) struct CreateExperimentResponse {
    pub experiment_id: String,
}

#[derive(Serialize)]
pub(crate) struct CreateRunRequest<'a> {
    pub experiment_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_name: Option<&'a str>,
    pub start_time: i64,
    pub tags: Vec<KeyValueJson<'a>>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct KeyValueJson<'a> {
    pub key: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub value: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
pub(crate) struct RunResponse {
    pub run: RunJson,
}

#[derive(Deserialize)]
pub(crate) struct SearchRunsResponse {
    #[serde(default)]
    pub runs: Vec<RunJson>,
}

#[derive(Deserialize)]
pub(crate) struct RunJson {
    pub info: RunInfoJson,
    #[serde(default)]
    pub data: RunDataJson,
}

#[derive(Deserialize)]
pub(crate) struct RunInfoJson {
    pub run_id: String,
    pub experiment_id: String,
    #[serde(default)]
    pub run_name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub artifact_uri: String,
}

#[derive(Deserialize, Default)]
pub(crate) struct RunDataJson {
    #[serde(default)]
    pub metrics: Vec<MetricJson>,
    #[serde(default)]
    pub params: Vec<KeyValueJson<'static>>,
    #[serde(default)]
    pub tags: Vec<KeyValueJson<'static>>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct MetricJson {
    pub key: String,
    #[serde(with = "crate::wire::proto_double")]
    pub value: f64,
    pub timestamp: i64,
    #[serde(default)]
    pub step: i64,
}

#[derive(Serialize)]
pub(crate) struct LogBatchRequest<'a> {
    pub run_id: &'a str,
    pub metrics: Vec<MetricJson>,
    pub params: Vec<KeyValueJson<'a>>,
    pub tags: Vec<KeyValueJson<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct MetricHistoryResponse {
    #[serde(default)]
    pub metrics: Vec<MetricJson>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct UpdateRunRequest<'a> {
    pub run_id: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
}

#[derive(Deserialize)]
pub(crate) struct ListArtifactsResponse {
    #[serde(default)]
    pub files: Vec<FileInfoJson>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct FileInfoJson {
    pub path: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub file_size: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct ModelVersionResponse {
    pub model_version: ModelVersionJson,
}

#[derive(Deserialize)]
pub(crate) struct ModelVersionJson {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct RegisteredModelResponse {
    pub registered_model: RegisteredModelJson,
}

#[derive(Deserialize)]
pub(crate) struct RegisteredModelJson {
    #[serde(default)]
    pub aliases: Vec<AliasJson>,
}

#[derive(Deserialize)]
pub(crate) struct AliasJson {
    pub alias: String,
    pub version: String,
}

impl From<RunJson> for Run {
    fn from(run: RunJson) -> Run {
        Run {
            info: run.info.into(),
            metrics: run.data.metrics.into_iter().map(Metric::from).collect(),
            params: (run.data.params.into_iter())
                .map(|kv| Param::new(kv.key, kv.value))
                .collect(),
            tags: (run.data.tags.into_iter())
                .map(|kv| Tag::new(kv.key, kv.value))
                .collect(),
        }
    }
}

impl From<RunInfoJson> for RunInfo {
    fn from(info: RunInfoJson) -> RunInfo {
        RunInfo {
            run_id: info.run_id,
            experiment_id: info.experiment_id,
            run_name: info.run_name,
            status: RunStatus::from_wire(&info.status),
            start_time_ms: info.start_time,
            end_time_ms: info.end_time,
            artifact_uri: info.artifact_uri,
        }
    }
}

impl From<MetricJson> for Metric {
    fn from(metric: MetricJson) -> Metric {
        Metric {
            key: metric.key,
            value: metric.value,
            timestamp_ms: metric.timestamp,
            step: metric.step,
        }
    }
}

impl From<&Metric> for MetricJson {
    fn from(metric: &Metric) -> MetricJson {
        MetricJson {
            key: metric.key.clone(),
            value: metric.value,
            timestamp: metric.timestamp_ms,
            step: metric.step,
        }
    }
}

impl From<FileInfoJson> for FileInfo {
    fn from(file: FileInfoJson) -> FileInfo {
        FileInfo {
            path: file.path,
            is_dir: file.is_dir,
            file_size: file.file_size,
        }
    }
}

impl From<ModelVersionJson> for ModelVersion {
    fn from(version: ModelVersionJson) -> ModelVersion {
        ModelVersion {
            name: version.name,
            version: version.version,
            source: version.source,
            run_id: version.run_id,
            status: version.status,
            aliases: version.aliases,
        }
    }
}

/// Doubles as protobuf's JSON mapping writes them (MLflow's server parses
/// requests with it): finite values as numbers, the others as the strings
/// `"NaN"`, `"Infinity"` and `"-Infinity"`, because JSON has no such numbers
/// and a diverging loss is exactly what a training log must keep.
pub(crate) mod proto_double {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if value.is_infinite() && *value > 0.0 {
            serializer.serialize_str("Infinity")
        } else if value.is_infinite() {
            serializer.serialize_str("-Infinity")
        } else {
            serializer.serialize_f64(*value)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(DoubleVisitor)
    }

    struct DoubleVisitor;

    impl Visitor<'_> for DoubleVisitor {
        type Value = f64;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a number or one of \"NaN\", \"Infinity\", \"-Infinity\"")
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<f64, E> {
            match value {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                other => other.parse().map_err(E::custom),
            }
        }
    }
}
