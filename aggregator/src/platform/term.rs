//! Leader terms: the fence every write of the aggregator goes through.
//!
//! A [`Term`] is one uninterrupted stretch of leadership. It is valid until the end of the
//! lease margin after its last successful renewal (`renew start + lease duration − retry
//! interval`, the moment the elector itself gives up), and it is cancelled the moment
//! leadership is lost (another holder seen, a renewal not made in time, shutdown). A write
//! through [`Term::fence`]:
//!
//! * is never sent once the term is over;
//! * is abandoned the moment the term ends while it is in flight;
//! * is given at most the term's remaining validity (and never more than the request
//!   timeout), so it cannot be answered after the term ended.
//!
//! A standby takes the Lease only after it saw no renewal for a whole lease duration on its
//! own clock (client-go's rule), which is at least one retry interval after the old term's
//! validity ended: a deposed leader's write can never land after the new leader's first one.
//! Controllers hold no other way to write: every writer takes a `&Term`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One term of leadership (cheap to clone).
#[derive(Debug, Clone)]
pub struct Term {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: u64,
    started: Instant,
    lost: CancellationToken,
    /// Set on a graceful hand-over: no new write starts, those in flight finish.
    closing: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    valid_until: Mutex<Instant>,
    request_timeout: Duration,
    previous_agent_nodes: Option<u32>,
}

/// Counts a fenced write in flight for as long as it lives.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Why a fenced write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Fenced<E> {
    /// The term ended before or while the write was made; it may not land.
    #[error("leadership ended; the write was not made")]
    Lost,
    /// No answer within the time left (the request timeout, or the term's validity).
    #[error("no answer within {0:?}; the write was abandoned")]
    TimedOut(Duration),
    /// The API server refused it.
    #[error(transparent)]
    Failed(E),
}

impl Term {
    /// A new term valid until `valid_until`; writes wait at most `request_timeout`.
    /// `previous_agent_nodes`: how many nodes reported to the previous leader, when it said.
    pub fn new(
        id: u64,
        valid_until: Instant,
        request_timeout: Duration,
        previous_agent_nodes: Option<u32>,
    ) -> Term {
        Term {
            inner: Arc::new(Inner {
                id,
                started: Instant::now(),
                lost: CancellationToken::new(),
                closing: Default::default(),
                in_flight: Default::default(),
                idle: Default::default(),
                valid_until: Mutex::new(valid_until),
                request_timeout,
                previous_agent_nodes,
            }),
        }
    }

    /// A term that lasts until `shutdown` (leader election disabled: one replica).
    pub fn unelected(request_timeout: Duration, shutdown: &CancellationToken) -> Term {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
        let term = Term::new(1, far, request_timeout, None);
        let t = term.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            t.end();
        });
        term
    }

    /// This term's number (increases with every term of this replica).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// When it began.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// How many nodes reported to the previous leader (from the Lease), when known.
    pub fn previous_agent_nodes(&self) -> Option<u32> {
        self.inner.previous_agent_nodes
    }

    /// Extends its validity (a renewal succeeded). A term that has ended or lapsed stays over:
    /// leadership regained after a lapse is a new term. Returns whether it was extended.
    pub fn extend(&self, valid_until: Instant) -> bool {
        if !self.is_valid() {
            return false;
        }
        let mut v = self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *v = (*v).max(valid_until);
        true
    }

    /// A graceful end: no new write starts, and this waits (at most `max`) for the writes in
    /// flight to be answered, so none of them can land after the next leader's first write;
    /// then the term ends. Used before the Lease is released on shutdown.
    pub async fn hand_over(&self, max: Duration) {
        use std::sync::atomic::Ordering;
        self.inner.closing.store(true, Ordering::SeqCst);
        let drained = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(max.min(self.remaining()), drained).await;
        self.end();
    }

    /// Ends it: every write in flight is abandoned and none is made any more.
    pub fn end(&self) {
        self.inner.lost.cancel();
    }

    fn valid_until(&self) -> Instant {
        *self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// How long it is still valid (zero once ended).
    pub fn remaining(&self) -> Duration {
        if self.inner.lost.is_cancelled() {
            return Duration::ZERO;
        }
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// True while it may write.
    pub fn is_valid(&self) -> bool {
        !self.remaining().is_zero()
    }

    /// Resolves when it ends.
    pub async fn lost(&self) {
        self.inner.lost.cancelled().await
    }

    /// Runs `write` fenced by this term (see the module docs).
    pub async fn fence<T, E>(
        &self,
        write: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Fenced<E>> {
        let budget = self.remaining().min(self.inner.request_timeout);
        if budget.is_zero() || self.inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Fenced::Lost);
        }
        let _in_flight = InFlight::new(&self.inner);
        tokio::select! {
            biased;
            _ = self.inner.lost.cancelled() => Err(Fenced::Lost),
            r = tokio::time::timeout(budget, write) => match r {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Fenced::Failed(e)),
                Err(_) if !self.is_valid() => Err(Fenced::Lost),
                Err(_) => Err(Fenced::TimedOut(budget)),
            },
        }
    }
}

