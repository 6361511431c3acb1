//! How `serve` sets up the connections it accepts: Nagle's algorithm off on every
//! port, and gRPC's HTTP/2 windows and frame size announced as configured.
//!
//! Nagle:
//! Neither `axum::serve` nor tonic's `serve_with_incoming` sets `TCP_NODELAY` on a
//! listener handed to them. With it unset, gRPC calls stalled for the client's
//! delayed ACK: about one `ServerLive` in 2,000 took 42-46 ms against 0.35 ms
//! (Python `tritonclient`, loopback). The stall is timing, so this test checks the
//! cause instead: it reads `TCP_NODELAY` off the server's own accepted sockets,
//! which live in this process.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use cardet_serve::protocol::grpc::pb::inference as v2;
use cardet_testkit::http2;
use v2::grpc_inference_service_client::GrpcInferenceServiceClient;

/// `TCP_NODELAY` of each connected TCP socket in this process whose local port is
/// one of `ports`, keyed by that port.
fn accepted_sockets(ports: &[u16]) -> BTreeMap<u16, Vec<bool>> {
    let mut found: BTreeMap<u16, Vec<bool>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only queried (getsockname, getpeername,
        // getsockopt) and not closed; if another thread closed it meanwhile, the
        // queries fail with EBADF and it is skipped.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(_peer)) = (socket.local_addr(), socket.peer_addr()) else {
            continue;
        };
        let Some(port) = local.as_socket().map(|a| a.port()) else {
            continue;
        };
        if ports.contains(&port)
            && let Ok(nodelay) = socket.tcp_nodelay()
        {
            found.entry(port).or_default().push(nodelay);
        }
    }
    found
}

#[tokio::test]
async fn every_accepted_connection_has_nagle_off() {
    let root = tempfile::tempdir().expect("tempdir");
    common::tiny_repository(root.path());
    let server = common::start(root.path(), cardet_serve::ControlMode::None, 1 << 20).await;
    let metrics = server.metrics.expect("metrics port");

    // One open connection to each port, each having had an answer (so the server
    // has accepted it and set it up).
    let http = reqwest::Client::new();
    let live = http
        .get(format!("http://{}/v2/health/live", server.http))
        .send()
        .await
        .expect("REST live");
    assert!(live.status().is_success());
    let scrape = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert!(scrape.status().is_success());
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("gRPC connects");
    let answer = grpc
        .server_live(v2::ServerLiveRequest {})
        .await
        .expect("gRPC live");
    assert!(answer.into_inner().live);

    let ports = [server.http.port(), server.grpc.port(), metrics.port()];
    let found = accepted_sockets(&ports);
    for port in ports {
        let sockets = found.get(&port).cloned().unwrap_or_default();
        assert!(
            !sockets.is_empty(),
            "no accepted connection on port {port} found in /proc/self/fd: {found:?}"
        );
        assert!(
            sockets.iter().all(|&nodelay| nodelay),
            "an accepted connection on port {port} has TCP_NODELAY off: {found:?}"
        );
    }
    drop(grpc);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn grpc_announces_its_windows_and_frame_size() {
    let root = tempfile::tempdir().expect("tempdir");
    common::tiny_repository(root.path());
    let server = common::start(root.path(), cardet_serve::ControlMode::None, 1 << 20).await;
    let address = server.grpc;
    // A bare HTTP/2 client: the preface and an empty SETTINGS, then read what the
    // server sends first (its SETTINGS, and a WINDOW_UPDATE for the connection).
    let announced = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(http2::CLIENT_PREFACE).expect("preface");
        stream.write_all(b"\0\0\0\x04\0\0\0\0\0").expect("settings");
        http2::read_announcements(&mut stream, 4).expect("the server's first frames")
    })
    .await
    .expect("client thread");

    let settings = &announced.settings;
    assert_eq!(
        settings.get(&http2::SETTINGS_INITIAL_WINDOW_SIZE),
        Some(&cardet_serve::GRPC_STREAM_WINDOW),
        "stream window in the server's SETTINGS: {settings:?}"
    );
    assert_eq!(
        settings.get(&http2::SETTINGS_MAX_FRAME_SIZE),
        Some(&cardet_serve::GRPC_MAX_FRAME),
        "max frame size in the server's SETTINGS: {settings:?}"
    );
    assert_eq!(
        announced.connection_window,
        cardet_serve::GRPC_CONNECTION_WINDOW,
        "the connection window after the server's first WINDOW_UPDATE"
    );
    // One image of YOLOv8n at 640 (FP32) fits in a stream's window.
    assert!(cardet_serve::GRPC_STREAM_WINDOW as usize >= 3 * 640 * 640 * 4);
    server.shutdown().await.expect("shutdown");
}
