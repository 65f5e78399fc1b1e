//! Per-connection limits: requests per minute, tokens per minute and concurrent calls.
//!
//! Every HTTP attempt passes through [`Limits::admit`] before it is sent: first it takes a
//! slot of the concurrency semaphore (held until the attempt's response has been read),
//! then it waits until the rate window has room for one more request and for the attempt's
//! token reservation, and records both at the same instant, just before the request leaves.
//! Waiting is asynchronous and first come, first served (a fair `tokio` mutex orders the
//! waiters); nothing fails for lack of capacity except a request that could never fit.
//!
//! # The rate window, and why it is not `governor`
//! The limits are enforced as a sliding log over the last 60 seconds: a request is admitted
//! only if, counting it, no more than `requests_per_minute` requests and no more than
//! `tokens_per_minute` tokens were admitted in the 60 seconds up to now. That is exactly the
//! guarantee "no 60 s window exceeds the limit", with the whole minute's capacity usable at
//! once. A GCRA limiter such as `governor` cannot give it: with burst `B` and rate `R` per
//! minute it admits up to `B + R − 1` cells in some 60 s window (twice the limit when the
//! burst is the limit), and it cannot give tokens back. Tokens need both: an attempt
//! reserves an estimate (estimated input + `max_tokens`, see `lib.rs`) and is settled to
//! the real usage once the reply is in ([`Admission::settle_tokens`]): a smaller real usage
//! frees the difference at once, a larger one is charged on top (delaying later calls).
//! When the real usage never exceeds the reservation, no 60 s window ever holds more than
//! the configured tokens; when a provider reports more than was reserved, the excess is
//! already spent and is charged after the fact.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The length of the rate window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// The configured limits of one connection (`None` = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct LimitSpec {
    /// Requests per minute (every attempt counts).
    pub(crate) requests_per_minute: Option<u32>,
    /// Tokens per minute (input + output).
    pub(crate) tokens_per_minute: Option<u32>,
    /// Requests in flight at once.
    pub(crate) max_concurrent: Option<u32>,
}

impl LimitSpec {
    /// Whether any limit is set.
    pub(crate) fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
            && self.max_concurrent.is_none()
    }
}

/// Why an attempt cannot be admitted at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdmitError {
    /// The attempt's token reservation alone is over the tokens-per-minute limit.
    TooManyTokens {
        /// The reservation.
        reserved: u64,
        /// The limit.
        limit: u64,
    },
    /// The concurrency semaphore was closed (never happens while the limits live).
    Closed,
}

/// The limit state of one connection, shared by all calls over it.
#[derive(Debug)]
pub(crate) struct Limits {
    spec: LimitSpec,
    concurrency: Option<Arc<Semaphore>>,
    window: Option<RateWindow>,
}

#[derive(Debug)]
struct RateWindow {
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    state: Mutex<WindowState>,
    /// Held by the waiter at the head of the queue (fair: FIFO).
    turn: tokio::sync::Mutex<()>,
    /// Signalled when tokens are given back.
    freed: Notify,
}

#[derive(Debug, Default)]
struct WindowState {
    /// Admission instants of the requests in the window, oldest first.
    requests: VecDeque<Instant>,
    /// Token charges in the window, oldest first (ids ascending).
    tokens: VecDeque<TokenCharge>,
    /// Sum of `tokens[..].amount`.
    token_sum: u64,
    next_id: u64,
}

#[derive(Debug)]
struct TokenCharge {
    at: Instant,
    amount: u64,
    id: u64,
}

