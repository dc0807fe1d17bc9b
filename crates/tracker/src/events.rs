//! The events a [`crate::Tracker`] tracks and the payload they become: the tracker
//! protocol's name/value pairs, in the order and with the JSON types the Python tracker
//! writes (numbers stay numbers in Redis; the relay and the HTTP emitter send them as
//! strings).

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::Error;
use crate::json::Number;
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
    /// `json.dumps(payload)`, compact, numbers written as Python writes them).
    pub fn to_json(&self) -> Vec<u8> {
        crate::json::compact(self)
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

fn number_opt(field: &'static str, value: Option<Number>) -> Result<Value, Error> {
    value.map_or(Ok(Value::Null), |v| v.to_json(field))
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
#[derive(Debug, Clone, Default, PartialEq)]
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
            ..Default::default()
        }
    }

    optional_setters! {
        /// The page title (`page`).
        fn title(title: text);
        /// The referrer (`refr`).
        fn referrer(referrer: text);
    }
}

impl Fields for PageView {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "pv");
        out.own
            .add_str("url", required("page view", "url", &self.url)?);
        out.own.add_opt("page", self.title.as_deref());
        out.own.add_opt("refr", self.referrer.as_deref());
        Ok(())
    }
}

/// A page ping (`e=pp`): the page is still open, with the scroll range seen.
///
/// ```
/// use snowplow_relay_tracker::PagePing;
/// let ping = PagePing::new("https://shop.example.com/").offsets(0, 0, 120, 900);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
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
            ..Default::default()
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

impl Fields for PagePing {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "pp");
        out.own
            .add_str("url", required("page ping", "url", &self.url)?);
        out.own.add_opt("page", self.title.as_deref());
        out.own.add_opt("refr", self.referrer.as_deref());
        if let Some([min_x, max_x, min_y, max_y]) = self.offsets {
            out.own.add("pp_mix", Value::from(min_x));
            out.own.add("pp_max", Value::from(max_x));
            out.own.add("pp_miy", Value::from(min_y));
            out.own.add("pp_may", Value::from(max_y));
        }
        Ok(())
    }
}

/// A structured event (`e=se`): category, action and optional label, property, value.
///
/// ```
/// use snowplow_relay_tracker::Structured;
/// let click = Structured::new("shop", "add-to-basket").label("sku-1").value(9.99);
/// let whole = Structured::new("shop", "view").value(70); // sent as `70`, not `70.0`
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Structured {
    category: String,
    action: String,
    label: Option<String>,
    property: Option<String>,
    value: Option<Number>,
}

impl Structured {
    /// An event of `category` and `action` (neither may be empty).
    pub fn new(category: impl Into<String>, action: impl Into<String>) -> Self {
        Structured {
            category: category.into(),
            action: action.into(),
            ..Default::default()
        }
    }

    optional_setters! {
        /// `se_la`.
        fn label(label: text);
        /// `se_pr`.
        fn property(property: text);
        /// `se_va`: a whole number is sent whole, a decimal as a decimal (must be finite).
        fn value(value: number);
    }
}

impl Fields for Structured {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "se");
        out.own.add_str(
            "se_ca",
            required("structured event", "category", &self.category)?,
        );
        out.own.add_str(
            "se_ac",
            required("structured event", "action", &self.action)?,
        );
        out.own.add_opt("se_la", self.label.as_deref());
        out.own.add_opt("se_pr", self.property.as_deref());
        out.own.add("se_va", number_opt("se_va", self.value)?);
        Ok(())
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

impl Fields for ScreenView {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        out.self_describing = Some(
            Properties::new()
                .maybe("name", self.name.as_deref())
                .maybe("id", self.id.as_deref())
                .event(&format!("{SNOWPLOW}/screen_view/jsonschema/1-0-0")),
        );
        Ok(())
    }
}

/// A timing, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/timing/jsonschema/1-0-0`.
///
/// ```
/// use snowplow_relay_tracker::Timing;
/// let timing = Timing::new("checkout", "load", 250).label("cold cache");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
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
            ..Default::default()
        }
    }

    /// An optional label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

