//! What the local collector keeps: the events received, good and bad, in arrival order,
//! bounded in count and bytes (the oldest dropped and counted); Micro's listing order
//! (newest first, within a request too, as Micro 3.0 lists them) and its filters.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// Counts since the last reset (`/micro/stats`; `/micro/all` shows the first three, as
/// Micro does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Events received.
    pub total: u64,
    /// Events that passed validation.
    pub good: u64,
    /// Events that did not.
    pub bad: u64,
    /// Events no longer kept because `max_events` or `max_store_bytes` was reached.
    pub dropped: u64,
}

/// Micro's `/micro/all`.
#[derive(serde::Serialize)]
pub(super) struct Summary {
    total: u64,
    good: u64,
    bad: u64,
}

impl Summary {
    pub(super) fn of(totals: Totals) -> Summary {
        Summary {
            total: totals.total,
            good: totals.good,
            bad: totals.bad,
        }
    }
}

/// An event's JSON as served, in three pieces: its own `head` and `tail` around
/// `shared`, the `rawEvent.context.headers` array every event of its request shares
/// (serialised once per request, as Micro shares one list among them: 60 KB of headers
/// on a request of 20,000 events are 60 KB, not 1.2 GB).
#[derive(Default, Clone)]
pub(super) struct StoredJson {
    pub(super) head: Bytes,
    pub(super) shared: Bytes,
    pub(super) tail: Bytes,
}

impl StoredJson {
    /// `json` split where `marker` (a JSON string no client can know) stands for
    /// `shared`; whole in `head` if the marker is not there.
    pub(super) fn split(json: Vec<u8>, marker: &[u8], shared: &Bytes) -> StoredJson {
        let at = json
            .windows(marker.len())
            .position(|window| window == marker);
        let mut json = Bytes::from(json);
        match at {
            Some(at) => {
                let rest = json.split_off(at);
                StoredJson {
                    head: json,
                    shared: shared.clone(),
                    tail: rest.slice(marker.len()..),
                }
            }
            None => StoredJson {
                head: json,
                ..StoredJson::default()
            },
        }
    }

    pub(super) fn len(&self) -> usize {
        self.head.len() + self.shared.len() + self.tail.len()
    }

    /// The pieces in order, to stream.
    pub(super) fn pieces(&self) -> [Bytes; 3] {
        [self.head.clone(), self.shared.clone(), self.tail.clone()]
    }

    /// The JSON in one piece.
    pub(super) fn whole(&self) -> Bytes {
        if self.shared.is_empty() && self.tail.is_empty() {
            return self.head.clone();
        }
        let mut whole = Vec::with_capacity(self.len());
        for piece in self.pieces() {
            whole.extend_from_slice(&piece);
        }
        Bytes::from(whole)
    }
}

/// What holding one event costs besides its JSON: the `Stored` and its `Arc`, the
/// strings the filters look at, the store's slot and the allocator's headers.
const PER_EVENT_OVERHEAD: usize = std::mem::size_of::<Stored>() + 16 + 8 + 8 * 16;

/// One stored event: its JSON as served, and what the filters look at.
#[derive(Default)]
pub(super) struct Stored {
    pub(super) json: StoredJson,
    /// A bad event's enriched form as Micro 3 lists it in `/micro/events` (an
    /// "incomplete" event), if it is a tracker event at all.
    pub(super) incomplete: Option<Bytes>,
    pub(super) event_type: String,
    pub(super) schema: String,
    pub(super) contexts: Vec<String>,
    /// The API the event came through (`com.snowplowanalytics.snowplow`, `tp2`).
    pub(super) vendor: String,
    pub(super) version: String,
    /// Order of arrival.
    pub(super) seq: u64,
}

#[derive(Default)]
pub(super) struct Store {
    pub(super) totals: Totals,
    pub(super) good: VecDeque<Arc<Stored>>,
    pub(super) bad: VecDeque<Arc<Stored>>,
    /// What the events held cost, as [`Stored::held_bytes`] counts it.
    pub(super) bytes: usize,
    pub(super) seq: u64,
}

/// Events as Micro lists them: newest first, within a request too (Micro 3.0's sink
/// prepends each event of a request as it validates it, then the request's list to the
/// store's).
pub(super) fn newest_first(events: &VecDeque<Arc<Stored>>) -> Vec<Arc<Stored>> {
    events.iter().rev().cloned().collect()
}

