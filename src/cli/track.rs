//! `snowplow-relay track`: tracks events from the shell with the tracker crate's API,
//! into Redis (the daemon's `[redis]` settings) or straight to a collector
//! (`--collector URL`), and prints each event id on its own line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Args, Subcommand};

use snowplow_relay::config::{CollectorSettings, RedisSettings};
use snowplow_relay_tracker::{
    CartChange, EcommerceTransaction, Emit, Error, Event, FormChange, FormElement, FormSubmit,
    HttpEmitter, LinkClick, MobileScreenView, Number, PagePing, PageView, Payload, Platform,
    RedisEmitter, ScreenView, SelfDescribingJson, SiteSearch, Structured, Subject, Timestamp,
    Timing, TrackOptions, Tracker, TransactionItem,
};

/// What to track, and how.
#[derive(Debug, Args)]
pub struct TrackArgs {
    #[command(subcommand)]
    event: EventArgs,
    #[command(flatten)]
    common: super::CommonFlags,
    #[command(flatten)]
    redis: super::RedisFlags,
    #[command(flatten)]
    collector: super::CollectorFlags,
    /// Track the event this many times, each with a fresh event id (load generation).
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    count: u64,
    /// The tracker namespace (tna).
    #[arg(long, global = true, default_value = "cli")]
    namespace: String,
    /// The application id (aid).
    #[arg(long, global = true, default_value = "snowplow-relay-cli")]
    app_id: String,
    /// A context, `{"schema":"iglu:…","data":{…}}`; repeat for several.
    #[arg(long = "context", global = true, value_name = "JSON")]
    contexts: Vec<String>,
    /// When the event really happened, in milliseconds since the epoch (ttm).
    #[arg(long, global = true, value_name = "MS")]
    true_timestamp: Option<u64>,
    /// Send contexts and self-describing events as plain JSON (co, ue_pr), not base64.
    #[arg(long, global = true)]
    no_base64: bool,
    /// Do not print the event ids.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(flatten)]
    subject: SubjectArgs,
}

