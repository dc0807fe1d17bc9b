//! Redis Sentinel: where the master named `redis.sentinel_master` is now. The sentinels
//! are asked in turn (the one that answered last first; one that is down is skipped),
//! and the master is reached with `redis.url`'s scheme, credentials and database at the
//! address they give. Every new connection asks again, so a connection dropped by a
//! failover, or replaced because its server became a replica (`READONLY`), leads to the
//! new master.
//!
//! Nothing else is asked of the master to check its role: `ROLE` and `INFO` are not in
//! the relay's least-privilege permissions. A sentinel that still names a demoted master
//! shows itself at the first write (`READONLY`), which replaces the connection, and the
//! next one asks again.
//!
//! redis-rs's own `sentinel` feature is not used: it checks the master with `ROLE` (or
//! `INFO replication`), which the relay's user may not run, and opens a connection to
//! the master only to ask it that.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    TlsCertificates,
};

use super::errors::{QueueError, one_line};
use crate::config::SentinelSettings;

/// The sentinels of one master, and how to reach the master they name.
pub(super) struct Sentinels {
    /// One client per sentinel, in the configured order, with its `host:port`.
    sentinels: Vec<(Client, String)>,
    /// The master's name.
    master: String,
    /// The master's connection settings: address replaced by the sentinels' answer.
    template: ConnectionInfo,
    certs: Option<TlsCertificates>,
    /// The sentinel that answered last (asked first).
    first: AtomicUsize,
    /// The master's address when a connection was last opened.
    current: Mutex<Option<String>>,
    /// An address found unable to take writes (a master demoted in a failover): a
    /// sentinel that still names it (its view not updated yet) is asked past.
    demoted: Mutex<Option<String>>,
    /// How many `+switch-master` of this master the sentinels announced: a connection
    /// opened before the last one goes to a master that is one no longer (it may take
    /// writes for seconds more, until the sentinels demote it).
    switches: tokio::sync::watch::Sender<u64>,
}

