//! How the relay reaches Redis: one server or a cluster, with its credentials and TLS
//! material, and the [`Link`] that replaces a connection which missed its deadline,
//! broke, or answers as a server that cannot take writes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult,
    ScriptInvocation, Value,
};

use bytes::Bytes;

use super::errors::{QueueError, one_line};
use super::reader::{self, ReplyConnection};
use super::sentinel::Sentinels;
use crate::config::RedisSettings;

/// Where Redis is: one server, a cluster reached through seed nodes, or the master
/// the sentinels name.
#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per link, cloned once per new connection"
)]
enum Server {
    Single(Client),
    Cluster(Arc<ClusterTarget>),
    Sentinel(Arc<Sentinels>),
}

/// How to reach a Redis Cluster: seed nodes (with credentials) and their TLS settings,
/// and every node seen since, so that a connection can be made through any live one.
struct ClusterTarget {
    seeds: Vec<redis::ConnectionInfo>,
    certs: Option<redis::TlsCertificates>,
    /// The nodes the cluster named when last asked (`CLUSTER SLOTS`).
    seen: std::sync::Mutex<Vec<redis::ConnectionInfo>>,
}

impl Server {
    /// Opens a connection; `response` bounds each command (None: the caller does).
    async fn open(
        &self,
        connect: Duration,
        response: Option<Duration>,
    ) -> Result<Connection, QueueError> {
        Ok(match self {
            Server::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(response);
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(QueueError::classify)?;
                name_connection(&mut conn).await;
                Connection::Single(conn)
            }
            Server::Cluster(target) => {
                let opened = async {
                    cluster_client(target, connect, response.unwrap_or(connect * 4))?
                        .get_async_connection()
                        .await
                };
                let mut conn = opened.await.map_err(QueueError::classify)?;
                target.remember_nodes(&mut conn).await;
                Connection::Cluster(conn)
            }
            Server::Sentinel(sentinels) => {
                let mut conn = sentinels.open(connect, response).await?;
                name_connection(&mut conn).await;
                Connection::Single(conn)
            }
        })
    }
}

/// The name every connection of this process gives itself: `snowplow-relay:<host>:<pid>`
/// (the relay's instance id without its random suffix), so `CLIENT LIST` says whose
/// connections these are, before and after the relay registers.
pub fn connection_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        format!(
            "snowplow-relay:{}:{}",
            super::hostname(),
            std::process::id()
        )
    })
}

/// Names a new connection with `HELLO 2 SETNAME`: HELLO is allowed to every user (it
/// needs no ACL rule, unlike `CLIENT SETNAME`), and 2 keeps the protocol the connection
/// speaks. A server that refuses it (before Redis 6, a proxy) leaves the connection
/// unnamed; nothing else depends on the name. (A Redis Cluster's per-node connections
/// are opened by the cluster client and stay unnamed.)
async fn name_connection(conn: &mut MultiplexedConnection) {
    let _ = redis::cmd("HELLO")
        .arg(2)
        .arg("SETNAME")
        .arg(connection_name())
        .query_async::<Value>(conn)
        .await;
}

impl ClusterTarget {
    /// Remembers the nodes the cluster names now (`CLUSTER SLOTS`, which the cluster
    /// client itself needs), as seeds for the next connection. Nothing is lost if it
    /// fails: the seeds stay.
    async fn remember_nodes(&self, conn: &mut ClusterConnection) {
        let Ok(slots) = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<Vec<Value>>>(conn)
            .await
        else {
            return;
        };
        let Some(template) = self.seeds.first() else {
            return;
        };
        let mut nodes: Vec<redis::ConnectionInfo> = Vec::new();
        for range in slots {
            // start, end, then [host, port, id, …] per node (the master first).
            for node in range.iter().skip(2) {
                let redis::Value::Array(parts) = node else {
                    continue;
                };
                let (Some(host), Some(port)) = (parts.first(), parts.get(1)) else {
                    continue;
                };
                let host = match host {
                    redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    redis::Value::SimpleString(text) => text.clone(),
                    _ => continue,
                };
                let redis::Value::Int(port) = port else {
                    continue;
                };
                if host.is_empty() || !(1..=65535).contains(port) {
                    continue;
                }
                let addr = match template.addr() {
                    redis::ConnectionAddr::TcpTls { insecure, .. } => {
                        redis::ConnectionAddr::TcpTls {
                            host,
                            port: *port as u16,
                            insecure: *insecure,
                            tls_params: None,
                        }
                    }
                    _ => redis::ConnectionAddr::Tcp(host, *port as u16),
                };
                let info = template.clone().set_addr(addr);
                if !nodes.iter().any(|n| n.addr() == info.addr()) {
                    nodes.push(info);
                }
            }
        }
        if let Ok(mut seen) = self.seen.lock() {
            *seen = nodes;
        }
    }