impl WindowState {
    fn prune(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|at| *at + WINDOW <= now) {
            self.requests.pop_front();
        }
        while let Some(front) = self.tokens.front() {
            if front.at + WINDOW > now {
                break;
            }
            self.token_sum = self.token_sum.saturating_sub(front.amount);
            self.tokens.pop_front();
        }
    }

    /// Records a request of `tokens` at `now` if it fits, else says from when it may.
    fn try_admit(
        &mut self,
        now: Instant,
        rpm: Option<u64>,
        tpm: Option<u64>,
        tokens: u64,
    ) -> Result<Option<u64>, Instant> {
        let mut not_before: Option<Instant> = None;
        if let Some(rpm) = rpm {
            let len = self.requests.len() as u64;
            if len >= rpm {
                // The (len - rpm)-th oldest must leave the window first.
                let index = usize::try_from(len - rpm).unwrap_or(usize::MAX);
                let at = self.requests.get(index).copied().unwrap_or(now);
                not_before = Some(at + WINDOW);
            }
        }
        if let Some(tpm) = tpm
            && self.token_sum.saturating_add(tokens) > tpm
        {
            let mut remaining = self.token_sum;
            let mut until = now;
            for charge in &self.tokens {
                remaining = remaining.saturating_sub(charge.amount);
                until = charge.at + WINDOW;
                if remaining.saturating_add(tokens) <= tpm {
                    break;
                }
            }
            not_before = Some(not_before.map_or(until, |t| t.max(until)));
        }
        if let Some(at) = not_before {
            return Err(at.max(now + Duration::from_millis(1)));
        }
        if rpm.is_some() {
            self.requests.push_back(now);
        }
        if tpm.is_some() {
            let id = self.next_id;
            self.next_id += 1;
            self.tokens.push_back(TokenCharge {
                at: now,
                amount: tokens,
                id,
            });
            self.token_sum = self.token_sum.saturating_add(tokens);
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Changes the amount of charge `id` (if still in the window); whether it shrank.
    fn settle(&mut self, id: u64, actual: u64) -> bool {
        let Ok(index) = self.tokens.binary_search_by_key(&id, |c| c.id) else {
            return false;
        };
        let Some(charge) = self.tokens.get_mut(index) else {
            return false;
        };
        let before = charge.amount;
        charge.amount = actual;
        self.token_sum = self.token_sum.saturating_sub(before).saturating_add(actual);
        actual < before
    }
}

impl Limits {
    /// The limit state for `spec`.
    pub(crate) fn new(spec: LimitSpec) -> Limits {
        let concurrency = spec
            .max_concurrent
            .map(|n| Arc::new(Semaphore::new(n.max(1) as usize)));
        let window =
            (spec.requests_per_minute.is_some() || spec.tokens_per_minute.is_some()).then(|| {
                RateWindow {
                    requests_per_minute: spec.requests_per_minute.map(u64::from),
                    tokens_per_minute: spec.tokens_per_minute.map(u64::from),
                    state: Mutex::new(WindowState::default()),
                    turn: tokio::sync::Mutex::new(()),
                    freed: Notify::new(),
                }
            });
        Limits {
            spec,
            concurrency,
            window,
        }
    }

    /// Waits until an attempt reserving `tokens` may be sent, and records it.
    pub(crate) async fn admit(self: &Arc<Self>, tokens: u64) -> Result<Admission, AdmitError> {
        if let Some(limit) = self.spec.tokens_per_minute.map(u64::from)
            && tokens > limit
        {
            return Err(AdmitError::TooManyTokens {
                reserved: tokens,
                limit,
            });
        }
        let permit = match &self.concurrency {
            Some(semaphore) => Some(
                Arc::clone(semaphore)
                    .acquire_owned()
                    .await
                    .map_err(|_| AdmitError::Closed)?,
            ),
            None => None,
        };
        let mut charge = None;
        if let Some(window) = &self.window {
            let _turn = window.turn.lock().await;
            loop {
                let freed = window.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                let now = Instant::now();
                let outcome = {
                    let mut state = window.state.lock();
                    state.prune(now);
                    state.try_admit(
                        now,
                        window.requests_per_minute,
                        window.tokens_per_minute,
                        tokens,
                    )
                };
                match outcome {
                    Ok(id) => {
                        charge = id;
                        break;
                    }
                    Err(not_before) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(not_before) => {}
                            _ = &mut freed => {}
                        }
                    }
                }
            }
        }
        Ok(Admission {
            limits: Arc::clone(self),
            _permit: permit,
            charge,
        })
    }
}

/// One admitted attempt: holds its concurrency slot until dropped, and its token charge
/// until settled.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Arc<Limits>,
    _permit: Option<OwnedSemaphorePermit>,
    charge: Option<u64>,
}

impl Admission {
    /// Replaces the attempt's token reservation by what it really used.
    pub(crate) fn settle_tokens(&mut self, actual: u64) {
        let (Some(id), Some(window)) = (self.charge.take(), &self.limits.window) else {
            return;
        };
        let shrank = window.state.lock().settle(id, actual);
        if shrank {
            window.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rpm: Option<u32>, tpm: Option<u32>, conc: Option<u32>) -> LimitSpec {
        LimitSpec {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            max_concurrent: conc,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_spread_over_windows() {
        let limits = Arc::new(Limits::new(spec(Some(2), None, None)));
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            let admission = limits.admit(0).await.unwrap();
            drop(admission);
            at.push(Instant::now() - start);
        }
        assert_eq!(
            at,
            vec![Duration::ZERO, Duration::ZERO, WINDOW, WINDOW, WINDOW * 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_refunded_and_overdraft_is_charged() {
        let limits = Arc::new(Limits::new(spec(None, Some(1000), None)));
        let start = Instant::now();
        let mut a = limits.admit(800).await.unwrap();
        a.settle_tokens(100);
        // 900 left: admitted at once.
        let mut b = limits.admit(900).await.unwrap();
        assert_eq!(Instant::now(), start);
        b.settle_tokens(1000); // overdraft: window now holds 1100
        let _c = limits.admit(1).await.unwrap();
        assert_eq!(Instant::now() - start, WINDOW);
        assert_eq!(
            limits.admit(1001).await.unwrap_err(),
            AdmitError::TooManyTokens {
                reserved: 1001,
                limit: 1000
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refund_wakes_a_waiter_early() {
        let limits = Arc::new(Limits::new(spec(None, Some(100), None)));
        let start = Instant::now();
        let mut first = limits.admit(100).await.unwrap();
        let waiter = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move {
                let _a = limits.admit(50).await.unwrap();
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        first.settle_tokens(10);
        let admitted = waiter.await.unwrap();
        assert_eq!(admitted - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_slots_are_held_until_drop() {
        let limits = Arc::new(Limits::new(spec(None, None, Some(1))));
        let first = limits.admit(0).await.unwrap();
        let second = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.admit(0).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap().unwrap();
    }
}
