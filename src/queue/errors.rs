//! What can go wrong talking to Redis, sorted by what it means for the relay: retry,
//! replace the connection, stop with a configuration error, or register again.

use redis::RedisError;

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached or answered with an error; worth retrying.
    #[error("redis: {}", one_line(&.0.to_string()))]
    Redis(#[from] RedisError),
    /// No connection to Redis could be opened (refused, no route, a name that does not
    /// resolve); worth retrying.
    #[error("cannot reach Redis: {}", one_line(&.0.to_string()))]
    Unreachable(RedisError),
    /// Redis did not answer within `redis.command_timeout_ms`; the connection is replaced.
    #[error(
        "Redis did not answer within {0} ms (connection replaced; is Redis overloaded or frozen?)"
    )]
    Timeout(u64),
    /// The server behind the address cannot take writes now: a replica (`READONLY`,
    /// after a failover), a master without its replicas (`MASTERDOWN`) or a server
    /// loading its data (`LOADING`). The connection is replaced.
    #[error("Redis cannot take writes now ({}); connection replaced, retrying", one_line(.0))]
    NotWritable(String),
    /// This Redis user may not run a command the relay needs. The script refused as a
    /// whole before writing anything.
    #[error(
        "Redis refused a command: {}; grant this Redis user the relay's permissions \
         (docs/operations.md#redis-permissions)",
        one_line(.0)
    )]
    Permission(String),
    /// Redis is at `maxmemory` and refuses writes.
    #[error(
        "Redis is out of memory (used memory is above maxmemory): {}; producers' pushes are \
         refused until the relay drains the list or maxmemory is raised",
        one_line(.0)
    )]
    OutOfMemory(String),
    /// Another relay recovered this instance's in-flight events after its lease expired
    /// (this relay stood still for longer than `redis.lease_ttl_ms`: a pause, a partition,
    /// a Redis stall).
    #[error(
        "this relay's lease expired (it could not renew it for longer than \
         redis.lease_ttl_ms) and another relay returned its events to the list"
    )]
    LeaseLost,
    /// Redis no longer knows this instance: it restarted without its data, was flushed,
    /// or the relay's keys were deleted. What it held in Redis went with them.
    #[error(
        "Redis no longer knows this relay (it restarted without its data, was flushed, or \
         the relay's keys were deleted); the events Redis held went with it"
    )]
    Forgotten,
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
    /// No sentinel could say where the master is (each one down, or not knowing it);
    /// worth retrying.
    #[error("{0}")]
    NoSentinel(String),
    /// Redis holds a key layout newer than this build's (or one it cannot read): a newer
    /// build ran on this list. Nothing was read or written.
    #[error(
        "Redis holds key layout version {found} for this list and this build knows version \
         {known}: a newer build ran here. Run that build (or a newer one), or roll back as \
         docs/operations.md#upgrading says (`snowplow-relay prepare-rollback` with the newer \
         build, then this one)"
    )]
    NewerLayout {
        /// The version found, as stored.
        found: String,
        /// The version this build knows.
        known: u64,
    },
    /// With Redis Sentinel, the server the relay wrote to cannot take writes: it became
    /// a replica in a failover, or is loading. The connection is replaced and the
    /// sentinels asked again.
    #[error(
        "following a failover: the server the sentinels named cannot take writes ({}); \
         asking the sentinels again",
        one_line(.0)
    )]
    FollowingFailover(String),
}

impl QueueError {
    /// Sorts a Redis error by what it means for the relay, on its error code and kind,
    /// never on its message text. (The scripts check their writes' permissions and
    /// answer `NOPERM`; a read refused inside a script after start-up's probe, which
    /// Redis 7.0 reports as a plain `ERR`, stays a Redis error: retried with backoff,
    /// Redis's own message logged.)
    pub(super) fn classify(error: RedisError) -> QueueError {
        use redis::{ErrorKind, ServerErrorKind};
        let detail = || {
            let text = error.detail().unwrap_or_default();
            format!("{} {text}", error.code().unwrap_or_default())
        };
        match error.code() {
            Some("LEASE_LOST") => return QueueError::LeaseLost,
            Some("FORGOTTEN") => return QueueError::Forgotten,
            Some("STATE_MISMATCH") => {
                return QueueError::StateMismatch(error.detail().unwrap_or_default().to_owned());
            }
            Some("NOPERM") => return QueueError::Permission(detail()),
            Some("OOM") => return QueueError::OutOfMemory(detail()),
            Some("LAYOUT_NEWER") => {
                return QueueError::NewerLayout {
                    found: one_line(error.detail().unwrap_or_default()),
                    known: super::keys::LAYOUT_VERSION,
                };
            }
            _ => {}
        }
        match error.kind() {
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading,
            ) => QueueError::NotWritable(detail()),
            ErrorKind::Server(ServerErrorKind::NoPerm) => QueueError::Permission(detail()),
            _ => QueueError::Redis(error),
        }
    }

    /// Whether this instance must stop and register again (its in-flight list is gone
    /// or not to be trusted); anything else is worth retrying.
    pub fn needs_new_instance(&self) -> bool {
        matches!(
            self,
            QueueError::LeaseLost | QueueError::Forgotten | QueueError::StateMismatch(_)
        )
    }

    /// Whether this error says Redis cannot be reached or cannot take writes (rather than
    /// refusing one call): a refused or dropped connection, a missed deadline, a demoted
    /// or loading server.
    pub fn is_unreachable(&self) -> bool {
        match self {
            QueueError::Unreachable(_)
            | QueueError::NoSentinel(_)
            | QueueError::FollowingFailover(_) => true,
            QueueError::Redis(error) => error.is_io_error() || error.is_connection_dropped(),
            other => other.needs_new_connection(),
        }
    }

    /// Whether the connection that gave this error must be replaced.
    pub(super) fn needs_new_connection(&self) -> bool {
        match self {
            QueueError::Timeout(_)
            | QueueError::NotWritable(_)
            | QueueError::FollowingFailover(_) => true,
            QueueError::Redis(error) => {
                error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()
                    || error.is_timeout()
            }
            _ => false,
        }
    }

    /// The operation name for metrics and logs: what kind of failure this is.
    pub fn kind(&self) -> &'static str {
        match self {
            QueueError::Redis(_) => "error",
            QueueError::Unreachable(_) => "unreachable",
            QueueError::Timeout(_) => "timeout",
            QueueError::NotWritable(_) => "not_writable",
            QueueError::Permission(_) => "permission",
            QueueError::OutOfMemory(_) => "out_of_memory",
            QueueError::LeaseLost => "lease_lost",
            QueueError::Forgotten => "forgotten",
            QueueError::StateMismatch(_) => "state_mismatch",
            QueueError::Auth { .. } => "auth",
            QueueError::Tls(_) => "tls",
            QueueError::NoSentinel(_) => "no sentinel answers",
            QueueError::FollowingFailover(_) => "following a failover",
            QueueError::NewerLayout { .. } => "newer_layout",
        }
    }
}

/// `text` on one line and at most 512 bytes (see [`crate::text::one_line`]).
pub fn one_line(text: &str) -> String {
    crate::text::one_line(text, 512)
}