/// The subject's fields.
#[derive(Debug, Args)]
struct SubjectArgs {
    /// pc, tv, mob, cnsl, iot, web, srv or app (p); pc, as in the library and the Python
    /// tracker, unless given.
    #[arg(long, global = true, default_value = "pc")]
    platform: Platform,
    /// The user id (uid).
    #[arg(long, global = true)]
    user_id: Option<String>,
    /// WIDTHxHEIGHT (res).
    #[arg(long, global = true, value_parser = parse_size, value_name = "WxH")]
    screen_resolution: Option<(u32, u32)>,
    /// WIDTHxHEIGHT (vp).
    #[arg(long, global = true, value_parser = parse_size, value_name = "WxH")]
    viewport: Option<(u32, u32)>,
    /// Bits (cd).
    #[arg(long, global = true)]
    color_depth: Option<u32>,
    /// e.g. Europe/London (tz).
    #[arg(long, global = true)]
    timezone: Option<String>,
    /// e.g. en-GB (lang).
    #[arg(long, global = true)]
    lang: Option<String>,
    /// The user's IP address (ip).
    #[arg(long, global = true)]
    ip: Option<String>,
    /// The user agent (ua).
    #[arg(long, global = true)]
    useragent: Option<String>,
    /// The domain user id (duid).
    #[arg(long, global = true)]
    domain_user_id: Option<String>,
    /// The network user id (tnuid).
    #[arg(long, global = true)]
    network_user_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum EventArgs {
    /// A page view (e=pv).
    PageView(PageArgs),
    /// A structured event (e=se).
    Struct {
        /// se_ca.
        #[arg(long)]
        category: String,
        /// se_ac.
        #[arg(long)]
        action: String,
        /// se_la.
        #[arg(long)]
        label: Option<String>,
        /// se_pr.
        #[arg(long)]
        property: Option<String>,
        /// se_va: 9 is sent as 9, 9.0 as 9.0 (as the Python tracker sends an int and a
        /// float).
        #[arg(long)]
        value: Option<Number>,
    },
    /// A page ping (e=pp), with the scroll range seen since the last one.
    PagePing {
        #[command(flatten)]
        page: PageArgs,
        /// MIN_X,MAX_X,MIN_Y,MAX_Y scroll offsets (pp_mix, pp_max, pp_miy, pp_may).
        #[arg(long, value_parser = parse_offsets, value_name = "MIN_X,MAX_X,MIN_Y,MAX_Y")]
        offsets: Option<[i64; 4]>,
    },
    /// A timing (timing 1-0-0).
    Timing {
        /// What was timed, e.g. checkout.
        #[arg(long)]
        category: String,
        /// Which part of it, e.g. load.
        #[arg(long)]
        variable: String,
        /// How long it took, in milliseconds.
        #[arg(long, value_name = "MS")]
        timing: u64,
        /// An optional label.
        #[arg(long)]
        label: Option<String>,
    },
    /// A link click (link_click 1-0-1).
    LinkClick {
        /// Where the link leads (targetUrl).
        #[arg(long)]
        target_url: String,
        /// elementId.
        #[arg(long)]
        element_id: Option<String>,
        /// elementClasses; repeat for several.
        #[arg(long = "element-class", value_name = "CLASS")]
        element_classes: Option<Vec<String>>,
        /// elementTarget.
        #[arg(long)]
        element_target: Option<String>,
        /// elementContent.
        #[arg(long)]
        element_content: Option<String>,
    },
    /// An item added to a cart (add_to_cart 1-0-0).
    AddToCart(CartArgs),
    /// An item removed from a cart (remove_from_cart 1-0-0).
    RemoveFromCart(CartArgs),
    /// A form field changed (change_form 1-0-0).
    FormChange {
        /// formId.
        #[arg(long)]
        form_id: String,
        /// elementId.
        #[arg(long)]
        element_id: String,
        /// nodeName: INPUT, TEXTAREA or SELECT.
        #[arg(long)]
        node_name: String,
        /// The new value (null without it).
        #[arg(long)]
        value: Option<String>,
        /// The input's type, e.g. email.
        #[arg(long = "type", value_name = "TYPE")]
        input_type: Option<String>,
        /// elementClasses; repeat for several.
        #[arg(long = "element-class", value_name = "CLASS")]
        element_classes: Option<Vec<String>>,
    },
    /// A form submitted (submit_form 1-0-0).
    FormSubmit {
        /// formId.
        #[arg(long)]
        form_id: String,
        /// formClasses; repeat for several.
        #[arg(long = "form-class", value_name = "CLASS")]
        form_classes: Option<Vec<String>>,
        /// An element: NAME,NODE_NAME[,VALUE[,TYPE]]; repeat for several.
        #[arg(long = "element", value_parser = parse_form_element, value_name = "NAME,NODE_NAME[,VALUE[,TYPE]]")]
        elements: Vec<FormElement>,
    },
    /// A site search (site_search 1-0-0).
    SiteSearch {
        /// A search term; repeat for several (at least one).
        #[arg(long = "term", required = true)]
        terms: Vec<String>,
        /// A filter NAME=VALUE (true and false are flags); repeat for several.
        #[arg(long = "filter", value_parser = parse_filter, value_name = "NAME=VALUE")]
        filters: Vec<(String, String)>,
        /// totalResults.
        #[arg(long)]
        total_results: Option<i64>,
        /// pageResults.
        #[arg(long)]
        page_results: Option<i64>,
    },
    /// A self-describing event (e=ue), e.g.
    /// --json '{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{"a":1}}'.
    SelfDescribing {
        /// The event as self-describing JSON.
        #[arg(long, value_name = "JSON")]
        json: String,
    },
    /// A screen view: the web screen_view 1-0-0, or with --mobile the mobile trackers'
    /// (com.snowplowanalytics.mobile/screen_view 1-0-0, which needs --name and makes an
    /// id unless given).
    ScreenView {
        /// The screen's name.
        #[arg(long)]
        name: Option<String>,
        /// The screen's id.
        #[arg(long)]
        id: Option<String>,
        /// Use the mobile screen_view schema.
        #[arg(long)]
        mobile: bool,
        /// With --mobile: the kind of screen (type).
        #[arg(long = "type", requires = "mobile", value_name = "TYPE")]
        screen_type: Option<String>,
        /// With --mobile: previousName.
        #[arg(long, requires = "mobile")]
        previous_name: Option<String>,
        /// With --mobile: previousId.
        #[arg(long, requires = "mobile")]
        previous_id: Option<String>,
        /// With --mobile: previousType.
        #[arg(long, requires = "mobile")]
        previous_type: Option<String>,
        /// With --mobile: transitionType.
        #[arg(long, requires = "mobile")]
        transition_type: Option<String>,
    },
    /// An ecommerce transaction (e=tr) and its items (e=ti).
    Transaction {
        /// tr_id.
        #[arg(long)]
        order_id: String,
        /// tr_tt.
        #[arg(long)]
        total: Number,
        /// tr_cu, also on each item.
        #[arg(long)]
        currency: Option<String>,
        /// tr_af.
        #[arg(long)]
        affiliation: Option<String>,
        /// tr_tx.
        #[arg(long)]
        tax: Option<Number>,
        /// tr_sh.
        #[arg(long)]
        shipping: Option<Number>,
        /// CITY,STATE,COUNTRY (tr_ci, tr_st, tr_co).
        #[arg(long, value_parser = parse_address, value_name = "CITY,STATE,COUNTRY")]
        address: Option<(String, String, String)>,
        /// An item: SKU,PRICE,QUANTITY[,NAME[,CATEGORY]]; repeat for several.
        #[arg(long = "item", value_name = "SKU,PRICE,QTY[,NAME[,CATEGORY]]", value_parser = parse_item)]
        items: Vec<TransactionItem>,
    },
}

/// The page of a page view or page ping.
#[derive(Debug, Args)]
struct PageArgs {
    /// The page URL.
    #[arg(long)]
    url: String,
    /// The page title.
    #[arg(long)]
    title: Option<String>,
    /// The referrer.
    #[arg(long)]
    referrer: Option<String>,
}

/// The fields of an add-to-cart or remove-from-cart event.
#[derive(Debug, Args)]
struct CartArgs {
    /// The product's SKU.
    #[arg(long)]
    sku: String,
    /// How many.
    #[arg(long)]
    quantity: i64,
    /// The product's name.
    #[arg(long)]
    name: Option<String>,
    /// The product's category.
    #[arg(long)]
    category: Option<String>,
    /// The price of one (unitPrice).
    #[arg(long)]
    unit_price: Option<Number>,
    /// The price's currency.
    #[arg(long)]
    currency: Option<String>,
}

impl CartArgs {
    fn event(&self, change: CartChange) -> Event {
        change
            .maybe(self.name.as_ref(), CartChange::name)
            .maybe(self.category.as_ref(), CartChange::category)
            .maybe(self.unit_price, CartChange::unit_price)
            .maybe(self.currency.as_ref(), CartChange::currency)
            .into()
    }
}

fn parse_offsets(text: &str) -> Result<[i64; 4], String> {
    let usage = || format!("expected MIN_X,MAX_X,MIN_Y,MAX_Y in whole pixels, not {text:?}");
    let numbers: Vec<i64> = text
        .split(',')
        .map(|n| n.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| usage())?;
    numbers.try_into().map_err(|_| usage())
}

fn parse_form_element(text: &str) -> Result<FormElement, String> {
    let parts: Vec<&str> = text.splitn(4, ',').collect();
    if parts.len() < 2 {
        return Err(format!(
            "expected NAME,NODE_NAME[,VALUE[,TYPE]], not {text:?}"
        ));
    }
    let element = FormElement::new(parts[0], parts.get(2).map(|v| v.to_string()), parts[1]);
    Ok(element.maybe(parts.get(3).copied(), FormElement::input_type))
}

fn parse_address(text: &str) -> Result<(String, String, String), String> {
    match text.split(',').collect::<Vec<_>>()[..] {
        [city, state, country] => Ok((city.into(), state.into(), country.into())),
        _ => Err(format!("expected CITY,STATE,COUNTRY, not {text:?}")),
    }
}

fn parse_filter(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, not {text:?}"))
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, e.g. 1920x1080, not {text:?}"))?;
    let number = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("expected WIDTHxHEIGHT in whole pixels, not {text:?}"))
    };
    Ok((number(w)?, number(h)?))
}