impl Fields for Timing {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        out.self_describing = Some(
            Properties::new()
                .set("category", required("timing", "category", &self.category)?)
                .set("variable", required("timing", "variable", &self.variable)?)
                .set("timing", self.timing_ms)
                .maybe("label", self.label.as_deref())
                .event(&format!("{SNOWPLOW}/timing/jsonschema/1-0-0")),
        );
        Ok(())
    }
}

/// One line of an [`EcommerceTransaction`], tracked as its own `e=ti` event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransactionItem {
    sku: String,
    price: Number,
    quantity: i64,
    name: Option<String>,
    category: Option<String>,
}

impl TransactionItem {
    /// `quantity` of `sku` at `price` each (sku not empty, price finite).
    pub fn new(sku: impl Into<String>, price: impl Into<Number>, quantity: i64) -> Self {
        TransactionItem {
            sku: sku.into(),
            price: price.into(),
            quantity,
            ..Default::default()
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EcommerceTransaction {
    order_id: String,
    total_value: Number,
    affiliation: Option<String>,
    tax_value: Option<Number>,
    shipping: Option<Number>,
    city: Option<String>,
    state: Option<String>,
    country: Option<String>,
    currency: Option<String>,
    items: Vec<TransactionItem>,
}

impl EcommerceTransaction {
    /// Order `order_id` (not empty) worth `total_value` (finite).
    pub fn new(order_id: impl Into<String>, total_value: impl Into<Number>) -> Self {
        EcommerceTransaction {
            order_id: order_id.into(),
            total_value: total_value.into(),
            ..Default::default()
        }
    }

    optional_setters! {
        /// `tr_af`.
        fn affiliation(affiliation: text);
        /// `tr_tx`.
        fn tax_value(tax_value: number);
        /// `tr_sh`.
        fn shipping(shipping: number);
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

impl Fields for EcommerceTransaction {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        let order_id = required("transaction", "order_id", &self.order_id)?;
        out.own.add_str("e", "tr");
        out.own.add_str("tr_id", order_id);
        out.own.add("tr_tt", self.total_value.to_json("tr_tt")?);
        out.own.add_opt("tr_af", self.affiliation.as_deref());
        out.own.add("tr_tx", number_opt("tr_tx", self.tax_value)?);
        out.own.add("tr_sh", number_opt("tr_sh", self.shipping)?);
        out.own.add_opt("tr_ci", self.city.as_deref());
        out.own.add_opt("tr_st", self.state.as_deref());
        out.own.add_opt("tr_co", self.country.as_deref());
        out.own.add_opt("tr_cu", self.currency.as_deref());
        for item in &self.items {
            let mut fields = Payload::default();
            fields.add_str("e", "ti");
            fields.add_str("ti_id", order_id);
            fields.add_str("ti_sk", required("transaction item", "sku", &item.sku)?);
            fields.add_opt("ti_nm", item.name.as_deref());
            fields.add_opt("ti_ca", item.category.as_deref());
            fields.add("ti_pr", item.price.to_json("ti_pr")?);
            fields.add("ti_qu", Value::from(item.quantity));
            fields.add_opt("ti_cu", self.currency.as_deref());
            out.items.push(fields);
        }
        Ok(())
    }
}

/// A link click, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1` (the Python tracker's
/// `track_link_click`).
///
/// ```
/// use snowplow_relay_tracker::LinkClick;
/// let click = LinkClick::new("https://example.com/out").element_id("cta").element_classes(["big", "blue"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkClick {
    target_url: String,
    element_id: Option<String>,
    element_classes: Option<Vec<String>>,
    element_target: Option<String>,
    element_content: Option<String>,
}

impl LinkClick {
    /// A click on a link to `target_url` (must not be empty).
    pub fn new(target_url: impl Into<String>) -> Self {
        LinkClick {
            target_url: target_url.into(),
            ..Default::default()
        }
    }

    optional_setters! {
        /// The link element's `id` (`elementId`).
        fn element_id(element_id: text);
        /// Its classes (`elementClasses`).
        fn element_classes(element_classes: texts);
        /// Its `target` attribute (`elementTarget`).
        fn element_target(element_target: text);
        /// Its text (`elementContent`).
        fn element_content(element_content: text);
    }
}

impl Fields for LinkClick {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        out.self_describing = Some(
            Properties::new()
                .set(
                    "targetUrl",
                    required("link click", "target_url", &self.target_url)?,
                )
                .maybe("elementId", self.element_id.as_deref())
                .maybe("elementClasses", self.element_classes.clone())
                .maybe("elementTarget", self.element_target.as_deref())
                .maybe("elementContent", self.element_content.as_deref())
                .event(&format!("{SNOWPLOW}/link_click/jsonschema/1-0-1")),
        );
        Ok(())
    }
}

/// An item added to or removed from a cart, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/add_to_cart/jsonschema/1-0-0` or
/// `…/remove_from_cart/…` (the Python tracker's `track_add_to_cart` and
/// `track_remove_from_cart`).
///
/// ```
/// use snowplow_relay_tracker::CartChange;
/// let added = CartChange::add("sku-1", 2).name("Mug").unit_price(9.99).currency("EUR");
/// let removed = CartChange::remove("sku-1", 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CartChange {
    added: bool,
    sku: String,
    quantity: i64,
    name: Option<String>,
    category: Option<String>,
    unit_price: Option<Number>,
    currency: Option<String>,
}

impl CartChange {
    /// `quantity` of `sku` (not empty) added to the cart.
    pub fn add(sku: impl Into<String>, quantity: i64) -> Self {
        CartChange::new(true, sku.into(), quantity)
    }

