//! The events a [`crate::Tracker`] tracks and the payload they become: the tracker
//! protocol's name/value pairs, in the order and with the JSON types the Python tracker
//! writes (numbers stay numbers in Redis; the relay and the HTTP emitter send them as
//! strings).

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::Error;
use crate::protocol::iglu::SelfDescribingJson;

/// One event's name/value pairs, in insertion order: what the `RedisEmitter` pushes as a
/// JSON object and the HTTP emitter sends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    fields: Vec<(&'static str, Value)>,
}

impl Payload {
    /// Adds a pair; as in the Python tracker, an empty string is left out.
    pub(super) fn add(&mut self, name: &'static str, value: Value) {
        if value.as_str() == Some("") || value.is_null() {
            return;
        }
        self.fields.push((name, value));
    }

    pub(super) fn add_str(&mut self, name: &'static str, value: &str) {
        self.add(name, Value::from(value));
    }

    pub(super) fn add_opt(&mut self, name: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.add_str(name, value);
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every pair, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.fields.iter().map(|(n, v)| (*n, v))
    }

    /// The event id (`eid`).
    pub fn event_id(&self) -> Option<&str> {
        self.get("eid").and_then(Value::as_str)
    }

    /// The JSON object, as one list element (the Python RedisEmitter's
    /// `json.dumps(payload)`, compact).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a payload of strings and numbers always serialises")
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (name, value) in &self.fields {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A finite number as JSON, or the typed error naming the field.
fn finite(field: &'static str, value: f64) -> Result<Value, Error> {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .ok_or(Error::NonFinite { field, value })
}

fn finite_opt(field: &'static str, value: Option<f64>) -> Result<Value, Error> {
    value.map_or(Ok(Value::Null), |v| finite(field, v))
}

fn required<'a>(
    event: &'static str,
    field: &'static str,
    value: &'a str,
) -> Result<&'a str, Error> {
    if value.is_empty() {
        return Err(Error::EmptyField { event, field });
    }
    Ok(value)
}

/// A page view (`e=pv`).
///
/// ```
/// use snowplow_relay_tracker::PageView;
/// let view = PageView::new("https://shop.example.com/").title("Shop").referrer("https://example.com/");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PageView {
    url: String,
    title: Option<String>,
    referrer: Option<String>,
}

impl PageView {
    /// A view of `url` (must not be empty).
    pub fn new(url: impl Into<String>) -> Self {
        PageView {
            url: url.into(),
            title: None,
            referrer: None,
        }
    }

    optional_setters! {
        /// The page title (`page`).
        fn title(title: text);
        /// The referrer (`refr`).
        fn referrer(referrer: text);
    }
}

/// A page ping (`e=pp`): the page is still open, with the scroll range seen.
///
/// ```
/// use snowplow_relay_tracker::PagePing;
/// let ping = PagePing::new("https://shop.example.com/").offsets(0, 0, 120, 900);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PagePing {
    url: String,
    title: Option<String>,
    referrer: Option<String>,
    offsets: Option<[i64; 4]>,
}

impl PagePing {
    /// A ping on `url` (must not be empty).
    pub fn new(url: impl Into<String>) -> Self {
        PagePing {
            url: url.into(),
            title: None,
            referrer: None,
            offsets: None,
        }
    }

    optional_setters! {
        /// The page title (`page`).
        fn title(title: text);
        /// The referrer (`refr`).
        fn referrer(referrer: text);
    }

    /// Scroll offsets seen since the last ping: `pp_mix`, `pp_max`, `pp_miy`, `pp_may`.
    pub fn offsets(mut self, min_x: i64, max_x: i64, min_y: i64, max_y: i64) -> Self {
        self.offsets = Some([min_x, max_x, min_y, max_y]);
        self
    }
}

/// A structured event (`e=se`): category, action and optional label, property, value.
///
/// ```
/// use snowplow_relay_tracker::Structured;
/// let click = Structured::new("shop", "add-to-basket").label("sku-1").value(9.99);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Structured {
    category: String,
    action: String,
    label: Option<String>,
    property: Option<String>,
    value: Option<f64>,
}

impl Structured {
    /// An event of `category` and `action` (neither may be empty).
    pub fn new(category: impl Into<String>, action: impl Into<String>) -> Self {
        Structured {
            category: category.into(),
            action: action.into(),
            label: None,
            property: None,
            value: None,
        }
    }

    optional_setters! {
        /// `se_la`.
        fn label(label: text);
        /// `se_pr`.
        fn property(property: text);
        /// `se_va` (must be finite).
        fn value(value: f64);
    }
}

/// A screen view, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/screen_view/jsonschema/1-0-0` (as the Python
/// tracker's `track_screen_view`).
///
/// ```
/// use snowplow_relay_tracker::ScreenView;
/// let screen = ScreenView::new().name("Checkout").id("screen-7");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScreenView {
    name: Option<String>,
    id: Option<String>,
}

