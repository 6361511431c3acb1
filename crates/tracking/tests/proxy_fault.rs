//! A reverse proxy in front of MLflow answering 502 with an HTML page: a fault
//! no real MLflow server produces on demand, so this test stands in a tiny
//! fake proxy (a mock, allowed for this reason only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use cardet_tracking::{Error, MlflowClient, RunLogger, RunSpec, TrackingConfig, sync_run_folder};

/// Answers every request with `502 Bad Gateway` and an HTML body; returns its URI.
fn bad_gateway() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut content_length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; content_length];
            let _ = reader.read_exact(&mut body);
            let page = "<html><body>502 Bad Gateway</body></html>";
            let _ = write!(
                stream,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    uri
}

#[test]
fn proxy_502_is_a_transient_http_error_and_the_journal_keeps_everything() {
    let uri = bad_gateway();
    let client = MlflowClient::new(&TrackingConfig::new(&uri)).expect("client");
    let err = client.get_run("r1").expect_err("proxy answers 502");
    assert!(
        matches!(&err, Error::Http { status: 502, body, .. } if body.contains("Bad Gateway")),
        "{err:?}"
    );
    assert!(err.is_transient());

    let run_dir = tempfile::tempdir().expect("temp dir");
    let options = cardet_tracking::LoggerOptions {
        finish_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let mut logger = RunLogger::open_with(
        run_dir.path(),
        &TrackingConfig::new(&uri),
        &RunSpec::new("behind-a-proxy"),
        options,
    )
    .expect("open");
    logger.log_metrics(0, [("loss", 1.0)]).expect("journaled");
    let finished = logger
        .finish(cardet_tracking::RunStatus::Finished)
        .expect("finish");
    // Start, one metric event and the end: all kept for a later sync.
    assert_eq!(finished.unsent_events, 3, "{finished:?}");
    assert!(finished.sent.rejected.is_empty(), "{finished:?}");

    let err = sync_run_folder(run_dir.path(), &uri).expect_err("still 502");
    assert!(err.is_transient(), "{err}");
}
