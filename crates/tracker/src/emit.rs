//! Where a tracker's payloads go: the [`Emit`] trait, so that a tracker can hold several
//! emitters and users can add their own. The crate has two: `RedisEmitter` (feature
//! `redis`) and `HttpEmitter` (feature `http`).

use std::future::Future;
use std::pin::Pin;

use crate::{Error, Payload};

/// A boxed future, so that [`Emit`] can be used as `dyn Emit`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Receives a tracker's payloads.
pub trait Emit: Send + Sync {
    /// Takes payloads (several at once are sent together where the emitter can).
    fn emit(&self, payloads: Vec<Payload>) -> BoxFuture<'_, Result<(), Error>>;

    /// Sends whatever is buffered and waits until it is resolved. Default: nothing to do.
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    /// Flushes and stops taking payloads. Default: [`Emit::flush`].
    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.flush()
    }
}
