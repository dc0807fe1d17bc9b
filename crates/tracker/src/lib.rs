//! A Snowplow tracker for Rust programs, shaped like Snowplow's own trackers
//! ([`Subject`], [`Tracker`], emitters, self-describing JSON), and the tracker protocol's
//! wire encodings it shares with `snowplow-relay`.
//!
//! A [`Tracker`] turns an [`Event`] into the tracker protocol's name/value pairs and hands
//! them to its emitters:
//! - `RedisEmitter` (feature `redis`) pushes each event onto a Redis list, as the Python
//!   tracker's `RedisEmitter` writes it, for `snowplow-relay` to deliver;
//! - `HttpEmitter` (feature `http`) sends them to a collector, batched by count and
//!   bytes, retried, split on 413, with success/failure hooks.
//!
//! ```toml
//! [dependencies]
//! snowplow-relay-tracker = { path = "…/crates/tracker", features = ["redis"] }
//! ```
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn example() -> Result<(), snowplow_relay_tracker::Error> {
//! use snowplow_relay_tracker::{PageView, RedisEmitter, Subject, Tracker};
//!
//! let emitter = RedisEmitter::connect("redis://127.0.0.1:6379", "snowplow").await?;
//! let tracker = Tracker::new("shop", "shop-backend", emitter, Some(Subject::new().user_id("u-1")));
//! let id = tracker.track(PageView::new("https://shop.example.com/").title("Shop"), None).await?;
//! println!("tracked {id}");
//! tracker.close().await?;
//! # Ok(()) }
//! ```
//!
//! Module map:
//! - [`protocol`]: `payload_data` fields, one list element parsed without a value tree,
//!   the GET and POST encodings, the size model of a request, Iglu URIs;
//! - [`tracker`](Tracker), [`events`](Event), [`subject`](Subject): what is tracked;
//! - [`emit`](Emit): where it goes; `redis` and `http` hold the two emitters;
//! - [`retry`]: capped exponential backoff with jitter, one count of failures per
//!   operation.

#![warn(missing_docs)]

/// Builder setters for optional fields: `fn name(field: text);` takes any
/// `impl Into<String>`, `number` any `impl Into<Number>`, `texts` any list of strings,
/// `fn name(field: u32);` that type; each sets the field and returns the builder.
macro_rules! optional_setters {
    ($( $(#[$doc:meta])* fn $name:ident($field:ident: $kind:tt); )*) => {
        $( optional_setters!(@one $(#[$doc])* $name $field $kind); )*
    };
    (@one $(#[$doc:meta])* $name:ident $field:ident text) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.$field = Some(value.into());
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident $field:ident number) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<crate::Number>) -> Self {
            self.$field = Some(value.into());
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident $field:ident texts) => {
        $(#[$doc])*
        pub fn $name<S: Into<String>>(mut self, values: impl IntoIterator<Item = S>) -> Self {
            self.$field = Some(values.into_iter().map(Into::into).collect());
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident $field:ident $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$field = Some(value);
            self
        }
    };
}

pub mod emit;
mod events;
#[cfg(feature = "http")]
pub mod http;
mod json;
pub mod protocol;
#[cfg(feature = "redis")]
mod redis;
pub mod retry;
mod subject;
mod tracker;

pub use emit::{BoxFuture, Emit};
pub use events::{
    CartChange, EcommerceTransaction, Event, FORM_INPUT_TYPES, FORM_NODE_NAMES, FormChange,
    FormElement, FormSubmit, LinkClick, MobileScreenView, PagePing, PageView, Payload, ScreenView,
    SearchFilter, SiteSearch, Structured, Timing, TransactionItem,
};
#[cfg(feature = "http")]
pub use http::{HttpEmitter, HttpEmitterBuilder, OnFailure, OnSuccess};
pub use json::{Number, python_dumps, python_float};
pub use protocol::iglu::{
    CONTEXTS_SCHEMA, SelfDescribingJson, UNSTRUCT_EVENT_SCHEMA, check_contexts,
    check_self_describing_event, is_iglu_uri,
};
#[cfg(feature = "redis")]
pub use redis::RedisEmitter;
pub use subject::{Platform, Subject};
pub use tracker::{
    BoxError, Error, SubjectMerging, TRACKER_VERSION, Timestamp, TrackOptions, Tracker,
};
