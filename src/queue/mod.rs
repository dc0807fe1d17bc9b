//! The Redis side: claiming events, acknowledging them, parking the ones that keep
//! failing, returning them, the dead-letter list, and the leases that let any relay
//! recover a dead relay's events.
//!
//! It may touch: Redis, [`crate::config`]'s `RedisSettings`, [`crate::text`]. It knows
//! nothing of HTTP, metrics or the relay's tasks: it answers with results and
//! [`QueueError`]s, and the relay decides what they mean for health and logs.
//!
//! The keys, the protocol (one Lua script per step, `scripts/*.lua`, each documented in
//! its header), what a script refused halfway leaves, a full Redis and rollbacks are
//! described in `docs/design.md#the-queue-protocol`; the rule every script follows is
//! in `scripts/helpers.lua`.
//!
//! # Connections
//! Every call has a deadline (`redis.command_timeout_ms`). A connection that missed it,
//! broke, or answers `READONLY`, `MASTERDOWN` or `LOADING` (a demoted or restarting
//! server behind the same address) is dropped and a new one is opened by the next call;
//! the callers retry with backoff. Waiting for an empty list uses `BLMOVE list list LEFT
//! LEFT` on a connection of its own: it blocks until the list has an element and leaves
//! it where it was, so it can be abandoned at any moment without a trace.

mod connection;
mod errors;
mod keys;
mod reader;
mod records;
mod sentinel;

use std::time::Duration;

use redis::{Script, ToRedisArgs};

use bytes::Bytes;

pub use connection::{BlockingConnection, Connection, open_connection};
use connection::{Link, explain};
pub use errors::{QueueError, one_line};
use keys::{InstanceKeys, Key};
pub use keys::{Keys, LAYOUT_VERSION, shown_key};
pub use records::{DeadLetter, Entry, Parked, UNLABELLED, replayed_element, timestamp};

/// Which dead-letter entries a tool takes: each list matches any of its values (an empty
/// list matches all); `since` and `through` bound `failed_at`, inclusive, written as
/// [`timestamp`] writes them. Decided per entry by `dead_filter.lua`, the one place.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterFilter {
    /// The metric's `reason` labels, or [`UNLABELLED`].
    pub reasons: Vec<String>,
    /// The collector's statuses.
    pub statuses: Vec<u16>,
    /// Relay instance ids, or their `host` or `host:pid` prefix.
    pub relays: Vec<String>,
    /// Dead-lettered at or after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Dead-lettered at or before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
}

impl DeadLetterFilter {
    /// Whether it takes every entry.
    pub fn is_empty(&self) -> bool {
        *self == DeadLetterFilter::default()
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

/// The order a tool reads the dead-letter list in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// From the head: the oldest first.
    OldestFirst,
    /// From the tail: the newest first.
    NewestFirst,
}

/// What a step of [`Queue::move_dead_letters`] does with the entries it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Their elements go back to the list's tail.
    Replay,
    /// They are removed.
    Drop,
}

/// Where [`Queue::push_dead_letters`] appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The dead-letter list, entries as given.
    DeadLetters,
    /// The list, each entry's element ([`replayed_element`]).
    List,
}

/// Backoff between failed Redis calls of the relay's tasks: from 100 ms to 5 s.
pub const REDIS_BACKOFF: snowplow_relay_tracker::retry::Backoff =
    snowplow_relay_tracker::retry::Backoff {
        initial: std::time::Duration::from_millis(100),
        max: std::time::Duration::from_secs(5),
    };

use crate::config::RedisSettings;

const HELPERS: &str = include_str!("scripts/helpers.lua");

/// The scripts, loaded for one Redis version: with `#!lua flags=…` lines on Redis 7,
/// without them before.
struct Scripts {
    claim: Script,
    /// The claim's `SCRIPT LOAD`, packed: claims run on a connection of their own
    /// ([`reader`]), which loads the script itself.
    load_claim: Vec<u8>,
    ack: Script,
    settle_parked: Script,
    release: Script,
    abandon: Script,
    recover: Script,
    register: Script,
    heartbeat: Script,
    sample: Script,
    dead_select: Script,
    dead_move: Script,
    layout: Script,
    unversion: Script,
}

