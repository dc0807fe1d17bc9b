//! The Redis side: claiming events, acknowledging them, returning them, the dead-letter
//! list, and the leases that let any relay recover a dead relay's events.
//!
//! # Keys
//! For a list `snowplow` and a relay instance `I` (all companions carry the hash tag
//! `{snowplow}`, so in Redis Cluster they share the list's slot and one script can touch
//! them all):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `snowplow` | list | events, pushed by producers (RPUSH) and taken from the head |
//! | `{snowplow}:inflight:I` | list | events `I` claimed and has not acknowledged, in claim order |
//! | `{snowplow}:instance:I` | hash | `claimed` and `acked`: how many events `I` claimed and acknowledged so far; always `acked + LLEN(inflight) = claimed` |
//! | `{snowplow}:lease:I` | string with TTL | present while `I` is alive (heartbeat) |
//! | `{snowplow}:instances` | set | every instance that may own an in-flight list |
//! | `{snowplow}:dead` | list | dead-letter entries (see [`DeadLetter`]) |
//!
//! # Protocol
//! Every step is one Lua script, so each is atomic and costs one round trip whatever the
//! number of events:
//! - **claim**: move up to N events, and at most `claim_max_bytes` of them, from the head
//!   of the list to the tail of the in-flight list and return them. The byte budget is
//!   enforced while popping (never more than the budget could hold if every element were
//!   as large as allowed), so neither the reply nor the script's own memory grows with the
//!   elements' size. If the in-flight list already holds events past the position the
//!   caller expects, an earlier claim's reply was lost: those are returned again and
//!   nothing new is taken, so a lost reply never makes Redis send or hold the backlog
//!   twice.
//! - **ack**: trim the first K events off the in-flight list once they are resolved
//!   (delivered or dead-lettered) and write their dead-letter entries. It carries the
//!   absolute count acknowledged so far, so retrying an ack whose reply was lost does
//!   nothing twice.
//! - **release** (graceful shutdown): put every unresolved in-flight event back at the
//!   head of the list in its original order, taken from Redis's own copy, then remove the
//!   instance.
//! - **recover**: for each registered instance whose lease expired, put its in-flight
//!   events back at the head of the list and remove it. Scripts run one at a time, so two
//!   relays recovering at once never both move the same events.
//!
//! Every script first checks that the instance is still registered; if another relay
//! recovered it (its lease had expired), the script fails with [`QueueError::LeaseLost`]
//! and changes nothing: the events it held are already back in the list.
//!
//! # Rollbacks
//! Acknowledgement is positional, so it is only safe while Redis holds the history the
//! relay believes it does. A crash under `appendfsync everysec` or a failover to a
//! lagging replica can roll Redis back. Every claim, ack and release therefore checks the
//! instance's counters against the relay's own (`claimed` not below the relay's claim
//! position, `acked` not below its acknowledged count, `acked + LLEN = claimed`); on a
//! mismatch the script changes nothing and fails with [`QueueError::StateMismatch`].
//! The relay then acknowledges nothing positional: [`Queue::abandon`] returns the whole
//! in-flight list to the head of the list (events it delivered arrive twice, none is
//! lost) and the relay registers again as a new instance.
//!
//! Waiting for an empty list uses `BLMOVE list list LEFT LEFT`, which blocks until the
//! list has an element and then leaves it where it was. It changes nothing, so it can be
//! abandoned at any moment (shutdown) without a trace.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};

