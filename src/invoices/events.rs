//! Invoice events for server-sent-event streams: each stream gets a bounded queue of its
//! user's events. A stream that stops reading is marked lagged and dropped, so it can never
//! slow publishers or other streams.
//!
//! With `REDIS_URL`, every event is also published on a Redis channel, and a background
//! subscriber delivers other instances' events here. Events made on this instance are always
//! delivered directly, so streams keep working while Redis is away; the subscription
//! reconnects by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

const CHANNEL: &str = "shipshape:invoice-events";
/// Pause between attempts to (re)subscribe while Redis is away.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// A publish slower than this is abandoned: other instances miss that event, this one does not.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// Events a stream may have queued before it counts as lagging.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    /// `invoice.created`, `invoice.sent` or `invoice.paid`.
    pub kind: String,
    /// The invoice as JSON.
    pub data: String,
}

/// What travels over Redis: the event, whose it is, and which instance made it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: Uuid,
    user: Uuid,
    event: Event,
}

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

/// One open stream's end of the hub. Its permit counts against `MAX_SSE_STREAMS`; dropping
/// it (the client went away) removes the stream from the hub.
pub struct Subscription {
    pub queue: mpsc::Receiver<Arc<Event>>,
    lagged: Arc<AtomicBool>,
    hub: Weak<EventHub>,
    user: Uuid,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    /// True once the hub dropped this stream for not keeping up.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // At once, not at the user's next event: a user who opens and closes streams but never
        // gets an event would otherwise grow the hub without bound.
        if let Some(hub) = self.hub.upgrade() {
            hub.forget(self.user, self.id);
        }
    }
}

pub struct EventHub {
    subscribers: Mutex<HashMap<Uuid, Vec<Subscriber>>>,
    stream_permits: Arc<Semaphore>,
    /// `MAX_SSE_STREAMS_PER_USER`: one account cannot take every stream of the instance.
    max_streams_per_user: usize,
    next_id: AtomicU64,
    /// Tells this instance's own events apart when they come back from Redis.
    instance: Uuid,
    redis: Option<ConnectionManager>,
}

impl EventHub {
    pub fn new(max_streams: usize, max_streams_per_user: usize, redis: Option<ConnectionManager>) -> EventHub {
        EventHub {
            subscribers: Mutex::default(),
            stream_permits: Arc::new(Semaphore::new(max_streams)),
            max_streams_per_user,
            next_id: AtomicU64::new(0),
            instance: Uuid::new_v4(),
            redis,
        }
    }