    /// The configured seeds, then every node seen.
    fn nodes(&self) -> Vec<redis::ConnectionInfo> {
        let mut nodes = self.seeds.clone();
        if let Ok(seen) = self.seen.lock() {
            for node in seen.iter() {
                if !nodes.iter().any(|n| n.addr() == node.addr()) {
                    nodes.push(node.clone());
                }
            }
        }
        nodes
    }
}

/// A connection to either kind of server.
#[derive(Clone)]
pub enum Connection {
    /// One server.
    Single(MultiplexedConnection),
    /// A Redis Cluster; commands go to the node owning their key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The relay's connection to Redis, replaced when it misses a deadline, breaks, or
/// answers as a server that cannot take writes. One connection serves every task
/// (requests are multiplexed); a replacement is opened by the first call that needs it.
pub(super) struct Link {
    /// Where Redis is and with which credentials; replaced by [`Link::reconfigure`].
    target: std::sync::RwLock<Arc<Target>>,
    command_timeout: Duration,
    /// The current connection, its generation, and the master switches announced when
    /// it was opened (with sentinels).
    current: tokio::sync::Mutex<Option<(u64, Connection, u64)>>,
    /// The connection claims run on ([`super::reader`]), idle between claims: a claim
    /// takes it out and puts it back only after a whole reply, so one cancelled or
    /// failed halfway leaves none behind with half a reply unread.
    claims: tokio::sync::Mutex<Option<ClaimConnection>>,
    generation: AtomicU64,
    /// Calls Redis answered (with a result or an error reply) so far.
    answered: AtomicU64,
}

/// The server and the settings it was made from (to explain a refusal).
struct Target {
    server: Server,
    settings: RedisSettings,
    /// The claim connection's TLS configuration, with a `rediss://` URL.
    claim_tls: Option<Arc<rustls::ClientConfig>>,
    /// Bumped by every reconfiguration: a connection opened with older settings is stale.
    version: u64,
}

impl Target {
    fn new(settings: &RedisSettings, version: u64) -> Result<Target, QueueError> {
        let claim_tls = match settings.url.starts_with("rediss:") {
            true => Some(reader::tls_config(&settings.tls).map_err(QueueError::classify)?),
            false => None,
        };
        Ok(Target {
            server: server(settings)?,
            settings: settings.clone(),
            claim_tls,
            version,
        })
    }
}

/// The claim connection, with what it was opened with.
struct ClaimConnection {
    conn: ReplyConnection,
    /// The settings' version.
    version: u64,
    /// The master switches announced.
    switches: u64,
}

impl Link {
    /// A link to the server `settings` name; it opens its first connection on the
    /// first call.
    pub(super) fn new(settings: &RedisSettings) -> Result<Link, QueueError> {
        Ok(Link {
            target: std::sync::RwLock::new(Arc::new(Target::new(settings, 0)?)),
            command_timeout: settings.command_timeout,
            current: tokio::sync::Mutex::new(None),
            claims: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        })
    }

