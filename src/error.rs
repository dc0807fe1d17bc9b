//! The daemon's top-level error: why `run` stopped, and the exit code that says so.

use crate::config;
use crate::queue::QueueError;

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration was refused (exit code 2).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The admin listener could not bind its address.
    #[error("cannot listen on admin.listen = {addr} ({source}); is another process using it?")]
    AdminListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The collector client could not be built (the system's CA certificates, a client
    /// certificate, the proxy).
    #[error(transparent)]
    HttpClient(#[from] snowplow_relay_tracker::http::ClientError),
    /// Redis failed in a way the relay cannot work around.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The Redis user lacks permissions the relay needs, or a key has the wrong type
    /// (exit code 2: a configuration problem).
    #[error("{0}")]
    Permissions(String),
    /// Redis refused the relay's credentials at start-up (exit code 2: a configuration
    /// problem; the message names the user and where the password came from).
    #[error("{0}; the relay does not start with credentials Redis refuses")]
    Credentials(QueueError),
    /// Redis holds a newer key layout than this build knows (exit code 2: run the newer
    /// build, or roll back as the message says).
    #[error(transparent)]
    NewerLayout(QueueError),
    /// Shutdown could not return the undelivered events to the list: they are safe in the
    /// in-flight list and come back when the lease expires.
    #[error(
        "could not return undelivered events to the list ({why}); they are kept in \
         `{inflight_key}` and go back to the list once this relay's lease expires (at most \
         {lease_ttl_secs} s after its last heartbeat), as soon as any relay runs"
    )]
    Unreleased {
        /// The in-flight list still holding them.
        inflight_key: String,
        /// The lease lifetime.
        lease_ttl_secs: u64,
        /// Why: the last Redis error, a timeout, or a second signal.
        why: String,
    },
    /// A task of the relay panicked or ended unexpectedly (a bug). What it held is safe
    /// in Redis and returns to the list by lease recovery.
    #[error("internal error: the {task} task failed ({message}); please report this bug")]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// The panic message.
        message: String,
    },
}

impl Error {
    /// The process exit code for this error: 2 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::Permissions(_)
            | Error::Credentials(_)
            | Error::NewerLayout(_) => 2,
            _ => 1,
        }
    }
}
