//! Renders of the exposition for the endpoint: off the async runtime's
//! workers (on tokio's blocking pool), one at a time, and shared by the
//! scrapes that arrive within a short time of each other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::recorder::MetricsHandle;

/// One kind of render, and the last one made.
struct Shared<T> {
    last: Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T: Send + Sync + 'static> Shared<T> {
    fn new() -> Self {
        Shared {
            last: Mutex::new(None),
        }
    }

    /// The last render if it is younger than `fresh`, else a new one made
    /// on the blocking pool. Callers queue on the lock: one render at a
    /// time, and those who waited for it take it.
    async fn get(
        &self,
        fresh: Duration,
        render: impl FnOnce() -> T + Send + 'static,
    ) -> Option<Arc<T>> {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = &*last {
            if at.elapsed() < fresh {
                return Some(value.clone());
            }
        }
        let value = Arc::new(tokio::task::spawn_blocking(render).await.ok()?);
        *last = Some((Instant::now(), value.clone()));
        Some(value)
    }
}

/// The endpoint's renders of one handle.
pub(crate) struct Renders {
    handle: MetricsHandle,
    fresh: Duration,
    text: Shared<String>,
    protobuf: Shared<Vec<u8>>,
}

impl Renders {
    pub(crate) fn new(handle: MetricsHandle, fresh: Duration) -> Self {
        Renders {
            handle,
            fresh,
            text: Shared::new(),
            protobuf: Shared::new(),
        }
    }

    /// The text exposition; `None` only if the render panicked.
    pub(crate) async fn text(&self) -> Option<Arc<String>> {
        let handle = self.handle.clone();
        self.text.get(self.fresh, move || handle.render()).await
    }

    /// The protobuf exposition; `None` only if the render panicked.
    pub(crate) async fn protobuf(&self) -> Option<Arc<Vec<u8>>> {
        let handle = self.handle.clone();
        self.protobuf
            .get(self.fresh, move || handle.render_protobuf())
            .await
    }
}

/// Runs `f` on the blocking pool: work that grows with the exposition
/// (filtering it for a scope, a custom route) stays off the workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn scrapes_within_the_window_share_one_render() {
        let shared = Shared::<usize>::new();
        let renders = Arc::new(AtomicUsize::new(0));
        let render = |renders: &Arc<AtomicUsize>| {
            let renders = renders.clone();
            move || renders.fetch_add(1, Ordering::SeqCst) + 1
        };
        let fresh = Duration::from_secs(1);
        assert_eq!(*shared.get(fresh, render(&renders)).await.unwrap(), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(*shared.get(fresh, render(&renders)).await.unwrap(), 1);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(*shared.get(fresh, render(&renders)).await.unwrap(), 2);
        assert_eq!(renders.load(Ordering::SeqCst), 2);
    }
}