use crate::config::Valid;

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached or answered with an error; worth retrying.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Another relay recovered this instance's in-flight events after its lease expired.
    #[error(
        "this relay's lease expired and another relay took back its in-flight events; \
         restart to register again"
    )]
    LeaseLost,
    /// Redis no longer holds the in-flight state this relay left (it lost writes: a
    /// crash, a failover to a lagging replica, or someone edited the keys).
    #[error(
        "Redis no longer holds the in-flight state this relay left ({0}); returning \
         everything in flight to the list and registering again"
    )]
    StateMismatch(String),
    /// Redis refused the credentials.
    #[error(
        "Redis refused the credentials of user `{user}` (password from {password_from}): \
         {reply}; check redis.username and the password"
    )]
    Auth {
        /// The ACL user.
        user: String,
        /// Where the password came from.
        password_from: &'static str,
        /// Redis's error code.
        reply: String,
    },
    /// TLS with Redis failed (certificate, handshake, unreadable files).
    #[error("{0}")]
    Tls(String),
}

impl QueueError {
    fn from_script(e: RedisError) -> QueueError {
        let text = e.to_string();
        if text.contains("LEASE_LOST") {
            QueueError::LeaseLost
        } else if let Some(at) = text.find("STATE_MISMATCH") {
            QueueError::StateMismatch(
                text[at..]
                    .trim_start_matches("STATE_MISMATCH")
                    .trim()
                    .to_owned(),
            )
        } else {
            QueueError::Redis(e)
        }
    }

    /// Whether this instance must stop and register again (its in-flight list is gone
    /// or not to be trusted); anything else is worth retrying.
    pub fn needs_new_instance(&self) -> bool {
        matches!(self, QueueError::LeaseLost | QueueError::StateMismatch(_))
    }
}

/// The key names for one list and one instance.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The list producers push onto.
    pub list: String,
    /// The dead-letter list.
    pub dead: String,
    /// The set of registered instances.
    pub instances: String,
    /// Prefix of every companion key: `{list}:`.
    pub prefix: String,
}

impl Keys {
    /// Key names for `list`, with dead-letter list `dead`.
    pub fn new(list: &str, dead: &str) -> Keys {
        let prefix = format!("{{{list}}}:");
        Keys {
            list: list.to_owned(),
            dead: dead.to_owned(),
            instances: format!("{prefix}instances"),
            prefix,
        }
    }

    /// The in-flight list of `instance`.
    pub fn inflight(&self, instance: &str) -> String {
        format!("{}inflight:{instance}", self.prefix)
    }

    /// The bookkeeping hash of `instance`.
    pub fn meta(&self, instance: &str) -> String {
        format!("{}instance:{instance}", self.prefix)
    }

    /// The lease (heartbeat) key of `instance`.
    pub fn lease(&self, instance: &str) -> String {
        format!("{}lease:{instance}", self.prefix)
    }
}

/// Pushes ARGV[from..] onto a list in chunks (Lua's unpack has a stack limit).
const LUA_HELPERS: &str = r#"
local function push_all(cmd, key, items, from)
  local n = #items
  local i = from
  while i <= n do
    local last = math.min(i + 999, n)
    redis.call(cmd, key, unpack(items, i, last))
    i = last + 1
  end