    fn target(&self) -> Arc<Target> {
        match self.target.read() {
            Ok(target) => target.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Opens a connection to `target` within the command deadline; `response` bounds
    /// each of its commands (None: the caller does).
    async fn open(
        &self,
        target: &Target,
        response: Option<Duration>,
    ) -> Result<Connection, QueueError> {
        match tokio::time::timeout(
            self.command_timeout,
            target.server.open(self.command_timeout, response),
        )
        .await
        {
            Ok(Ok(conn)) => {
                // A connection made (with its handshake) is an answer too.
                self.answered.fetch_add(1, Ordering::Relaxed);
                Ok(conn)
            }
            Ok(Err(error)) => Err(unreachable(explain(error, &target.settings))),
            Err(_) => Err(QueueError::Timeout(self.command_timeout.as_millis() as u64)),
        }
    }

    /// The current connection, opening one if there is none.
    pub(super) async fn connection(&self) -> Result<(u64, Connection), QueueError> {
        let mut current = self.current.lock().await;
        let switches = self.switches();
        if let Some((generation, conn, seen)) = current.as_ref()
            && *seen == switches
        {
            return Ok((*generation, conn.clone()));
        }
        // None yet, or opened before the sentinels switched masters.
        let conn = self.open(&self.target(), None).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *current = Some((generation, conn.clone(), switches));
        Ok((generation, conn))
    }

    /// How many master switches the sentinels announced (0 without sentinels).
    fn switches(&self) -> u64 {
        match &self.target().server {
            Server::Sentinel(sentinels) => *sentinels.switches().borrow(),
            _ => 0,
        }
    }

    /// Changes whenever the sentinels announce a master switch (never without them).
    pub(super) fn switch_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.target().server {
            Server::Sentinel(sentinels) => Some(sentinels.switches()),
            _ => None,
        }
    }

    /// Opens a connection of its own whose replies may take `block` longer than the
    /// command deadline (for a blocking wait).
    pub(super) async fn open_blocking(
        &self,
        block: Duration,
    ) -> Result<BlockingConnection, QueueError> {
        let target = self.target();
        let switches = self.switches();
        let conn = self
            .open(&target, Some(block + self.command_timeout))
            .await?;
        Ok(BlockingConnection {
            conn,
            version: target.version,
            switches,
        })
    }

    /// Whether `conn` was opened with the settings in use now.
    pub(super) fn is_current(&self, conn: &BlockingConnection) -> bool {
        conn.version == self.target().version && conn.switches == self.switches()
    }

    /// The master the sentinels named at the last connection, with Redis Sentinel.
    pub(super) fn master_address(&self) -> Option<String> {
        match &self.target().server {
            Server::Sentinel(sentinels) => sentinels.current(),
            _ => None,
        }
    }

    /// Calls Redis answered so far (a reply or an error reply, not a broken connection;
    /// a connection opened counts too): two readings tell whether Redis answered
    /// anything between them.
    pub(super) fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Uses `settings` (new credentials or TLS files, same server) from now on, once a
    /// connection made with them answers `PING`; the current connection is replaced, so
    /// every call is made with them. On an error the old settings stay.
    pub(super) async fn reconfigure(&self, settings: &RedisSettings) -> Result<(), QueueError> {
        let version = self.target().version + 1;
        let target = Target::new(settings, version)?;
        let mut conn = self.open(&target, Some(self.command_timeout)).await?;
        let ping = tokio::time::timeout(
            self.command_timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return Err(explain(QueueError::classify(error), &target.settings));
            }
            Err(_) => return Err(QueueError::Timeout(self.command_timeout.as_millis() as u64)),
        }
        match self.target.write() {
            Ok(mut current) => *current = Arc::new(target),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(target),
        }
        *self.current.lock().await = None;
        Ok(())
    }

