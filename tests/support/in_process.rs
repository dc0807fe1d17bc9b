//! The relay running in the test's own process (`snowplow_relay::run`), with shutdown
//! and a second signal the test sends.

use std::time::Duration;

use snowplow_relay::config::{Overrides, Settings};
use snowplow_relay::queue::Queue;
use tokio::sync::oneshot;

use super::collector::Collector;
use super::redis_server::RedisServer;

/// A configuration pointing at `redis` and `collector`, with fast retries for tests.
pub fn config(
    redis: &RedisServer,
    collector: &Collector,
    extra: &[(&'static str, &str)],
) -> Settings {
    config_for_urls(&redis.url(), &collector.url(), extra)
}

/// As [`config`], for a Redis and a collector given by URL (which may not answer yet).
pub fn config_for_urls(
    redis_url: &str,
    collector_url: &str,
    extra: &[(&'static str, &str)],
) -> Settings {
    let mut overrides = Overrides::default();
    overrides.set("redis.url", Some(redis_url));
    overrides.set("collector.url", Some(collector_url));
    overrides.set("collector.retry_initial_backoff_ms", Some("20"));
    overrides.set("collector.retry_max_backoff_ms", Some("200"));
    for (key, value) in extra {
        overrides.set(key, Some(value));
    }
    Settings::load(None, &overrides, Some(&Default::default())).unwrap()
}

/// A relay running in this process until [`Relay::stop`].
pub struct Relay {
    shutdown: Option<oneshot::Sender<()>>,
    force: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<snowplow_relay::Summary, snowplow_relay::Error>>,
}

impl Relay {
    /// A relay between `redis` and `collector` with `settings` (see [`config`]).
    pub fn with(
        redis: &RedisServer,
        collector: &Collector,
        settings: &[(&'static str, &str)],
    ) -> Relay {
        Relay::start(config(redis, collector, settings))
    }

    pub fn start(config: Settings) -> Relay {
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (force_tx, force_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(snowplow_relay::run(
            config,
            async move {
                let _ = shutdown_rx.await;
            },
            async move {
                if force_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        ));
        Relay {
            shutdown: Some(shutdown_tx),
            force: Some(force_tx),
            task,
        }
    }

    /// Graceful shutdown; waits for the relay to finish.
    pub async fn stop(self) -> snowplow_relay::Summary {
        self.stop_with(false).await
    }

    /// Shutdown followed at once by a second signal.
    pub async fn stop_now(self) -> snowplow_relay::Summary {
        self.stop_with(true).await
    }

    async fn stop_with(mut self, second_signal: bool) -> snowplow_relay::Summary {
        let _ = self.shutdown.take().unwrap().send(());
        if second_signal {
            let _ = self.force.take().unwrap().send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops within 30 s")
            .unwrap()
            .expect("relay stops cleanly")
    }
}

/// A queue handle of its own on the default list of the Redis at `redis_url` (not
/// registered; the collector is never contacted).
pub async fn connect_queue(redis_url: &str) -> Queue {
    let settings = config_for_urls(redis_url, "http://127.0.0.1:9", &[]);
    Queue::connect(&settings.redis).await.unwrap()
}