impl Sentinels {
    /// Clients for the sentinels of `sentinel`; `template` holds the master's scheme,
    /// credentials and database (from `redis.url`), `certs` the TLS files (used for the
    /// sentinels too when the URL is `rediss://`).
    pub(super) fn new(
        sentinel: &SentinelSettings,
        template: ConnectionInfo,
        certs: Option<TlsCertificates>,
    ) -> Result<Sentinels, RedisError> {
        let tls = match template.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => Some(*insecure),
            _ => None,
        };
        let mut redis = redis::RedisConnectionInfo::default();
        if let Some(user) = &sentinel.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &sentinel.password {
            redis = redis.set_password(password);
        }
        let sentinels = sentinel
            .endpoints
            .iter()
            .map(|(host, port)| {
                let info = address(host, *port, tls)
                    .into_connection_info()?
                    .set_redis_settings(redis.clone());
                let client = match &certs {
                    Some(certs) if tls.is_some() => Client::build_with_tls(info, certs.clone()),
                    _ => Client::open(info),
                }?;
                Ok((client, format!("{host}:{port}")))
            })
            .collect::<Result<Vec<_>, RedisError>>()?;
        Ok(Sentinels {
            sentinels,
            master: sentinel.master.clone(),
            template,
            certs,
            first: AtomicUsize::new(0),
            current: Mutex::new(None),
            demoted: Mutex::new(None),
            switches: tokio::sync::watch::channel(0).0,
        })
    }

    /// Asks the sentinels, in turn, where the master is: `(host, port)`. Each sentinel
    /// gets `deadline` to answer; one that does not, or does not know the master, is
    /// skipped.
    pub(super) async fn master_address(
        &self,
        deadline: Duration,
    ) -> Result<(String, u16), QueueError> {
        let count = self.sentinels.len();
        let start = self.first.load(Ordering::Relaxed) % count.max(1);
        let demoted = self.demoted.lock().ok().and_then(|d| d.clone());
        let mut tried = Vec::new();
        let mut stale = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            let (client, name) = &self.sentinels[index];
            match ask(client, &self.master, deadline).await {
                Ok(Some(address))
                    if demoted.as_deref() == Some(&format!("{}:{}", address.0, address.1)) =>
                {
                    // Not updated yet: another sentinel may know better.
                    stale.get_or_insert(address);
                    tried.push(format!("{name}: names the demoted master"));
                }
                Ok(Some(address)) => {
                    self.first.store(index, Ordering::Relaxed);
                    if let Ok(mut demoted) = self.demoted.lock() {
                        *demoted = None;
                    }
                    return Ok(address);
                }
                Ok(None) => tried.push(format!("{name}: does not know master {}", self.master)),
                Err(error) => tried.push(format!("{name}: {error}")),
            }
        }
        if let Some(address) = stale {
            // Every sentinel that answered names it: the failover is not done (or the
            // server takes writes again); the next write tells.
            return Ok(address);
        }
        Err(QueueError::NoSentinel(format!(
            "no sentinel answers where master {} is ({})",
            self.master,
            one_line(&tried.join("; "))
        )))
    }

    /// Asks the sentinels where the master is: its connection settings.
    pub(super) async fn master_info(
        &self,
        connect: Duration,
    ) -> Result<ConnectionInfo, QueueError> {
        let (host, port) = self.master_address(connect).await?;
        tracing::debug!(master = %self.master, host, port, "the sentinels name the master");
        let tls = match self.template.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => Some(*insecure),
            _ => None,
        };
        Ok(self.template.clone().set_addr(address(&host, port, tls)))
    }

    /// Asks the sentinels where the master is and connects to it.
    pub(super) async fn open(
        &self,
        connect: Duration,
        response: Option<Duration>,
    ) -> Result<MultiplexedConnection, QueueError> {
        let info = self.master_info(connect).await?;
        let (master, tls) = match info.addr() {
            ConnectionAddr::TcpTls { host, port, .. } => (format!("{host}:{port}"), true),
            ConnectionAddr::Tcp(host, port) => (format!("{host}:{port}"), false),
            other => (other.to_string(), false),
        };
        let client = match &self.certs {
            Some(certs) if tls => Client::build_with_tls(info, certs.clone()),
            _ => Client::open(info),
        }
        .map_err(QueueError::classify)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(response);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(QueueError::classify)?;
        if let Ok(mut current) = self.current.lock() {
            *current = Some(master);
        }
        Ok(conn)
    }

    /// Follows the sentinels' `+switch-master` announcements (subscribed on one sentinel
    /// at a time, the next one when it drops) for as long as these sentinels are in
    /// use; each switch of this master makes every connection opened before it stale.
    pub(super) fn watch(self: &std::sync::Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sentinels = std::sync::Arc::downgrade(self);
        runtime.spawn(async move {
            let mut next = 0;
            loop {
                let Some(this) = sentinels.upgrade() else { return };
                let (client, _) = &this.sentinels[next % this.sentinels.len()];
                let client = client.clone();
                let master = this.master.clone();
                drop(this);
                next += 1;
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe("+switch-master").await?;
                    Ok::<_, RedisError>(pubsub)
                };
                let Ok(Ok(mut pubsub)) =
                    tokio::time::timeout(Duration::from_secs(5), subscribed).await
                else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let mut messages = pubsub.on_message();
                loop {
                    // Wakes now and then to notice the sentinels are no longer used.
                    let message =
                        tokio::time::timeout(Duration::from_secs(30), futures_util::StreamExt::next(&mut messages)).await;
                    let Some(this) = sentinels.upgrade() else { return };
                    match message {
                        Ok(Some(message)) => {
                            let payload: String = message.get_payload().unwrap_or_default();
                            if payload.split(' ').next() == Some(master.as_str()) {
                                this.switches.send_modify(|count| *count += 1);
                                tracing::debug!(%payload, "the sentinels announced a switch of master");
                            }
                        }
                        Ok(None) => break,
                        Err(_idle) => {}
                    }
                }
            }
        });
    }

    /// How many switches of the master the sentinels announced so far.
    pub(super) fn switches(&self) -> tokio::sync::watch::Receiver<u64> {
        self.switches.subscribe()
    }

    /// The master at the last connection opened cannot take writes (a failover demoted
    /// it): the next lookups prefer sentinels that name another.
    pub(super) fn demote_current(&self) {
        let current = self.current();
        if let Ok(mut demoted) = self.demoted.lock() {
            *demoted = current;
        }
    }

    /// The master's address at the last connection opened.
    pub(super) fn current(&self) -> Option<String> {
        self.current.lock().ok().and_then(|current| current.clone())
    }
}

/// `host:port`, over TLS (`Some(insecure)`) or not.
fn address(host: &str, port: u16, tls: Option<bool>) -> ConnectionAddr {
    match tls {
        Some(insecure) => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure,
            tls_params: None,
        },
        None => ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

/// One sentinel's answer: the master's address, or `None` if it does not know it.
async fn ask(
    client: &Client,
    master: &str,
    deadline: Duration,
) -> Result<Option<(String, u16)>, RedisError> {
    let asked = async {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(deadline))
            .set_response_timeout(Some(deadline));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async::<Option<(String, u16)>>(&mut conn)
            .await
    };
    match tokio::time::timeout(deadline, asked).await {
        Ok(answer) => answer,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} ms", deadline.as_millis()),
        ))),
    }
}