impl Scripts {
    fn new(flags: bool) -> Scripts {
        let code = |flag: &str, body: &str| {
            let shebang = if flags {
                format!("#!lua flags={flag}\n")
            } else {
                String::new()
            };
            format!("{shebang}{HELPERS}{body}")
        };
        let with = |flag: &str, body: &str| Script::new(&code(flag, body));
        let drain = |body: &str| with("allow-oom", body);
        let claim_code = code("allow-oom", include_str!("scripts/claim.lua"));
        Scripts {
            claim: Script::new(&claim_code),
            load_claim: redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(&claim_code)
                .get_packed_command(),
            ack: drain(include_str!("scripts/ack.lua")),
            settle_parked: drain(include_str!("scripts/settle_parked.lua")),
            release: drain(include_str!("scripts/release.lua")),
            abandon: drain(include_str!("scripts/abandon.lua")),
            recover: drain(include_str!("scripts/recover.lua")),
            register: drain(include_str!("scripts/register.lua")),
            heartbeat: drain(include_str!("scripts/heartbeat.lua")),
            sample: with("no-writes", include_str!("scripts/sample.lua")),
            // The operator's dead-letter tools.
            dead_select: with(
                "no-writes",
                concat!(
                    include_str!("scripts/dead_filter.lua"),
                    include_str!("scripts/dead_select.lua")
                ),
            ),
            // Not a drain: a full Redis refuses it.
            dead_move: Script::new(&format!(
                "{HELPERS}{}{}",
                include_str!("scripts/dead_filter.lua"),
                include_str!("scripts/dead_move.lua")
            )),
            layout: drain(include_str!("scripts/layout.lua")),
            // An operator's tool, run before a rollback.
            unversion: Script::new(&format!(
                "{HELPERS}{}",
                include_str!("scripts/unversion.lua")
            )),
        }
    }
}

/// What [`Queue::probe`] found out about the server and this user's permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// The Redis version as `major * 65536 + minor * 256 + patch`; 0 before Redis 7.
    pub version: u64,
    /// Commands this Redis user may not run on the relay's keys, as `COMMAND key`
    /// (checked on Redis 7 and later only).
    pub denied: Vec<String>,
    /// The list or dead-letter list exists but is not a list.
    pub not_lists: Vec<String>,
    /// The largest reply Redis sends a normal client before it closes the connection
    /// (`client-output-buffer-limit normal`, hard limit), when it is set and readable.
    pub reply_limit_bytes: Option<u64>,
    /// Why the reply limit could not be read, when it could not.
    pub reply_limit_unread: Option<String>,
}

impl Probe {
    /// Whether the server knows script flags (`#!lua flags=allow-oom`): Redis 7.
    pub fn script_flags(&self) -> bool {
        self.version >= 7 << 16
    }
}

/// An instance registered on the list, as [`Queue::unversion`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredInstance {
    /// Its id (`host:pid:random`).
    pub id: String,
    /// The host it registered from.
    pub host: String,
    /// Its process id.
    pub pid: String,
    /// Whether its lease is live (the relay runs, or stopped less than a lease ago).
    pub live: bool,
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

/// One relay instance's handle on the list.
pub struct Queue {
    link: Link,
    keys: Keys,
    instance: String,
    instance_keys: InstanceKeys,
    lease_ttl: Duration,
    command_timeout: Duration,
    probe: Probe,
    scripts: Scripts,
}

