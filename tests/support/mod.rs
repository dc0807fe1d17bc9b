//! What every test stands on: a private `redis-server` per test ([`redis_server`]), a recording
//! HTTP collector on the relay's own accept loop ([`collector`]), the relay in-process
//! ([`in_process`]) or as the binary an operator runs ([`process`]), test events
//! ([`events`]), network stand-ins ([`net`]: a proxy that can freeze, a port nothing
//! answers on), certificates ([`certs`]), and one way to wait ([`wait_until`]).
//!
//! Every port is bound before it is handed out: in-process servers bind port 0, the
//! relay's admin listener binds port 0 and logs the address it got, and a redis-server
//! that finds its port taken is started again on another.
#![allow(dead_code, unused_imports)]

pub mod accounting;
pub mod certs;
pub mod collector;
pub mod events;
pub mod http;
pub mod in_process;
pub mod net;
pub mod process;
pub mod properties;
pub mod redis_server;
pub mod sentinel;
pub mod temp_file;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use accounting::*;
pub use certs::Certs;
pub use collector::{Collector, Received, Responder, always, refusing, refusing_eids_ending_in};
pub use events::*;
pub use http::TestClient;
pub use in_process::{Relay, config, config_for_urls, connect_queue};
pub use net::{ClosedPort, Proxy, local_collector_process, raw_request};
pub use process::{
    Finished, RelayProcess, bin, bin_command, hostname, peak_rss, program_command, run_bin,
    send_signal,
};
pub use redis_server::{RedisServer, held_by_relays, instances};
pub use temp_file::TempFile;

/// The list the relay reads by default.
pub const LIST: &str = "snowplow";
/// The default dead-letter list.
pub const DEAD: &str = "{snowplow}:dead";

/// A private Redis and a collector answering with `responder`: most tests start here.
pub async fn setup(responder: Responder) -> (RedisServer, Collector) {
    (RedisServer::start(), Collector::start_with(responder).await)
}

/// [`setup`], with `count` numbered events already waiting in [`LIST`].
pub async fn setup_holding(responder: Responder, count: usize) -> (RedisServer, Collector) {
    let (redis, collector) = setup(responder).await;
    redis.rpush(LIST, &numbered_events(count));
    (redis, collector)
}

/// Asserts that each of `wanted` is one of `have`, naming the first that is not.
pub fn assert_all_present<S: AsRef<str> + std::fmt::Debug>(have: &[S], wanted: &[&str]) {
    for one in wanted {
        assert!(
            have.iter().any(|h| h.as_ref() == *one),
            "`{one}` missing from {have:#?}"
        );
    }
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after
/// `timeout_secs`. The one way a test waits for something.
pub async fn wait_until(what: &str, timeout_secs: u64, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` from an HTTP server at `addr` (the admin listener, the local collector):
/// the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_with(addr, path, &[]).await;
    (status, body)
}

/// `GET path` with extra request headers: the status, the `Content-Type` and the body.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<bytes::Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}