end
-- Puts items back at the head of a list so that items[1] ends up first.
local function push_to_head(key, items)
  local i = #items
  while i >= 1 do
    local first = math.max(i - 999, 1)
    local chunk = {}
    for j = i, first, -1 do chunk[#chunk + 1] = items[j] end
    redis.call('LPUSH', key, unpack(chunk))
    i = first - 1
  end
end
local function check_lease(instances, id)
  if redis.call('SISMEMBER', instances, id) == 0 then
    return redis.error_reply('LEASE_LOST instance ' .. id .. ' was recovered by another relay')
  end
end
-- The instance's counters, or nil (and an error reply) if they are not consistent with
-- each other or with the relay's claim position and acknowledged count.
local function counters(meta, inflight, position, acked_by_relay)
  local acked = tonumber(redis.call('HGET', meta, 'acked') or '-1')
  local claimed = tonumber(redis.call('HGET', meta, 'claimed') or '-1')
  if acked < 0 or claimed < position or acked < acked_by_relay
      or acked + redis.call('LLEN', inflight) ~= claimed then
    return nil, nil, redis.error_reply('STATE_MISMATCH in-flight list and counters are not ' ..
      'what this relay left (acked ' .. acked .. ', claimed ' .. claimed .. ', relay at ' ..
      position .. '): Redis lost writes')
  end
  return acked, claimed
end
"#;

/// KEYS: list, inflight, meta, instances, dead.
/// ARGV: instance, expected position, max count, max element bytes, time (RFC 3339),
/// max bytes.
/// Elements over the size limit go straight to the dead-letter list: they never reach
/// the relay's memory. Returns {elements diverted, 1 if the list ran dry, elements}.
const CLAIM: &str = r#"
local lost = check_lease(KEYS[4], ARGV[1]); if lost then return lost end
local position = tonumber(ARGV[2])
local acked, claimed, mismatch = counters(KEYS[3], KEYS[2], position, 0)
if mismatch then return mismatch end
if claimed > position then
  -- The reply of the last claim was lost: send it again, take nothing new.
  return {0, 0, redis.call('LRANGE', KEYS[2], position - acked, -1)}
end
local max_count, max_element, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local keep, used, popped, diverted, dry = {}, 0, 0, 0, 0
while popped < max_count do
  -- Never pop more than the rest of the budget could hold at the largest allowed size.
  local n = math.min(math.floor((budget - used) / max_element), max_count - popped)
  if n < 1 then break end
  local moved = redis.call('LPOP', KEYS[1], n)
  if not moved then dry = 1; break end
  popped = popped + #moved
  for _, item in ipairs(moved) do
    if #item > max_element then
      local meta = cjson.encode({
        reason = 'element is ' .. #item .. ' bytes, larger than the ' .. max_element .. '-byte limit',
        failed_at = ARGV[5], relay = ARGV[1]})
      redis.call('RPUSH', KEYS[5], meta .. '\n' .. item)
      diverted = diverted + 1
    else
      keep[#keep + 1] = item
      used = used + #item
    end
  end
  if #moved < n then dry = 1; break end
end
push_all('RPUSH', KEYS[2], keep, 1)
redis.call('HSET', KEYS[3], 'claimed', claimed + #keep)
return {diverted, dry, keep}
"#;

/// KEYS: inflight, meta, instances, dead.
/// ARGV: instance, acknowledged total before, acknowledged total after, entries…
const ACK: &str = r#"
local lost = check_lease(KEYS[3], ARGV[1]); if lost then return lost end
local target = tonumber(ARGV[3])
local acked, claimed, mismatch = counters(KEYS[2], KEYS[1], target, tonumber(ARGV[2]))
if mismatch then return mismatch end
if target > acked then
  redis.call('LTRIM', KEYS[1], target - acked, -1)
  redis.call('HSET', KEYS[2], 'acked', target)
  push_all('RPUSH', KEYS[4], ARGV, 4)
end
return target
"#;

/// KEYS: list, inflight, meta, instances, dead, lease.
/// ARGV: instance, window start, resolved flags ('1' per resolved position), claim
/// position, entries…
/// Returns {events returned, 1 if the counters did not match and everything went back}.
const RELEASE: &str = r#"
local lost = check_lease(KEYS[4], ARGV[1]); if lost then return lost end
local base = tonumber(ARGV[2])
local flags = ARGV[3]
local acked, claimed, mismatch = counters(KEYS[3], KEYS[2], tonumber(ARGV[4]), base)
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local back = {}
for i, item in ipairs(items) do
  local offset = (acked or 0) + i - base
  if mismatch or offset < 1 or string.sub(flags, offset, offset) ~= '1' then
    back[#back + 1] = item
  end
end
push_to_head(KEYS[1], back)
-- After a rollback nothing positional is trusted: the resolved events went back too,
-- and their dead-letter entries are written again when they are claimed again.
if not mismatch then push_all('RPUSH', KEYS[5], ARGV, 5) end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[6])
redis.call('SREM', KEYS[4], ARGV[1])
return {#back, mismatch and 1 or 0}
"#;

/// KEYS: list, dead. Returns {list length, dead length, head dtm or false}.
const SAMPLE: &str = r#"
local list, dead = redis.call('LLEN', KEYS[1]), redis.call('LLEN', KEYS[2])
local dtm = false
if list > 0 then
  local head = redis.call('LINDEX', KEYS[1], 0)
  if head and #head <= 65536 then
    local ok, event = pcall(cjson.decode, head)
    if ok and type(event) == 'table' and event['dtm'] ~= nil then dtm = tostring(event['dtm']) end
  end
end
return {list, dead, dtm}
"#;

/// KEYS: list, inflight, meta, instances, lease. ARGV: instance.
/// Returns every in-flight event to the head of the list and removes the instance.
const ABANDON: &str = r#"
local items = redis.call('LRANGE', KEYS[2], 0, -1)
push_to_head(KEYS[1], items)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5])
redis.call('SREM', KEYS[4], ARGV[1])
return #items
"#;

/// KEYS: list, instances. ARGV: key prefix. Returns {instances, events} recovered.
const RECOVER: &str = r#"
local instances, events = 0, 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. id) == 0 then
    local inflight = ARGV[1] .. 'inflight:' .. id
    local items = redis.call('LRANGE', inflight, 0, -1)
    push_to_head(KEYS[1], items)
    redis.call('DEL', inflight, ARGV[1] .. 'instance:' .. id)
    redis.call('SREM', KEYS[2], id)
    instances = instances + 1
    events = events + #items
  end
end
return {instances, events}
"#;

/// KEYS: dead, list. ARGV: max count. Moves up to N dead-letter entries (oldest first)
/// back to the tail of the list, stripped of their metadata line, in one atomic step.
const REPLAY: &str = r#"
local entries = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #entries == 0 then return 0 end
local originals = {}
for i, entry in ipairs(entries) do
  local newline = string.find(entry, '\n', 1, true)
  if newline then originals[i] = string.sub(entry, newline + 1) else originals[i] = entry end
end
push_all('RPUSH', KEYS[2], originals, 1)
redis.call('LTRIM', KEYS[1], #entries, -1)
return #entries
"#;

/// KEYS: instances, meta, lease. ARGV: instance, lease ttl ms, host, pid, started.
const REGISTER: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'acked', 0, 'claimed', 0, 'host', ARGV[3], 'pid', ARGV[4], 'started', ARGV[5])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return 1
"#;

/// KEYS: instances, lease. ARGV: instance, lease ttl ms.
const HEARTBEAT: &str = r#"
local lost = check_lease(KEYS[1], ARGV[1]); if lost then return lost end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_HELPERS}{body}"))
}