    /// Drops connection `generation` (if it is still the current one), so that the next
    /// call opens a new one.
    async fn replace(&self, generation: u64, error: &QueueError) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(g, _, _)| *g == generation) {
            *current = None;
            tracing::debug!(%error, "dropping the Redis connection; the next call opens a new one");
        }
    }

    /// Runs `call` on the current connection (opening one if needed) within one command
    /// deadline, whatever it waits for: the connection, other callers opening it, or
    /// Redis's answer. Replaces the connection when the failure says it must be.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, QueueError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let timeout = || QueueError::Timeout(self.command_timeout.as_millis() as u64);
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let (generation, conn) = tokio::time::timeout_at(deadline, self.connection())
            .await
            .map_err(|_| timeout())??;
        let result = match tokio::time::timeout_at(deadline, call(conn)).await {
            Ok(Ok(value)) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                return Ok(value);
            }
            Ok(Err(error)) => {
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    || error.code().is_some()
                {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                }
                QueueError::classify(error)
            }
            Err(_) => timeout(),
        };
        let result = self.failed(result);
        if result.needs_new_connection() {
            self.replace(generation, &result).await;
        }
        Err(result)
    }

    /// What a call's failure means with this target: with sentinels, a server that cannot
    /// take writes was demoted in a failover (the next connection asks the sentinels
    /// again, past those still naming it).
    pub(super) fn failed(&self, error: QueueError) -> QueueError {
        match (error, &self.target().server) {
            (QueueError::NotWritable(detail), Server::Sentinel(sentinels)) => {
                sentinels.demote_current();
                QueueError::FollowingFailover(detail)
            }
            (other, _) => other,
        }
    }

    /// Runs a script invocation.
    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, QueueError> {
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Runs a claim: `evalsha` (the claim script's `EVALSHA`, packed; `load` its `SCRIPT
    /// LOAD`, sent when Redis does not have it) on the claim connection, within one
    /// command deadline, and cuts the reply into `{oversized, ran dry, elements}`, each
    /// element a slice of one buffer. In a Redis Cluster the claim goes to a node the
    /// relay knows and follows its `MOVED` (or `ASK`) to the slot's owner.
    pub(super) async fn claim(
        &self,
        evalsha: &[u8],
        load: &[u8],
    ) -> Result<(u64, u8, Vec<Bytes>), QueueError> {
        let target = self.target();
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let switches = self.switches();
        let idle = self.claims.lock().await.take();
        let idle = idle.filter(|c| c.version == target.version && c.switches == switches);
        let exchange = async {
            let mut conn = match idle {
                Some(idle) => idle.conn,
                None => self.open_claim_connection(&target).await?,
            };
            // Only a cluster's nodes are followed: a single server or a sentinel's master
            // naming another host would be handed the relay's credentials.
            let cluster = matches!(target.server, Server::Cluster(_));
            let mut asking = false;
            for _ in 0..MOST_REDIRECTS {
                let reply = claim_once(&mut conn, evalsha, load, asking)
                    .await
                    .map_err(QueueError::classify)?;
                let Some((ask, addr)) = redirect(&reply, conn.info()).filter(|_| cluster) else {
                    return Ok((conn, reply));
                };
                tracing::debug!(to = %addr, ask, "a Redis Cluster node sends the claim elsewhere");
                let info = conn.info().clone().set_addr(addr);
                conn = self.open_claim_at(&target, &info).await?;
                asking = ask;
            }
            Err(QueueError::Redis(RedisError::from(std::io::Error::other(
                format!("the Redis Cluster redirected a claim {MOST_REDIRECTS} times"),
            ))))
        };
        let (conn, reply) = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => return Err(self.failed(error)),
            Err(_) => return Err(QueueError::Timeout(self.command_timeout.as_millis() as u64)),
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        let result = reader::claim_reply(reply, conn.last_scan())
            .map_err(|e| self.failed(QueueError::classify(e)));
        if !result.as_ref().is_err_and(QueueError::needs_new_connection) {
            *self.claims.lock().await = Some(ClaimConnection {
                conn,
                version: target.version,
                switches,
            });
        }
        result
    }

    /// Opens the claim connection: to the server, to the master the sentinels name, or
    /// to the first cluster node that answers (the claim is redirected from there).
    async fn open_claim_connection(&self, target: &Target) -> Result<ReplyConnection, QueueError> {
        let nodes = match &target.server {
            Server::Single(client) => vec![client.get_connection_info().clone()],
            Server::Sentinel(sentinels) => vec![sentinels.master_info(self.command_timeout).await?],
            Server::Cluster(cluster) => cluster.nodes(),
        };
        let mut failed = None;
        for node in &nodes {
            match self.open_claim_at(target, node).await {
                Ok(conn) => return Ok(conn),
                Err(error) => failed = Some(error),
            }
        }
        Err(failed.unwrap_or_else(|| {
            QueueError::Redis(RedisError::from(std::io::Error::other(
                "no Redis node to claim from",
            )))
        }))
    }

    async fn open_claim_at(
        &self,
        target: &Target,
        info: &redis::ConnectionInfo,
    ) -> Result<ReplyConnection, QueueError> {
        let conn = ReplyConnection::open(info, target.claim_tls.as_ref())
            .await
            .map_err(|error| unreachable(explain(QueueError::classify(error), &target.settings)))?;
        // A connection made (with its handshake) is an answer too, as in `Link::open`.
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Runs one command.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &Cmd,
    ) -> Result<T, QueueError> {
        self.run(|mut conn| async move { command.query_async(&mut conn).await })
            .await
    }
}

/// How many `MOVED`/`ASK` redirections one claim follows (a cluster resharding moves a
/// slot once; more is a cluster in flux, and the claim is retried later).
const MOST_REDIRECTS: usize = 4;

/// One claim on `conn`: `EVALSHA`, after `ASKING` when an `ASK` sent it there, and again
/// after `SCRIPT LOAD` if the node does not have the script.
async fn claim_once(
    conn: &mut ReplyConnection,
    evalsha: &[u8],
    load: &[u8],
    asking: bool,
) -> RedisResult<Bytes> {
    const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";
    if asking {
        redis::parse_redis_value(&conn.call(ASKING).await?)?.extract_error()?;
    }
    let reply = conn.call(evalsha).await?;
    if !reply.starts_with(b"-NOSCRIPT") {
        return Ok(reply);
    }
    redis::parse_redis_value(&conn.call(load).await?)?.extract_error()?;
    if asking {
        redis::parse_redis_value(&conn.call(ASKING).await?)?.extract_error()?;
    }
    conn.call(evalsha).await
}

/// Where a cluster node's `-MOVED <slot> <host>:<port>` or `-ASK …` reply sends a
/// command (true for `ASK`), in the form of `from`'s address (TLS or not); a node that
/// names no host means its own.
fn redirect(reply: &[u8], from: &redis::ConnectionInfo) -> Option<(bool, redis::ConnectionAddr)> {
    let (ask, rest) = if let Some(rest) = reply.strip_prefix(b"-MOVED ") {
        (false, rest)
    } else {
        (true, reply.strip_prefix(b"-ASK ")?)
    };
    let line = std::str::from_utf8(rest).ok()?.trim_end();
    let (_slot, endpoint) = line.split_once(' ')?;
    let (host, port) = endpoint.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addr = match from.addr() {
        redis::ConnectionAddr::TcpTls {
            host: own,
            insecure,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: if host.is_empty() {
                own.clone()
            } else {
                host.to_owned()
            },
            port,
            insecure: *insecure,
            tls_params: None,
        },
        redis::ConnectionAddr::Tcp(own, _) => redis::ConnectionAddr::Tcp(
            if host.is_empty() {
                own.clone()
            } else {
                host.to_owned()
            },
            port,
        ),
        _ => return None,
    };
    Some((ask, addr))
}

/// A connection of its own for blocking waits.
pub struct BlockingConnection {
    pub(super) conn: Connection,
    /// The settings' version it was opened with.
    version: u64,
    /// The master switches announced when it was opened.
    switches: u64,
}

/// A failure to open a connection that is not a refusal (credentials, TLS): Redis could
/// not be reached.
fn unreachable(error: QueueError) -> QueueError {
    match error {
        QueueError::Redis(error)
            if error.is_io_error() || error.is_timeout() || error.is_connection_refusal() =>
        {
            QueueError::Unreachable(error)
        }
        other => other,
    }
}

fn cluster_client(
    target: &ClusterTarget,
    connect: Duration,
    response: Duration,
) -> Result<ClusterClient, RedisError> {
    let mut builder = ClusterClientBuilder::new(target.nodes())
        .connection_timeout(connect)
        .response_timeout(response)
        .retries(2);
    if let Some(certs) = &target.certs {
        builder = builder.certs(certs.clone());
    }
    builder.build()
}

/// The URL, user and password the relay connects with (`#insecure` added when
/// `tls_insecure_skip_verify` is on).
fn connection_info(redis: &RedisSettings) -> Result<redis::ConnectionInfo, RedisError> {
    use redis::IntoConnectionInfo;
    let mut url = redis.url.clone();
    if redis.tls.insecure_skip_verify && !url.ends_with("#insecure") {
        url.push_str("#insecure");
    }
    let info = url.as_str().into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &redis.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &redis.password {
        settings = settings.set_password(password);
    }
    Ok(info.set_redis_settings(settings))
}

/// The CA and client certificates of a `rediss://` URL (read at start-up).
fn tls_certificates(redis: &RedisSettings) -> Option<redis::TlsCertificates> {
    let tls = &redis.tls;
    if tls.ca.is_none() && tls.client.is_none() {
        return None;
    }
    Some(redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.ca.as_ref().map(|(pem, _)| pem.clone()),
    })
}

