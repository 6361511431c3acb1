//! Every connection `serve` accepts (REST, gRPC, metrics) has Nagle's algorithm off.
//!
//! Neither `axum::serve` nor tonic's `serve_with_incoming` sets `TCP_NODELAY` on a
//! listener handed to them. With it unset, gRPC calls stalled for the client's
//! delayed ACK: about one `ServerLive` in 2,000 took 42-46 ms against 0.35 ms
//! (Python `tritonclient`, loopback). The stall is timing, so this test checks the
//! cause instead: it reads `TCP_NODELAY` off the server's own accepted sockets,
//! which live in this process.

mod common;

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;

use cardet_serve::protocol::grpc::pb::inference as v2;
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