/// Events recovered from relays whose lease expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Dead instances cleaned up.
    pub instances: u64,
    /// Events put back at the head of the list.
    pub events: u64,
}

/// What one claim returned.
#[derive(Debug, Default)]
pub struct Claim {
    /// In-flight elements from the requested position on, oldest first.
    pub elements: Vec<Bytes>,
    /// Elements over the size limit that went straight to the dead-letter list.
    pub oversized: u64,
    /// The list held fewer events than the claim could take.
    pub ran_dry: bool,
}

/// What [`Queue::sample`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Events waiting in the list.
    pub list: u64,
    /// Entries in the dead-letter list.
    pub dead: u64,
    /// The head event's `dtm` (epoch milliseconds), if it has one.
    pub head_dtm_millis: Option<u64>,
}

/// What the shutdown release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Events returned to the head of the list.
    pub requeued: u64,
    /// Redis had lost writes: everything in flight went back, resolved or not.
    pub state_mismatch: bool,
}

/// Where Redis is: one server, or a cluster reached through seed nodes.
#[derive(Clone)]
enum Server {
    Single(Client),
    Cluster(ClusterTarget),
}

/// How to reach a Redis Cluster: a seed node (with credentials) and its TLS settings.
#[derive(Clone)]
struct ClusterTarget {
    seed: redis::ConnectionInfo,
    certs: Option<redis::TlsCertificates>,
}

