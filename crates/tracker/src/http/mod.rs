//! Straight to a collector: the [`Client`] (one request per attempt, and what its answer
//! means) and the [`HttpEmitter`] built on it (batches, retries, hooks).

mod client;
mod emitter;
mod plain;

pub use client::{
    Attempt, AttemptError, Client, ClientError, ClientSettings, Disposition, Refusal, Report,
    USER_AGENT, classify, error_chain, mask_url,
};
pub use emitter::{HttpEmitter, HttpEmitterBuilder, OnFailure, OnSuccess};