/// Whether this replica leads, and its current term (cheap to clone).
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<Option<Term>>,
}

impl Leadership {
    /// The sender the elector publishes terms on, and the view of it.
    pub fn channel() -> (watch::Sender<Option<Term>>, Leadership) {
        let (tx, rx) = watch::channel(None);
        (tx, Leadership { rx })
    }

    /// The current term, if this replica leads and the term is still valid.
    pub fn term(&self) -> Option<Term> {
        self.rx.borrow().clone().filter(Term::is_valid)
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// Resolves when leadership changes (a term begins or ends); `Err` when the elector is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rx.changed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(valid_for: Duration) -> Term {
        Term::new(
            1,
            Instant::now() + valid_for,
            Duration::from_secs(10),
            Some(3),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_term_writes() {
        let t = term(Duration::from_secs(5));
        assert!(t.is_valid());
        let r: Result<u8, Fenced<()>> = t.fence(async { Ok(7) }).await;
        assert_eq!(r.unwrap(), 7);
        let r: Result<u8, Fenced<&str>> = t.fence(async { Err("403") }).await;
        assert!(matches!(r, Err(Fenced::Failed("403"))));
        assert_eq!(t.previous_agent_nodes(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_term_never_starts_a_write() {
        let t = term(Duration::from_secs(5));
        t.end();
        let mut ran = false;
        let r: Result<(), Fenced<()>> = t
            .fence(async {
                ran = true;
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(Fenced::Lost)));
        assert!(!ran, "the write future was never polled");
        assert!(!t.is_valid() && t.remaining().is_zero());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_term_never_starts_a_write() {
        let t = term(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!t.is_valid());
        let r: Result<(), Fenced<()>> = t.fence(async { Ok(()) }).await;
        assert!(matches!(r, Err(Fenced::Lost)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_in_flight_is_abandoned_when_the_term_ends() {
        let t = term(Duration::from_secs(60));
        let t2 = t.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            t2.end();
        });
        let r: Result<(), Fenced<()>> = t
            .fence(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(Fenced::Lost)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_gets_at_most_the_validity_left() {
        let t = term(Duration::from_secs(2));
        let start = tokio::time::Instant::now();
        let r: Result<(), Fenced<()>> = t
            .fence(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert!(
            matches!(r, Err(Fenced::Lost)),
            "answered after the term: not landed"
        );
        assert!(start.elapsed() <= Duration::from_secs(2));
        // A slow API server within a long term: the request timeout.
        let t = term(Duration::from_secs(60));
        let r: Result<(), Fenced<()>> = t
            .fence(async {
                tokio::time::sleep(Duration::from_secs(15)).await;
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(Fenced::TimedOut(d)) if d == Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_extend_and_never_shorten_or_revive() {
        let t = term(Duration::from_secs(2));
        assert!(t.extend(Instant::now() + Duration::from_secs(10)));
        t.extend(Instant::now() + Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(t.is_valid());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!t.is_valid());
        assert!(
            !t.extend(Instant::now() + Duration::from_secs(10)),
            "a lapsed term stays over: a renewal answered late starts a new term"
        );
        assert!(!t.is_valid());
        let ended = term(Duration::from_secs(10));
        ended.end();
        assert!(!ended.extend(Instant::now() + Duration::from_secs(20)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hand_over_lets_writes_in_flight_finish_and_starts_none() {
        let t = term(Duration::from_secs(60));
        let t2 = t.clone();
        let in_flight = tokio::spawn(async move {
            t2.fence(async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<_, ()>(1)
            })
            .await
        });
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        let h = t.clone();
        let hand_over = tokio::spawn(async move { h.hand_over(Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        let r: Result<(), Fenced<()>> = t.fence(async { Ok(()) }).await;
        assert!(
            matches!(r, Err(Fenced::Lost)),
            "no new write once handing over"
        );
        assert_eq!(
            in_flight.await.unwrap().unwrap(),
            1,
            "the write in flight finished"
        );
        hand_over.await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1) && !t.is_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_shows_only_valid_terms() {
        let (tx, mut l) = Leadership::channel();
        assert!(!l.is_leader());
        let t = term(Duration::from_secs(2));
        tx.send_replace(Some(t.clone()));
        l.changed().await.unwrap();
        assert_eq!(l.term().map(|t| t.id()), Some(1));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !l.is_leader(),
            "an expired term is no leadership, even before the elector notices"
        );
    }
}