impl ScreenView {
    /// A screen view with neither name nor id yet.
    pub fn new() -> Self {
        ScreenView::default()
    }

    optional_setters! {
        /// The screen's name.
        fn name(name: text);
        /// The screen's id.
        fn id(id: text);
    }
}

/// A timing, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/timing/jsonschema/1-0-0`.
///
/// ```
/// use snowplow_relay_tracker::Timing;
/// let timing = Timing::new("checkout", "load", 250).label("cold cache");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    category: String,
    variable: String,
    timing_ms: u64,
    label: Option<String>,
}

impl Timing {
    /// `timing_ms` milliseconds spent on `variable` in `category` (neither empty).
    pub fn new(category: impl Into<String>, variable: impl Into<String>, timing_ms: u64) -> Self {
        Timing {
            category: category.into(),
            variable: variable.into(),
            timing_ms,
            label: None,
        }
    }

    /// An optional label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// One line of an [`EcommerceTransaction`], tracked as its own `e=ti` event.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionItem {
    sku: String,
    price: f64,
    quantity: i64,
    name: Option<String>,
    category: Option<String>,
}

impl TransactionItem {
    /// `quantity` of `sku` at `price` each (sku not empty, price finite).
    pub fn new(sku: impl Into<String>, price: f64, quantity: i64) -> Self {
        TransactionItem {
            sku: sku.into(),
            price,
            quantity,
            name: None,
            category: None,
        }
    }

    optional_setters! {
        /// `ti_nm`.
        fn name(name: text);
        /// `ti_ca`.
        fn category(category: text);
    }
}

/// An ecommerce transaction (`e=tr`) and its items (one `e=ti` event each, sharing the
/// order id, currency, true timestamp and subject, as the Python tracker sends them).
///
/// ```
/// use snowplow_relay_tracker::{EcommerceTransaction, TransactionItem};
/// let order = EcommerceTransaction::new("order-1", 19.98)
///     .currency("EUR")
///     .item(TransactionItem::new("sku-1", 9.99, 2).name("Mug"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EcommerceTransaction {
    order_id: String,
    total_value: f64,
    affiliation: Option<String>,
    tax_value: Option<f64>,
    shipping: Option<f64>,
    city: Option<String>,
    state: Option<String>,
    country: Option<String>,
    currency: Option<String>,
    items: Vec<TransactionItem>,
}

impl EcommerceTransaction {
    /// Order `order_id` (not empty) worth `total_value` (finite).
    pub fn new(order_id: impl Into<String>, total_value: f64) -> Self {
        EcommerceTransaction {
            order_id: order_id.into(),
            total_value,
            affiliation: None,
            tax_value: None,
            shipping: None,
            city: None,
            state: None,
            country: None,
            currency: None,
            items: Vec::new(),
        }
    }

    optional_setters! {
        /// `tr_af`.
        fn affiliation(affiliation: text);
        /// `tr_tx`.
        fn tax_value(tax_value: f64);
        /// `tr_sh`.
        fn shipping(shipping: f64);
    }

    /// `tr_ci`, `tr_st`, `tr_co`.
    pub fn address(
        mut self,
        city: impl Into<String>,
        state: impl Into<String>,
        country: impl Into<String>,
    ) -> Self {
        self.city = Some(city.into());
        self.state = Some(state.into());
        self.country = Some(country.into());
        self
    }

    /// `tr_cu`, also set on every item (`ti_cu`).
    pub fn currency(mut self, currency: impl Into<String>) -> Self {
        self.currency = Some(currency.into());
        self
    }

    /// Adds an item.
    pub fn item(mut self, item: TransactionItem) -> Self {
        self.items.push(item);
        self
    }
}

/// Any event a tracker can track. Every event type converts into it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `e=pv`.
    PageView(PageView),
    /// `e=pp`.
    PagePing(PagePing),
    /// `e=se`.
    Structured(Structured),
    /// `e=ue` with the caller's schema (the old "unstructured" event).
    SelfDescribing(SelfDescribingJson),
    /// `e=ue`, screen_view.
    ScreenView(ScreenView),
    /// `e=ue`, timing.
    Timing(Timing),
    /// `e=tr`, then `e=ti` per item.
    EcommerceTransaction(EcommerceTransaction),
}

macro_rules! into_event {
    ($($kind:ident),*) => {$(
        impl From<$kind> for Event {
            fn from(event: $kind) -> Event {
                Event::$kind(event)
            }
        }
    )*};
}
into_event!(
    PageView,
    PagePing,
    Structured,
    ScreenView,
    Timing,
    EcommerceTransaction
);

