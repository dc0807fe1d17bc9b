//! [`Tracker`]: turns an [`Event`] into the tracker protocol's name/value pairs (a
//! [`Payload`]), adds the common fields (`eid`, `dtm`, `tv`, namespace, app id, contexts,
//! subject) exactly as the Python tracker does, and hands the payload to its emitters.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;
use uuid::Uuid;

use crate::emit::Emit;
use crate::events::{Event, Payload};
use crate::protocol::iglu::{CONTEXTS_SCHEMA, SelfDescribingJson, UNSTRUCT_EVENT_SCHEMA};
use crate::subject::Subject;

/// The tracker version this library reports (`tv`).
pub const TRACKER_VERSION: &str = concat!("rust-relay-", env!("CARGO_PKG_VERSION"));

/// Why an event was not tracked, or an emitter failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required text field was empty.
    #[error("the {event}'s {field} must not be empty")]
    EmptyField {
        /// The event kind.
        event: &'static str,
        /// The field.
        field: &'static str,
    },
    /// `Some(vec![])` was passed as contexts.
    #[error("a context list must hold at least one context; pass None for no contexts")]
    EmptyContexts,
    /// A schema was not an Iglu URI.
    #[error(
        "not an Iglu schema URI: {0:?}; expected iglu:vendor/name/format/M-R-A, e.g. \
         iglu:com.acme/checkout/jsonschema/1-0-0"
    )]
    InvalidSchema(String),
    /// Self-describing JSON text was not `{"schema": "iglu:…", "data": …}`.
    #[error("not a self-describing JSON: {0}")]
    InvalidJson(String),
    /// A field holds a value its schema does not allow.
    #[error("the {event}'s {field} must be one of {allowed}, not {value:?}")]
    NotOneOf {
        /// The event kind.
        event: &'static str,
        /// The field.
        field: &'static str,
        /// The value given (shortened).
        value: String,
        /// The values allowed.
        allowed: String,
    },
    /// A number was NaN or infinite.
    #[error("{field} must be a finite number, not {value}")]
    NonFinite {
        /// The protocol field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// Redis refused or failed the push (the source is Redis's own error).
    #[error("Redis: {0}")]
    Redis(#[source] BoxError),
    /// The HTTP emitter could not be built.
    #[error("collector: {reason}")]
    Collector {
        /// What is wrong.
        reason: String,
        /// The error behind it, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// An event cannot be sent as configured (e.g. larger than `collector.byte_limit`);
    /// the other events of the call were taken.
    #[error("event not sent: {0}")]
    Unsendable(String),
    /// The emitter was closed.
    #[error("the emitter is closed")]
    Closed,
}

/// An error of another library, kept as the source of this crate's [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which clock an explicit timestamp replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// When the event really happened (`ttm`), milliseconds since the epoch; `dtm` stays
    /// the time of tracking.
    True(u64),
    /// The device's clock at the event (`dtm`), milliseconds since the epoch.
    Device(u64),
}

/// What an event's own subject ([`TrackOptions::subject`]) does to the tracker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SubjectMerging {
    /// The event's subject sets what it sets; the rest comes from the tracker's subject
    /// (as the Python tracker 1.x merges; there a subject always carries a platform, here
    /// only one set explicitly overrides the tracker's). The default.
    #[default]
    Merge,
    /// The event's subject replaces the tracker's whole (the Python tracker 0.15).
    Replace,
}

/// What may accompany one event besides its own fields.
#[derive(Debug, Clone, Default)]
pub struct TrackOptions {
    /// Contexts: `None`, or at least one self-describing JSON.
    pub contexts: Option<Vec<SelfDescribingJson>>,
    /// A true or device timestamp instead of "now".
    pub timestamp: Option<Timestamp>,
    /// A subject of this event's own, merged over the tracker's or replacing it (see
    /// [`Tracker::subject_merging`]).
    pub subject: Option<Subject>,
}