impl Queue {
    /// An invocation of `script` with `keys` (its `KEYS`, in this order) for this list
    /// and instance.
    fn invocation<'a>(&self, script: &'a Script, keys: &[Key]) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(self.instance_keys.name(*key));
        }
        invocation
    }

    /// Connects (one attempt; the caller decides how to retry), finds out what the server
    /// supports ([`Queue::probe`]) and names this instance. Call [`Queue::register`]
    /// before claiming.
    pub async fn connect(settings: &RedisSettings) -> Result<Queue, QueueError> {
        Self::connect_inner(settings)
            .await
            .map_err(|e| explain(e, settings))
    }

    async fn connect_inner(settings: &RedisSettings) -> Result<Queue, QueueError> {
        let command_timeout = settings.command_timeout;
        let link = Link::new(settings)?;
        link.connection().await?;
        let keys = Keys::new(&settings.key, &settings.dead_letter_key);
        let instance = instance_id();
        let mut queue = Queue {
            link,
            instance_keys: keys.for_instance(&instance),
            keys,
            instance,
            lease_ttl: settings.lease_ttl,
            command_timeout,
            probe: Probe::default(),
            scripts: Scripts::new(false),
        };
        queue.probe = queue.run_probe().await?;
        queue.scripts = Scripts::new(queue.probe.script_flags());
        Ok(queue)
    }

    /// Reads the server's version, checks this user's permissions on every key the relay
    /// uses (Redis 7: a script that writes nothing) and reads the reply size limit (where
    /// `CONFIG` is allowed).
    async fn run_probe(&self) -> Result<Probe, QueueError> {
        let script = Script::new(&format!("{HELPERS}{}", include_str!("scripts/probe.lua")));
        let invocation = self.invocation(
            &script,
            &[
                Key::List,
                Key::Dead,
                Key::Inflight,
                Key::Meta,
                Key::Lease,
                Key::Instances,
                Key::Retry,
            ],
        );
        let (version, denied, not_lists): (u64, Vec<String>, Vec<String>) =
            self.link.invoke(&invocation).await?;
        let reply_limit = self.config_get("client-output-buffer-limit").await;
        Ok(Probe {
            version,
            denied,
            not_lists,
            reply_limit_bytes: reply_limit
                .as_ref()
                .ok()
                .and_then(|value| normal_reply_limit(value)),
            reply_limit_unread: reply_limit.err(),
        })
    }

    /// What the start-up probe found.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// A server setting, or why it cannot be read: `CONFIG GET` refused (an ACL, a managed
    /// Redis) or renamed away, or the setting unknown.
    async fn config_get(&self, name: &str) -> Result<String, String> {
        let reply: redis::Value = self
            .link
            .query(redis::cmd("CONFIG").arg("GET").arg(name))
            .await
            .map_err(|error| one_line(&error.to_string()))?;
        // One server: [name, value] (a map in RESP3); a cluster: the answer of each node,
        // by node. The first node's value is shown (they are configured alike).
        per_node(reply)
            .into_iter()
            .find_map(|(_, value)| match value {
                redis::Value::Array(items) => items.into_iter().nth(1),
                redis::Value::Map(pairs) => pairs.into_iter().next().map(|(_, v)| v),
                _ => None,
            })
            .and_then(|value| redis::from_redis_value::<String>(value).ok())
            .ok_or_else(|| format!("no value for {name}"))
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

    /// How long one Redis call may take.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Checks the key layout's version stored in Redis: a newer one is refused
    /// ([`QueueError::NewerLayout`], nothing written); an older one or none is brought to
    /// [`LAYOUT_VERSION`]. Returns the version found (0: none). Call it before anything is
    /// recovered or claimed.
    pub async fn check_layout(&self) -> Result<u64, QueueError> {
        let mut invocation = self.invocation(&self.scripts.layout, &[Key::Layout]);
        invocation.arg(LAYOUT_VERSION);
        self.link.invoke(&invocation).await
    }

    /// The rollback step (`snowplow-relay prepare-rollback`): when no instance is
    /// registered any more, removes the key layout's version and returns an empty list;
    /// otherwise removes nothing and returns the registered instances. Recover the
    /// expired ones first ([`Queue::recover_expired`]).
    pub async fn unversion(&self) -> Result<Vec<RegisteredInstance>, QueueError> {
        let mut invocation =
            self.invocation(&self.scripts.unversion, &[Key::Instances, Key::Layout]);
        invocation.arg(&self.keys.prefix);
        let left: Vec<(String, String, String, u8)> = self.link.invoke(&invocation).await?;
        Ok(left
            .into_iter()
            .map(|(id, host, pid, live)| RegisteredInstance {
                id,
                host,
                pid,
                live: live == 1,
            })
            .collect())
    }

    /// Registers this instance and takes its first lease.
    pub async fn register(&self) -> Result<(), QueueError> {
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut invocation = self.invocation(
            &self.scripts.register,
            &[Key::Instances, Key::Meta, Key::Lease],
        );
        invocation
            .arg(&self.instance)
            .arg(self.lease_ttl.as_millis() as u64)
            .arg(hostname())
            .arg(std::process::id())
            .arg(started);
        self.link.invoke::<i64>(&invocation).await?;
        Ok(())
    }

    /// Renews the lease.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        let mut invocation =
            self.invocation(&self.scripts.heartbeat, &[Key::Instances, Key::Lease]);
        invocation
            .arg(&self.instance)
            .arg(self.lease_ttl.as_millis() as u64);
        self.link.invoke::<i64>(&invocation).await?;
        Ok(())
    }

    /// Returns the events of every other instance whose lease expired (in flight and
    /// parked) to the head of the list.
    pub async fn recover_expired(&self) -> Result<Recovered, QueueError> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut invocation = self.invocation(&self.scripts.recover, &[Key::List, Key::Instances]);
        invocation
            .arg(&self.keys.prefix)
            .arg(&self.instance)
            .arg(now);
        let (instances, events): (u64, u64) = self.link.invoke(&invocation).await?;
        Ok(Recovered { instances, events })
    }

    /// Claims up to `max` events and at most `max_bytes` bytes of them. `position` is how
    /// many events this instance has claimed so far (acknowledged or not); the result
    /// holds in-flight events from that position on, oldest first: the new claims, or
    /// (if an earlier claim's reply never arrived) that claim's events again. Elements
    /// larger than `max_element_bytes` are moved to the dead-letter list instead.
    pub async fn claim(
        &self,
        position: u64,
        max: usize,
        max_element_bytes: usize,
        max_bytes: usize,
    ) -> Result<Claim, QueueError> {
        let now = timestamp(std::time::SystemTime::now());
        let keys = [
            Key::List,
            Key::Inflight,
            Key::Meta,
            Key::Instances,
            Key::Dead,
        ];
        let args = [
            self.instance.to_redis_args(),
            position.to_redis_args(),
            max.to_redis_args(),
            max_element_bytes.to_redis_args(),
            now.to_redis_args(),
            max_bytes.max(max_element_bytes).to_redis_args(),
        ];
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(self.scripts.claim.get_hash()).arg(keys.len());
        for key in keys {
            evalsha.arg(self.instance_keys.name(key));
        }
        for arg in args.iter().flatten() {
            evalsha.arg(arg);
        }
        let (oversized, ran_dry, items) = self
            .link
            .claim(&evalsha.get_packed_command(), &self.scripts.load_claim)
            .await?;
        Ok(Claim {
            elements: items,
            oversized,
            ran_dry: ran_dry == 1,
        })
    }

    /// Acknowledges the events from position `from` to before `to`, atomically writing
    /// the dead-letter and retry-list entries given for positions in that range. Safe to
    /// retry.
    pub async fn ack(
        &self,
        from: u64,
        to: u64,
        entries: &[(u64, Entry<'_>)],
    ) -> Result<(), QueueError> {
        let mut invocation = self.invocation(
            &self.scripts.ack,
            &[
                Key::Inflight,
                Key::Meta,
                Key::Instances,
                Key::Dead,
                Key::Retry,
            ],
        );
        invocation.arg(&self.instance).arg(from).arg(to);
        for (position, entry) in entries {
            let (kind, meta, element) = match entry {
                Entry::Dead { meta, element } => ("d", meta, element),
                Entry::Parked { meta, element } => ("p", meta, element),
            };
            invocation
                .arg(kind)
                .arg(*position)
                .arg(*meta)
                .arg(records::fingerprint(element));
        }
        self.link.invoke::<u64>(&invocation).await?;
        Ok(())
    }

    /// Removes parked events this relay resolved from its retry list: those given with a
    /// dead-letter metadata line go to the dead-letter list (Redis's own copy of the
    /// element), those given with `None` were delivered. Safe to retry.
    pub async fn settle_parked(&self, settled: &[(u64, Option<&[u8]>)]) -> Result<(), QueueError> {
        let mut invocation = self.invocation(
            &self.scripts.settle_parked,
            &[Key::Retry, Key::Dead, Key::Instances],
        );
        invocation.arg(&self.instance);
        for (position, meta) in settled {
            invocation.arg(*position).arg(meta.unwrap_or_default());
        }
        self.link.invoke::<u64>(&invocation).await?;
        Ok(())
    }

    /// Graceful shutdown: every event this instance holds and has not resolved goes back
    /// to the head of the list in claim order. For the in-flight list, `resolved` flags
    /// the positions from `window_start` on (any later event the relay never saw goes
    /// back too); parked events go back unless `parked_delivered` lists them or `dead`
    /// has their entry. `dead` holds the dead-letter metadata lines by position; the
    /// instance is removed. If Redis lost writes, everything goes back instead.
    pub async fn release(
        &self,
        window_start: u64,
        resolved: &[bool],
        position: u64,
        dead: &[(u64, &[u8], &[u8])],
        parked_delivered: &[u64],
    ) -> Result<Released, QueueError> {
        let flags: String = resolved
            .iter()
            .map(|&r| if r { '1' } else { '0' })
            .collect();
        let mut invocation = self.invocation(
            &self.scripts.release,
            &[
                Key::List,
                Key::Inflight,
                Key::Meta,
                Key::Instances,
                Key::Dead,
                Key::Lease,
                Key::Retry,
            ],
        );
        invocation
            .arg(&self.instance)
            .arg(window_start)
            .arg(flags)
            .arg(position)
            .arg(dead.len());
        for (position, meta, element) in dead {
            invocation
                .arg(*position)
                .arg(*meta)
                .arg(records::fingerprint(element));
        }
        for position in parked_delivered {
            invocation.arg(*position);
        }
        let (requeued, mismatch): (u64, u8) = self.link.invoke(&invocation).await?;
        Ok(Released {
            requeued,
            state_mismatch: mismatch == 1,
        })
    }

    /// Returns everything this instance holds (in flight and parked) to the head of the
    /// list in claim order and removes the instance: what a relay does when it can no
    /// longer trust positions. Returns how many events went back.
    pub async fn abandon(&self) -> Result<u64, QueueError> {
        let mut invocation = self.invocation(
            &self.scripts.abandon,
            &[
                Key::List,
                Key::Inflight,
                Key::Meta,
                Key::Instances,
                Key::Lease,
                Key::Retry,
            ],
        );
        invocation.arg(&self.instance);
        self.link.invoke(&invocation).await
    }

    /// The list's and the dead-letter list's lengths and the head event's `dtm`, for the
    /// metrics. One round trip; the head element is read inside Redis and only its `dtm`
    /// comes back (elements over 64 KiB are not read at all).
    pub async fn sample(&self) -> Result<Sample, QueueError> {
        let mut invocation = self.scripts.sample.prepare_invoke();
        invocation.key(&self.keys.list).key(&self.keys.dead);
        let (list, dead, dtm): (u64, u64, Option<String>) = self.link.invoke(&invocation).await?;
        Ok(Sample {
            list,
            dead,
            head_dtm_millis: dtm.and_then(|d| d.parse::<f64>().ok()).map(|d| d as u64),
        })
    }

    /// Redis' `maxmemory-policy`, or `None` where `CONFIG` is disabled (managed Redis).
    pub async fn eviction_policy(&self) -> Result<String, String> {
        self.config_get("maxmemory-policy").await
    }

    /// Redis's `used_memory` and `maxmemory` in bytes (`INFO memory`).
    /// In a Redis Cluster each node answers: the node closest to its `maxmemory` counts.
    pub async fn memory(&self) -> Result<(u64, u64), QueueError> {
        let reply: redis::Value = self.link.query(redis::cmd("INFO").arg("memory")).await?;
        let field = |info: &str, name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let fullest = per_node(reply)
            .into_iter()
            .filter_map(|(_, info)| redis::from_redis_value::<String>(info).ok())
            .map(|info| (field(&info, "used_memory"), field(&info, "maxmemory")))
            .max_by(|(used_a, max_a), (used_b, max_b)| {
                let share = |used: &u64, max: &u64| match max {
                    0 => 0.0,
                    max => *used as f64 / *max as f64,
                };
                share(used_a, max_a).total_cmp(&share(used_b, max_b))
            });
        Ok(fullest.unwrap_or((0, 0)))
    }

    /// Changes whenever the sentinels announce that the master switched (`None` without
    /// sentinels): a blocking wait on the old master is worth cutting short.
    pub fn switch_notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.link.switch_notices()
    }

    /// The master the sentinels named at the last connection (`host:port`), with
    /// Redis Sentinel.
    pub fn master_address(&self) -> Option<String> {
        self.link.master_address()
    }

    /// Calls Redis answered so far: two readings tell whether Redis answered anything
    /// between them.
    pub fn calls_answered(&self) -> u64 {
        self.link.answered()
    }

    /// Uses new credentials or TLS files (same server and keys) from now on, once a
    /// connection made with them answers; on an error the old ones stay in use.
    pub async fn reconfigure(&self, settings: &RedisSettings) -> Result<(), QueueError> {
        self.link.reconfigure(settings).await
    }

    /// Whether `conn` was opened with the credentials in use now (a reload may have
    /// changed them).
    pub fn is_current(&self, conn: &BlockingConnection) -> bool {
        self.link.is_current(conn)
    }

    /// Opens a connection of its own for [`Queue::wait_for_events`]: a blocking command
    /// would stall every other command sharing its connection.
    pub async fn blocking_connection(
        &self,
        block: Duration,
    ) -> Result<BlockingConnection, QueueError> {
        self.link.open_blocking(block).await
    }

    /// Waits up to `block` for the list to hold an element, without taking it.
    pub async fn wait_for_events(
        &self,
        conn: &mut BlockingConnection,
        block: Duration,
    ) -> Result<(), QueueError> {
        redis::cmd("BLMOVE")
            .arg(&self.keys.list)
            .arg(&self.keys.list)
            .arg("LEFT")
            .arg("LEFT")
            .arg(block.as_secs_f64())
            .query_async::<Option<redis::Value>>(&mut conn.conn)
            .await
            .map_err(|error| self.link.failed(QueueError::classify(error)))?;
        Ok(())
    }

    /// How many entries the dead-letter list holds.
    pub async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        self.link
            .query(redis::cmd("LLEN").arg(&self.keys.dead))
            .await
    }

    /// Up to `limit` parked events (retry-list entries, metadata line and element), with
    /// the instance holding each, relay by relay in registration-set order and oldest
    /// first within a relay. Each relay's list is read at one instant, not all at once
    /// (a view for an operator: it writes nothing).
    pub async fn parked(&self, limit: usize) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        let mut out = Vec::new();
        let instances: Vec<String> = self
            .link
            .query(redis::cmd("SMEMBERS").arg(&self.keys.instances))
            .await?;
        for instance in instances {
            if out.len() >= limit {
                break;
            }
            let entries: Vec<Vec<u8>> = self
                .link
                .query(
                    redis::cmd("LRANGE")
                        .arg(self.keys.retry(&instance))
                        .arg(0)
                        .arg(limit - out.len() - 1),
                )
                .await?;
            out.extend(entries.into_iter().map(|entry| (instance.clone(), entry)));
        }
        Ok(out)
    }

    /// Reads up to `window` dead-letter entries from `start` (counted from the head, or
    /// from the tail with [`Reading::NewestFirst`]) and returns how many it read and
    /// those `filter` takes, as stored, in reading order. Writes nothing.
    pub async fn select_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        start: u64,
        window: usize,
        reading: Reading,
    ) -> Result<(u64, Vec<Vec<u8>>), QueueError> {
        let (read, _, taken): (u64, u64, Vec<Vec<u8>>) = self
            .link
            .invoke(&self.dead_select(filter, start, window, reading, "entries"))
            .await?;
        Ok((read, taken))
    }

    /// As [`Queue::select_dead_letters`], returning how many it read and how many match.
    pub async fn count_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        start: u64,
        window: usize,
    ) -> Result<(u64, u64), QueueError> {
        let (read, count, _): (u64, u64, Vec<Vec<u8>>) = self
            .link
            .invoke(&self.dead_select(filter, start, window, Reading::OldestFirst, "count"))
            .await?;
        Ok((read, count))
    }

    fn dead_select(
        &self,
        filter: &DeadLetterFilter,
        start: u64,
        window: usize,
        reading: Reading,
        mode: &str,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.invocation(&self.scripts.dead_select, &[Key::Dead]);
        invocation
            .arg(filter.to_json())
            .arg(start)
            .arg(window.max(1))
            .arg(match reading {
                Reading::OldestFirst => "oldest",
                Reading::NewestFirst => "newest",
            })
            .arg(mode);
        invocation
    }

    /// One atomic step of a replay or a drop: reads up to `window` entries from the head
    /// of the dead-letter list; of those `filter` takes (at most `most`), moves each
    /// element to the list's tail ([`Move::Replay`]) or removes it ([`Move::Drop`]), and
    /// puts the others back at the dead-letter list's tail in their order. Returns
    /// (entries read, entries taken); (0, 0) when the list is empty.
    pub async fn move_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        window: usize,
        action: Move,
        most: u64,
    ) -> Result<(u64, u64), QueueError> {
        let mut invocation = self.invocation(&self.scripts.dead_move, &[Key::Dead, Key::List]);
        invocation
            .arg(filter.to_json())
            .arg(window.max(1))
            .arg(match action {
                Move::Replay => "replay",
                Move::Drop => "drop",
            })
            .arg(most);
        self.link.invoke(&invocation).await
    }

    /// Moves up to `max` of the oldest dead-letter entries back to the tail of the list
    /// (original bytes only), atomically. Returns how many moved; 0 when none are left.
    pub async fn replay_dead_letters(&self, max: usize) -> Result<u64, QueueError> {
        let filter = DeadLetterFilter::default();
        let (_, moved) = self
            .move_dead_letters(&filter, max, Move::Replay, max as u64)
            .await?;
        Ok(moved)
    }

    /// Appends entries to the dead-letter list ([`Destination::DeadLetters`]) or their
    /// elements to the list ([`Destination::List`]) in one `RPUSH`: all or none.
    pub async fn push_dead_letters(
        &self,
        entries: &[Vec<u8>],
        to: Destination,
    ) -> Result<u64, QueueError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let (key, strip) = match to {
            Destination::DeadLetters => (&self.keys.dead, false),
            Destination::List => (&self.keys.list, true),
        };
        let mut command = redis::cmd("RPUSH");
        command.arg(key);
        for entry in entries {
            command.arg(if strip {
                records::replayed_element(entry)
            } else {
                entry.as_slice()
            });
        }
        let _: u64 = self.link.query(&command).await?;
        Ok(entries.len() as u64)
    }

    /// The current connection, for one-off commands (tools and tests).
    pub async fn connection(&self) -> Result<Connection, QueueError> {
        Ok(self.link.connection().await?.1)
    }
}