fn parse_item(text: &str) -> Result<TransactionItem, String> {
    let parts: Vec<&str> = text.split(',').collect();
    let usage = || format!("expected SKU,PRICE,QUANTITY[,NAME[,CATEGORY]], not {text:?}");
    if !(3..=5).contains(&parts.len()) {
        return Err(usage());
    }
    let price = parts[1].parse::<Number>().map_err(|_| usage())?;
    let quantity = parts[2].parse::<i64>().map_err(|_| usage())?;
    let mut item = TransactionItem::new(parts[0], price, quantity);
    if let Some(name) = parts.get(3) {
        item = item.name(*name);
    }
    if let Some(category) = parts.get(4) {
        item = item.category(*category);
    }
    Ok(item)
}

/// Sets an optional value on a builder: `builder.maybe(value, Builder::setter)`.
trait Maybe: Sized {
    fn maybe<V>(self, value: Option<V>, set: impl FnOnce(Self, V) -> Self) -> Self {
        match value {
            Some(value) => set(self, value),
            None => self,
        }
    }
}

impl<T> Maybe for T {}

impl TrackArgs {
    fn event(&self) -> Result<Event, Error> {
        Ok(match &self.event {
            EventArgs::PageView(page) => PageView::new(&page.url)
                .maybe(page.title.as_ref(), PageView::title)
                .maybe(page.referrer.as_ref(), PageView::referrer)
                .into(),
            EventArgs::Struct {
                category,
                action,
                label,
                property,
                value,
            } => Structured::new(category, action)
                .maybe(label.as_ref(), Structured::label)
                .maybe(property.as_ref(), Structured::property)
                .maybe(*value, Structured::value)
                .into(),
            EventArgs::SelfDescribing { json } => SelfDescribingJson::from_json(json)?.into(),
            EventArgs::ScreenView {
                name,
                id,
                mobile: false,
                ..
            } => ScreenView::new()
                .maybe(name.as_ref(), ScreenView::name)
                .maybe(id.as_ref(), ScreenView::id)
                .into(),
            EventArgs::ScreenView {
                name,
                id,
                mobile: true,
                screen_type,
                previous_name,
                previous_id,
                previous_type,
                transition_type,
            } => MobileScreenView::new(name.clone().unwrap_or_default())
                .maybe(id.as_ref(), MobileScreenView::id)
                .maybe(screen_type.as_ref(), MobileScreenView::screen_type)
                .maybe(previous_name.as_ref(), MobileScreenView::previous_name)
                .maybe(previous_id.as_ref(), MobileScreenView::previous_id)
                .maybe(previous_type.as_ref(), MobileScreenView::previous_type)
                .maybe(transition_type.as_ref(), MobileScreenView::transition_type)
                .into(),
            EventArgs::PagePing { page, offsets } => PagePing::new(&page.url)
                .maybe(page.title.as_ref(), PagePing::title)
                .maybe(page.referrer.as_ref(), PagePing::referrer)
                .maybe(*offsets, |ping, [min_x, max_x, min_y, max_y]| {
                    ping.offsets(min_x, max_x, min_y, max_y)
                })
                .into(),
            EventArgs::Timing {
                category,
                variable,
                timing,
                label,
            } => Timing::new(category, variable, *timing)
                .maybe(label.as_ref(), Timing::label)
                .into(),
            EventArgs::LinkClick {
                target_url,
                element_id,
                element_classes,
                element_target,
                element_content,
            } => LinkClick::new(target_url)
                .maybe(element_id.as_ref(), LinkClick::element_id)
                .maybe(element_classes.clone(), LinkClick::element_classes)
                .maybe(element_target.as_ref(), LinkClick::element_target)
                .maybe(element_content.as_ref(), LinkClick::element_content)
                .into(),
            EventArgs::AddToCart(cart) => cart.event(CartChange::add(&cart.sku, cart.quantity)),
            EventArgs::RemoveFromCart(cart) => {
                cart.event(CartChange::remove(&cart.sku, cart.quantity))
            }
            EventArgs::FormChange {
                form_id,
                element_id,
                node_name,
                value,
                input_type,
                element_classes,
            } => FormChange::new(form_id, element_id, node_name)
                .maybe(value.as_ref(), FormChange::value)
                .maybe(input_type.as_ref(), FormChange::input_type)
                .maybe(element_classes.clone(), FormChange::element_classes)
                .into(),
            EventArgs::FormSubmit {
                form_id,
                form_classes,
                elements,
            } => elements
                .iter()
                .fold(
                    FormSubmit::new(form_id).maybe(form_classes.clone(), FormSubmit::form_classes),
                    |submit, element| submit.element(element.clone()),
                )
                .into(),
            EventArgs::SiteSearch {
                terms,
                filters,
                total_results,
                page_results,
            } => filters
                .iter()
                .fold(
                    SiteSearch::new(terms),
                    |search, (name, value)| match value.as_str() {
                        "true" => search.filter(name, true),
                        "false" => search.filter(name, false),
                        text => search.filter(name, text),
                    },
                )
                .maybe(*total_results, SiteSearch::total_results)
                .maybe(*page_results, SiteSearch::page_results)
                .into(),
            EventArgs::Transaction {
                order_id,
                total,
                currency,
                affiliation,
                tax,
                shipping,
                address,
                items,
            } => {
                let order = EcommerceTransaction::new(order_id, *total)
                    .maybe(currency.as_ref(), EcommerceTransaction::currency)
                    .maybe(affiliation.as_ref(), EcommerceTransaction::affiliation)
                    .maybe(*tax, EcommerceTransaction::tax_value)
                    .maybe(*shipping, EcommerceTransaction::shipping)
                    .maybe(address.clone(), |order, (city, state, country)| {
                        order.address(city, state, country)
                    });
                items
                    .iter()
                    .fold(order, |order, item| order.item(item.clone()))
                    .into()
            }
        })
    }