/// Tracks events: builds each payload and hands it to every emitter.
///
/// ```
/// use snowplow_relay_tracker::{Structured, Subject, Tracker, TrackOptions, Timestamp};
///
/// // Payloads can be built without emitting, e.g. to inspect them.
/// let tracker = Tracker::builder("shop", "shop-backend").subject(Subject::new().user_id("u-1"));
/// let payloads = tracker.payloads(
///     &Structured::new("basket", "add").value(2.5).into(),
///     &TrackOptions { timestamp: Some(Timestamp::True(1_700_000_000_000)), ..Default::default() },
/// )?;
/// assert_eq!(payloads[0].get("se_va"), Some(&serde_json::json!(2.5)));
/// assert_eq!(payloads[0].get("ttm"), Some(&serde_json::json!(1_700_000_000_000u64)));
/// assert_eq!(payloads[0].get("uid"), Some(&serde_json::json!("u-1")));
/// # Ok::<(), snowplow_relay_tracker::Error>(())
/// ```
#[derive(Clone)]
pub struct Tracker {
    namespace: String,
    app_id: String,
    emitters: Vec<Arc<dyn Emit>>,
    subject: Subject,
    subject_merging: SubjectMerging,
    encode_base64: bool,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("namespace", &self.namespace)
            .field("app_id", &self.app_id)
            .field("emitters", &self.emitters.len())
            .field("subject", &self.subject)
            .field("subject_merging", &self.subject_merging)
            .field("encode_base64", &self.encode_base64)
            .finish()
    }
}

impl Tracker {
    /// A tracker for namespace (`tna`) and app id (`aid`) that emits to `emitter`, with
    /// `subject` (default: platform `pc`, nothing else) and base64 on.
    pub fn new(
        namespace: impl Into<String>,
        app_id: impl Into<String>,
        emitter: impl Emit + 'static,
        subject: Option<Subject>,
    ) -> Tracker {
        Tracker::builder(namespace, app_id)
            .emitter(emitter)
            .subject(subject.unwrap_or_default())
    }

    /// A tracker with no emitter yet: add them with [`Tracker::emitter`]. Without any,
    /// [`Tracker::payloads`] still works and tracking builds payloads nobody receives.
    pub fn builder(namespace: impl Into<String>, app_id: impl Into<String>) -> Tracker {
        Tracker {
            namespace: namespace.into(),
            app_id: app_id.into(),
            emitters: Vec::new(),
            subject: Subject::default(),
            subject_merging: SubjectMerging::default(),
            encode_base64: true,
        }
    }

    /// How an event's own subject combines with the tracker's (default: merged over it).
    pub fn subject_merging(mut self, merging: SubjectMerging) -> Tracker {
        self.subject_merging = merging;
        self
    }

    /// Adds an emitter: every event goes to each.
    pub fn emitter(mut self, emitter: impl Emit + 'static) -> Tracker {
        self.emitters.push(Arc::new(emitter));
        self
    }

    /// Sets the tracker's subject: every event's, under or instead of an event's own.
    pub fn subject(mut self, subject: Subject) -> Tracker {
        self.subject = subject;
        self
    }

    /// Switches the subject for the events tracked from now on.
    pub fn set_subject(&mut self, subject: Subject) {
        self.subject = subject;
    }

    /// With `true` (the default) contexts and self-describing events are base64url
    /// (`cx`, `ue_px`); with `false` plain JSON text (`co`, `ue_pr`).
    pub fn encode_base64(mut self, encode: bool) -> Tracker {
        self.encode_base64 = encode;
        self
    }

    /// Tracks `event` with optional `contexts`; returns its event id (for a
    /// transaction, the transaction's; see [`Tracker::track_with`] for the items').
    pub async fn track(
        &self,
        event: impl Into<Event>,
        contexts: Option<Vec<SelfDescribingJson>>,
    ) -> Result<Uuid, Error> {
        let options = TrackOptions {
            contexts,
            ..TrackOptions::default()
        };
        let ids = self.track_with(event, options).await?;
        Ok(ids[0])
    }