/// Says what a connection error means for an operator: a certificate problem (naming
/// the host and the CA file), refused credentials (naming the user and where the
/// password came from, never the password), or anything else as it is.
pub(super) fn explain(error: QueueError, redis: &RedisSettings) -> QueueError {
    let QueueError::Redis(error) = error else {
        return error;
    };
    let refused = match error.code() {
        Some(code @ ("WRONGPASS" | "NOAUTH")) => Some(code.to_owned()),
        _ if error.kind() == redis::ErrorKind::AuthenticationFailed => {
            Some("authentication failed".to_owned())
        }
        _ => None,
    };
    if let Some(reply) = refused {
        return QueueError::Auth {
            user: redis.username.clone().unwrap_or_else(|| "default".into()),
            password_from: redis.password_from,
            reply,
        };
    }
    if caused_by_tls(&error) {
        let host = redis.host();
        let trust = redis.tls.ca.as_ref().map_or_else(
            || "the system's CA certificates".to_owned(),
            |(_, f)| format!("redis.tls_ca_file {}", f.display()),
        );
        return QueueError::Tls(format!(
            "TLS with Redis at {host} failed ({}); check that its certificate is signed by \
             a CA in {trust} and names {host}",
            one_line(&error.to_string())
        ));
    }
    QueueError::Redis(error)
}

