//! Invoice events for server-sent-event streams: each stream gets a bounded queue of its
//! user's events. A stream that stops reading is marked lagged and dropped, so it can never
//! slow publishers or other streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

/// Events a stream may have queued before it counts as lagging.
const STREAM_BUFFER: usize = 64;

#[derive(Debug)]
pub struct Event {
    /// `invoice.created`, `invoice.sent` or `invoice.paid`.
    pub kind: &'static str,
    /// The invoice as JSON.
    pub data: String,
}

struct Subscriber {
    queue: mpsc::Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

/// One open stream's end of the hub. Its permit counts against `MAX_SSE_STREAMS`.
pub struct Subscription {
    pub queue: mpsc::Receiver<Arc<Event>>,
    lagged: Arc<AtomicBool>,
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    /// True once the hub dropped this stream for not keeping up.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

pub struct EventHub {
    subscribers: Mutex<HashMap<Uuid, Vec<Subscriber>>>,
    stream_permits: Arc<Semaphore>,
}

impl EventHub {
    pub fn new(max_streams: usize) -> EventHub {
        EventHub {
            subscribers: Mutex::default(),
            stream_permits: Arc::new(Semaphore::new(max_streams)),
        }
    }

    /// Opens a stream for `user`, or `None` when `MAX_SSE_STREAMS` are already open.
    pub fn subscribe(&self, user: Uuid) -> Option<Subscription> {
        let permit = self.stream_permits.clone().try_acquire_owned().ok()?;
        let (queue, receiver) = mpsc::channel(STREAM_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        subscribers.entry(user).or_default().push(Subscriber {
            queue,
            lagged: lagged.clone(),
        });
        Some(Subscription {
            queue: receiver,
            lagged,
            _permit: permit,
        })
    }

    /// Sends an event to every open stream of `user`. Never waits: a full queue marks its
    /// stream lagged and drops it; closed streams are forgotten.
    pub fn publish(&self, user: Uuid, kind: &'static str, payload: &impl Serialize) {
        let data = match serde_json::to_string(payload) {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(%error, kind, "cannot serialise event");
                return;
            }
        };
        let event = Arc::new(Event { kind, data });
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(streams) = subscribers.get_mut(&user) else {
            return;
        };
        streams.retain(|subscriber| match subscriber.queue.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                subscriber.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if streams.is_empty() {
            subscribers.remove(&user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stalled_stream_is_dropped_as_lagged_while_a_reader_keeps_up() {
        let hub = EventHub::new(10);
        let user = Uuid::now_v7();
        let stalled = hub.subscribe(user).unwrap();
        let mut reader = hub.subscribe(user).unwrap();
        for n in 0..STREAM_BUFFER + 10 {
            hub.publish(user, "invoice.created", &serde_json::json!({ "n": n }));
            let event = reader.queue.recv().await.expect("the reader gets every event");
            assert!(event.data.contains(&format!("\"n\":{n}")));
        }
        assert!(stalled.lagged(), "the stalled stream is marked lagged");
        assert!(!reader.lagged());
        let mut stalled = stalled;
        let mut buffered = 0;
        while stalled.queue.recv().await.is_some() {
            buffered += 1;
        }
        assert_eq!(
            buffered, STREAM_BUFFER,
            "it keeps what was buffered, then its queue closes"
        );
    }

    #[test]
    fn streams_beyond_the_limit_are_refused() {
        let hub = EventHub::new(1);
        let first = hub.subscribe(Uuid::now_v7());
        assert!(first.is_some());
        assert!(hub.subscribe(Uuid::now_v7()).is_none());
        drop(first);
        assert!(
            hub.subscribe(Uuid::now_v7()).is_some(),
            "the permit returns with the stream"
        );
    }
}
