//! Status plumbing every controller's decisions share, as pure data and functions:
//!
//! * [`Time`] and [`Condition`], shaped exactly like Kubernetes' `metav1.Time` and
//!   `metav1.Condition` (so a CRD status built from them reads like any other);
//! * [`set_condition`]: a condition whose status did not change keeps its
//!   `lastTransitionTime`;
//! * [`write_due`]: a status is written when it changed (timestamps aside) or when its
//!   heartbeat interval passed, never otherwise;
//! * [`Event`]: an Event a decision asks for, and [`EventGate`], which says each once per
//!   window and at most a burst per object;
//! * [`Backoff`]: after a failed write, the object waits 1 s, 2 s, 4 s … up to 5 min before
//!   the next attempt, so a 403 or an invalid status is not re-sent every second forever.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A point in time, serialised as RFC 3339 with second precision (`2026-12-01T15:29:57Z`), as
/// `metav1.Time` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub jiff::Timestamp);

impl Time {
    /// The current time.
    pub fn now() -> Time {
        Time(jiff::Timestamp::now())
    }

    /// Whole seconds from `self` to `later` (0 when `later` is earlier).
    pub fn secs_until(self, later: Time) -> u64 {
        later.0.duration_since(self.0).as_secs().max(0) as u64
    }

    /// The time from `self` to `later`, to the nanosecond (zero when `later` is earlier).
    pub fn duration_until(self, later: Time) -> Duration {
        Duration::try_from(later.0.duration_since(self.0)).unwrap_or(Duration::ZERO)
    }

    /// `self` plus `secs` seconds (saturating).
    pub fn plus_secs(self, secs: i64) -> Time {
        Time(
            self.0
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .unwrap_or(jiff::Timestamp::MAX),
        )
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<jiff::Timestamp>()
            .map(Time)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Time {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Time".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }

    fn inline_schema() -> bool {
        true
    }
}

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// It cannot be judged now (e.g. the inputs are not being watched).
    Unknown,
}

impl ConditionStatus {
    /// The value written to `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// `True` or `False`.
    pub fn from_bool(ok: bool) -> Self {
        if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The `metadata.generation` this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// A CamelCase reason.
    pub reason: String,
    /// What happened, in words.
    pub message: String,
}

/// The condition `type_` should be at `now`, keeping the `lastTransitionTime` of the one in
/// `old` when its status is unchanged.
pub fn set_condition(
    old: &[Condition],
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let status = status.as_str();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(now, |c| c.last_transition_time);
    Condition {
        type_: type_.into(),
        status: status.into(),
        observed_generation: generation,
        last_transition_time,
        reason: reason.into(),
        message,
    }
}

/// The condition `type_` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A Kubernetes Event a decision asks for (the platform's recorder publishes it, deduplicated
/// and rate-limited per object). Reasons are static strings: a bounded set per controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Warning (something got worse or is wrong) or Normal.
    pub warning: bool,
    /// CamelCase reason, e.g. `LevelChanged`.
    pub reason: &'static str,
    /// What happened, in words (at most 1 KiB when published).
    pub note: String,
}

/// What the Event recorder does with an Event: Kubernetes Events are for people, so the same
/// Event about the same object is said once per [`EventGate::DEDUP_WINDOW`], and each object
/// gets at most [`EventGate::BURST`] Events at once, then one per [`EventGate::REFILL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Publish it.
    Publish,
    /// Said already, recently.
    Duplicate,
    /// Too many for this object right now.
    RateLimited,
}

/// The dedup-and-rate-limit decision of the Event recorder (pure; the recorder owns one).
#[derive(Debug, Default)]
pub struct EventGate {
    recent: std::collections::HashMap<(String, &'static str, String), std::time::Instant>,
    buckets: std::collections::HashMap<String, (f64, std::time::Instant)>,
}

impl EventGate {
    /// How long an identical Event is suppressed.
    pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);
    /// Events per object at once.
    pub const BURST: f64 = 10.0;
    /// One more Event per object this often.
    pub const REFILL: Duration = Duration::from_secs(30);

