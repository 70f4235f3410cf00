//! A connection's one deadline, moved as the connection goes from state to state (idle,
//! head, request), at the cost of a clock read rather than a timer update.
//!
//! Moving a tokio timer to an earlier instant takes the timer wheel's lock and re-files the
//! entry; a keep-alive connection moves its deadline twice per request (to the request
//! timeout when a head arrives, back to the idle timeout when it is answered). Here the
//! timer is armed at or before the deadline, never after it: a deadline moved later only
//! records the new instant, and when the timer fires early it is re-armed for the recorded
//! one (the lazy timer nginx and HAProxy use). Only a deadline moved earlier than the armed
//! timer (the header timeout, shorter than the idle one) moves the timer at once.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub struct Deadline {
    timer: Pin<Box<Sleep>>,
    /// When the current state runs out. The timer is armed at or before it.
    at: Instant,
}

impl Deadline {
    /// A deadline `after` from now.
    pub fn after(after: Duration) -> Self {
        let at = Instant::now() + after;
        Self {
            timer: Box::pin(tokio::time::sleep_until(at)),
            at,
        }
    }

    /// Moves the deadline to `after` from now.
    pub fn set(&mut self, after: Duration) {
        self.set_at(Instant::now() + after);
    }

    /// Moves the deadline to `at`.
    pub fn set_at(&mut self, at: Instant) {
        self.at = at;
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
    }

    /// Resolves once the deadline has passed (cancel-safe: nothing is lost if dropped).
    pub async fn reached(&mut self) {
        poll_fn(|cx| self.poll_reached(cx)).await
    }

    fn poll_reached(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            // Fired for an instant the deadline has since moved past: re-arm for where it is
            // now (the next poll of the re-armed timer is pending until then).
            let at = self.at;
            self.timer.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Whether the deadline is reached by `within` from now (the clock is paused, so this
    /// moves time on by exactly that much when it is not).
    async fn reached_within(d: &mut Deadline, within: Duration) -> bool {
        tokio::time::timeout(within, d.reached()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_is_reached_at_its_new_instant_not_the_old_one() {
        let mut d = Deadline::after(10 * S);
        tokio::time::advance(6 * S).await;
        d.set(10 * S); // now due 16 s in; the timer is still armed for 10 s
        assert!(
            !reached_within(&mut d, 9 * S).await,
            "reached at the old instant"
        );
        assert!(
            reached_within(&mut d, 2 * S).await,
            "not reached at the new instant"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_is_reached_at_its_new_instant() {
        let mut d = Deadline::after(60 * S);
        d.set(15 * S);
        assert!(!reached_within(&mut d, 14 * S).await);
        assert!(reached_within(&mut d, 2 * S).await);
    }

    #[tokio::test(start_paused = true)]
    async fn moved_back_and_forth_it_keeps_the_last_instant() {
        let mut d = Deadline::after(60 * S);
        // A keep-alive connection's pattern: request timeout, idle timeout, header timeout.
        for _ in 0..3 {
            tokio::time::advance(S).await;
            d.set(30 * S);
            tokio::time::advance(S).await;
            d.set(60 * S);
        }
        d.set(15 * S);
        assert!(!reached_within(&mut d, 14 * S).await);
        assert!(reached_within(&mut d, 2 * S).await);
        // Reached stays reached until the deadline moves again.
        assert!(reached_within(&mut d, Duration::from_millis(1)).await);
        d.set(5 * S);
        assert!(!reached_within(&mut d, 4 * S).await);
        assert!(reached_within(&mut d, 2 * S).await);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_cancel_safe() {
        let mut d = Deadline::after(10 * S);
        // Waits given up part-way (as a select! whose other branch won) lose nothing.
        for _ in 0..4 {
            assert!(!reached_within(&mut d, 2 * S).await);
        }
        assert!(reached_within(&mut d, 3 * S).await);
    }
}
