//! Fan-out of events to `/v2/events` subscribers with bounded memory.
//!
//! Each subscriber has its own queue, accounted in bytes. A subscriber whose queue would pass
//! [`EventLimits::max_queued_bytes`] (a stalled or slow client) is dropped: its stream ends and
//! it must reconnect, as after any disconnect. Every queued event is within the last
//! `max_queued_bytes` published (events are shared between queues), so the hub never holds
//! more than that, however many subscribers there are and whatever they do.

use berth_core::event::Event;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// What an event costs in a queue beyond its payload (the queue node, the `Arc`).
const PER_EVENT_OVERHEAD: usize = 128;

#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Subscribers at once; one more is refused with 429.
    pub max_subscribers: usize,
    /// Bytes of events waiting for one subscriber before it is dropped.
    pub max_queued_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_subscribers: 256,
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Subscriber {
    tx: mpsc::UnboundedSender<Arc<Event>>,
    queued: Arc<AtomicUsize>,
}

pub struct EventHub {
    subscribers: Mutex<Vec<Subscriber>>,
    limits: EventLimits,
    dropped: AtomicU64,
    published: AtomicU64,
}

/// The hub is full: `max_subscribers` are attached.
#[derive(Debug, thiserror::Error)]
#[error("too many event stream subscribers ({0} attached); try again later")]
pub struct HubFull(pub usize);

/// One subscriber's end: events in publishing order until it is dropped by the hub.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Arc<Event>>,
    queued: Arc<AtomicUsize>,
}

fn cost(e: &Event) -> usize {
    e.size() + PER_EVENT_OVERHEAD
}

impl Subscription {
    /// The next event; `None` once the hub has dropped this subscriber (or stopped).
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        let e = self.rx.recv().await?;
        self.queued.fetch_sub(cost(&e), Ordering::AcqRel);
        Some(e)
    }
}

impl EventHub {
    pub fn new(limits: EventLimits) -> Self {
        Self {
            subscribers: Mutex::new(Vec::new()),
            limits,
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> EventLimits {
        self.limits
    }

    pub fn subscribe(&self) -> Result<Subscription, HubFull> {
        let mut subs = self.subscribers.lock();
        subs.retain(|s| !s.tx.is_closed());
        if subs.len() >= self.limits.max_subscribers {
            return Err(HubFull(subs.len()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        subs.push(Subscriber {
            tx,
            queued: queued.clone(),
        });
        Ok(Subscription { rx, queued })
    }

    /// Queues `e` for every subscriber, dropping those that are too far behind.
    pub fn publish(&self, e: Event) {
        self.published.fetch_add(1, Ordering::Relaxed);
        let mut subs = self.subscribers.lock();
        if subs.is_empty() {
            return;
        }
        let e = Arc::new(e);
        let c = cost(&e);
        let max = self.limits.max_queued_bytes;
        let mut dropped = 0;
        subs.retain(|s| {
            if s.tx.is_closed() {
                return false;
            }
            if s.queued.load(Ordering::Acquire) + c > max {
                dropped += 1;
                return false;
            }
            s.queued.fetch_add(c, Ordering::AcqRel);
            s.tx.send(e.clone()).is_ok()
        });
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                max_queued_bytes = max,
                "event stream subscribers dropped: too far behind"
            );
        }
    }

    /// Subscribers attached now.
    pub fn subscribers(&self) -> usize {
        let subs = self.subscribers.lock();
        subs.iter().filter(|s| !s.tx.is_closed()).count()
    }

    /// Subscribers dropped for being too far behind, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events published since start.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// The most bytes queued for any one subscriber (what the hub holds at most).
    pub fn queued_bytes(&self) -> usize {
        let subs = self.subscribers.lock();
        subs.iter()
            .map(|s| s.queued.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(n: usize) -> Event {
        Event::new("api_post_event", json!({"pad": "x".repeat(n)}))
    }

    #[tokio::test]
    async fn a_reader_gets_every_event_in_order() {
        let hub = EventHub::new(EventLimits::default());
        let mut sub = hub.subscribe().unwrap();
        for i in 0..100 {
            hub.publish(Event::new("api_post_event", json!({"i": i})));
        }
        for i in 0..100 {
            let e = sub.recv().await.unwrap();
            assert_eq!(e.data()["i"], i);
        }
        assert_eq!(hub.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_stalled_reader_is_dropped_and_the_others_keep_theirs() {
        let hub = EventHub::new(EventLimits {
            max_subscribers: 4,
            max_queued_bytes: 100_000,
        });
        let mut stalled = hub.subscribe().unwrap();
        let mut reader = hub.subscribe().unwrap();
        for _ in 0..1000 {
            hub.publish(event(1000));
            assert!(reader.recv().await.is_some());
            assert!(hub.queued_bytes() <= 100_000);
        }
        assert_eq!(hub.dropped(), 1);
        assert_eq!(hub.subscribers(), 1);
        // The stalled one reads what was queued before it was dropped, then its stream ends.
        let mut got = 0;
        while stalled.recv().await.is_some() {
            got += 1;
        }
        assert!(got > 0 && got < 100, "got {got}");
    }

    #[tokio::test]
    async fn subscribers_are_bounded_and_departures_free_their_place() {
        let hub = EventHub::new(EventLimits {
            max_subscribers: 2,
            max_queued_bytes: 1 << 20,
        });
        let a = hub.subscribe().unwrap();
        let _b = hub.subscribe().unwrap();
        assert!(hub.subscribe().is_err());
        drop(a);
        assert!(hub.subscribe().is_ok());
    }
}