/// A connection to either kind of server; both reconnect by themselves after an error.
#[derive(Clone)]
pub enum Connection {
    /// One server (reconnecting `ConnectionManager`).
    Single(ConnectionManager),
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

/// A connection of its own for blocking waits.
pub enum BlockingConnection {
    /// One server.
    Single(redis::aio::MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

fn cluster_client(
    target: &ClusterTarget,
    connect: Duration,
    response: Duration,
) -> Result<ClusterClient, RedisError> {
    let mut builder = ClusterClientBuilder::new(vec![target.seed.clone()])
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
fn connection_info(config: &Valid) -> Result<redis::ConnectionInfo, RedisError> {
    use redis::IntoConnectionInfo;
    let mut url = config.redis.url.clone();
    if config.redis.tls_insecure_skip_verify && !url.ends_with("#insecure") {
        url.push_str("#insecure");
    }
    let info = url.as_str().into_connection_info()?;
    let credentials = config.redis_credentials();
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &credentials.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &credentials.password {
        settings = settings.set_password(password);
    }
    Ok(info.set_redis_settings(settings))
}

/// The CA and client certificate files of a `rediss://` URL, read (validation already
/// checked that they are readable).
fn tls_certificates(config: &Valid) -> Result<Option<redis::TlsCertificates>, QueueError> {
    let redis = &config.redis;
    if redis.tls_ca_file.is_none() && redis.tls_client_cert_file.is_none() {
        return Ok(None);
    }
    let read = |key: &'static str, file: &std::path::Path| {
        crate::config::read_file(key, file).map_err(|e| QueueError::Tls(e.to_string()))
    };
    let root_cert = match &redis.tls_ca_file {
        Some(file) => Some(read("redis.tls_ca_file", file)?),
        None => None,
    };
    let client_tls = match (&redis.tls_client_cert_file, &redis.tls_client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls_client_cert_file", cert)?,
            client_key: read("redis.tls_client_key_file", key)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Says what a connection error means for an operator: a certificate problem (naming
/// the host and the CA file), refused credentials (naming the user and where the
/// password came from, never the password), or anything else as it is.
fn explain(error: RedisError, config: &Valid) -> QueueError {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    if error.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        let credentials = config.redis_credentials();
        return QueueError::Auth {
            user: credentials.username.unwrap_or_else(|| "default".into()),
            password_from: credentials.source,
            reply: text
                .split_whitespace()
                .find(|w| w.contains("WRONGPASS") || w.contains("NOAUTH"))
                .unwrap_or("authentication failed")
                .to_owned(),
        };
    }
    if lower.contains("certificate") || lower.contains("handshake") || lower.contains("tls") {
        let host = reqwest::Url::parse(&config.redis.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let trust = config.redis.tls_ca_file.as_ref().map_or_else(
            || "the system's CA certificates".to_owned(),
            |f| format!("redis.tls_ca_file {}", f.display()),
        );
        return QueueError::Tls(format!(
            "TLS with Redis at {host} failed ({text}); check that its certificate is signed by \
             a CA in {trust} and names {host}"
        ));
    }
    QueueError::Redis(error)
}

/// One relay instance's handle on the list.
pub struct Queue {
    server: Server,
    conn: Connection,
    keys: Keys,
    instance: String,
    lease_ttl: Duration,
    command_timeout: Duration,
    claim_script: Script,
    ack_script: Script,
    release_script: Script,
    abandon_script: Script,
    sample_script: Script,
    recover_script: Script,
    register_script: Script,
    heartbeat_script: Script,
}

impl Queue {
    /// Connects (one attempt; the caller decides how to retry) and names this instance.
    /// Call [`Queue::register`] before claiming.
    pub async fn connect(settings: &Valid) -> Result<Queue, QueueError> {
        Self::connect_inner(settings).await.map_err(|e| match e {
            QueueError::Redis(error) => explain(error, settings),
            other => other,
        })
    }

    async fn connect_inner(settings: &Valid) -> Result<Queue, QueueError> {
        let config = &settings.redis;
        let dead_letter_key = settings.dead_letter_key();
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let info = connection_info(settings)?;
        let certs = tls_certificates(settings)?;
        let (server, conn) = if config.cluster {
            let target = ClusterTarget { seed: info, certs };
            let client = cluster_client(&target, command_timeout, command_timeout)?;
            let conn = client.get_async_connection().await?;
            (Server::Cluster(target), Connection::Cluster(conn))
        } else {
            let client = match certs {
                Some(certs) => Client::build_with_tls(info, certs)?,
                None => Client::open(info)?,
            };
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(command_timeout))
                .set_response_timeout(Some(command_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            let conn = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
            (Server::Single(client), Connection::Single(conn))
        };
        Ok(Queue {
            server,
            conn,
            keys: Keys::new(&config.key, dead_letter_key),
            instance: instance_id(),
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
            command_timeout,
            claim_script: script(CLAIM),
            ack_script: script(ACK),
            release_script: script(RELEASE),
            abandon_script: script(ABANDON),
            sample_script: script(SAMPLE),
            recover_script: script(RECOVER),
            register_script: script(REGISTER),
            heartbeat_script: script(HEARTBEAT),
        })
    }

    /// This instance's id: `host:pid:random`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// How long the lease lives without a heartbeat.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Registers this instance and takes its first lease.
    pub async fn register(&self) -> Result<(), QueueError> {
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        self.register_script
            .key(&self.keys.instances)
            .key(self.keys.meta(&self.instance))
            .key(self.keys.lease(&self.instance))
            .arg(&self.instance)
            .arg(self.lease_ttl.as_millis() as u64)
            .arg(hostname())
            .arg(std::process::id())
            .arg(started)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Renews the lease.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        self.heartbeat_script
            .key(&self.keys.instances)
            .key(self.keys.lease(&self.instance))
            .arg(&self.instance)
            .arg(self.lease_ttl.as_millis() as u64)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(QueueError::from_script)?;
        Ok(())
    }

    /// Returns the in-flight events of every instance whose lease expired to the head of
    /// the list.
    pub async fn recover_expired(&self) -> Result<Recovered, QueueError> {
        let (instances, events): (u64, u64) = self
            .recover_script
            .key(&self.keys.list)
            .key(&self.keys.instances)
            .arg(&self.keys.prefix)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Recovered { instances, events })
    }

    /// Claims up to `max` events. `position` is how many events this instance has claimed
    /// so far (acknowledged or not); the result holds every in-flight event from that
    /// position on, oldest first: the new claims, plus any earlier claim whose reply
    /// never arrived. Elements larger than `max_element_bytes` are moved to the
    /// dead-letter list instead.
    pub async fn claim(
        &self,
        position: u64,
        max: usize,
        max_element_bytes: usize,
        max_bytes: usize,
    ) -> Result<Claim, QueueError> {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let (oversized, ran_dry, items): (u64, u8, Vec<Vec<u8>>) = self
            .claim_script
            .key(&self.keys.list)
            .key(self.keys.inflight(&self.instance))
            .key(self.keys.meta(&self.instance))
            .key(&self.keys.instances)
            .key(&self.keys.dead)
            .arg(&self.instance)
            .arg(position)
            .arg(max)
            .arg(max_element_bytes)
            .arg(now)
            .arg(max_bytes)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(QueueError::from_script)?;
        Ok(Claim {
            elements: items.into_iter().map(Bytes::from).collect(),
            oversized,
            ran_dry: ran_dry == 1,
        })
    }

    /// Acknowledges the events from position `from` to before `to` and appends `dead`
    /// entries to the dead-letter list, atomically. Safe to retry.
    pub async fn ack(&self, from: u64, to: u64, dead: &[&[u8]]) -> Result<(), QueueError> {
        let mut invocation = self.ack_script.prepare_invoke();
        invocation
            .key(self.keys.inflight(&self.instance))
            .key(self.keys.meta(&self.instance))
            .key(&self.keys.instances)
            .key(&self.keys.dead)
            .arg(&self.instance)
            .arg(from)
            .arg(to);
        for entry in dead {
            invocation.arg(*entry);
        }
        invocation
            .invoke_async::<u64>(&mut self.conn.clone())
            .await
            .map_err(QueueError::from_script)?;
        Ok(())
    }

    /// Graceful shutdown: every in-flight event at or after `window_start` whose entry in
    /// `resolved` is not `true` (and any the relay never saw, up to and past `position`)
    /// goes back to the head of the list in its original order; `dead` entries are
    /// written; the instance is removed. If Redis lost writes, everything in flight goes
    /// back instead.
    pub async fn release(
        &self,
        window_start: u64,
        resolved: &[bool],
        position: u64,
        dead: &[&[u8]],
    ) -> Result<Released, QueueError> {
        let flags: String = resolved
            .iter()
            .map(|&r| if r { '1' } else { '0' })
            .collect();
        let mut invocation = self.release_script.prepare_invoke();
        invocation
            .key(&self.keys.list)
            .key(self.keys.inflight(&self.instance))
            .key(self.keys.meta(&self.instance))
            .key(&self.keys.instances)
            .key(&self.keys.dead)
            .key(self.keys.lease(&self.instance))
            .arg(&self.instance)
            .arg(window_start)
            .arg(flags)
            .arg(position);
        for entry in dead {
            invocation.arg(*entry);
        }
        let (requeued, mismatch): (u64, u8) = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(QueueError::from_script)?;
        Ok(Released {
            requeued,
            state_mismatch: mismatch == 1,
        })
    }

    /// Returns this instance's whole in-flight list to the head of the list and removes
    /// the instance: what a relay does when it can no longer trust positions. Returns
    /// how many events went back.
    pub async fn abandon(&self) -> Result<u64, QueueError> {
        Ok(self
            .abandon_script
            .key(&self.keys.list)
            .key(self.keys.inflight(&self.instance))
            .key(self.keys.meta(&self.instance))
            .key(&self.keys.instances)
            .key(self.keys.lease(&self.instance))
            .arg(&self.instance)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// The list's and the dead-letter list's lengths and the head event's `dtm`, for the
    /// metrics. One round trip; the head element is read inside Redis and only its `dtm`
    /// comes back (elements over 64 KiB are not read at all).
    pub async fn sample(&self) -> Result<Sample, QueueError> {
        let (list, dead, dtm): (u64, u64, Option<String>) = self
            .sample_script
            .key(&self.keys.list)
            .key(&self.keys.dead)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Sample {
            list,
            dead,
            head_dtm_millis: dtm.and_then(|d| d.parse::<f64>().ok()).map(|d| d as u64),
        })
    }

    /// Redis' `maxmemory-policy`, or `None` where `CONFIG` is disabled (managed Redis).
    pub async fn eviction_policy(&self) -> Option<String> {
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut self.conn.clone())
            .await
            .ok()?;
        reply.into_iter().nth(1)
    }

    /// Opens a connection of its own for [`Queue::wait_for_events`]: a blocking command
    /// would stall every other command sharing its connection.
    pub async fn blocking_connection(
        &self,
        block: Duration,
    ) -> Result<BlockingConnection, QueueError> {
        let response_timeout = block + self.command_timeout;
        Ok(match &self.server {
            Server::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.command_timeout))
                    .set_response_timeout(Some(response_timeout));
                BlockingConnection::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Server::Cluster(target) => BlockingConnection::Cluster(
                cluster_client(target, self.command_timeout, response_timeout)?
                    .get_async_connection()
                    .await?,
            ),
        })
    }

    /// Waits up to `block` for the list to hold an element, without taking it.
    pub async fn wait_for_events(
        &self,
        conn: &mut BlockingConnection,
        block: Duration,
    ) -> Result<(), QueueError> {
        let mut command = redis::cmd("BLMOVE");
        command
            .arg(&self.keys.list)
            .arg(&self.keys.list)
            .arg("LEFT")
            .arg("LEFT")
            .arg(block.as_secs_f64());
        match conn {
            BlockingConnection::Single(conn) => {
                command.query_async::<Option<Vec<u8>>>(conn).await?
            }
            BlockingConnection::Cluster(conn) => {
                command.query_async::<Option<Vec<u8>>>(conn).await?
            }
        };
        Ok(())
    }

    /// How many entries the dead-letter list holds.
    pub async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        Ok(redis::cmd("LLEN")
            .arg(&self.keys.dead)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// The first `limit` dead-letter entries, oldest first, as stored.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<Vec<u8>>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("LRANGE")
            .arg(&self.keys.dead)
            .arg(0)
            .arg(limit - 1)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Moves up to `max` of the oldest dead-letter entries back to the tail of the list
    /// (original bytes only), atomically. Returns how many moved; 0 when none are left.
    pub async fn replay_dead_letters(&self, max: usize) -> Result<u64, QueueError> {
        Ok(script(REPLAY)
            .key(&self.keys.dead)
            .key(&self.keys.list)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// A connection for one-off commands (tools and tests).
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }
}

/// An entry of the dead-letter list: one line of JSON metadata, a newline, then the
/// original element byte for byte (whatever its bytes are).
///
/// ```text
/// {"reason":"collector answered 400","status":400,"failed_at":"2026-11-28T10:00:00.123Z","relay":"host:42:ab12cd"}
/// {"e":"pv","tv":"py-0.4.0","p":"pc",…}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// Why the element could not be delivered.
    pub reason: String,
    /// The collector's HTTP status, when it answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// When it was dead-lettered (RFC 3339, UTC).
    pub failed_at: String,
    /// The relay instance that dead-lettered it.
    pub relay: String,
}

impl DeadLetter {
    /// A new entry stamped with the current time.
    pub fn new(reason: impl Into<String>, status: Option<u16>, relay: &str) -> DeadLetter {
        DeadLetter {
            reason: reason.into(),
            status,
            failed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            relay: relay.to_owned(),
        }
    }

    /// The entry as stored in Redis: metadata line, `\n`, original element.
    pub fn encode(&self, element: &[u8]) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("serialisable");
        out.push(b'\n');
        out.extend_from_slice(element);
        out
    }

    /// Splits a stored entry into its metadata and the original element.
    pub fn decode(entry: &[u8]) -> Option<(DeadLetter, &[u8])> {
        let newline = entry.iter().position(|&b| b == b'\n')?;
        let meta = serde_json::from_slice(&entry[..newline]).ok()?;
        Some((meta, &entry[newline + 1..]))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn instance_id() -> String {
    format!(
        "{}:{}:{:08x}",
        hostname(),
        std::process::id(),
        fastrand::u32(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_the_element_byte_for_byte() {
        let element = b"{\"e\":\"pv\"}\nnot even \xff utf-8";
        let entry = DeadLetter::new("collector answered 400", Some(400), "h:1:0").encode(element);
        let (meta, original) = DeadLetter::decode(&entry).unwrap();
        assert_eq!(original, element);
        assert_eq!(meta.status, Some(400));
        assert_eq!(meta.reason, "collector answered 400");
    }

    #[test]
    fn companion_keys_share_the_lists_hash_tag() {
        let keys = Keys::new("snowplow", "{snowplow}:dead");
        for key in [
            keys.inflight("i"),
            keys.meta("i"),
            keys.lease("i"),
            keys.instances.clone(),
        ] {
            assert!(key.starts_with("{snowplow}:"), "{key}");
        }
    }
}
