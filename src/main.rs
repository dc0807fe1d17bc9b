//! The `snowplow-relay` command: flags, logging, signals; everything else is the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use snowplow_relay::config::{LogFormat, Method, Overrides};
use snowplow_relay::queue::{DeadLetter, Queue, QueueError};
use snowplow_relay::{Config, Controls, Valid, telemetry};
use tokio_util::sync::CancellationToken;

/// Relays Snowplow events from a Redis list to a Snowplow collector, at least once.
///
/// Settings come from the TOML file, then SNOWPLOW_RELAY_<SECTION>__<KEY> environment
/// variables, then these flags, each overriding the one before. Exit codes: 0 stopped
/// cleanly, 1 failed while running, 2 invalid configuration.
#[derive(Debug, Parser)]
#[command(name = "snowplow-relay", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see config/snowplow-relay.toml).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Redis URL (redis.url), e.g. redis://127.0.0.1:6379/0. Give a password in
    /// redis.password_file or SNOWPLOW_RELAY_REDIS__PASSWORD, not here: every user of the
    /// host can read a process's flags.
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// The Redis list to relay (redis.key).
    #[arg(long, global = true, value_name = "NAME")]
    key: Option<String>,
    /// Collector URL (collector.url), e.g. https://collector.example.com.
    #[arg(long, global = true, value_name = "URL")]
    collector: Option<String>,
    /// get: one event per request; post: batches (collector.method).
    #[arg(long, global = true, value_enum)]
    method: Option<Method>,
    /// Events per POST request (collector.buffer_size).
    #[arg(long, global = true, value_name = "N")]
    buffer_size: Option<u64>,
    /// Largest POST body or GET URL in bytes (collector.byte_limit).
    #[arg(long, global = true, value_name = "BYTES")]
    byte_limit: Option<u64>,
    /// error, warn, info, debug, trace or a filter directive (log.level).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// text or json (log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Serve /metrics, /healthz and /readyz on ADDR, e.g. 127.0.0.1:9187 (admin.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    admin_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay events until SIGINT, SIGTERM or SIGQUIT (the default).
    Run,
    /// Validate the configuration; print warnings, and the settings with secrets masked
    /// and where each value came from.
    Check {
        /// Print errors and warnings only (for ExecStartPre= and ExecReload=).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Probe the running relay's /healthz on admin.listen (for container health checks):
    /// exit 0 if alive, 1 otherwise.
    Healthcheck {
        /// Probe /readyz instead (ready to relay).
        #[arg(long)]
        ready: bool,
    },
    /// Inspect the dead-letter list, or move its entries back to the list once the cause
    /// is fixed.
    DeadLetter {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Track events from the shell: into Redis (the [redis] settings), or straight to a
    /// collector with --collector URL. Prints each event id.
    Track(Box<snowplow_relay::track::TrackArgs>),
    /// Run a local collector shaped like Snowplow Micro, for trials and tests: GET /i,
    /// POST /com.snowplowanalytics.snowplow/tp2, /micro/all|good|bad|reset, /health.
    Collector {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Append every good event to FILE as one JSON line.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Events kept in memory (good and bad); the oldest are dropped and counted.
        #[arg(long, default_value_t = snowplow_relay::collector::DEFAULT_MAX_EVENTS, value_name = "N")]
        max_events: usize,
        /// Largest request body in bytes; larger ones are answered 413.
        #[arg(long, default_value_t = snowplow_relay::collector::DEFAULT_MAX_BODY_BYTES, value_name = "BYTES")]
        max_body_bytes: usize,
        /// Bytes of events kept in memory (their JSON); the oldest are dropped and counted.
        #[arg(long, default_value_t = snowplow_relay::collector::DEFAULT_MAX_STORE_BYTES, value_name = "BYTES")]
        max_store_bytes: usize,
        /// Connections served at once; more wait to be accepted.
        #[arg(long, default_value_t = snowplow_relay::collector::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
        max_connections: usize,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// Print how many entries the dead-letter list holds.
    Count,
    /// Print entries, oldest first, one JSON object per line (metadata + element).
    List {
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move entries, oldest first, back to the tail of the list. Each step of up to 500
    /// is atomic: an interrupted replay loses and duplicates nothing.
    Replay {
        /// At most this many entries (default: all).
        #[arg(long)]
        limit: Option<u64>,
    },
}

impl Cli {
    fn overrides(&self) -> Overrides {
        let mut overrides = Overrides::default();
        overrides.set_flag("redis.url", "--redis-url", self.redis_url.as_ref());
        overrides.set_flag("redis.key", "--key", self.key.as_ref());
        overrides.set_flag("collector.url", "--collector", self.collector.as_ref());
        overrides.set_flag(
            "collector.method",
            "--method",
            self.method.map(|m| format!("{m:?}").to_lowercase()),
        );
        overrides.set_flag("collector.buffer_size", "--buffer-size", self.buffer_size);
        overrides.set_flag("collector.byte_limit", "--byte-limit", self.byte_limit);
        overrides.set_flag("log.level", "--log-level", self.log_level.as_ref());
        overrides.set_flag("admin.listen", "--admin-listen", self.admin_listen.as_ref());
        overrides.set_flag(
            "log.format",
            "--log-format",
            self.log_format.map(|f| format!("{f:?}").to_lowercase()),
        );
        overrides
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // One crypto provider (ring) for every TLS connection, Redis and collector alike,
    // installed before any subcommand opens one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(Command::Collector {
        listen,
        ref record,
        max_events,
        max_body_bytes,
        max_store_bytes,
        max_connections,
    }) = cli.command
    {
        let record = record.clone();
        let options = snowplow_relay::collector::CollectorOptions {
            max_events,
            max_body_bytes,
            record,
            max_store_bytes,
            max_connections,
            ..Default::default()
        };
        return collector(&cli, listen, options);
    }
    let loaded = match cli.command {
        Some(Command::DeadLetter { .. } | Command::Healthcheck { .. }) => {
            Config::load_for_redis_tools(cli.config.as_deref(), &cli.overrides())
        }
        // Without --collector, track only needs Redis.
        Some(Command::Track(_)) if cli.collector.is_none() => {
            Config::load_for_redis_tools(cli.config.as_deref(), &cli.overrides())
        }
        _ => Config::load(cli.config.as_deref(), &cli.overrides()),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("snowplow-relay: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::mask_secrets_in_panics(config.secrets());
    match cli.command.take().unwrap_or(Command::Run) {
        Command::Check { quiet } => {
            for warning in config.warnings() {
                eprintln!("snowplow-relay: warning: {warning}");
            }
            if !quiet {
                print!("{}", config.to_shown_toml());
            }
            ExitCode::SUCCESS
        }
        Command::Healthcheck { ready } => healthcheck(&config, ready),
        Command::Track(args) => {
            telemetry::init(&config.log);
            let Some(runtime) = runtime(1) else {
                return ExitCode::FAILURE;
            };
            let direct = cli.collector.is_some();
            match runtime.block_on(snowplow_relay::track::run(&args, &config, direct)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("snowplow-relay track: {error}");
                    ExitCode::from(error.exit_code())
                }
            }
        }
        Command::Collector { .. } => unreachable!("handled before the configuration is loaded"),
        Command::DeadLetter { action } => {
            let Some(runtime) = runtime(1) else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(dead_letter(&config, action)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("snowplow-relay: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => {
            let log_level = telemetry::init(&config.log);
            let Some(runtime) = runtime(config.worker.threads.get()) else {
                return ExitCode::FAILURE;
            };
            runtime.block_on(async {
                let controls = Controls::default();
                let (shutdown, force) = match signals(&cli, config.clone(), log_level, &controls) {
                    Ok(tokens) => tokens,
                    Err(error) => {
                        tracing::error!(%error, "cannot install signal handlers");
                        return ExitCode::FAILURE;
                    }
                };
                match snowplow_relay::run_with_controls(
                    config,
                    shutdown.cancelled_owned(),
                    force.cancelled_owned(),
                    controls,
                )
                .await
                {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(error) => {
                        tracing::error!(%error, "snowplow-relay failed");
                        ExitCode::from(error.exit_code())
                    }
                }
            })
        }
    }
}

async fn dead_letter(config: &Valid, action: DeadLetterAction) -> Result<(), QueueError> {
    let queue = Queue::connect(config).await?;
    match action {
        DeadLetterAction::Count => println!("{}", queue.dead_letter_count().await?),
        DeadLetterAction::List { limit } => {
            for entry in queue.dead_letters(limit).await? {
                let line = match DeadLetter::decode(&entry) {
                    Some((meta, element)) => serde_json::json!({
                        "reason": meta.reason,
                        "status": meta.status,
                        "failed_at": meta.failed_at,
                        "relay": meta.relay,
                        "element": String::from_utf8_lossy(element),
                    }),
                    None => serde_json::json!({ "element": String::from_utf8_lossy(&entry) }),
                };
                println!("{line}");
            }
        }
        DeadLetterAction::Replay { limit } => {
            let total = queue.dead_letter_count().await?;
            let target = limit.map_or(total, |limit| limit.min(total));
            let mut moved = 0;
            while moved < target {
                let step = (target - moved).min(500) as usize;
                let done = queue.replay_dead_letters(step).await?;
                if done == 0 {
                    break;
                }
                moved += done;
                eprintln!("replayed {moved}/{target}");
            }
            println!("{moved}");
        }
    }
    Ok(())
}

/// Runs the local collector until SIGINT or SIGTERM.
fn collector(
    cli: &Cli,
    listen: std::net::SocketAddr,
    options: snowplow_relay::collector::CollectorOptions,
) -> ExitCode {
    let mut log = snowplow_relay::config::LogConfig::default();
    if let Some(level) = &cli.log_level {
        log.level = level.clone();
    }
    if let Some(format) = cli.log_format {
        log.format = format;
    }
    telemetry::init(&log);
    raise_file_limit(options.max_connections + 256);
    let collector = match snowplow_relay::collector::LocalCollector::new(options) {
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
fn raise_file_limit(wanted: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a rlimit of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let target = (wanted as libc::rlim_t).min(limit.rlim_max);
        if target > limit.rlim_cur {
            limit.rlim_cur = target;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The async runtime: `threads` worker threads (`worker.threads` for the daemon, 1 for
/// the tools); one thread runs everything on the calling thread. Says why on stderr if
/// it cannot start.
fn runtime(threads: usize) -> Option<tokio::runtime::Runtime> {
    let mut builder = if threads > 1 {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .map_err(|error| eprintln!("snowplow-relay: cannot start the async runtime: {error}"))
        .ok()
}

fn healthcheck(config: &Valid, ready: bool) -> ExitCode {
    let Some(addr) = config.admin.listen else {
        eprintln!("snowplow-relay: healthcheck needs admin.listen (or --admin-listen ADDR)");
        return ExitCode::from(2);
    };
    // A relay listening on every address is probed on loopback.
    let addr = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => ([127, 0, 0, 1], addr.port()).into(),
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(snowplow_relay::admin::probe(
        addr,
        path,
        std::time::Duration::from_secs(3),
    )) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("snowplow-relay: {path}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Signals this close to the first one are the same signal delivered twice.
const SAME_SIGNAL_WITHIN: std::time::Duration = std::time::Duration::from_millis(250);

/// The first SIGINT, SIGTERM or SIGQUIT cancels the first token (graceful shutdown);
/// a second one cancels the second (stop draining, requeue now). SIGUSR1 flushes
/// partial batches; SIGHUP reloads the configuration (what is safe to change).
fn signals(
    cli: &Cli,
    mut current: Valid,
    log_level: telemetry::LogLevel,
    controls: &Controls,
) -> std::io::Result<(CancellationToken, CancellationToken)> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut user1 = signal(SignalKind::user_defined1())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let flush = controls.clone();
    tokio::spawn(async move {
        while user1.recv().await.is_some() {
            flush.flush();
        }
    });
    let (file, overrides, reload) = (cli.config.clone(), cli.overrides(), controls.clone());
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match Config::load(file.as_deref(), &overrides) {
                Err(error) => tracing::error!(
                    %error,
                    "SIGHUP: the new configuration is invalid; keeping the running one"
                ),
                Ok(new) => {
                    if new.log.level != current.log.level
                        && let Err(why) = log_level.set(&new.log.level)
                    {
                        tracing::warn!(%why, "SIGHUP: log.level not changed");
                    }
                    current = new.clone();
                    reload.reload(new);
                }
            }
        }
    });
    let (first, second) = (shutdown.clone(), force.clone());
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = quit.recv() => {}
            }
        };
        next().await;
        first.cancel();
        let first_at = tokio::time::Instant::now();
        // One signal can arrive twice: `timeout` and shells send it to the process and to
        // its process group. A second signal counts only if it comes a moment later.
        loop {
            next().await;
            if first_at.elapsed() >= SAME_SIGNAL_WITHIN {
                second.cancel();
                return;
            }
        }
    });
    Ok((shutdown, force))
}
