//! The S3 connection: endpoint, region and keys from the environment, and the
//! translation of SDK failures into errors that name the endpoint and bucket.

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::Error;

/// Where S3 is and who we are there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// `None`: the SDK's own resolution (AWS).
    pub endpoint: Option<String>,
    pub region: String,
    /// Both set, or both left to the SDK's credential chain.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

impl S3Settings {
    /// `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`, else `us-east-1`), `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`, with the original uploader's `MINIO_ACCESS_KEY` and
    /// `MINIO_SECRET_KEY` as fallbacks.
    pub fn from_env() -> S3Settings {
        S3Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`S3Settings::from_env`] over any variable lookup (empty values count as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> S3Settings {
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| lookup(name).filter(|value| !value.trim().is_empty()))
        };
        S3Settings {
            endpoint: first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]),
            region: first(&["AWS_REGION", "AWS_DEFAULT_REGION"])
                .unwrap_or_else(|| "us-east-1".to_string()),
            access_key: first(&["AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY"]),
            secret_key: first(&["AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY"]),
        }
    }

    /// How errors name the endpoint.
    pub fn endpoint_label(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.region))
    }

    /// A path-style client with short connect timeouts, so an endpoint that is down
    /// fails in seconds rather than minutes.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(300))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()))
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(access_key), Some(secret_key)) = (&self.access_key, &self.secret_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "cardet-env",
            ));
        }
        let shared = loader.load().await;
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(true)
                .build(),
        )
    }
}

/// An S3 request's context, for turning its failure into an [`Error`].
pub(crate) struct Request<'a> {
    pub operation: &'static str,
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
}

impl Request<'_> {
    pub(crate) fn error<E, R>(&self, error: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let (endpoint, bucket) = (self.endpoint.to_string(), self.bucket.to_string());
        if matches!(
            error,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        ) {
            return Error::Unreachable {
                endpoint,
                bucket,
                message: one_line(&DisplayErrorContext(&error).to_string()),
            };
        }
        let status = error.raw_response().map(HasStatus::status_code);
        let code = error.code().unwrap_or_default().to_string();
        let message = error
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| one_line(&DisplayErrorContext(&error).to_string()));
        match code.as_str() {
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "InvalidSecurity"
            | "AuthorizationHeaderMalformed" => Error::Credentials {
                endpoint,
                bucket,
                code,
            },
            "NoSuchBucket" => Error::NoBucket { endpoint, bucket },
            "AccessDenied" | "AllAccessDisabled" => Error::AccessDenied {
                endpoint,
                bucket,
                key: self.key.to_string(),
                message,
            },
            // HEAD answers have no body, so no code: the status is all there is.
            "" if status == Some(403) => Error::AccessDenied {
                endpoint,
                bucket,
                key: self.key.to_string(),
                message: "403 Forbidden (wrong keys or no permission)".to_string(),
            },
            _ => Error::S3 {
                operation: self.operation,
                endpoint,
                bucket,
                key: self.key.to_string(),
                message: if code.is_empty() {
                    message
                } else {
                    format!("{code}: {message}")
                },
            },
        }
    }
}

/// The status of a raw HTTP answer (a trait so the classification stays generic).
pub(crate) trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(variables: &[(&str, &str)], expected: S3Settings) {
        let settings = S3Settings::from_lookup(|name| {
            variables
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        });
        assert_eq!(settings, expected, "{variables:?}");
    }

    #[test]
    fn aws_names_come_first_and_minio_names_are_fallbacks() {
        check(
            &[
                ("AWS_ENDPOINT_URL", "http://s3:9000"),
                ("AWS_ACCESS_KEY_ID", "aws-key"),
                ("MINIO_ACCESS_KEY", "minio-key"),
                ("MINIO_SECRET_KEY", "minio-secret"),
            ],
            S3Settings {
                endpoint: Some("http://s3:9000".into()),
                region: "us-east-1".into(),
                access_key: Some("aws-key".into()),
                secret_key: Some("minio-secret".into()),
            },
        );
        check(
            &[
                ("AWS_ACCESS_KEY_ID", ""),
                ("MINIO_ACCESS_KEY", "minio-key"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ],
            S3Settings {
                endpoint: None,
                region: "eu-west-1".into(),
                access_key: Some("minio-key".into()),
                secret_key: None,
            },
        );
    }
}
