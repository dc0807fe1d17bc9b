//! [`RedisEmitter`]: payloads onto a Redis list, where the relay takes them.

use redis::aio::ConnectionLike;

use crate::emit::{BoxFuture, Emit};
use crate::{Error, Payload};

/// Pushes payloads onto a Redis list, as the Python tracker's `RedisEmitter` does: one
/// JSON object per element, RPUSH onto `snowplow` unless told otherwise. Several payloads
/// go in one round trip (pipelined RPUSHes of up to 1,000 elements each).
///
/// ```no_run
/// use snowplow_relay_tracker::{RedisEmitter, Structured, Tracker};
/// # async fn example() -> Result<(), snowplow_relay_tracker::Error> {
/// let emitter = RedisEmitter::connect("redis://127.0.0.1:6379", "snowplow").await?;
/// let tracker = Tracker::new("ns", "app", emitter, None);
/// tracker.track(Structured::new("shop", "buy"), None).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisEmitter<C = redis::aio::MultiplexedConnection> {
    conn: C,
    key: String,
}

/// Elements per RPUSH when many payloads come at once.
const CHUNK: usize = 1000;

impl RedisEmitter {
    /// Connects to one Redis server at `url` (`redis://[[user]:password@]host[:port][/db]`).
    /// For TLS, credentials files or a Redis Cluster, open the connection yourself (any
    /// `redis::aio::ConnectionLike`) and use [`RedisEmitter::new`].
    pub async fn connect(url: &str, key: impl Into<String>) -> Result<RedisEmitter, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::Redis(Box::new(e)))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| Error::Redis(Box::new(e)))?;
        Ok(RedisEmitter::new(conn, key))
    }
}

impl<C> RedisEmitter<C> {
    /// Pushes onto `key` over `conn`.
    pub fn new(conn: C, key: impl Into<String>) -> RedisEmitter<C> {
        RedisEmitter {
            conn,
            key: key.into(),
        }
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Emit for RedisEmitter<C> {
    fn emit(&self, payloads: Vec<Payload>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if payloads.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for chunk in payloads.chunks(CHUNK) {
                let elements: Vec<Vec<u8>> = chunk.iter().map(Payload::to_json).collect();
                pipe.rpush(&self.key, elements).ignore();
            }
            let mut conn = self.conn.clone();
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| Error::Redis(Box::new(e)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis's own error is kept as the source, for error chains and downcasting.
    #[tokio::test]
    async fn a_failed_connection_keeps_rediss_error_as_its_source() {
        let Err(error) = RedisEmitter::connect("redis://127.0.0.1:1", "k").await else {
            panic!("port 1 answers");
        };
        assert!(matches!(error, Error::Redis(_)), "{error:?}");
        let source = std::error::Error::source(&error).expect("a source");
        assert!(
            source.downcast_ref::<redis::RedisError>().is_some(),
            "{source:?}"
        );
    }
}
