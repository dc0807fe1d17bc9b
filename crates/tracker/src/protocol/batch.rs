//! The size model of a request: batches filled up to a count of events and a number of
//! bytes, with the exact size of the POST body they make (GET: one event per request,
//! its URL checked when it is built).

use std::num::NonZeroUsize;

use super::Method;
use super::element::Element;
use super::encode::POST_BODY_OVERHEAD;

/// Events bound for one request, with their positions in the claim order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Claim positions (see the worker), parallel to `events`.
    pub positions: Vec<u64>,
    /// The events.
    pub events: Vec<Element>,
    /// Size of the POST body these events make.
    pub body_bytes: usize,
}

impl Batch {
    /// A batch of one event.
    pub fn single(position: u64, event: Element) -> Batch {
        Batch {
            body_bytes: POST_BODY_OVERHEAD + event.post_item_len(),
            positions: vec![position],
            events: vec![event],
        }
    }

    /// Splits the batch into two halves (first half first), each with its own body size.
    /// A batch of one event stays whole in the first half.
    pub fn split(mut self) -> (Batch, Batch) {
        let middle = self.events.len().div_ceil(2);
        let events = self.events.split_off(middle);
        let positions = self.positions.split_off(middle);
        let body_bytes = |events: &[Element]| {
            POST_BODY_OVERHEAD
                + events.iter().map(Element::post_item_len).sum::<usize>()
                + events.len().saturating_sub(1)
        };
        let first = Batch {
            body_bytes: body_bytes(&self.events),
            positions: self.positions,
            events: self.events,
        };
        let second = Batch {
            body_bytes: body_bytes(&events),
            positions,
            events,
        };
        (first, second)
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Why an event cannot join any batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event needs {needed} bytes in a request, more than collector.byte_limit ({limit})")]
pub struct TooLargeForRequest {
    /// Bytes the event alone needs.
    pub needed: usize,
    /// The configured limit.
    pub limit: usize,
}

/// The most events a new batch makes room for at once; a larger batch grows as it fills.
const MOST_EVENTS_RESERVED: usize = 512;

/// Fills batches up to `buffer_size` events and `byte_limit` bytes.
#[derive(Debug)]
pub struct BatchBuilder {
    max_events: usize,
    byte_limit: usize,
    method: Method,
    current: Batch,
}

impl BatchBuilder {
    /// A builder for `method` with the given limits.
    pub fn new(method: Method, max_events: NonZeroUsize, byte_limit: NonZeroUsize) -> Self {
        BatchBuilder {
            max_events: max_events.get(),
            byte_limit: byte_limit.get(),
            method,
            current: Batch::default(),
        }
    }

    /// Adds an event. Returns a batch that is ready to send, if adding this one filled it
    /// or would have overflowed it.
    pub fn push(
        &mut self,
        position: u64,
        event: Element,
    ) -> Result<Option<Batch>, (Element, TooLargeForRequest)> {
        let item = match self.method {
            Method::Post => event.post_item_len(),
            // GET checks the real URL length at send time; one event per request.
            Method::Get => 0,
        };
        if POST_BODY_OVERHEAD + item > self.byte_limit {
            let error = TooLargeForRequest {
                needed: POST_BODY_OVERHEAD + item,
                limit: self.byte_limit,
            };
            return Err((event, error));
        }
        // Close the current batch first if this event would push it over the limit.
        let mut ready = None;
        if !self.current.is_empty() && self.current.body_bytes + 1 + item > self.byte_limit {
            ready = self.take();
        }
        self.current.body_bytes = if self.current.is_empty() {
            // Room for a full batch at once (as much as doubling would reach), so that
            // filling it does not grow the vectors step by step.
            let room = self.max_events.min(MOST_EVENTS_RESERVED);
            self.current.positions.reserve_exact(room);
            self.current.events.reserve_exact(room);
            POST_BODY_OVERHEAD + item
        } else {
            self.current.body_bytes + 1 + item
        };
        self.current.positions.push(position);
        self.current.events.push(event);
        if self.current.len() >= self.max_events {
            // A batch closed by bytes leaves one event behind, which fills a batch only
            // when max_events is 1; but then the batch was empty and nothing was closed.
            debug_assert!(ready.is_none());
            return Ok(self.take());
        }
        Ok(ready)
    }

    /// How many events the batch being filled holds.
    pub fn pending(&self) -> usize {
        self.current.len()
    }

    /// Takes the batch being filled, if it holds anything.
    pub fn take(&mut self) -> Option<Batch> {
        (!self.current.is_empty()).then(|| std::mem::take(&mut self.current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ParseOptions, epoch_millis, write_post_body};
    use bytes::Bytes;

    fn event(size: usize) -> Element {
        let text = format!(
            r#"{{"e":"pv","tv":"t","p":"pc","url":"{}"}}"#,
            "x".repeat(size)
        );
        Element::parse(
            Bytes::from(text),
            ParseOptions {
                allow_unknown_fields: false,
                require_decodable_strings: false,
            },
        )
        .unwrap()
    }

    /// A POST batch builder closing batches at `events` events or `bytes` bytes.
    fn post_builder(events: usize, bytes: usize) -> BatchBuilder {
        BatchBuilder::new(
            Method::Post,
            NonZeroUsize::new(events).unwrap(),
            NonZeroUsize::new(bytes).unwrap(),
        )
    }

    #[test]
    fn batches_close_at_the_event_count() {
        let mut builder = post_builder(3, 100_000);
        let mut ready = Vec::new();
        for position in 0..7 {
            ready.extend(builder.push(position, event(10)).unwrap());
        }
        ready.extend(builder.take());
        let sizes: Vec<usize> = ready.iter().map(Batch::len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        let positions: Vec<u64> = ready.iter().flat_map(|b| b.positions.clone()).collect();
        assert_eq!(positions, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn batches_close_before_the_byte_limit_and_the_estimate_is_exact() {
        let limit = 2_000;
        let mut builder = post_builder(100, limit);
        let mut ready = Vec::new();
        for position in 0..20 {
            ready.extend(builder.push(position, event(300)).unwrap());
        }
        ready.extend(builder.take());
        assert!(ready.len() > 1);
        for batch in &ready {
            let mut body = Vec::new();
            write_post_body(&batch.events, &epoch_millis(), &mut body);
            assert_eq!(body.len(), batch.body_bytes);
            assert!(body.len() <= limit, "{} > {limit}", body.len());
        }
        assert_eq!(ready.iter().map(Batch::len).sum::<usize>(), 20);
    }

    #[test]
    fn a_split_keeps_order_and_exact_sizes() {
        let mut builder = post_builder(5, 100_000);
        let mut batch = None;
        for position in 0..5 {
            batch = builder
                .push(position, event(10 * position as usize))
                .unwrap();
        }
        let (first, second) = batch.unwrap().split();
        assert_eq!(first.positions, vec![0, 1, 2]);
        assert_eq!(second.positions, vec![3, 4]);
        for half in [&first, &second] {
            let mut body = Vec::new();
            write_post_body(&half.events, &epoch_millis(), &mut body);
            assert_eq!(body.len(), half.body_bytes);
        }
    }

    #[test]
    fn an_event_larger_than_the_limit_is_refused() {
        let mut builder = post_builder(10, 1_024);
        let (_, error) = builder.push(0, event(2_000)).unwrap_err();
        assert_eq!(error.limit, 1_024);
        assert!(builder.take().is_none());
    }
}