    /// Tracks `event` with contexts, timestamp and subject of its own; returns every
    /// event id it produced (a transaction's first, then its items').
    pub async fn track_with(
        &self,
        event: impl Into<Event>,
        options: TrackOptions,
    ) -> Result<Vec<Uuid>, Error> {
        let payloads = self.payloads(&event.into(), &options)?;
        let ids = payloads
            .iter()
            .map(|p| {
                p.event_id()
                    .and_then(|id| Uuid::parse_str(id).ok())
                    .expect("every payload gets a UUID")
            })
            .collect();
        self.emit(payloads).await?;
        Ok(ids)
    }

    /// Hands ready payloads to every emitter (several at once are pipelined).
    pub async fn emit(&self, payloads: Vec<Payload>) -> Result<(), Error> {
        for emitter in &self.emitters {
            emitter.emit(payloads.clone()).await?;
        }
        Ok(())
    }

    /// Sends what the emitters buffer and waits until it is resolved.
    pub async fn flush(&self) -> Result<(), Error> {
        for emitter in &self.emitters {
            emitter.flush().await?;
        }
        Ok(())
    }

    /// Flushes and closes every emitter.
    pub async fn close(self) -> Result<(), Error> {
        for emitter in &self.emitters {
            emitter.close().await?;
        }
        Ok(())
    }