    /// Decides about `event` on `object` (any stable key, e.g. its UID) at `now`.
    pub fn admit(&mut self, object: &str, event: &Event, now: std::time::Instant) -> Admit {
        self.recent
            .retain(|_, at| now.saturating_duration_since(*at) < Self::DEDUP_WINDOW);
        let key = (object.to_owned(), event.reason, event.note.clone());
        if self.recent.contains_key(&key) {
            return Admit::Duplicate;
        }
        let refill = |tokens: f64, at: std::time::Instant| {
            let gained =
                now.saturating_duration_since(at).as_secs_f64() / Self::REFILL.as_secs_f64();
            (tokens + gained).min(Self::BURST)
        };
        self.buckets
            .retain(|_, (tokens, at)| refill(*tokens, *at) < Self::BURST);
        let (tokens, at) = self
            .buckets
            .get(object)
            .copied()
            .unwrap_or((Self::BURST, now));
        let tokens = refill(tokens, at);
        if tokens < 1.0 {
            self.buckets.insert(object.to_owned(), (tokens, now));
            return Admit::RateLimited;
        }
        self.buckets.insert(object.to_owned(), (tokens - 1.0, now));
        self.recent.insert(key, now);
        Admit::Publish
    }

    /// Takes back an admission whose Event could not be published (the term ended, the API
    /// refused): it was not said, so it neither suppresses a later one nor costs a token.
    pub fn undo(&mut self, object: &str, event: &Event) {
        self.recent
            .remove(&(object.to_owned(), event.reason, event.note.clone()));
        if let Some((tokens, _)) = self.buckets.get_mut(object) {
            *tokens = (*tokens + 1.0).min(Self::BURST);
        }
    }
}

/// Whether a status write is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDue {
    /// Nothing changed and the heartbeat is not due: no API call.
    No,
    /// The status changed (timestamps aside).
    Changed,
    /// Nothing changed, but `interval` passed since the last write.
    Heartbeat,
}

impl WriteDue {
    /// The reason label of a write (`changed`, `heartbeat`), None when none is due.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            WriteDue::No => None,
            WriteDue::Changed => Some("changed"),
            WriteDue::Heartbeat => Some("heartbeat"),
        }
    }
}

/// Whether to write: `changed` compares without timestamps; `last_updated` is the time of the
/// last write (none: never written, so due).
pub fn write_due(
    changed: bool,
    last_updated: Option<Time>,
    interval: Duration,
    now: Time,
) -> WriteDue {
    if changed {
        return WriteDue::Changed;
    }
    match last_updated {
        None => WriteDue::Heartbeat,
        Some(t) if t.secs_until(now) >= interval.as_secs() => WriteDue::Heartbeat,
        Some(_) => WriteDue::No,
    }
}

