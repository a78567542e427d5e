//! Process lifecycle shared with handlers: whether the server is draining for shutdown.

use tokio::sync::watch;

/// Flipped once, at the first SIGTERM/SIGINT. `/readyz` reads it; long-lived responses
/// (server-sent streams) wait on it to end themselves so the drain is never held up.
#[derive(Debug)]
pub struct Lifecycle {
    draining: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            draining: watch::Sender::new(false),
        }
    }
}

impl Lifecycle {
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Completes when draining starts (at once if it already has).
    pub fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.draining.subscribe();
        async move {
            let _ = receiver.wait_for(|draining| *draining).await;
        }
    }
}
