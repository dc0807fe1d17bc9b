//! `snowplow-relay collector`: the local Micro-like collector ([`snowplow_relay::micro`])
//! until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use snowplow_relay::config::{LogConfig, LogFormat};
use snowplow_relay::micro::{self, CollectorOptions, LocalCollector};
use snowplow_relay::ops::telemetry;

use super::{CommonFlags, runtime};

#[derive(Debug, Args)]
pub(super) struct CollectorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090", value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Append every good event to FILE as one JSON line.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Events kept in memory (good and bad); the oldest are dropped and counted.
    #[arg(long, default_value_t = micro::DEFAULT_MAX_EVENTS, value_name = "N")]
    max_events: usize,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = micro::DEFAULT_MAX_BODY_BYTES, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Bytes of events kept in memory (their JSON); the oldest are dropped and counted.
    #[arg(long, default_value_t = micro::DEFAULT_MAX_STORE_BYTES, value_name = "BYTES")]
    max_store_bytes: usize,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = micro::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    max_connections: usize,
    /// A static Iglu registry (DIR/schemas/VENDOR/NAME/jsonschema/M-R-A, the layout
    /// `igluctl static generate` writes), searched before the built-in Iglu Central; repeat
    /// for several. Self-describing data whose schema resolves nowhere is bad, as in Micro.
    #[arg(long = "iglu-dir", value_name = "DIR")]
    iglu_dirs: Vec<PathBuf>,
    /// error, warn, info, debug, trace or a filter directive.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

pub(super) fn collector(args: CollectorArgs, before: &CommonFlags) -> ExitCode {
    let mut log = LogConfig::default();
    // The flag, or RUST_LOG (the collector has no configuration file).
    let from_env = std::env::var("RUST_LOG").ok();
    if let Some(level) = args
        .log_level
        .as_ref()
        .or(before.log_level.as_ref())
        .or(from_env.as_ref())
    {
        log.level = level.clone();
    }
    if let Some(format) = args.log_format.as_ref().or(before.log_format.as_ref()) {
        match LogFormat::try_from(format.clone()) {
            Ok(format) => log.format = format,
            Err(why) => {
                eprintln!("snowplow-relay collector: --log-format: {why}");
                return ExitCode::from(2);
            }
        }
    }
    telemetry::init(&log);
    for dir in &args.iglu_dirs {
        if !dir.join("schemas").is_dir() {
            eprintln!(
                "snowplow-relay collector: --iglu-dir {}: expected a static Iglu registry, a folder holding schemas/VENDOR/NAME/jsonschema/M-R-A",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    let listen = args.listen;
    let options = CollectorOptions {
        max_events: args.max_events,
        max_body_bytes: args.max_body_bytes,
        record: args.record,
        max_store_bytes: args.max_store_bytes,
        max_connections: args.max_connections,
        iglu_dirs: args.iglu_dirs,
        ..Default::default()
    };
    snowplow_relay::ops::process_metrics::raise_open_file_limit(options.max_connections + 256);
    return_large_blocks_at_once();
    let collector = match LocalCollector::new(options) {
        Ok(collector) => collector,
        Err(error) => {
            eprintln!("snowplow-relay collector: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime(2) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("snowplow-relay collector: cannot listen on {listen}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                },
                _ => std::future::pending().await,
            }
        };
        let addr = listener.local_addr().unwrap_or(listen);
        tracing::info!(%addr, "local collector listening; GET /micro/all for a summary");
        collector.clone().serve(listener, stop).await;
        let totals = collector.totals();
        tracing::info!(
            total = totals.total,
            good = totals.good,
            bad = totals.bad,
            "local collector stopped"
        );
        ExitCode::SUCCESS
    })
}

/// Raises this process's soft limit of open files towards `wanted` (within the hard
/// limit), so that `--max-connections` can be reached (the soft limit is often 1024).
/// Keeps glibc's threshold for serving an allocation with its own mapping at 128 KiB.
/// glibc raises it after each such block is freed (up to 32 MiB), so once a few large
/// events were dropped from the store, later ones come from the heap and their memory
/// stays with the process: measured here, 300 requests of one 1.9 MB event peaked at
/// 562 MB of RSS with the moving threshold and 334 MB with it fixed
/// (`hostile::the_local_collector_stays_bounded…`).
fn return_large_blocks_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes a tuning parameter; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