    /// The payloads `event` becomes (one, or a transaction's and one per item), each with
    /// a fresh `eid`, without emitting them.
    pub fn payloads(&self, event: &Event, options: &TrackOptions) -> Result<Vec<Payload>, Error> {
        if options.contexts.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::EmptyContexts);
        }
        let fields = event.fields()?;
        let now = crate::protocol::now_millis();
        let (device, true_time) = match options.timestamp {
            Some(Timestamp::Device(ms)) => (ms, None),
            Some(Timestamp::True(ms)) => (now, Some(ms)),
            // A transaction's items carry its true timestamp (as in the Python tracker).
            None if matches!(event, Event::EcommerceTransaction(_)) => (now, Some(now)),
            None => (now, None),
        };
        let merged;
        let subject = match (&options.subject, self.subject_merging) {
            (None, _) => &self.subject,
            (Some(own), SubjectMerging::Replace) => own,
            (Some(own), SubjectMerging::Merge) => {
                merged = own.merged_over(&self.subject);
                &merged
            }
        };
        let mut payloads = Vec::with_capacity(1 + fields.items.len());
        let mut own = fields.own;
        if let Some(body) = fields.self_describing {
            let envelope = serde_json::json!({"schema": UNSTRUCT_EVENT_SCHEMA, "data": body});
            self.add_json(&mut own, &envelope, "ue_px", "ue_pr");
        }
        payloads.push(self.complete(own, device, true_time, options.contexts.as_deref(), subject));
        // Items are events of their own, tracked after the transaction: their own device
        // time, the transaction's true time (its device time if it was given one), no
        // contexts of the transaction's (as in the Python tracker).
        let item_true_time = true_time.or(Some(device));
        for item in fields.items {
            let item_device = crate::protocol::now_millis();
            payloads.push(self.complete(item, item_device, item_true_time, None, subject));
        }
        Ok(payloads)
    }

    fn add_json(
        &self,
        payload: &mut Payload,
        value: &Value,
        encoded: &'static str,
        plain: &'static str,
    ) {
        // json.dumps(…, ensure_ascii=False), as the Python tracker writes it.
        let text = crate::json::python_dumps(value);
        if self.encode_base64 {
            let encoded_text = base64::engine::general_purpose::URL_SAFE.encode(text);
            payload.add_str(encoded, &encoded_text);
        } else {
            payload.add_str(plain, &text);
        }
    }

    /// Adds the common fields in the Python tracker's order: eid, dtm, ttm, contexts,
    /// tv, tna, aid, then the subject's.
    fn complete(
        &self,
        mut payload: Payload,
        device_ms: u64,
        true_ms: Option<u64>,
        contexts: Option<&[SelfDescribingJson]>,
        subject: &Subject,
    ) -> Payload {
        payload.add_str("eid", &Uuid::new_v4().to_string());
        payload.add("dtm", Value::from(device_ms));
        if let Some(ms) = true_ms {
            payload.add("ttm", Value::from(ms));
        }
        if let Some(contexts) = contexts {
            let data: Vec<Value> = contexts.iter().map(SelfDescribingJson::to_value).collect();
            let envelope = serde_json::json!({"schema": CONTEXTS_SCHEMA, "data": data});
            self.add_json(&mut payload, &envelope, "cx", "co");
        }
        payload.add_str("tv", TRACKER_VERSION);
        payload.add_str("tna", &self.namespace);
        payload.add_str("aid", &self.app_id);
        subject.add_to(&mut payload);
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use serde_json::json;

    fn tracker() -> Tracker {
        Tracker::builder("ns", "app")
    }

    fn one(event: impl Into<Event>, options: TrackOptions) -> Payload {
        tracker()
            .payloads(&event.into(), &options)
            .unwrap()
            .remove(0)
    }

    fn decode(payload: &Payload, field: &str) -> Value {
        let text = payload.get(field).unwrap().as_str().unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(text)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn common_fields_and_order_follow_the_python_tracker() {
        let payload = one(
            PageView::new("https://a.example/").title("A"),
            TrackOptions::default(),
        );
        let names: Vec<_> = payload.fields().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["e", "url", "page", "eid", "dtm", "tv", "tna", "aid", "p"]
        );
        assert_eq!(payload.get("tv"), Some(&json!(TRACKER_VERSION)));
        assert!(
            Uuid::parse_str(payload.event_id().unwrap())
                .unwrap()
                .get_version_num()
                == 4
        );
        assert!(payload.get("dtm").unwrap().as_u64().unwrap() > 1_600_000_000_000);
        let other = one(PageView::new("https://a.example/"), TrackOptions::default());
        assert_ne!(
            payload.event_id(),
            other.event_id(),
            "a fresh eid per event"
        );
    }

    #[test]
    fn contexts_and_self_describing_events_are_wrapped_and_encoded() {
        let context =
            SelfDescribingJson::new("iglu:com.acme/c/jsonschema/1-0-0", json!({"k": "é"})).unwrap();
        let event =
            SelfDescribingJson::new("iglu:com.acme/e/jsonschema/1-0-0", json!({"n": 1})).unwrap();
        let options = TrackOptions {
            contexts: Some(vec![context.clone()]),
            ..Default::default()
        };
        let payload = one(event.clone(), options.clone());
        assert_eq!(
            check_contexts(&decode(&payload, "cx")).unwrap(),
            vec![context.clone()]
        );
        assert_eq!(
            check_self_describing_event(&decode(&payload, "ue_px")).unwrap(),
            event
        );

        let plain = Tracker::builder("ns", "app").encode_base64(false);
        let payload = plain
            .payloads(&event.clone().into(), &options)
            .unwrap()
            .remove(0);
        let co: Value = serde_json::from_str(payload.get("co").unwrap().as_str().unwrap()).unwrap();
        assert_eq!(check_contexts(&co).unwrap(), vec![context]);
        assert!(payload.get("ue_pr").is_some() && payload.get("ue_px").is_none());
    }

    #[test]
    fn timestamps_and_per_event_subjects() {
        let truth = one(
            Structured::new("c", "a"),
            TrackOptions {
                timestamp: Some(Timestamp::True(42)),
                ..Default::default()
            },
        );
        assert_eq!(truth.get("ttm"), Some(&json!(42)));
        let device = one(
            Structured::new("c", "a"),
            TrackOptions {
                timestamp: Some(Timestamp::Device(43)),
                subject: Some(Subject::new().platform(Platform::Iot).network_user_id("n")),
                ..Default::default()
            },
        );
        assert_eq!(device.get("dtm"), Some(&json!(43)));
        assert_eq!(device.get("ttm"), None);
        assert_eq!(device.get("p"), Some(&json!("iot")));
        assert_eq!(device.get("tnuid"), Some(&json!("n")));
    }

    #[test]
    fn a_transaction_brings_its_items_sharing_order_currency_and_true_time() {
        let order = EcommerceTransaction::new("o-1", 20.0)
            .currency("EUR")
            .item(TransactionItem::new("s-1", 10.0, 2))
            .item(TransactionItem::new("s-2", 0.5, 1).name("Pen"));
        let payloads = tracker()
            .payloads(&order.into(), &TrackOptions::default())
            .unwrap();
        assert_eq!(payloads.len(), 3);
        let ttm = payloads[0].get("ttm").unwrap();
        for item in &payloads[1..] {
            assert_eq!(item.get("e"), Some(&json!("ti")));
            assert_eq!(item.get("ti_id"), Some(&json!("o-1")));
            assert_eq!(item.get("ti_cu"), Some(&json!("EUR")));
            assert_eq!(item.get("ttm"), Some(ttm));
        }
    }

    #[test]
    fn an_events_subject_merges_over_the_trackers_or_replaces_it() {
        let base = Subject::new()
            .platform(Platform::Web)
            .user_id("u-tracker")
            .timezone("Europe/London");
        let own = Subject::new().user_id("u-event").language("fr");
        let options = TrackOptions {
            subject: Some(own),
            ..Default::default()
        };
        let fields = |merging| {
            let t = tracker().subject(base.clone()).subject_merging(merging);
            let payload = t
                .payloads(&PageView::new("u").into(), &options)
                .unwrap()
                .remove(0);
            ["p", "uid", "tz", "lang"].map(|f| payload.get(f).cloned())
        };
        // Merge (the default, as the Python tracker 1.x): the event's fields win, the
        // tracker's fill the rest, the platform stays the tracker's unless set.
        assert_eq!(
            fields(SubjectMerging::default()),
            [
                Some(json!("web")),
                Some(json!("u-event")),
                Some(json!("Europe/London")),
                Some(json!("fr"))
            ]
        );
        // Replace (the Python tracker 0.15): the event's subject alone, platform `pc`.
        assert_eq!(
            fields(SubjectMerging::Replace),
            [
                Some(json!("pc")),
                Some(json!("u-event")),
                None,
                Some(json!("fr"))
            ]
        );
    }

    #[test]
    fn numbers_are_sent_as_given_and_sdj_members_in_pythons_order_and_spacing() {
        let t = tracker().encode_base64(false);
        let whole = one(Structured::new("c", "a").value(9), TrackOptions::default());
        assert!(
            String::from_utf8(whole.to_json())
                .unwrap()
                .contains("\"se_va\":9,")
        );
        let decimal = one(
            Structured::new("c", "a").value(9.0),
            TrackOptions::default(),
        );
        assert!(
            String::from_utf8(decimal.to_json())
                .unwrap()
                .contains("\"se_va\":9.0,")
        );
        let payload = t
            .payloads(
                &CartChange::add("s", 2).unit_price(9.5).into(),
                &TrackOptions::default(),
            )
            .unwrap()
            .remove(0);
        assert_eq!(
            payload.get("ue_pr"),
            Some(&json!(
                "{\"schema\": \"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0\", \
                 \"data\": {\"schema\": \"iglu:com.snowplowanalytics.snowplow/add_to_cart/jsonschema/1-0-0\", \
                 \"data\": {\"sku\": \"s\", \"quantity\": 2, \"unitPrice\": 9.5}}}"
            ))
        );
    }

    #[test]
    fn items_are_tracked_after_their_transaction_with_its_true_time() {
        let order = EcommerceTransaction::new("o", 1).item(TransactionItem::new("s", 1, 1));
        let device = TrackOptions {
            timestamp: Some(Timestamp::Device(1_000)),
            ..Default::default()
        };
        let payloads = tracker().payloads(&order.into(), &device).unwrap();
        assert_eq!(payloads[0].get("dtm"), Some(&json!(1_000)));
        assert_eq!(payloads[0].get("tr_tt"), Some(&json!(1)));
        // The item: its own tracking time, the transaction's time as its true time.
        assert_ne!(payloads[1].get("dtm"), Some(&json!(1_000)));
        assert_eq!(payloads[1].get("ttm"), Some(&json!(1_000)));
        assert_eq!(payloads[1].get("ti_pr"), Some(&json!(1)));
    }

    #[test]
    fn new_event_kinds_refuse_what_their_schemas_refuse() {
        let t = tracker();
        let none = TrackOptions::default();
        assert!(matches!(
            t.payloads(&FormChange::new("f", "e", "DIV").into(), &none),
            Err(Error::NotOneOf {
                field: "node_name",
                ..
            })
        ));
        assert!(matches!(
            t.payloads(
                &FormChange::new("f", "e", "INPUT")
                    .input_type("bogus")
                    .into(),
                &none
            ),
            Err(Error::NotOneOf { field: "type", .. })
        ));
        assert!(matches!(
            t.payloads(
                &FormSubmit::new("f")
                    .element(FormElement::new("n", None, "P"))
                    .into(),
                &none
            ),
            Err(Error::NotOneOf {
                field: "node_name",
                ..
            })
        ));
        assert!(matches!(
            t.payloads(&SiteSearch::new(Vec::<String>::new()).into(), &none),
            Err(Error::EmptyField { field: "terms", .. })
        ));
        assert!(matches!(
            t.payloads(&LinkClick::new("").into(), &none),
            Err(Error::EmptyField {
                field: "target_url",
                ..
            })
        ));
        assert!(matches!(
            t.payloads(&CartChange::remove("", 1).into(), &none),
            Err(Error::EmptyField { field: "sku", .. })
        ));
        assert!(matches!(
            t.payloads(&CartChange::add("s", 1).unit_price(f64::NAN).into(), &none),
            Err(Error::NonFinite {
                field: "unitPrice",
                ..
            })
        ));
        assert!(matches!(
            t.payloads(&MobileScreenView::new("").into(), &none),
            Err(Error::EmptyField { field: "name", .. })
        ));
    }

    #[test]
    fn wrong_input_is_a_typed_error() {
        let t = tracker();
        let none = TrackOptions::default();
        assert!(matches!(
            t.payloads(&PageView::new("").into(), &none),
            Err(Error::EmptyField { field: "url", .. })
        ));
        assert!(matches!(
            t.payloads(&Structured::new("c", "a").value(f64::NAN).into(), &none),
            Err(Error::NonFinite { field: "se_va", .. })
        ));
        assert!(matches!(
            t.payloads(
                &EcommerceTransaction::new("o", 1.0)
                    .item(TransactionItem::new("s", f64::INFINITY, 1))
                    .into(),
                &none
            ),
            Err(Error::NonFinite { field: "ti_pr", .. })
        ));
        let empty = TrackOptions {
            contexts: Some(vec![]),
            ..Default::default()
        };
        assert!(matches!(
            t.payloads(&PageView::new("u").into(), &empty),
            Err(Error::EmptyContexts)
        ));
        assert!(matches!(
            SelfDescribingJson::new("iglu:bad", json!({})),
            Err(Error::InvalidSchema(_))
        ));
        assert!(SelfDescribingJson::from_json("{\"schema\":1}").is_err());
    }
}
