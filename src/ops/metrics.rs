//! What the relay counts, as Prometheus metrics (prefix `snowplow_relay_`), and the
//! [`Summary`] of a run derived from them.
//!
//! Counters are bumped once per claim, batch, request or acknowledgement, never per event
//! on their own: the hot path adds a count, it does not loop. Labels are few and fixed
//! (a reason from [`DeadReason`], a status class), so cardinality stays bounded whatever
//! the input. List lengths and the oldest event's age are sampled every few seconds by
//! the worker, not measured per event.
//!
//! `docs/operations.md#metrics` lists each metric with what to alert on.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why events went to the dead-letter list: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// Not a relayable element (not JSON, not an object, a missing or unknown field…).
    Malformed,
    /// Larger than `events.max_element_bytes` (diverted by the claim script).
    Oversized,
    /// Cannot be encoded for the configured method (GET URL too long, lone surrogate).
    Unsendable,
    /// The collector answered a no-retry status.
    Rejected,
    /// The collector answered 413 to the event alone.
    TooLarge,
    /// The event kept failing while other requests succeeded.
    FailedAlone,
}

impl From<snowplow_relay_tracker::http::Refusal> for DeadReason {
    fn from(refusal: snowplow_relay_tracker::http::Refusal) -> DeadReason {
        use snowplow_relay_tracker::http::Refusal;
        match refusal {
            Refusal::Status => DeadReason::Rejected,
            Refusal::TooLarge => DeadReason::TooLarge,
            Refusal::Unsendable => DeadReason::Unsendable,
        }
    }
}

impl DeadReason {
    /// Every reason, for sums and for a scrape that shows zeros.
    pub const ALL: [DeadReason; 6] = [
        DeadReason::Malformed,
        DeadReason::Oversized,
        DeadReason::Unsendable,
        DeadReason::Rejected,
        DeadReason::TooLarge,
        DeadReason::FailedAlone,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Malformed => "malformed",
            DeadReason::Oversized => "oversized",
            DeadReason::Unsendable => "unsendable",
            DeadReason::Rejected => "rejected",
            DeadReason::TooLarge => "too_large",
            DeadReason::FailedAlone => "failed_alone",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    class: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
    commit: &'static str,
}

/// The outcome class of one collector request: the `class` label.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "transport_error",
    }
}