/// The hard limit of `client-output-buffer-limit`'s `normal` class, if set (not 0).
fn normal_reply_limit(value: &str) -> Option<u64> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "normal")?;
    let hard = parse_memory(words.get(at + 1)?)?;
    (hard > 0).then_some(hard)
}

/// A Redis memory amount: bytes, or with a `kb`/`mb`/`gb` (1000s) or `k`/`m`/`g` suffix.
fn parse_memory(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let unit = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
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

/// A reply per node: a cluster's command sent to every node answers with a map of node
/// to reply; one server's answer is its own.
fn per_node(reply: redis::Value) -> Vec<(Option<String>, redis::Value)> {
    match reply {
        redis::Value::Map(pairs)
            if pairs.iter().all(
                |(node, _)| matches!(node, redis::Value::BulkString(n) if n.contains(&b':')),
            ) =>
        {
            pairs
                .into_iter()
                .map(|(node, reply)| (redis::from_redis_value::<String>(node).ok(), reply))
                .collect()
        }
        other => vec![(None, other)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_the_element_byte_for_byte() {
        let element = b"{\"e\":\"pv\"}\nnot even \xff utf-8";
        let entry = DeadLetter::new("rejected", "collector answered 400", Some(400), "h:1:0")
            .encode(element);
        let (meta, original) = DeadLetter::decode(&entry).unwrap();
        assert_eq!(original, element);
        assert_eq!(meta.status, Some(400));
        assert_eq!(meta.reason, "rejected");
        assert_eq!(meta.detail(), "collector answered 400");
        // An entry of an older relay: its text was the reason.
        let old = b"{\"reason\":\"collector answered 400\",\"status\":400,\"failed_at\":\"t\",\"relay\":\"r\"}\nx";
        let (meta, original) = DeadLetter::decode(old).unwrap();
        assert_eq!(
            (meta.reason.as_str(), meta.detail(), original),
            (UNLABELLED, "collector answered 400", &b"x"[..])
        );
    }

    #[test]
    fn companion_keys_share_the_lists_hash_tag() {
        let keys = Keys::new("snowplow", "{snowplow}:dead");
        for key in [
            keys.inflight("i"),
            keys.retry("i"),
            keys.meta("i"),
            keys.lease("i"),
            keys.instances.clone(),
        ] {
            assert!(key.starts_with("{snowplow}:"), "{key}");
        }
    }

    #[test]
    fn the_reply_limit_is_read_from_the_normal_class() {
        let limit = |value: &str| normal_reply_limit(value);
        assert_eq!(
            limit("normal 1048576 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"),
            Some(1_048_576)
        );
        assert_eq!(limit("normal 0 0 0 slave 256mb 64mb 60"), None);
        assert_eq!(limit("normal 1mb 0 0"), Some(1024 * 1024));
        assert_eq!(limit("normal 2m 0 0"), Some(2_000_000));
        assert_eq!(limit("slave 1 2 3"), None);
        assert_eq!(limit("normal lots 0 0"), None);
    }

    #[test]
    fn log_text_is_one_line_and_bounded() {
        assert_eq!(one_line("a\nb\r\u{1b}[31m"), "a\\nb\\r\\u{1b}[31m");
        let long = one_line(&"x".repeat(2_000_000));
        assert!(long.len() < 600, "{}", long.len());
        assert!(long.ends_with("(2000000 bytes)"));
        let key = shown_key(&format!("{}\n", "k".repeat(1_000_000)));
        assert!(key.len() < 200 && !key.contains('\n'), "{key}");
    }
}
