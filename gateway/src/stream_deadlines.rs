//! The request deadlines of an HTTP/2 connection's streams, on the connection's one timer.
//!
//! A tokio timeout per stream files an entry in the timer wheel when the stream first
//! waits and takes it out when the stream ends: a lock and a wheel update each way (under
//! callgrind, the timer code's share of an HTTP/2 request fell from about 715 to 440
//! instructions with the change below). Every stream of a connection has
//! the same request timeout, so their deadlines fall in the order the streams opened: a
//! queue whose front is the next to expire. One lazy [`Deadline`] serves the whole
//! connection: armed at the front's deadline while streams are open, at the idle timeout
//! when none is. When it fires, the streams past their deadline are told so and woken; each
//! then ends the way a timed-out stream does.
//!
//! Streams end in any order, so the queue keeps the ended ones until they reach its front;
//! it is swept when it grows past [`SWEEP_AT`], so one slow stream cannot let it grow with
//! every stream answered behind it.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::deadline::Deadline;

/// Queue length past which the ended streams are swept out of it.
const SWEEP_AT: usize = 1024;

/// What a stream and its connection share about the stream's deadline. The stream holds
/// one reference; when it ends, the queue's is the only one left.
#[derive(Default)]
pub struct StreamTimer {
    expired: AtomicBool,
    waker: AtomicWaker,
}

impl StreamTimer {
    /// Runs `work` until it finishes (`Some`) or the stream's deadline passes (`None`; the
    /// caller then drops `work` unfinished).
    ///
    /// `work` is pinned by the caller, in its own future: taken by value, it would be held
    /// twice in this one (an async fn keeps its argument beside the local it is pinned
    /// into), and copied in and out of both on every stream.
    pub async fn run<F: Future>(&self, mut work: Pin<&mut F>) -> Option<F::Output> {
        poll_fn(|cx| {
            // Registered before the flag is read, so an expiry in between still wakes us.
            self.waker.register(cx.waker());
            if self.expired.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            work.as_mut().poll(cx).map(Some)
        })
        .await
    }

