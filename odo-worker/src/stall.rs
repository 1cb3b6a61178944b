//! A watch on object code that never yields.
//!
//! Handlers are polled on the async threads; a poll that does not return (an
//! endless loop, a blocking call) stalls its thread, and only a watch from
//! outside the poll can see it. Every poll of object code records when it
//! started in a slot of its thread; [`longest_stall`] reads the oldest start
//! among the polls running now. A worker reports it with each heartbeat, and
//! the registry kills a worker stalled past its limit even when its other
//! threads still answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// When the process started watching: poll starts are kept as milliseconds
/// since then, plus one (0 means no poll running).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_mark() -> u64 {
    origin().elapsed().as_millis() as u64 + 1
}

/// Every thread's slot (threads come and go rarely: the runtime's workers).
fn slots() -> &'static Mutex<Vec<Arc<AtomicU64>>> {
    static SLOTS: OnceLock<Mutex<Vec<Arc<AtomicU64>>>> = OnceLock::new();
    SLOTS.get_or_init(Mutex::default)
}

thread_local! {
    static SLOT: Arc<AtomicU64> = {
        let slot = Arc::new(AtomicU64::new(0));
        slots().lock().unwrap_or_else(PoisonError::into_inner).push(slot.clone());
        slot
    };
}

/// How long the longest poll of object code running now has run (zero when
/// none runs).
pub(crate) fn longest_stall() -> Duration {
    let now = now_mark();
    let slots = slots().lock().unwrap_or_else(PoisonError::into_inner);
    let oldest = slots
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .filter(|&start| start != 0)
        .min();
    oldest.map_or(Duration::ZERO, |start| {
        Duration::from_millis(now.saturating_sub(start))
    })
}

/// Clears the slot when the poll returns or unwinds.
struct Polling<'a>(&'a AtomicU64);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Polls `fut` once, with the poll recorded in this thread's slot.
pub(crate) fn poll_watched<F: Future>(fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    SLOT.with(|slot| {
        slot.store(now_mark(), Ordering::Relaxed);
        let _polling = Polling(slot);
        fut.poll(cx)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future whose one poll blocks its thread until told to return.
    struct Blocking(std::sync::mpsc::Receiver<()>);

    impl Future for Blocking {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            let _ = self.0.recv();
            Poll::Ready(())
        }
    }

    #[test]
    fn a_poll_that_does_not_return_shows_as_a_stall_until_it_does() {
        let (release, wait) = std::sync::mpsc::channel();
        let (started, running) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut fut = std::pin::pin!(Blocking(wait));
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            // Marks the thread's slot before the blocking poll starts.
            SLOT.with(|_| ());
            let _ = started.send(());
            poll_watched(fut.as_mut(), &mut cx)
        });
        running.recv().unwrap();
        // The stall grows while the poll runs (bounded wait as a guard).
        let give_up = Instant::now() + Duration::from_secs(20);
        while longest_stall() < Duration::from_millis(50) {
            assert!(Instant::now() < give_up, "no stall seen");
            std::thread::sleep(Duration::from_millis(5));
        }
        release.send(()).unwrap();
        assert!(thread.join().unwrap().is_ready());
        // Once the poll returned, its slot is clear (other threads of this
        // test binary poll no object code).
        assert!(longest_stall() < Duration::from_millis(50));
    }
}
