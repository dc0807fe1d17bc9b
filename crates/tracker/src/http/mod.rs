//! Straight to a collector: the [`Client`] (one request per attempt, and what its answer
//! means) and the [`HttpEmitter`] built on it (batches, retries, hooks).

mod answer;
mod client;
mod emitter;
mod exchange;
mod pool;
mod route;
mod settings;
mod tls;

pub use answer::error_chain;
pub use client::{
    Attempt, AttemptError, Client, Disposition, Exchange, Exchanges, Refusal, Report, USER_AGENT,
    classify, mask_url,
};
pub use emitter::{
    DEFAULT_GIVE_UP_AFTER, DEFAULT_SLOT_WAIT, HttpEmitter, HttpEmitterBuilder, OnFailure, OnSuccess,
};
pub use settings::{ClientError, ClientSettings};
