//! `snowplow-relay [run]`: the relay until a signal says stop. The first SIGINT, SIGTERM
//! or SIGQUIT drains; a second one, a moment later, cuts the drain short. SIGUSR1 flushes
//! partial batches; SIGHUP reloads what is safe to change.

use std::process::ExitCode;
use std::time::Duration;

use snowplow_relay::Controls;
use snowplow_relay::config::Settings;
use snowplow_relay::ops::telemetry;
use tokio_util::sync::CancellationToken;

use super::{RelayFlags, runtime};

/// Signals this close to the first one are the same signal delivered twice.
const SAME_SIGNAL_WITHIN: Duration = Duration::from_millis(250);

pub(super) fn run(flags: RelayFlags) -> ExitCode {
    let settings = match flags.settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::mask_secrets_in_panics(settings.secrets());
    let log_level = telemetry::init(&settings.log);
    let Some(runtime) = runtime(settings.worker.threads) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let controls = Controls::default();
        let (shutdown, force) = match signals(flags, settings.clone(), log_level, &controls) {
            Ok(tokens) => tokens,
            Err(error) => {
                tracing::error!(%error, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let result = snowplow_relay::run_with_controls(
            settings,
            shutdown.cancelled_owned(),
            force.cancelled_owned(),
            controls,
        )
        .await;
        match result {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "snowplow-relay failed");
                ExitCode::from(error.exit_code())
            }
        }
    })
}

/// The first SIGINT, SIGTERM or SIGQUIT cancels the first token (graceful shutdown); a
/// second one cancels the second (stop draining, requeue now). SIGUSR1 flushes partial
/// batches; SIGHUP reloads the configuration (what is safe to change).
fn signals(
    flags: RelayFlags,
    mut current: Settings,
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
    let reload = controls.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // Files are read off the runtime's threads (one, by default): a slow disk
            // or a password file on a network mount must not stall the relay.
            let (file, overrides) = (flags.common.config.clone(), flags.overrides());
            let loaded = tokio::task::spawn_blocking(move || {
                Settings::load(file.as_deref(), &overrides, None)
            })
            .await
            .unwrap_or_else(|panicked| {
                Err(snowplow_relay::config::ConfigError::Invalid {
                    key: "file",
                    expected: format!("a configuration that loads ({panicked})"),
                })
            });
            match loaded {
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
