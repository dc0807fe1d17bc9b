//! What the relay stores beside events: dead-letter entries and retry-list (parked)
//! entries, each one line of JSON metadata, a newline, then the element byte for byte.

/// How one acknowledged position ends: the metadata line of its dead-letter entry, or
/// of its retry-list entry when it is parked, and the element the relay claimed there.
/// The script appends Redis's own copy of the element to the line, once it has checked
/// that the copy is that element (someone who can write the relay's keys could have
/// shifted the in-flight list).
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// A dead-letter entry ([`DeadLetter::meta_line`]).
    Dead {
        /// The metadata line.
        meta: &'a [u8],
        /// The element claimed at that position.
        element: &'a [u8],
    },
    /// A retry-list entry ([`Parked::meta_line`]).
    Parked {
        /// The metadata line.
        meta: &'a [u8],
        /// The element claimed at that position.
        element: &'a [u8],
    },
}

/// The fingerprint of an element a script compares with Redis's copy before it writes an
/// entry from it: SHA-1 in hex, which Lua's `redis.sha1hex` computes too.
pub fn fingerprint(element: &[u8]) -> String {
    sha1_smol::Sha1::from(element).digest().to_string()
}

/// A parked event's retry-list entry: one line of JSON metadata, a newline, then the
/// element byte for byte. The position lets release and recovery put it back in claim
/// order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    /// The event's claim position in its instance.
    pub position: u64,
    /// When it was parked (RFC 3339, UTC).
    pub parked_at: String,
    /// The collector's last status for it, if it answered.
    pub status: Option<u16>,
    /// Attempts made before it was parked.
    pub attempts: u32,
    /// The relay instance that parked it.
    pub relay: String,
}

impl Parked {
    /// The metadata line (without the newline).
    pub fn meta_line(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialisable")
    }
}

/// An entry of the dead-letter list: one line of JSON metadata, a newline, then the
/// original element byte for byte (whatever its bytes are).
///
/// ```text
/// {"reason":"rejected","detail":"collector answered 400","status":400,"failed_at":"2026-11-28T10:00:00.123Z","relay":"host:42:ab12cd"}
/// {"e":"pv","tv":"py-0.4.0","p":"pc",…}
/// ```
///
/// `reason` is the `reason` label of `snowplow_relay_events_dead_lettered_total`, so the
/// metric and the list join. Entries written before the label was stored (no `detail`)
/// decode as reason [`UNLABELLED`] with their old text as the detail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// Why, as the metric's `reason` label (`malformed`, `rejected`, …).
    pub reason: String,
    /// Why, in words: the parse error, the collector's answer, the limit passed.
    #[serde(default)]
    pub detail: Option<String>,
    /// The collector's HTTP status, when it answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// When it was dead-lettered (RFC 3339 with milliseconds, UTC: fixed width, so the
    /// text orders as the time does).
    pub failed_at: String,
    /// The relay instance that dead-lettered it.
    pub relay: String,
}

/// The reason of an entry written before entries carried the metric's label.
pub const UNLABELLED: &str = "unlabelled";

impl DeadLetter {
    /// A new entry stamped with the current time.
    pub fn new(
        reason: &str,
        detail: impl Into<String>,
        status: Option<u16>,
        relay: &str,
    ) -> DeadLetter {
        DeadLetter {
            reason: reason.to_owned(),
            detail: Some(detail.into()),
            status,
            failed_at: timestamp(std::time::SystemTime::now()),
            relay: relay.to_owned(),
        }
    }

    /// The metadata line (without the newline); the scripts append the element.
    pub fn meta_line(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialisable")
    }

    /// The entry as stored in Redis: metadata line, `\n`, original element.
    pub fn encode(&self, element: &[u8]) -> Vec<u8> {
        let mut out = self.meta_line();
        out.push(b'\n');
        out.extend_from_slice(element);
        out
    }

    /// Splits a stored entry into its metadata and the original element; `None` when
    /// the first line is not this metadata (an entry someone else wrote). An entry of
    /// an older relay comes back labelled [`UNLABELLED`], its text as the detail.
    pub fn decode(entry: &[u8]) -> Option<(DeadLetter, &[u8])> {
        let newline = entry.iter().position(|&b| b == b'\n')?;
        let mut meta: DeadLetter = serde_json::from_slice(&entry[..newline]).ok()?;
        if meta.detail.is_none() {
            meta.detail = Some(std::mem::replace(&mut meta.reason, UNLABELLED.to_owned()));
        }
        Some((meta, &entry[newline + 1..]))
    }

    /// What the entry says in words.
    pub fn detail(&self) -> &str {
        self.detail.as_deref().unwrap_or("")
    }
}

/// The element an entry stands for when it is replayed: what follows the first newline,
/// or the whole entry when it has none (as `dead_move.lua` takes it).
pub fn replayed_element(entry: &[u8]) -> &[u8] {
    match entry.iter().position(|&b| b == b'\n') {
        Some(newline) => &entry[newline + 1..],
        None => entry,
    }
}

/// A time as the entries write it: RFC 3339, milliseconds, UTC (fixed width).
pub fn timestamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