    /// `quantity` of `sku` (not empty) removed from the cart.
    pub fn remove(sku: impl Into<String>, quantity: i64) -> Self {
        CartChange::new(false, sku.into(), quantity)
    }

    fn new(added: bool, sku: String, quantity: i64) -> Self {
        CartChange {
            added,
            sku,
            quantity,
            ..Default::default()
        }
    }

    optional_setters! {
        /// The product's name.
        fn name(name: text);
        /// The product's category.
        fn category(category: text);
        /// The price of one (`unitPrice`).
        fn unit_price(unit_price: number);
        /// The price's currency.
        fn currency(currency: text);
    }
}

impl Fields for CartChange {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        let (kind, name) = match self.added {
            true => ("add to cart", "add_to_cart"),
            false => ("remove from cart", "remove_from_cart"),
        };
        let unit_price = match self.unit_price {
            Some(price) => Some(price.to_json("unitPrice")?),
            None => None,
        };
        out.self_describing = Some(
            Properties::new()
                .set("sku", required(kind, "sku", &self.sku)?)
                .set("quantity", self.quantity)
                .maybe("name", self.name.as_deref())
                .maybe("category", self.category.as_deref())
                .maybe("unitPrice", unit_price)
                .maybe("currency", self.currency.as_deref())
                .event(&format!("{SNOWPLOW}/{name}/jsonschema/1-0-0")),
        );
        Ok(())
    }
}

/// The HTML element a form event is about: `INPUT`, `TEXTAREA` or `SELECT` (the
/// schemas' `nodeName`).
pub const FORM_NODE_NAMES: &[&str] = &["INPUT", "TEXTAREA", "SELECT"];

/// The input types the form schemas allow (`type`).
pub const FORM_INPUT_TYPES: &[&str] = &[
    "button",
    "checkbox",
    "color",
    "date",
    "datetime",
    "datetime-local",
    "email",
    "file",
    "hidden",
    "image",
    "month",
    "number",
    "password",
    "radio",
    "range",
    "reset",
    "search",
    "submit",
    "tel",
    "text",
    "time",
    "url",
    "week",
];

/// A form field's change, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/change_form/jsonschema/1-0-0` (the Python
/// tracker's `track_form_change`).
///
/// ```
/// use snowplow_relay_tracker::FormChange;
/// let change = FormChange::new("signup", "email", "INPUT").value("a@example.com").input_type("email");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FormChange {
    form_id: String,
    element_id: String,
    node_name: String,
    value: Option<String>,
    input_type: Option<String>,
    element_classes: Option<Vec<String>>,
}