/// Exponential backoff after failures: [`Backoff::MIN`] after the first, doubling, at most
/// [`Backoff::MAX`]; a success resets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay after the first failure.
    pub const MIN: Duration = Duration::from_secs(1);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(300);

    /// Records a failure; returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay()
    }

    /// The current delay (zero before any failure).
    pub fn delay(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => Self::MIN
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(Self::MAX),
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn time_is_rfc3339_to_the_second_both_ways() {
        let time = t("2026-12-01T15:29:57.123456Z");
        assert_eq!(
            serde_json::to_string(&time).unwrap(),
            "\"2026-12-01T15:29:57Z\""
        );
        let back: Time = serde_json::from_str("\"2026-12-01T15:29:57Z\"").unwrap();
        assert_eq!(back, t("2026-12-01T15:29:57Z"));
        assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
        assert_eq!(
            t("2026-12-01T00:00:00Z").secs_until(t("2026-12-01T00:01:00Z")),
            60
        );
        assert_eq!(
            t("2026-12-01T00:01:00Z").secs_until(t("2026-12-01T00:00:00Z")),
            0
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let (t0, t1) = (t("2026-01-01T00:00:00Z"), t("2026-01-01T01:00:00Z"));
        let c0 = set_condition(
            &[],
            "Ready",
            ConditionStatus::True,
            "Scored",
            "a".into(),
            Some(1),
            t0,
        );
        assert_eq!(c0.last_transition_time, t0);
        let cases = [
            (
                ConditionStatus::True,
                t0,
                "same status: unchanged transition time",
            ),
            (ConditionStatus::False, t1, "a flip moves it"),
            (ConditionStatus::Unknown, t1, "so does Unknown"),
        ];
        for (status, want, why) in cases {
            let c = set_condition(
                std::slice::from_ref(&c0),
                "Ready",
                status,
                "X",
                "b".into(),
                Some(2),
                t1,
            );
            assert_eq!(c.last_transition_time, want, "{why}");
            assert_eq!(c.observed_generation, Some(2));
        }
        let other = set_condition(
            std::slice::from_ref(&c0),
            "Other",
            ConditionStatus::True,
            "X",
            "".into(),
            None,
            t1,
        );
        assert_eq!(other.last_transition_time, t1, "another type is new");
        let json = serde_json::to_value(&c0).unwrap();
        assert_eq!(json["type"], "Ready");
        assert_eq!(json["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(json["observedGeneration"], 1);
    }

    #[test]
    fn a_write_is_due_when_changed_or_at_the_heartbeat() {
        let now = t("2026-01-01T00:01:00Z");
        let i = Duration::from_secs(30);
        let cases = [
            (true, Some("2026-01-01T00:00:59Z"), WriteDue::Changed),
            (false, None, WriteDue::Heartbeat),
            (false, Some("2026-01-01T00:00:59Z"), WriteDue::No),
            (false, Some("2026-01-01T00:00:31Z"), WriteDue::No),
            (false, Some("2026-01-01T00:00:30Z"), WriteDue::Heartbeat),
            (false, Some("2026-01-01T00:05:00Z"), WriteDue::No), // clock stepped back
        ];
        for (changed, last, want) in cases {
            assert_eq!(
                write_due(changed, last.map(t), i, now),
                want,
                "{changed} {last:?}"
            );
        }
        assert_eq!(WriteDue::Changed.reason(), Some("changed"));
        assert_eq!(WriteDue::No.reason(), None);
    }

    #[test]
    fn events_are_deduplicated_and_rate_limited_per_object() {
        let start = std::time::Instant::now();
        let mut gate = EventGate::default();
        let ev = |note: &str| Event {
            warning: true,
            reason: "LevelChanged",
            note: note.into(),
        };
        assert_eq!(gate.admit("a", &ev("x"), start), Admit::Publish);
        assert_eq!(gate.admit("a", &ev("x"), start), Admit::Duplicate);
        assert_eq!(
            gate.admit("b", &ev("x"), start),
            Admit::Publish,
            "per object"
        );
        let later = start + EventGate::DEDUP_WINDOW;
        assert_eq!(
            gate.admit("a", &ev("x"), later),
            Admit::Publish,
            "said again after the window"
        );
        let mut gate = EventGate::default();
        let burst: Vec<Admit> = (0..12)
            .map(|i| gate.admit("a", &ev(&i.to_string()), start))
            .collect();
        assert_eq!(burst.iter().filter(|a| **a == Admit::Publish).count(), 10);
        assert_eq!(burst[10], Admit::RateLimited);
        assert_eq!(
            gate.admit("b", &ev("0"), start),
            Admit::Publish,
            "others are not limited"
        );
        assert_eq!(
            gate.admit("a", &ev("new"), start + EventGate::REFILL),
            Admit::Publish,
            "refilled"
        );
        assert_eq!(
            gate.admit("a", &ev("newer"), start + EventGate::REFILL),
            Admit::RateLimited
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let mut b = Backoff::default();
        assert_eq!(b.delay(), Duration::ZERO);
        let delays: Vec<u64> = (0..12).map(|_| b.fail().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        for _ in 0..100 {
            b.fail();
        }
        assert_eq!(b.delay(), Backoff::MAX, "no overflow");
        assert_eq!(b.failures(), 112);
    }
}
