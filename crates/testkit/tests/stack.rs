//! The local stack answers real requests: each test talks to the service that
//! `cargo xtask stack up` started, with the client the project itself uses.

use std::time::Duration;

use cardet_testkit::Stack;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[test]
fn kafka_metadata_lists_the_broker() {
    let stack = Stack::from_env();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_bootstrap)
        .set("group.id", cardet_testkit::unique_name("metadata"))
        .create()
        .expect("creating a Kafka client");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata request");
    let brokers: Vec<String> = metadata
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect();
    assert_eq!(
        brokers.len(),
        1,
        "one embedded broker expected, got {brokers:?}"
    );
    let port = stack.kafka_bootstrap.rsplit(':').next().unwrap_or_default();
    assert!(
        brokers[0].ends_with(&format!(":{port}")),
        "broker {brokers:?} is not the one at {}",
        stack.kafka_bootstrap
    );
}

#[tokio::test]
async fn postgres_answers_a_query() {
    let stack = Stack::from_env();
    let (client, connection) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls)
        .await
        .expect("connecting to PostgreSQL");
    let connection = tokio::spawn(connection);
    let row = client
        .query_one("select 40 + $1::int4, current_database()", &[&2i32])
        .await
        .expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    let expected_database = stack
        .database_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(row.get::<_, String>(1), expected_database);
    let version: String = client
        .query_one("show server_version", &[])
        .await
        .expect("version")
        .get(0);
    assert!(
        version.starts_with("15."),
        "PostgreSQL 15 expected, got {version}"
    );
    drop(client);
    let _ = connection.await;
}

fn s3_client(stack: &Stack, secret: &str) -> aws_sdk_s3::Client {
    let credentials =
        aws_sdk_s3::config::Credentials::new(&stack.s3_access_key, secret, None, None, "test");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(&stack.s3_endpoint)
        .region(aws_sdk_s3::config::Region::new(stack.s3_region.clone()))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test]
async fn s3_rejects_a_wrong_secret_and_accepts_the_right_one() {
    let stack = Stack::from_env();
    assert!(
        !stack.s3_secret_key.is_empty(),
        "AWS_SECRET_ACCESS_KEY missing: run `cargo xtask stack up`"
    );
    let bucket = cardet_testkit::unique_name("sigv4").to_lowercase();

    let wrong = s3_client(&stack, "not-the-secret");
    let error = wrong
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect_err("a wrong secret must be refused");
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    assert_eq!(status, Some(403), "wrong secret: {error:?}");

    let right = s3_client(&stack, &stack.s3_secret_key);
    right
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket with the right secret");
    let body = aws_sdk_s3::primitives::ByteStream::from_static(b"signed");
    right
        .put_object()
        .bucket(&bucket)
        .key("probe.txt")
        .body(body)
        .send()
        .await
        .expect("put object");
    let object = right
        .get_object()
        .bucket(&bucket)
        .key("probe.txt")
        .send()
        .await
        .expect("get object");
    let bytes = object.body.collect().await.expect("read body").into_bytes();
    assert_eq!(&bytes[..], b"signed");

    let error = wrong
        .get_object()
        .bucket(&bucket)
        .key("probe.txt")
        .send()
        .await
        .expect_err("wrong secret on read");
    assert_eq!(
        error
            .raw_response()
            .map(|response| response.status().as_u16()),
        Some(403)
    );
}

#[test]
fn mlflow_searches_experiments() {
    let stack = Stack::from_env();
    // Filter by name: a long-lived server holds many experiments and the first
    // page need not include Default.
    let url = format!(
        "{}/api/2.0/mlflow/experiments/search",
        stack.mlflow_uri.trim_end_matches('/')
    );
    let response = reqwest::blocking::Client::new()
        .get(&url)
        .query(&[("max_results", "10"), ("filter", "name = 'Default'")])
        .send()
        .expect("MLflow request");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().expect("MLflow answers JSON");
    let experiments = body["experiments"].as_array().expect("an experiments list");
    assert!(
        experiments.iter().any(|e| e["name"] == "Default"),
        "MLflow's Default experiment missing: {body}"
    );
}