impl From<SelfDescribingJson> for Event {
    fn from(event: SelfDescribingJson) -> Event {
        Event::SelfDescribing(event)
    }
}

/// How an event's own fields come out: `(fields, self-describing body)` for the
/// event itself, plus one field list per transaction item.
pub(super) struct EventFields {
    pub own: Payload,
    pub self_describing: Option<Value>,
    pub items: Vec<Payload>,
}

impl Event {
    /// The event's own fields, checked. Common fields (ids, time, contexts, subject) are
    /// the tracker's to add.
    pub(super) fn fields(&self) -> Result<EventFields, Error> {
        let mut own = Payload::default();
        let mut self_describing = None;
        let mut items = Vec::new();
        match self {
            Event::PageView(view) => {
                own.add_str("e", "pv");
                own.add_str("url", required("page view", "url", &view.url)?);
                own.add_opt("page", view.title.as_deref());
                own.add_opt("refr", view.referrer.as_deref());
            }
            Event::PagePing(ping) => {
                own.add_str("e", "pp");
                own.add_str("url", required("page ping", "url", &ping.url)?);
                own.add_opt("page", ping.title.as_deref());
                own.add_opt("refr", ping.referrer.as_deref());
                if let Some([min_x, max_x, min_y, max_y]) = ping.offsets {
                    own.add("pp_mix", Value::from(min_x));
                    own.add("pp_max", Value::from(max_x));
                    own.add("pp_miy", Value::from(min_y));
                    own.add("pp_may", Value::from(max_y));
                }
            }
            Event::Structured(event) => {
                own.add_str("e", "se");
                own.add_str(
                    "se_ca",
                    required("structured event", "category", &event.category)?,
                );
                own.add_str(
                    "se_ac",
                    required("structured event", "action", &event.action)?,
                );
                own.add_opt("se_la", event.label.as_deref());
                own.add_opt("se_pr", event.property.as_deref());
                own.add("se_va", finite_opt("se_va", event.value)?);
            }
            Event::SelfDescribing(event) => {
                own.add_str("e", "ue");
                self_describing = Some(event.to_value());
            }
            Event::ScreenView(screen) => {
                own.add_str("e", "ue");
                let mut data = serde_json::Map::new();
                if let Some(name) = &screen.name {
                    data.insert("name".into(), Value::from(name.as_str()));
                }
                if let Some(id) = &screen.id {
                    data.insert("id".into(), Value::from(id.as_str()));
                }
                self_describing = Some(serde_json::json!({
                    "schema": "iglu:com.snowplowanalytics.snowplow/screen_view/jsonschema/1-0-0",
                    "data": data,
                }));
            }
            Event::Timing(timing) => {
                own.add_str("e", "ue");
                let mut data = serde_json::Map::new();
                data.insert(
                    "category".into(),
                    Value::from(required("timing", "category", &timing.category)?),
                );
                data.insert(
                    "variable".into(),
                    Value::from(required("timing", "variable", &timing.variable)?),
                );
                data.insert("timing".into(), Value::from(timing.timing_ms));
                if let Some(label) = &timing.label {
                    data.insert("label".into(), Value::from(label.as_str()));
                }
                self_describing = Some(serde_json::json!({
                    "schema": "iglu:com.snowplowanalytics.snowplow/timing/jsonschema/1-0-0",
                    "data": data,
                }));
            }
            Event::EcommerceTransaction(order) => {
                let order_id = required("transaction", "order_id", &order.order_id)?;
                own.add_str("e", "tr");
                own.add_str("tr_id", order_id);
                own.add("tr_tt", finite("tr_tt", order.total_value)?);
                own.add_opt("tr_af", order.affiliation.as_deref());
                own.add("tr_tx", finite_opt("tr_tx", order.tax_value)?);
                own.add("tr_sh", finite_opt("tr_sh", order.shipping)?);
                own.add_opt("tr_ci", order.city.as_deref());
                own.add_opt("tr_st", order.state.as_deref());
                own.add_opt("tr_co", order.country.as_deref());
                own.add_opt("tr_cu", order.currency.as_deref());
                for item in &order.items {
                    let mut fields = Payload::default();
                    fields.add_str("e", "ti");
                    fields.add_str("ti_id", order_id);
                    fields.add_str("ti_sk", required("transaction item", "sku", &item.sku)?);
                    fields.add_opt("ti_nm", item.name.as_deref());
                    fields.add_opt("ti_ca", item.category.as_deref());
                    fields.add("ti_pr", finite("ti_pr", item.price)?);
                    fields.add("ti_qu", Value::from(item.quantity));
                    fields.add_opt("ti_cu", order.currency.as_deref());
                    items.push(fields);
                }
            }
        }
        Ok(EventFields {
            own,
            self_describing,
            items,
        })
    }
}
