//! `snowplow-relay collector`: a local collector for trials and tests, a drop-in for
//! Snowplow Micro's API. It accepts the tracker protocol (`GET /i`, `/ice.png`,
//! `/com.snowplowanalytics.snowplow/tp1`; `POST /com.snowplowanalytics.snowplow/tp2`;
//! CORS preflight; the Iglu webhook, `webhook`), answers as the real collector does (200; 413 above the body limit),
//! checks each event as Micro does ([`event`]: `payload_data`, the atomic fields' types,
//! self-describing data against Iglu schemas from [`iglu`]) and keeps what it received
//! in memory (bounded: the oldest are dropped and counted) behind Micro's endpoints:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /micro/all` | `{"total":N,"good":N,"bad":N}` since the last reset |
//! | `GET\|POST /micro/good` | good events, newest first; filters `event_type`, `schema`, `contexts`, `limit` (JSON body; as query parameters too, our extension) |
//! | `GET\|POST /micro/bad` | bad events with their `errors`, newest first; filters `vendor`, `version`, `limit` |
//! | `GET\|POST /micro/reset` | forgets everything |
//! | `GET /micro/iglu/VENDOR/NAME/FORMAT/VERSION` | a schema the collector resolves |
//! | `GET /micro/ui` | a page listing the events, filterable, each expandable |
//! | `GET /micro/stats` | our extension: the counts plus `dropped` and the bytes held |
//! | `GET /health` | `OK` |
//!
//! It is not a production collector: no third-party enrichment runs, and nothing is
//! stored beyond memory and the optional `--record` file (one good event per JSON line).
//!
//! Bounded whatever clients send (docs/collector.md#bounded-whatever-a-client-sends): at
//! most `max_connections` connections, request bodies read within `body_timeout` and
//! within a budget of body bytes held at once (a body takes its share when its first
//! bytes arrive; a wait past three body timeouts is answered 503), a body's items kept
//! unparsed and its events built a chunk at a time, a request's headers shared by its
//! events, the store bounded in events and in what they cost (the oldest dropped and
//! counted), validation on blocking threads beside `/health`, and `/micro/good|bad`
//! answers streamed from the stored events' JSON outside the store's lock.
//!
//! It may touch: the tracker's protocol (the same scanner the relay uses) and
//! [`crate::ops::listener`]; nothing of Redis or the relay.

mod collector;
pub mod event;
mod http;
pub mod iglu;
mod origin;
mod record;
mod store;
mod webhook;

pub use collector::{
    CollectorOptions, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_EVENTS,
    DEFAULT_MAX_STORE_BYTES, LocalCollector, Totals,
};
pub use origin::NEVER_LISTED_HEADERS;