    fn subject(&self) -> Subject {
        let s = &self.subject;
        Subject::new()
            .platform(s.platform)
            .maybe(s.user_id.as_ref(), Subject::user_id)
            .maybe(s.screen_resolution, |subject, (w, h)| {
                subject.screen_resolution(w, h)
            })
            .maybe(s.viewport, |subject, (w, h)| subject.viewport(w, h))
            .maybe(s.color_depth, Subject::color_depth)
            .maybe(s.timezone.as_ref(), Subject::timezone)
            .maybe(s.lang.as_ref(), Subject::language)
            .maybe(s.ip.as_ref(), Subject::ip_address)
            .maybe(s.useragent.as_ref(), Subject::useragent)
            .maybe(s.domain_user_id.as_ref(), Subject::domain_user_id)
            .maybe(s.network_user_id.as_ref(), Subject::network_user_id)
    }

    fn options(&self) -> Result<TrackOptions, Error> {
        let contexts = self
            .contexts
            .iter()
            .map(|text| SelfDescribingJson::from_json(text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrackOptions {
            contexts: (!contexts.is_empty()).then_some(contexts),
            timestamp: self.true_timestamp.map(Timestamp::True),
            subject: None,
        })
    }
}

/// Why `track` failed, and its exit code.
#[derive(Debug, thiserror::Error)]
enum TrackError {
    /// The event or its options were refused (exit 2).
    #[error("{0}")]
    Input(Error),
    /// Redis or the collector failed (exit 1).
    #[error("{0}")]
    Emit(Error),
    /// The collector refused events or they could not be delivered in time (exit 1).
    #[error(
        "{unsent} of {total} events were not delivered to the collector (refused, or not \
         accepted within 10 s; the log lines above say why); tracking stopped at the first \
         batch that was not delivered"
    )]
    Undelivered {
        /// How many were not delivered.
        unsent: usize,
        /// How many were tracked.
        total: usize,
    },
}