/// The statuses counted on their own in the `code` label: those the relay treats apart
/// (413 splits, the default no-retry statuses, a cookie bounce's 302) and those a
/// collector or a proxy in front of it commonly answers. Any other status is `other`,
/// so the label's values stay a fixed, small set.
const NOTABLE_STATUSES: [(u16, &str); 15] = [
    (200, "200"),
    (302, "302"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (408, "408"),
    (410, "410"),
    (413, "413"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

/// The `class` and `code` labels of one collector request's outcome.
fn status_labels(status: Option<u16>) -> StatusLabels {
    let code = match status {
        None => "none",
        Some(status) => NOTABLE_STATUSES
            .iter()
            .find(|(notable, _)| *notable == status)
            .map_or("other", |(_, code)| code),
    };
    StatusLabels {
        class: status_class(status),
        code,
    }
}

/// The Redis calls counted in `redis_errors_total{operation}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RedisOperation {
    /// Connecting and registering at start-up or after a lost lease.
    Connect,
    /// Claiming events.
    Claim,
    /// Waiting for events in an empty list.
    Wait,
    /// Acknowledging (and parking, and dead-lettering) resolved events.
    Ack,
    /// Settling parked events.
    Settle,
    /// Renewing the lease (and recovering dead relays' events).
    Heartbeat,
    /// Sampling list lengths.
    Sample,
}

impl RedisOperation {
    /// Every operation, for a scrape that shows zeros.
    pub const ALL: [RedisOperation; 7] = [
        RedisOperation::Connect,
        RedisOperation::Claim,
        RedisOperation::Wait,
        RedisOperation::Ack,
        RedisOperation::Settle,
        RedisOperation::Heartbeat,
        RedisOperation::Sample,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisOperation::Connect => "connect",
            RedisOperation::Claim => "claim",
            RedisOperation::Wait => "wait",
            RedisOperation::Ack => "ack",
            RedisOperation::Settle => "settle",
            RedisOperation::Heartbeat => "heartbeat",
            RedisOperation::Sample => "sample",
        }
    }
}

/// The `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: the default, what `promtool check metrics` and
    /// every scraper read.
    Prometheus,
    /// OpenMetrics 1.0, for a scraper whose `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (Prometheus sends that first when it can read
    /// it), else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The `requests_total` counter of every status, looked up by a match instead of a hash
/// of the labels on every request (with GET, one request per event).
#[derive(Debug)]
struct RequestCounters {
    notable: [Counter; NOTABLE_STATUSES.len()],
    /// Any other status, by class: 2xx, 3xx, 4xx, 5xx, other.
    other: [Counter; 5],
    no_answer: Counter,
}

impl RequestCounters {
    fn new(family: &Family<StatusLabels, Counter>) -> RequestCounters {
        let counter = |status: Option<u16>| family.get_or_create(&status_labels(status)).clone();
        RequestCounters {
            notable: NOTABLE_STATUSES.map(|(status, _)| counter(Some(status))),
            other: [299, 399, 499, 599, 600].map(|status| counter(Some(status))),
            no_answer: counter(None),
        }
    }

    fn get(&self, status: Option<u16>) -> &Counter {
        let Some(status) = status else {
            return &self.no_answer;
        };
        match NOTABLE_STATUSES
            .iter()
            .position(|(notable, _)| *notable == status)
        {
            Some(index) => &self.notable[index],
            None => match status {
                200..=299 => &self.other[0],
                300..=399 => &self.other[1],
                400..=499 => &self.other[2],
                500..=599 => &self.other[3],
                _ => &self.other[4],
            },
        }
    }
}

/// Every metric of one relay process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events_claimed: Counter,
    events_delivered: Counter,
    events_dead_lettered: Family<ReasonLabel, Counter>,
    events_requeued: Counter,
    events_redelivered: Counter,
    events_parked: Counter,
    parked_events: Gauge,
    requests: Family<StatusLabels, Counter>,
    request_counters: RequestCounters,
    request_bytes: Counter,
    request_duration: Histogram,
    retries: Counter,
    concurrency_limit: Gauge,
    events_in_flight: Gauge,
    bytes_in_flight: Gauge,
    batch_events: Histogram,
    list_length: Gauge,
    dead_letter_length: Gauge,
    oldest_event_age: Gauge<f64, AtomicU64>,
    redis_errors: Family<OperationLabel, Counter>,
    lease_renewals: Counter,
    lease_losses: Counter,
    state_mismatches: Counter,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers each `field as "name" [in Unit]: help;` of a [`Metrics`] with `registry`.
macro_rules! register_metrics {
    ($registry:ident, $m:ident; $($field:ident as $name:literal $(in $unit:ident)?: $help:expr;)*) => {
        $(register_metrics!(@one $registry, $name, $help, $m.$field.clone() $(, $unit)?);)*
    };
    (@one $registry:ident, $name:expr, $help:expr, $metric:expr) => {
        $registry.register($name, $help, $metric)
    };
    (@one $registry:ident, $name:expr, $help:expr, $metric:expr, $unit:ident) => {
        $registry.register_with_unit($name, $help, prometheus_client::registry::Unit::$unit, $metric)
    };
}

impl Metrics {
    /// A fresh set of metrics, registered under the `snowplow_relay` prefix.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("snowplow_relay");
        let metrics = Metrics {
            registry: Registry::default(),
            events_claimed: Counter::default(),
            events_delivered: Counter::default(),
            events_dead_lettered: Family::default(),
            events_requeued: Counter::default(),
            events_redelivered: Counter::default(),
            events_parked: Counter::default(),
            parked_events: Gauge::default(),
            requests: Family::default(),
            request_counters: RequestCounters {
                notable: Default::default(),
                other: Default::default(),
                no_answer: Counter::default(),
            },
            request_bytes: Counter::default(),
            request_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            retries: Counter::default(),
            concurrency_limit: Gauge::default(),
            events_in_flight: Gauge::default(),
            bytes_in_flight: Gauge::default(),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            list_length: Gauge::default(),
            dead_letter_length: Gauge::default(),
            oldest_event_age: Gauge::default(),
            redis_errors: Family::default(),
            lease_renewals: Counter::default(),
            lease_losses: Counter::default(),
            state_mismatches: Counter::default(),
            ready: Gauge::default(),
        };
        let m = &metrics;
        // Registered in this order, so exposed in this order.
        register_metrics! { registry, m;
            events_claimed as "events_claimed": "Events claimed from the Redis list";
            events_delivered as "events_delivered": "Events the collector accepted (2xx)";
            events_dead_lettered as "events_dead_lettered": "Events written to the dead-letter list, by reason";
            events_requeued as "events_requeued": "Events returned to the head of the list at shutdown";
            events_redelivered as "events_redelivered": "Events returned to the list from relays whose lease expired (possible duplicates)";
            events_parked as "events_parked": "Events parked: their batch kept failing while other requests succeeded, so they \
             left the window for the retry list and are retried one by one";
            parked_events as "parked_events": "Events in this relay's retry list now";
            requests as "requests": "Collector requests, by outcome class (2xx, 3xx, 4xx, 5xx, other, \
             transport_error) and status code (the notable ones; any other is other, none \
             without an answer)";
            request_bytes as "request" in Bytes: "Bytes sent to the collector: POST bodies and GET request URLs";
            request_duration as "request_duration" in Seconds: "Time from sending a collector request to its answer";
            retries as "retries": "Collector requests that failed and will be retried";
            concurrency_limit as "request_concurrency_limit": "How many batches may be on the wire at once now: \
             the adaptive limit (collector.adaptive_concurrency), or max_requests_in_flight";
            events_in_flight as "in_flight_events": "Events claimed and not yet acknowledged";
            bytes_in_flight as "in_flight" in Bytes: "Bytes of events claimed and not yet acknowledged";
            batch_events as "batch_events": "Events per collector request";
            list_length as "list_length": "Events waiting in the Redis list (sampled)";
            dead_letter_length as "dead_letter_length": "Entries in the dead-letter list (sampled)";
            oldest_event_age as "oldest_event_age" in Seconds: "Age of the event at the head of the list, from its dtm (sampled; 0 without dtm)";
            redis_errors as "redis_errors": "Failed Redis calls, by operation; each is retried on a re-established connection";
            lease_renewals as "lease_renewals": "Lease renewals (heartbeats)";
            lease_losses as "lease_losses": "Times this relay found its lease taken over and registered again";
            state_mismatches as "state_mismatches": "Times Redis had lost writes and the in-flight list was returned whole";
            ready as "ready": "1 when the relay is ready to relay (what /readyz answers), 0 otherwise; read at each scrape";
        }
        for reason in DeadReason::ALL {
            let _ = m.events_dead_lettered.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        for operation in RedisOperation::ALL {
            let _ = m.redis_errors.get_or_create(&OperationLabel {
                operation: operation.as_str(),
            });
        }
        let request_counters = RequestCounters::new(&m.requests);
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: crate::VERSION,
                commit: crate::COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "The relay's version and the commit it was built from",
            build_info,
        );
        // The process's own series, under the names every client library uses.
        root.register_collector(Box::new(super::process_metrics::ProcessCollector::new()));
        Metrics {
            registry: root,
            request_counters,
            ..metrics
        }
    }

    /// The metrics in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        out
    }

    /// Whether the relay is ready now (set just before each scrape is encoded).
    pub fn readiness(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The limit on batches in flight is `limit` now.
    pub fn concurrency_limit(&self, limit: usize) {
        self.concurrency_limit.set(limit as i64);
    }

    /// `count` events (of `bytes` bytes) were claimed.
    pub fn claimed(&self, count: u64, bytes: u64) {
        self.events_claimed.inc_by(count);
        self.events_in_flight.inc_by(count as i64);
        self.bytes_in_flight.inc_by(bytes as i64);
    }

    /// `count` events (of `bytes` bytes) left this relay's hands: acknowledged, or
    /// released at shutdown.
    pub fn settled(&self, count: u64, bytes: u64) {
        self.events_in_flight.dec_by(count as i64);
        self.bytes_in_flight.dec_by(bytes as i64);
    }

    /// The relay let go of everything (shutdown, lost lease): nothing is in flight.
    pub fn nothing_in_flight(&self) {
        self.events_in_flight.set(0);
        self.bytes_in_flight.set(0);
        self.parked_events.set(0);
    }

    /// The collector accepted `count` events.
    pub fn delivered(&self, count: u64) {
        self.events_delivered.inc_by(count);
    }

    /// `count` events were written to the dead-letter list for `reason`.
    pub fn dead_lettered(&self, reason: DeadReason, count: u64) {
        if count > 0 {
            self.events_dead_lettered
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc_by(count);
        }
    }

    /// `count` events were parked.
    pub fn parked(&self, count: u64) {
        self.events_parked.inc_by(count);
        self.parked_events.inc_by(count as i64);
    }

    /// Events in this relay's retry list now.
    pub fn parked_now(&self) -> i64 {
        self.parked_events.get()
    }

    /// `count` parked events were delivered or dead-lettered.
    pub fn unparked(&self, count: u64) {
        self.parked_events.dec_by(count as i64);
    }

    /// `count` events went back to the head of the list at shutdown.
    pub fn requeued(&self, count: u64) {
        self.events_requeued.inc_by(count);
    }

    /// `count` events came back from dead relays' in-flight lists.
    pub fn redelivered(&self, count: u64) {
        self.events_redelivered.inc_by(count);
    }

    /// One collector request of `bytes` ended with `status` (`None`: no answer) after
    /// `seconds`.
    pub fn request(&self, status: Option<u16>, seconds: f64, events: usize, bytes: u64) {
        self.request_counters.get(status).inc();
        self.request_bytes.inc_by(bytes);
        self.request_duration.observe(seconds);
        self.batch_events.observe(events as f64);
    }

    /// A failed request will be retried.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// A Redis call for `operation` failed.
    pub fn redis_error(&self, operation: RedisOperation) {
        self.redis_errors
            .get_or_create(&OperationLabel {
                operation: operation.as_str(),
            })
            .inc();
    }

    /// The lease was renewed.
    pub fn lease_renewed(&self) {
        self.lease_renewals.inc();
    }

    /// The lease was found taken over.
    pub fn lease_lost(&self) {
        self.lease_losses.inc();
    }

    /// Redis had lost writes.
    pub fn state_mismatch(&self) {
        self.state_mismatches.inc();
    }

    /// The sampled list lengths and the head event's age (seconds; 0 if unknown).
    pub fn sampled(&self, list: u64, dead: u64, oldest_age_seconds: f64) {
        self.list_length.set(list as i64);
        self.dead_letter_length.set(dead as i64);
        self.oldest_event_age.set(oldest_age_seconds);
    }

    /// What the relay did so far.
    pub fn summary(&self) -> Summary {
        Summary {
            claimed: self.events_claimed.get(),
            delivered: self.events_delivered.get(),
            dead_lettered: DeadReason::ALL
                .iter()
                .map(|reason| {
                    self.events_dead_lettered
                        .get_or_create(&ReasonLabel {
                            reason: reason.as_str(),
                        })
                        .get()
                })
                .sum(),
            requeued: self.events_requeued.get(),
            redelivered: self.events_redelivered.get(),
        }
    }
}