impl FormChange {
    /// A change of element `element_id` (a `node_name` of [`FORM_NODE_NAMES`]) in form
    /// `form_id` (not empty). Without [`FormChange::value`] the value is sent as `null`,
    /// as the Python tracker does.
    pub fn new(
        form_id: impl Into<String>,
        element_id: impl Into<String>,
        node_name: impl Into<String>,
    ) -> Self {
        FormChange {
            form_id: form_id.into(),
            element_id: element_id.into(),
            node_name: node_name.into(),
            ..Default::default()
        }
    }

    optional_setters! {
        /// The element's new value.
        fn value(value: text);
        /// The input's type, one of [`FORM_INPUT_TYPES`] (`type`).
        fn input_type(input_type: text);
        /// The element's classes (`elementClasses`).
        fn element_classes(element_classes: texts);
    }
}

impl Fields for FormChange {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        one_of("form change", "node_name", &self.node_name, FORM_NODE_NAMES)?;
        input_type_ok("form change", self.input_type.as_ref())?;
        out.self_describing = Some(
            Properties::new()
                .set("formId", required("form change", "form_id", &self.form_id)?)
                .set("elementId", self.element_id.as_str())
                .set("nodeName", self.node_name.as_str())
                .set("value", self.value.as_deref())
                .maybe("type", self.input_type.as_deref())
                .maybe("elementClasses", self.element_classes.clone())
                .event(&format!("{SNOWPLOW}/change_form/jsonschema/1-0-0")),
        );
        Ok(())
    }
}

/// One element of a submitted form (an entry of `submit_form`'s `elements`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FormElement {
    name: String,
    value: Option<String>,
    node_name: String,
    input_type: Option<String>,
}

impl FormElement {
    /// Element `name` holding `value` (`None`: `null`), a `node_name` of
    /// [`FORM_NODE_NAMES`].
    pub fn new(
        name: impl Into<String>,
        value: Option<String>,
        node_name: impl Into<String>,
    ) -> Self {
        FormElement {
            name: name.into(),
            value,
            node_name: node_name.into(),
            ..Default::default()
        }
    }

    optional_setters! {
        /// The input's type, one of [`FORM_INPUT_TYPES`] (`type`).
        fn input_type(input_type: text);
    }
}

/// A form's submission, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0` (the Python
/// tracker's `track_form_submit`).
///
/// ```
/// use snowplow_relay_tracker::{FormElement, FormSubmit};
/// let submit = FormSubmit::new("signup")
///     .form_classes(["wide"])
///     .element(FormElement::new("email", Some("a@example.com".into()), "INPUT").input_type("email"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FormSubmit {
    form_id: String,
    form_classes: Option<Vec<String>>,
    elements: Vec<FormElement>,
}

impl FormSubmit {
    /// A submission of form `form_id` (not empty).
    pub fn new(form_id: impl Into<String>) -> Self {
        FormSubmit {
            form_id: form_id.into(),
            ..Default::default()
        }
    }

    optional_setters! {
        /// The form's classes (`formClasses`).
        fn form_classes(form_classes: texts);
    }

    /// Adds an element (`elements`, sent only when there is at least one).
    pub fn element(mut self, element: FormElement) -> Self {
        self.elements.push(element);
        self
    }
}

impl Fields for FormSubmit {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        let mut elements = Vec::with_capacity(self.elements.len());
        for element in &self.elements {
            one_of(
                "form submit",
                "node_name",
                &element.node_name,
                FORM_NODE_NAMES,
            )?;
            input_type_ok("form submit", element.input_type.as_ref())?;
            let element = Properties::new()
                .set("name", element.name.as_str())
                .set("value", element.value.as_deref())
                .set("nodeName", element.node_name.as_str())
                .maybe("type", element.input_type.as_deref());
            elements.push(Value::Object(element.0));
        }
        out.self_describing = Some(
            Properties::new()
                .set("formId", required("form submit", "form_id", &self.form_id)?)
                .maybe("formClasses", self.form_classes.clone())
                .maybe("elements", (!elements.is_empty()).then_some(elements))
                .event(&format!("{SNOWPLOW}/submit_form/jsonschema/1-0-0")),
        );
        Ok(())
    }
}

