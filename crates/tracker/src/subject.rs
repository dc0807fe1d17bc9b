//! The subject of events: who and on what device (platform, user ids, screen, locale,
//! network), turned into the tracker-protocol fields the Python tracker's `Subject` sets.

use serde_json::Value;

use crate::events::Payload;

/// Where events happen (`p`). The Python tracker accepts the same eight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Platform {
    /// `pc`: a desktop computer (the default, as in the Python tracker).
    #[default]
    Pc,
    /// `tv`: a connected TV.
    Tv,
    /// `mob`: a mobile device.
    Mob,
    /// `cnsl`: a games console.
    Cnsl,
    /// `iot`: an Internet-of-Things device.
    Iot,
    /// `web`: a web page.
    Web,
    /// `srv`: a server-side application.
    Srv,
    /// `app`: a general application.
    App,
}

impl Platform {
    /// Every platform, in the order above.
    pub const ALL: [Platform; 8] = [
        Platform::Pc,
        Platform::Tv,
        Platform::Mob,
        Platform::Cnsl,
        Platform::Iot,
        Platform::Web,
        Platform::Srv,
        Platform::App,
    ];

    /// The protocol's code, e.g. `srv`.
    pub fn code(self) -> &'static str {
        match self {
            Platform::Pc => "pc",
            Platform::Tv => "tv",
            Platform::Mob => "mob",
            Platform::Cnsl => "cnsl",
            Platform::Iot => "iot",
            Platform::Web => "web",
            Platform::Srv => "srv",
            Platform::App => "app",
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// Parses a code, e.g. `"srv"`.
    fn from_str(code: &str) -> Result<Self, String> {
        Platform::ALL
            .into_iter()
            .find(|p| p.code() == code)
            .ok_or_else(|| {
                format!("unknown platform {code:?}; expected one of pc, tv, mob, cnsl, iot, web, srv, app")
            })
    }
}

/// Who an event is about and the device it came from. Built by chaining setters; a
/// [`crate::Tracker`] has one and each event may bring its own instead.
///
/// ```
/// use snowplow_relay_tracker::{Platform, Subject};
///
/// let subject = Subject::new()
///     .platform(Platform::Srv)
///     .user_id("user-42")
///     .screen_resolution(1920, 1080)
///     .timezone("Europe/London")
///     .language("en-GB");
/// assert_eq!(subject.get_platform(), Platform::Srv);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    /// `None`: not set, `pc` when sent.
    platform: Option<Platform>,
    user_id: Option<String>,
    screen_resolution: Option<(u32, u32)>,
    viewport: Option<(u32, u32)>,
    color_depth: Option<u32>,
    timezone: Option<String>,
    language: Option<String>,
    ip_address: Option<String>,
    useragent: Option<String>,
    domain_user_id: Option<String>,
    domain_session_id: Option<String>,
    domain_session_index: Option<u32>,
    network_user_id: Option<String>,
}

impl Subject {
    /// A subject on the `pc` platform with nothing else set.
    pub fn new() -> Subject {
        Subject::default()
    }

    /// The platform (`p`).
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// The platform this subject reports (`pc` unless set).
    pub fn get_platform(&self) -> Platform {
        self.platform.unwrap_or_default()
    }

    /// This subject (an event's own) over `base` (the tracker's): each field this one
    /// sets, the others from `base`; the platform too only if set here. What the Python
    /// tracker 1.x does with a per-event subject, but for the platform (a Python subject
    /// always carries one, `pc` unless set).
    pub fn merged_over(&self, base: &Subject) -> Subject {
        macro_rules! each_field_own_or_base {
            ($($field:ident),*) => {
                Subject { $($field: self.$field.clone().or_else(|| base.$field.clone()),)* }
            };
        }
        each_field_own_or_base!(
            platform,
            user_id,
            screen_resolution,
            viewport,
            color_depth,
            timezone,
            language,
            ip_address,
            useragent,
            domain_user_id,
            domain_session_id,
            domain_session_index,
            network_user_id
        )
    }

    /// The business user id (`uid`).
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Screen resolution in pixels (`res`, `WIDTHxHEIGHT`).
    pub fn screen_resolution(mut self, width: u32, height: u32) -> Self {
        self.screen_resolution = Some((width, height));
        self
    }

    /// Viewport in pixels (`vp`).
    pub fn viewport(mut self, width: u32, height: u32) -> Self {
        self.viewport = Some((width, height));
        self
    }

    optional_setters! {
        /// Colour depth in bits (`cd`).
        fn color_depth(color_depth: u32);
        /// Time zone, e.g. `Europe/London` (`tz`).
        fn timezone(timezone: text);
        /// Language, e.g. `en-GB` (`lang`).
        fn language(language: text);
        /// The user's IP address (`ip`).
        fn ip_address(ip_address: text);
        /// The user agent (`ua`).
        fn useragent(useragent: text);
        /// The domain user id, the first-party cookie id (`duid`).
        fn domain_user_id(domain_user_id: text);
        /// The domain session id (`sid`).
        fn domain_session_id(domain_session_id: text);
        /// The domain session index (`vid`).
        fn domain_session_index(domain_session_index: u32);
        /// The network user id, the collector's cookie id (`tnuid`, as the Python tracker
        /// sends it).
        fn network_user_id(network_user_id: text);
    }

    /// Adds this subject's fields, in the Python tracker's order.
    pub(super) fn add_to(&self, payload: &mut Payload) {
        payload.add_str("p", self.get_platform().code());
        payload.add_opt("uid", self.user_id.as_deref());
        if let Some((w, h)) = self.screen_resolution {
            payload.add_str("res", &format!("{w}x{h}"));
        }
        if let Some((w, h)) = self.viewport {
            payload.add_str("vp", &format!("{w}x{h}"));
        }
        if let Some(depth) = self.color_depth {
            payload.add("cd", Value::from(depth));
        }
        payload.add_opt("tz", self.timezone.as_deref());
        payload.add_opt("lang", self.language.as_deref());
        payload.add_opt("duid", self.domain_user_id.as_deref());
        payload.add_opt("sid", self.domain_session_id.as_deref());
        if let Some(index) = self.domain_session_index {
            payload.add("vid", Value::from(index));
        }
        payload.add_opt("ip", self.ip_address.as_deref());
        payload.add_opt("ua", self.useragent.as_deref());
        payload.add_opt("tnuid", self.network_user_id.as_deref());
    }
}