impl Stored {
    /// The bytes it costs to hold, as the store counts them: its JSON (the request's
    /// shared headers counted whole for each of its events: never less than held), its
    /// incomplete form, its strings and the fixed cost of an entry.
    pub(super) fn held_bytes(&self) -> usize {
        self.json.len()
            + self.incomplete.as_ref().map_or(0, Bytes::len)
            + self.event_type.capacity()
            + self.schema.capacity()
            + self
                .contexts
                .iter()
                .map(|c| c.capacity() + 24)
                .sum::<usize>()
            + self.vendor.capacity()
            + self.version.capacity()
            + PER_EVENT_OVERHEAD
    }
}

impl Store {
    /// Drops the oldest events until both bounds hold.
    pub(super) fn trim(&mut self, max_events: usize, max_bytes: usize) {
        while self.good.len() + self.bad.len() > max_events || self.bytes > max_bytes {
            let from_good = match (self.good.front(), self.bad.front()) {
                (Some(good), Some(bad)) => good.seq < bad.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return,
            };
            let dropped = if from_good {
                self.good.pop_front()
            } else {
                self.bad.pop_front()
            };
            if let Some(dropped) = dropped {
                self.bytes -= dropped.held_bytes();
                self.totals.dropped += 1;
            }
        }
    }
}

/// Micro's filters: `/micro/good` takes `event_type`, `schema`, `contexts` (every one
/// named must be among the event's) and `limit`; `/micro/bad` takes `vendor`, `version`
/// and `limit`. As query parameters (our extension) any of them, `contexts` repeated or
/// comma-separated.
#[derive(Debug, Default)]
pub(super) struct Filters {
    pub(super) event_type: Option<String>,
    pub(super) schema: Option<String>,
    pub(super) contexts: Vec<String>,
    pub(super) vendor: Option<String>,
    pub(super) version: Option<String>,
    pub(super) limit: Option<usize>,
}

/// `/micro/good`'s JSON filters, as Micro names them; a key Micro does not know is
/// ignored, as Micro ignores it.
#[derive(serde::Deserialize)]
struct GoodFilters {
    event_type: Option<String>,
    schema: Option<String>,
    contexts: Option<Vec<String>>,
    limit: Option<usize>,
}

/// `/micro/bad`'s JSON filters, as Micro names them (unknown keys ignored).
#[derive(serde::Deserialize)]
struct BadFilters {
    vendor: Option<String>,
    version: Option<String>,
    limit: Option<usize>,
}

impl Filters {
    pub(super) fn from_json(body: &[u8], good: bool) -> Result<Filters, String> {
        if good {
            let f: GoodFilters = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "filters must be JSON like {{\"event_type\":\"page_view\",\"schema\":\"iglu:…\",\"contexts\":[\"iglu:…\"],\"limit\":10}}: {e}\n"
                )
            })?;
            Ok(Filters {
                event_type: f.event_type,
                schema: f.schema,
                contexts: f.contexts.unwrap_or_default(),
                limit: f.limit,
                ..Filters::default()
            })
        } else {
            let f: BadFilters = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "filters must be JSON like {{\"vendor\":\"com.snowplowanalytics.snowplow\",\"version\":\"tp2\",\"limit\":10}}: {e}\n"
                )
            })?;
            Ok(Filters {
                vendor: f.vendor,
                version: f.version,
                limit: f.limit,
                ..Filters::default()
            })
        }
    }

    pub(super) fn from_query(query: &str) -> Filters {
        let mut filters = Filters::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "event_type" => filters.event_type = Some(value.into_owned()),
                "schema" => filters.schema = Some(value.into_owned()),
                "contexts" => filters.contexts.extend(
                    value
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned),
                ),
                "vendor" => filters.vendor = Some(value.into_owned()),
                "version" => filters.version = Some(value.into_owned()),
                "limit" => filters.limit = value.parse().ok(),
                _ => {}
            }
        }
        filters
    }

    pub(super) fn matches(&self, event: &Stored) -> bool {
        let same =
            |found: &str, wanted: &Option<String>| wanted.as_deref().is_none_or(|w| found == w);
        same(&event.event_type, &self.event_type)
            && same(&event.schema, &self.schema)
            && same(&event.vendor, &self.vendor)
            && same(&event.version, &self.version)
            && self.contexts.iter().all(|c| event.contexts.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_newest_first_within_a_request_too() {
        let stored = |seq| {
            Arc::new(Stored {
                seq,
                ..Stored::default()
            })
        };
        // 2 and 3 came in one request.
        let events: VecDeque<Arc<Stored>> = [stored(1), stored(2), stored(3), stored(4)].into();
        let order: Vec<u64> = newest_first(&events).iter().map(|e| e.seq).collect();
        assert_eq!(order, [4, 3, 2, 1], "582e716: [4, 2, 3, 1]");
    }
}