/// A search on the site, sent as the self-describing
/// `iglu:com.snowplowanalytics.snowplow/site_search/jsonschema/1-0-0` (the Python
/// tracker's `track_site_search`).
///
/// ```
/// use snowplow_relay_tracker::SiteSearch;
/// let search = SiteSearch::new(["red", "mug"]).filter("in_stock", true).total_results(12);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteSearch {
    terms: Vec<String>,
    filters: Option<serde_json::Map<String, Value>>,
    total_results: Option<i64>,
    page_results: Option<i64>,
}

impl SiteSearch {
    /// A search for `terms` (at least one).
    pub fn new<S: Into<String>>(terms: impl IntoIterator<Item = S>) -> Self {
        SiteSearch {
            terms: terms.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// Adds a filter: a text or a flag (`filters`).
    pub fn filter(mut self, name: impl Into<String>, value: impl Into<SearchFilter>) -> Self {
        let value = match value.into() {
            SearchFilter::Text(text) => Value::from(text),
            SearchFilter::Flag(flag) => Value::from(flag),
        };
        self.filters
            .get_or_insert_default()
            .insert(name.into(), value);
        self
    }

    optional_setters! {
        /// How many results the search found (`totalResults`).
        fn total_results(total_results: i64);
        /// How many were shown on the page (`pageResults`).
        fn page_results(page_results: i64);
    }
}

impl Fields for SiteSearch {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        if self.terms.is_empty() {
            return Err(Error::EmptyField {
                event: "site search",
                field: "terms",
            });
        }
        out.self_describing = Some(
            Properties::new()
                .set("terms", self.terms.clone())
                .maybe("filters", self.filters.clone())
                .maybe("totalResults", self.total_results)
                .maybe("pageResults", self.page_results)
                .event(&format!("{SNOWPLOW}/site_search/jsonschema/1-0-0")),
        );
        Ok(())
    }
}

/// The value of a [`SiteSearch`] filter: the schema allows text or a flag.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchFilter {
    /// A text value.
    Text(String),
    /// A flag.
    Flag(bool),
}

impl From<&str> for SearchFilter {
    fn from(text: &str) -> Self {
        SearchFilter::Text(text.to_owned())
    }
}

impl From<String> for SearchFilter {
    fn from(text: String) -> Self {
        SearchFilter::Text(text)
    }
}

impl From<bool> for SearchFilter {
    fn from(flag: bool) -> Self {
        SearchFilter::Flag(flag)
    }
}

/// A mobile screen view, sent as the self-describing
/// `iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0` (the Python tracker's
/// `track_mobile_screen_view`; the mobile trackers' screen view). Its `id` is a fresh
/// UUID unless given.
///
/// ```
/// use snowplow_relay_tracker::MobileScreenView;
/// let screen = MobileScreenView::new("Basket").screen_type("feed").previous_name("Home");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MobileScreenView {
    name: String,
    id: Option<String>,
    screen_type: Option<String>,
    previous_name: Option<String>,
    previous_id: Option<String>,
    previous_type: Option<String>,
    transition_type: Option<String>,
}

impl MobileScreenView {
    /// A view of the screen called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MobileScreenView {
            name: name.into(),
            ..Default::default()
        }
    }

    optional_setters! {
        /// The screen view's id (default: a fresh UUID).
        fn id(id: text);
        /// The kind of screen (`type`).
        fn screen_type(screen_type: text);
        /// The screen seen before (`previousName`).
        fn previous_name(previous_name: text);
        /// Its id (`previousId`).
        fn previous_id(previous_id: text);
        /// Its kind (`previousType`).
        fn previous_type(previous_type: text);
        /// How the screen was reached (`transitionType`).
        fn transition_type(transition_type: text);
    }
}