/// What one run did, returned by [`crate::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events claimed from the list.
    pub claimed: u64,
    /// Events the collector accepted.
    pub delivered: u64,
    /// Events written to the dead-letter list.
    pub dead_lettered: u64,
    /// Events returned to the head of the list at shutdown.
    pub requeued: u64,
    /// Events this relay returned from dead relays' in-flight lists (possible duplicates).
    pub redelivered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_the_summary_adds_up() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        let metrics = Metrics::new();
        metrics.claimed(10, 1000);
        metrics.delivered(7);
        metrics.dead_lettered(DeadReason::Malformed, 2);
        metrics.dead_lettered(DeadReason::Rejected, 1);
        metrics.request(Some(200), 0.01, 7, 700);
        metrics.request(Some(413), 0.01, 7, 900);
        metrics.request(Some(418), 0.01, 1, 100);
        metrics.redis_error(RedisOperation::Claim);
        let text = metrics.encode(Format::Prometheus);
        for line in [
            "# HELP snowplow_relay_events_claimed_total Events claimed",
            "# TYPE snowplow_relay_events_claimed_total counter",
            "snowplow_relay_events_claimed_total 10",
            "snowplow_relay_events_delivered_total 7",
            "snowplow_relay_events_dead_lettered_total{reason=\"malformed\"} 2",
            "snowplow_relay_events_dead_lettered_total{reason=\"oversized\"} 0",
            "snowplow_relay_requests_total{class=\"2xx\",code=\"200\"} 1",
            "snowplow_relay_requests_total{class=\"4xx\",code=\"413\"} 1",
            "snowplow_relay_requests_total{class=\"4xx\",code=\"other\"} 1",
            "snowplow_relay_requests_total{class=\"5xx\",code=\"503\"} 0",
            "snowplow_relay_requests_total{class=\"transport_error\",code=\"none\"} 0",
            "snowplow_relay_request_bytes_total 1700",
            "snowplow_relay_redis_errors_total{operation=\"claim\"} 1",
            "snowplow_relay_redis_errors_total{operation=\"heartbeat\"} 0",
            "snowplow_relay_in_flight_events 10",
            "snowplow_relay_in_flight_bytes 1000",
            concat!(
                "snowplow_relay_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\",commit=\"",
                env!("SNOWPLOW_RELAY_COMMIT"),
                "\"} 1"
            ),
        ] {
            assert!(text.contains(line), "`{line}` missing from\n{text}");
        }
        assert!(text.contains("snowplow_relay_request_duration_seconds_bucket"));
        assert!(!text.contains("# EOF"), "0.0.4 has no EOF marker");
        let open = metrics.encode(Format::OpenMetrics);
        assert!(open.contains("# TYPE snowplow_relay_events_claimed counter"));
        assert!(open.ends_with("# EOF\n"));
        let summary = metrics.summary();
        assert_eq!(summary.dead_lettered, 3);
        assert_eq!(summary.delivered, 7);
    }
}