    fn subscribers(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<Subscriber>>> {
        self.subscribers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a stream for `user`, or `None` when `MAX_SSE_STREAMS` are open, or
    /// `MAX_SSE_STREAMS_PER_USER` for this user.
    pub fn subscribe(self: &Arc<Self>, user: Uuid) -> Option<Subscription> {
        let permit = self.stream_permits.clone().try_acquire_owned().ok()?;
        let mut subscribers = self.subscribers();
        if subscribers.get(&user).map_or(0, Vec::len) >= self.max_streams_per_user {
            return None;
        }
        let (queue, receiver) = mpsc::channel(STREAM_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        subscribers.entry(user).or_default().push(Subscriber {
            id,
            queue,
            lagged: lagged.clone(),
        });
        Some(Subscription {
            queue: receiver,
            lagged,
            hub: Arc::downgrade(self),
            user,
            id,
            _permit: permit,
        })
    }

    /// Removes a closed stream, and its user when it was the last one.
    fn forget(&self, user: Uuid, id: u64) {
        let mut subscribers = self.subscribers();
        if let Some(streams) = subscribers.get_mut(&user) {
            streams.retain(|subscriber| subscriber.id != id);
            if streams.is_empty() {
                subscribers.remove(&user);
            }
        }
        // A map keeps the capacity of its busiest moment; give most of it back once quiet.
        if subscribers.len() < subscribers.capacity() / 4 {
            subscribers.shrink_to_fit();
        }
    }

    /// Sends an event to every open stream of `user`, here and (through Redis) on every
    /// other instance. Never waits.
    pub fn publish(&self, user: Uuid, kind: &'static str, payload: &impl Serialize) {
        match serde_json::to_string(payload) {
            Ok(data) => self.publish_json(user, kind, &data),
            Err(error) => tracing::error!(%error, kind, "cannot serialise event"),
        }
    }

    /// [`publish`](Self::publish) for a payload already serialized, e.g. the body of the
    /// response that announces the same change. Copied only where it goes: to Redis, or to
    /// this instance's streams of `user` when there are any (most writes have no listener).
    pub fn publish_json(&self, user: Uuid, kind: &'static str, data: &str) {
        let event = || Event {
            kind: kind.to_owned(),
            data: data.to_owned(),
        };
        if let Some(redis) = &self.redis {
            let envelope = Envelope {
                origin: self.instance,
                user,
                event: event(),
            };
            let mut connection = redis.clone();
            tokio::spawn(async move {
                let Ok(message) = serde_json::to_string(&envelope) else {
                    return;
                };
                let mut command = redis::cmd("PUBLISH");
                command.arg(CHANNEL).arg(message);
                let publish = command.query_async::<i64>(&mut connection);
                match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "event not shared through Redis"),
                    Err(_) => tracing::debug!("event not shared through Redis: timed out"),
                }
            });
        }
        self.deliver(user, event);
    }

    /// Hands an event, made only if `user` has streams on this instance, to those streams. A
    /// full queue marks its stream lagged and drops it; closed streams are forgotten.
    fn deliver(&self, user: Uuid, event: impl FnOnce() -> Event) {
        let mut subscribers = self.subscribers();
        let Some(streams) = subscribers.get_mut(&user) else {
            return;
        };
        let event = Arc::new(event());
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

/// Delivers other instances' events from Redis until the hub is gone or `stop` completes,
/// resubscribing whenever the connection drops.
pub fn spawn_redis_subscriber(
    hub: Weak<EventHub>,
    client: redis::Client,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        let relay = async {
            let mut reported = false;
            loop {
                match relay_events(&hub, &client).await {
                    Ok(()) => return,
                    Err(error) => {
                        if !reported {
                            tracing::warn!(%error, "Redis event subscription lost; retrying every second");
                            reported = true;
                        }
                    }
                }
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                if hub.strong_count() == 0 {
                    return;
                }
            }
        };
        tokio::select! {
            () = relay => {}
            () = stop => {}
        }
    });
}

/// One subscription: returns `Ok` when the hub is gone, `Err` when the connection ends.
async fn relay_events(hub: &Weak<EventHub>, client: &redis::Client) -> Result<(), String> {
    let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
    pubsub.subscribe(CHANNEL).await.map_err(|e| e.to_string())?;
    tracing::info!("subscribed to invoice events on Redis");
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let Some(hub) = hub.upgrade() else { return Ok(()) };
        let Ok(envelope) = serde_json::from_slice::<Envelope>(message.get_payload_bytes()) else {
            continue;
        };
        if envelope.origin != hub.instance {
            hub.deliver(envelope.user, || envelope.event);
        }
    }
    Err("the Redis connection closed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stalled_stream_is_dropped_as_lagged_while_a_reader_keeps_up() {
        let hub = Arc::new(EventHub::new(10, 10, None));
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
        let hub = Arc::new(EventHub::new(1, 1, None));
        let first = hub.subscribe(Uuid::now_v7());
        assert!(first.is_some());
        assert!(hub.subscribe(Uuid::now_v7()).is_none());
        drop(first);
        assert!(
            hub.subscribe(Uuid::now_v7()).is_some(),
            "the permit returns with the stream"
        );
    }

    #[test]
    fn a_closed_stream_is_forgotten_at_once() {
        let hub = Arc::new(EventHub::new(10, 10, None));
        let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
        let streams: Vec<_> = (0..3).map(|_| hub.subscribe(user).unwrap()).collect();
        let kept = hub.subscribe(other).unwrap();
        drop(streams);
        assert!(!hub.subscribers().contains_key(&user), "no event needed to forget them");
        drop(kept);
        assert!(hub.subscribers().is_empty());
    }

    #[test]
    fn one_user_cannot_take_every_stream() {
        let hub = Arc::new(EventHub::new(10, 2, None));
        let user = Uuid::now_v7();
        let first = hub.subscribe(user).unwrap();
        let _second = hub.subscribe(user).unwrap();
        assert!(hub.subscribe(user).is_none(), "MAX_SSE_STREAMS_PER_USER");
        assert!(hub.subscribe(Uuid::now_v7()).is_some(), "another user still gets one");
        drop(first);
        assert!(hub.subscribe(user).is_some(), "the slot returns with the stream");
    }
}
