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
    valid_until: Mutex<Instant>,
    request_timeout: Duration,
    previous_agent_nodes: Option<u32>,
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

    /// Extends its validity (a renewal succeeded).
    pub fn extend(&self, valid_until: Instant) {
        let mut v = self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *v = (*v).max(valid_until);
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
        if budget.is_zero() {
            return Err(Fenced::Lost);
        }
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
    async fn renewals_extend_and_never_shorten() {
        let t = term(Duration::from_secs(2));
        t.extend(Instant::now() + Duration::from_secs(10));
        t.extend(Instant::now() + Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(t.is_valid());
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