/// Whether a TLS error (rustls's own type, possibly inside an I/O error or the `Arc`
/// redis-rs keeps its causes in) is behind `error`.
fn caused_by_tls(error: &RedisError) -> bool {
    fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
        if error.is::<rustls::Error>() || error.is::<rustls::pki_types::InvalidDnsNameError>() {
            return true;
        }
        if let Some(shared) = error.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            return is_tls(&**shared);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.get_ref().is_some_and(|inner| is_tls(inner));
        }
        error.source().is_some_and(is_tls)
    }
    is_tls(error)
}

/// How to reach the configured Redis (one server or a cluster), without connecting.
fn server(settings: &RedisSettings) -> Result<Server, QueueError> {
    let info = connection_info(settings).map_err(QueueError::classify)?;
    let certs = tls_certificates(settings);
    if let Some(sentinel) = &settings.sentinel {
        let sentinels =
            Arc::new(Sentinels::new(sentinel, info, certs).map_err(QueueError::classify)?);
        sentinels.watch();
        return Ok(Server::Sentinel(sentinels));
    }
    Ok(if settings.cluster {
        let mut seeds = vec![info.clone()];
        for node in &settings.cluster_nodes {
            let (host, port) = node.rsplit_once(':').unwrap_or((node, "6379"));
            let port = port.parse().unwrap_or(6379);
            let addr = match info.addr() {
                redis::ConnectionAddr::TcpTls { insecure, .. } => redis::ConnectionAddr::TcpTls {
                    host: host.to_owned(),
                    port,
                    insecure: *insecure,
                    tls_params: None,
                },
                _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
            };
            seeds.push(info.clone().set_addr(addr));
        }
        Server::Cluster(Arc::new(ClusterTarget {
            seeds,
            certs,
            seen: std::sync::Mutex::new(Vec::new()),
        }))
    } else {
        let client = match certs {
            Some(certs) => Client::build_with_tls(info, certs),
            None => Client::open(info),
        }
        .map_err(QueueError::classify)?;
        Server::Single(client)
    })
}

/// A plain connection to the configured Redis with its credentials and TLS settings, for
/// producers (the tracker's `RedisEmitter`): no scripts, no probe.
pub async fn open_connection(settings: &RedisSettings) -> Result<Connection, QueueError> {
    let timeout = settings.command_timeout;
    let result = async { server(settings)?.open(timeout, Some(timeout)).await }.await;
    result.map_err(|e| explain(e, settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ConnectionAddr, IntoConnectionInfo};

    #[test]
    fn a_redirect_names_the_node_in_the_form_of_the_one_that_sent_it() {
        let plain = "redis://u:p@10.0.0.1:7000".into_connection_info().unwrap();
        let tls = "rediss://10.0.0.1:7000#insecure"
            .into_connection_info()
            .unwrap();
        let moved = b"-MOVED 3999 10.0.0.2:7001\r\n";
        assert_eq!(
            redirect(moved, &plain),
            Some((false, ConnectionAddr::Tcp("10.0.0.2".into(), 7001)))
        );
        let Some((
            true,
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            },
        )) = redirect(b"-ASK 3999 :7002\r\n", &tls)
        else {
            panic!("an ASK over TLS");
        };
        assert_eq!((host.as_str(), port, insecure), ("10.0.0.1", 7002, true));
        for other in [
            &b"-ERR MOVED 1 a:1\r\n"[..],
            b"-MOVED 1 a\r\n",
            b"*3\r\n",
            b"-MOVED x",
        ] {
            assert_eq!(redirect(other, &plain), None, "{other:?}");
        }
    }
}