impl Fields for MobileScreenView {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        out.self_describing = Some(
            Properties::new()
                .set("id", id)
                .set("name", required("mobile screen view", "name", &self.name)?)
                .maybe("type", self.screen_type.as_deref())
                .maybe("previousName", self.previous_name.as_deref())
                .maybe("previousId", self.previous_id.as_deref())
                .maybe("previousType", self.previous_type.as_deref())
                .maybe("transitionType", self.transition_type.as_deref())
                .event("iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0"),
        );
        Ok(())
    }
}

/// The data of a self-describing event, members in the order they are set (as the
/// Python tracker builds its `properties` dict), unset ones left out.
struct Properties(serde_json::Map<String, Value>);

impl Properties {
    fn new() -> Self {
        Properties(serde_json::Map::new())
    }

    fn set(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.0.insert(name.to_owned(), value.into());
        self
    }

    fn maybe(self, name: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(value) => self.set(name, value),
            None => self,
        }
    }

    fn event(self, schema: &str) -> Value {
        serde_json::json!({"schema": schema, "data": self.0})
    }
}

fn one_of(
    event: &'static str,
    field: &'static str,
    value: &str,
    allowed: &'static [&'static str],
) -> Result<(), Error> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(Error::NotOneOf {
        event,
        field,
        value: crate::protocol::shorten(value),
        allowed: allowed.join(", "),
    })
}

fn input_type_ok(event: &'static str, input_type: Option<&String>) -> Result<(), Error> {
    match input_type {
        Some(t) => one_of(event, "type", &t.to_lowercase(), FORM_INPUT_TYPES),
        None => Ok(()),
    }
}

const SNOWPLOW: &str = "iglu:com.snowplowanalytics.snowplow";

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
    /// `e=ue`, link_click.
    LinkClick(LinkClick),
    /// `e=ue`, add_to_cart or remove_from_cart.
    CartChange(CartChange),
    /// `e=ue`, change_form.
    FormChange(FormChange),
    /// `e=ue`, submit_form.
    FormSubmit(FormSubmit),
    /// `e=ue`, site_search.
    SiteSearch(SiteSearch),
    /// `e=ue`, the mobile screen_view.
    MobileScreenView(MobileScreenView),
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
    EcommerceTransaction,
    LinkClick,
    CartChange,
    FormChange,
    FormSubmit,
    SiteSearch,
    MobileScreenView
);

impl From<SelfDescribingJson> for Event {
    fn from(event: SelfDescribingJson) -> Event {
        Event::SelfDescribing(event)
    }
}

impl Fields for SelfDescribingJson {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error> {
        out.own.add_str("e", "ue");
        out.self_describing = Some(self.to_value());
        Ok(())
    }
}

/// An event type's own fields, written beside its builder: its `e`, its protocol fields
/// or its self-describing body, checked.
trait Fields {
    fn fields(&self, out: &mut EventFields) -> Result<(), Error>;
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
        let mut out = EventFields {
            own: Payload::default(),
            self_describing: None,
            items: Vec::new(),
        };
        match self {
            Event::PageView(event) => event.fields(&mut out)?,
            Event::PagePing(event) => event.fields(&mut out)?,
            Event::Structured(event) => event.fields(&mut out)?,
            Event::SelfDescribing(event) => event.fields(&mut out)?,
            Event::ScreenView(event) => event.fields(&mut out)?,
            Event::Timing(event) => event.fields(&mut out)?,
            Event::LinkClick(event) => event.fields(&mut out)?,
            Event::CartChange(event) => event.fields(&mut out)?,
            Event::FormChange(event) => event.fields(&mut out)?,
            Event::FormSubmit(event) => event.fields(&mut out)?,
            Event::SiteSearch(event) => event.fields(&mut out)?,
            Event::MobileScreenView(event) => event.fields(&mut out)?,
            Event::EcommerceTransaction(event) => event.fields(&mut out)?,
        }
        Ok(out)
    }
}