impl TrackError {
    /// 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            TrackError::Input(_) => 2,
            _ => 1,
        }
    }
}

/// Where `track` sends events.
enum Target<'a> {
    /// Onto the relay's list (the `[redis]` settings).
    Redis(&'a RedisSettings),
    /// Straight to a collector (`--collector URL` and the `[collector]` settings).
    Collector(&'a CollectorSettings),
}

/// Tracks as `args` say, to `target`. Prints each event id to stdout unless `--quiet`;
/// returns how many events were tracked.
async fn run(args: &TrackArgs, target: Target<'_>) -> Result<usize, TrackError> {
    let event = args.event().map_err(TrackError::Input)?;
    let options = args.options().map_err(TrackError::Input)?;
    let tracker = Tracker::builder(&args.namespace, &args.app_id)
        .subject(args.subject())
        .encode_base64(!args.no_base64);
    // Check the input once before connecting anywhere.
    tracker
        .payloads(&event, &options)
        .map_err(TrackError::Input)?;
    let unsent = Arc::new(AtomicUsize::new(0));
    let emitter: Box<dyn Emit> = match target {
        Target::Collector(collector) => {
            let counter = unsent.clone();
            Box::new(
                HttpEmitter::builder(collector.base_url.as_str())
                    .method(collector.method)
                    .buffer_size(collector.buffer_size.get())
                    .byte_limit(collector.byte_limit.get())
                    // A fixed number: the tracker's emitter does not adapt, and a test's
                    // events need no more than the relay's first limit.
                    .max_requests_in_flight(collector.max_requests_in_flight.min(16))
                    .retry_backoff(collector.retry.backoff)
                    .client_settings(collector.client.clone())
                    .give_up_after(std::time::Duration::from_secs(10))
                    .on_failure(move |_, events: Vec<Payload>| {
                        counter.fetch_add(events.len(), Ordering::Relaxed);
                    })
                    .build()
                    .map_err(TrackError::Emit)?,
            )
        }
        Target::Redis(redis) => {
            let conn = snowplow_relay::queue::open_connection(redis)
                .await
                .map_err(|e| TrackError::Emit(Error::Redis(Box::new(e))))?;
            Box::new(RedisEmitter::new(conn, redis.key.clone()))
        }
    };
    let mut total = 0;
    let mut chunk = Vec::new();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..args.count {
        chunk.extend(
            tracker
                .payloads(&event, &options)
                .map_err(TrackError::Input)?,
        );
        if chunk.len() >= 1000 || i + 1 == args.count {
            if unsent.load(Ordering::Relaxed) > 0 {
                // The collector refuses or cannot be reached: stop tracking more.
                tracing::warn!(tracked = total, "events are not being delivered; stopping");
                break;
            }
            total += chunk.len();
            // Each event id once its event is handed to the emitter.
            if !args.quiet {
                use std::io::Write;
                for payload in &chunk {
                    let _ = writeln!(out, "{}", payload.event_id().unwrap_or_default());
                }
            }
            emitter
                .emit(std::mem::take(&mut chunk))
                .await
                .map_err(TrackError::Emit)?;
        }
    }
    drop(out);
    emitter.close().await.map_err(TrackError::Emit)?;
    match unsent.load(Ordering::Relaxed) {
        0 => Ok(total),
        unsent => Err(TrackError::Undelivered { unsent, total }),
    }
}

/// Runs `track` with `args` (flags given before the subcommand in `before`).
pub(super) fn track(args: TrackArgs, before: &super::RelayFlags) -> std::process::ExitCode {
    use std::process::ExitCode;
    let flags = super::RelayFlags {
        common: args.common.clone().or(&before.common),
        redis: args.redis.clone().or(&before.redis),
        collector: args.collector.clone().or(&before.collector),
        admin: super::AdminFlags::default(),
    };
    let Some(runtime) = super::runtime(1) else {
        return ExitCode::FAILURE;
    };
    let result = if flags.collector.collector.is_some() {
        let settings = match flags.settings() {
            Ok(settings) => settings,
            Err(code) => return code,
        };
        snowplow_relay::ops::telemetry::init(&settings.log);
        runtime.block_on(run(&args, Target::Collector(&settings.collector)))
    } else {
        // Without --collector, track only needs Redis.
        let settings = match flags.tool_settings() {
            Ok(settings) => settings,
            Err(code) => return code,
        };
        snowplow_relay::ops::telemetry::init(&settings.log);
        runtime.block_on(run(&args, Target::Redis(&settings.redis)))
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("snowplow-relay track: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