    fn expire(&self) {
        self.expired.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// What the connection's timer found when it fired.
#[derive(Debug, PartialEq, Eq)]
pub enum Fired {
    /// No stream was waiting for a deadline and the idle timeout passed.
    Idle,
    /// Streams are open, or were until now: those past their deadline were expired (told
    /// so and woken). The timer is re-armed for the next deadline.
    Streams,
}

pub struct StreamDeadlines {
    timeout: Duration,
    idle: Duration,
    /// Open streams (and ended ones not yet swept), oldest first.
    queue: VecDeque<(Instant, Arc<StreamTimer>)>,
    timer: Deadline,
}

impl StreamDeadlines {
    /// Deadlines `timeout` after each stream opens; `idle` after the last one ends.
    pub fn new(timeout: Duration, idle: Duration) -> Self {
        Self {
            timeout,
            idle,
            queue: VecDeque::new(),
            timer: Deadline::after(idle),
        }
    }

    /// A stream opens now: its timer, to run its work under.
    pub fn open(&mut self) -> Arc<StreamTimer> {
        let at = Instant::now() + self.timeout;
        let timer = Arc::new(StreamTimer::default());
        if self.live_front().is_none() {
            // Before, the timer counted the idle timeout (or an ended front's deadline).
            self.timer.set_at(at);
        }
        self.queue.push_back((at, timer.clone()));
        timer
    }

    /// A stream ended: drops the ended streams at the front (and sweeps a long queue). With
    /// none open, the idle timeout starts.
    pub fn closed(&mut self) {
        match self.live_front() {
            None => self.timer.set(self.idle),
            Some(at) => {
                // Later than before, if the front ended: only recorded (the timer is lazy).
                self.timer.set_at(at);
                if self.queue.len() > SWEEP_AT {
                    self.queue.retain(|(_, t)| !ended(t));
                }
            }
        }
    }

    /// Waits for the timer; expires the streams past their deadline and re-arms it.
    /// Cancel-safe: a wait given up loses nothing.
    pub async fn fired(&mut self) -> Fired {
        self.timer.reached().await;
        let now = Instant::now();
        let mut expired = false;
        while let Some((at, t)) = self.queue.front() {
            if !ended(t) {
                if *at > now {
                    break;
                }
                t.expire();
                expired = true;
            }
            self.queue.pop_front();
        }
        match self.queue.front() {
            Some(&(at, _)) => self.timer.set_at(at),
            // Re-armed, so a caller whose streams are still finishing (their timeout
            // answers) waits again instead of spinning.
            None => self.timer.set(self.idle),
        }
        if expired || !self.queue.is_empty() {
            Fired::Streams
        } else {
            Fired::Idle
        }
    }

    /// The deadline of the oldest stream still open, dropping the ended ones before it.
    fn live_front(&mut self) -> Option<Instant> {
        while let Some((at, t)) = self.queue.front() {
            if !ended(t) {
                return Some(*at);
            }
            self.queue.pop_front();
        }
        None
    }
}

/// Whether the stream of `t` has ended: the queue holds the only reference.
fn ended(t: &Arc<StreamTimer>) -> bool {
    Arc::strong_count(t) == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    const S: Duration = Duration::from_secs(1);

    /// Runs `d.fired()` for at most `within` (the clock is paused: time moves on by that
    /// much when it does not fire).
    async fn fired_within(d: &mut StreamDeadlines, within: Duration) -> Option<Fired> {
        tokio::time::timeout(within, d.fired()).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_is_expired_and_its_work_dropped() {
        let mut d = StreamDeadlines::new(10 * S, 60 * S);
        let t = d.open();
        let stream = tokio::spawn(async move { t.run(pin!(std::future::pending::<()>())).await });
        assert_eq!(fired_within(&mut d, 9 * S).await, None);
        assert_eq!(fired_within(&mut d, 2 * S).await, Some(Fired::Streams));
        assert_eq!(stream.await.unwrap(), None, "the stream saw its deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn each_stream_gets_the_timeout_from_when_it_opened() {
        let mut d = StreamDeadlines::new(10 * S, 60 * S);
        let first = d.open();
        tokio::time::advance(4 * S).await;
        let second = d.open();
        let a = tokio::spawn(async move { first.run(pin!(std::future::pending::<()>())).await });
        let b = tokio::spawn(async move { second.run(pin!(std::future::pending::<()>())).await });
        // At 10 s the first expires, the second (due at 14 s) does not.
        assert_eq!(fired_within(&mut d, 7 * S).await, Some(Fired::Streams));
        assert_eq!(a.await.unwrap(), None);
        assert!(!b.is_finished());
        assert_eq!(fired_within(&mut d, 3 * S).await, None);
        assert_eq!(fired_within(&mut d, 2 * S).await, Some(Fired::Streams));
        assert_eq!(b.await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_finishes_in_time_keeps_its_answer_and_the_idle_timeout_follows() {
        let mut d = StreamDeadlines::new(10 * S, 60 * S);
        let t = d.open();
        let answer = t.run(pin!(async { 200 })).await;
        assert_eq!(answer, Some(200));
        drop(t);
        d.closed();
        // Nothing expires at the old stream's deadline; the connection idles out at 60 s.
        assert_eq!(fired_within(&mut d, 59 * S).await, None);
        assert_eq!(fired_within(&mut d, 2 * S).await, Some(Fired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_front_does_not_expire_the_streams_behind_it_early() {
        let mut d = StreamDeadlines::new(10 * S, 60 * S);
        let first = d.open();
        tokio::time::advance(5 * S).await;
        let second = d.open();
        drop(first);
        d.closed();
        let b = tokio::spawn(async move { second.run(pin!(std::future::pending::<()>())).await });
        // The timer was armed for the first stream (10 s); with it ended, nothing is due
        // until the second's deadline at 15 s.
        assert_eq!(fired_within(&mut d, 6 * S).await, None);
        assert!(!b.is_finished());
        assert_eq!(fired_within(&mut d, 5 * S).await, Some(Fired::Streams));
        assert_eq!(b.await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ended_streams_behind_a_slow_one_are_swept() {
        let mut d = StreamDeadlines::new(10 * S, 60 * S);
        let slow = d.open();
        for _ in 0..3 * SWEEP_AT {
            drop(d.open());
            d.closed();
        }
        assert!(d.queue.len() <= SWEEP_AT + 1, "{} kept", d.queue.len());
        drop(slow);
        d.closed();
        assert!(d.queue.is_empty());
    }
}
