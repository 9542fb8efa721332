//! The breaker's state machine: Closed → Open → HalfOpen → Closed | Open, lock-free.
//!
//! Position: owned by [`super::CircuitBreaker`]'s shared state; `admit` runs in `call`, `record`
//! when the request's final outcome is known. Config: `upstreams.<name>.breaker.*`. Metrics:
//! none here; every transition is returned to the caller, which logs and counts it.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Settings;
use super::window::Window;
use crate::resilience::Outcome;

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests pass; outcomes are counted in the sliding window.
    Closed,
    /// Requests are refused with `circuit-open` until the open time has passed.
    Open,
    /// A few probe requests pass; the others are refused.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`: the `to` label of `weir_circuit_transitions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of `weir_circuit_state`: 0 closed, 1 open, 2 half-open.
    pub(crate) fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    fn from_code(code: u64) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// What triggered a transition; [`Trigger::as_str`] is its `reason` label. Each trigger has
/// exactly one target state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Closed → Open: `consecutive_failures` failures in a row.
    Consecutive,
    /// Closed → Open: the failure rate of the window reached `failure_rate`.
    FailureRate,
    /// Closed → Open: the slow-call rate of the window reached `slow_call_rate`.
    SlowRate,
    /// HalfOpen → Open: a probe failed (or was slow).
    ProbeFailed,
    /// HalfOpen → Closed: every probe succeeded.
    ProbeSucceeded,
    /// Open → HalfOpen: the open time has passed.
    OpenElapsed,
}

impl Trigger {
    /// Every trigger, in the order of [`Trigger::index`].
    pub(crate) const ALL: [Trigger; 6] = [
        Self::Consecutive,
        Self::FailureRate,
        Self::SlowRate,
        Self::ProbeFailed,
        Self::ProbeSucceeded,
        Self::OpenElapsed,
    ];

    /// The `reason` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Consecutive => "consecutive",
            Self::FailureRate => "failure_rate",
            Self::SlowRate => "slow_rate",
            Self::ProbeFailed => "probe_failed",
            Self::ProbeSucceeded => "probe_succeeded",
            Self::OpenElapsed => "open_elapsed",
        }
    }

    /// The state this trigger leads to.
    pub(crate) fn to(self) -> BreakerState {
        match self {
            Self::Consecutive | Self::FailureRate | Self::SlowRate | Self::ProbeFailed => {
                BreakerState::Open
            }
            Self::ProbeSucceeded => BreakerState::Closed,
            Self::OpenElapsed => BreakerState::HalfOpen,
        }
    }

    /// Position in [`Trigger::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Consecutive => 0,
            Self::FailureRate => 1,
            Self::SlowRate => 2,
            Self::ProbeFailed => 3,
            Self::ProbeSucceeded => 4,
            Self::OpenElapsed => 5,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Consecutive => 1,
            Self::FailureRate => 2,
            Self::SlowRate => 3,
            Self::ProbeFailed => 4,
            Self::ProbeSucceeded => 5,
            Self::OpenElapsed => 6,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// A state change, made by exactly one caller (the winner of the compare-exchange).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    /// Why; also says to which state.
    pub(crate) trigger: Trigger,
    /// Consecutive trips after the transition (0 once closed).
    pub(crate) trips: u32,
    /// How long the breaker stays open, when it opened.
    pub(crate) open_for: Option<Duration>,
}

/// What `admit` decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Let the request through; hand its outcome back with this ticket.
    Admit(Ticket),
    /// Refuse it: open, or half-open with every probe slot taken.
    Reject {
        /// When to try again: the open time left, or [`PROBE_RETRY_AFTER`] when half-open.
        retry_after: Duration,
    },
}

/// How an admitted request's outcome counts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// Admitted while closed, in the closed period identified by `word`. Its outcome counts
    /// only if the breaker is still in that period.
    Call {
        /// The state word at admission.
        word: u64,
    },
    /// A half-open probe, holding one probe slot of the half-open period `seq`.
    Probe {
        /// The transition sequence number of that half-open period.
        seq: u64,
    },
}

/// What the machine is doing now, for [`super::BreakerStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MachineStatus {
    pub(crate) state: BreakerState,
    pub(crate) in_state_for: Duration,
    pub(crate) open_remaining: Option<Duration>,
    pub(crate) trips: u32,
    pub(crate) last_trigger: Option<Trigger>,
}

/// The state machine of one upstream's breaker.
///
/// All of its state that transitions depend on is one `AtomicU64` (the *word*: state, trips,
/// a transition sequence number and the time of the last transition in milliseconds since
/// `base`), so every transition is one compare-exchange and a request sees a consistent
/// state with one load. The half-open probe slots are a second word tagged with the sequence
/// number of their half-open period, so a late probe of an earlier period counts for nothing.
#[derive(Debug)]
pub(crate) struct Machine {
    base: Instant,
    word: AtomicU64,
    /// `seq` (16 bits) | probes admitted (24) | probes succeeded (24).
    probes: AtomicU64,
    consecutive: AtomicU32,
    last_trigger: AtomicU8,
    window: Window,
    min_calls: u64,
    failure_rate: f64,
    slow_call_duration: Option<Duration>,
    slow_call_rate: f64,
    consecutive_failures: u32,
    open_for: Duration,
    open_for_max: Duration,
    half_open_probes: u64,
}

// === impl Machine ===

impl Machine {
    /// A closed machine; times count from now.
    pub(crate) fn new(s: &Settings) -> Self {
        let closed = Word {
            state: BreakerState::Closed,
            trips: 0,
            seq: 0,
            since_ms: 0,
        };
        Self {
            base: Instant::now(),
            word: AtomicU64::new(closed.encode()),
            probes: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            last_trigger: AtomicU8::new(0),
            window: Window::new(s.window),
            min_calls: u64::from(s.min_calls),
            failure_rate: s.failure_rate,
            slow_call_duration: (!s.slow_call_duration.is_zero()).then_some(s.slow_call_duration),
            slow_call_rate: s.slow_call_rate,
            consecutive_failures: s.consecutive_failures,
            open_for: s.open_for,
            // The cap never shortens the first open time.
            open_for_max: s.open_for_max.max(s.open_for),
            half_open_probes: u64::from(s.half_open_probes).clamp(1, PROBE_COUNT_MAX),
        }
    }

    /// The slow-call threshold, if slow calls are counted (the caller then times requests).
    pub(crate) fn slow_call_duration(&self) -> Option<Duration> {
        self.slow_call_duration
    }

    /// Decides whether a request may pass now. When the open time has passed, the first
    /// request to notice moves the machine to half-open (returned as the transition) and
    /// competes for a probe slot like every other.
    pub(crate) fn admit(&self) -> (Admission, Option<Transition>) {
        let mut transition = None;
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let w = Word::decode(cur);
            match w.state {
                BreakerState::Closed => {
                    return (Admission::Admit(Ticket::Call { word: cur }), transition);
                }
                BreakerState::Open => {
                    let now = Instant::now();
                    let left = self.open_until(w).saturating_duration_since(now);
                    if !left.is_zero() {
                        let reject = Admission::Reject { retry_after: left };
                        return (reject, transition);
                    }
                    let next = Word {
                        state: BreakerState::HalfOpen,
                        trips: w.trips,
                        seq: next_seq(w.seq),
                        since_ms: self.ms(now),
                    }
                    .encode();
                    match self.cas(cur, next) {
                        Ok(()) => {
                            self.set_trigger(Trigger::OpenElapsed);
                            transition = Some(Transition {
                                trigger: Trigger::OpenElapsed,
                                trips: w.trips,
                                open_for: None,
                            });
                            cur = next;
                        }
                        Err(actual) => cur = actual,
                    }
                }
                BreakerState::HalfOpen => match self.take_probe(cur, w.seq) {
                    ProbeClaim::Taken => {
                        let ticket = Ticket::Probe { seq: w.seq };
                        return (Admission::Admit(ticket), transition);
                    }
                    ProbeClaim::Full => {
                        let reject = Admission::Reject {
                            retry_after: PROBE_RETRY_AFTER,
                        };
                        return (reject, transition);
                    }
                    ProbeClaim::Moved(actual) => cur = actual,
                },
            }
        }
    }

    /// Counts the final outcome of an admitted request that ended at `now` after `elapsed`
    /// (`None` when slow calls are not counted). Returns the transition it caused, if any.
    pub(crate) fn record(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        now: Instant,
        elapsed: Option<Duration>,
    ) -> Option<Transition> {
        let slow = match (self.slow_call_duration, elapsed) {
            (Some(limit), Some(took)) => took > limit,
            _ => false,
        };
        match (ticket, outcome) {
            (Ticket::Probe { seq }, Outcome::Ignored) => {
                self.release_probe(seq);
                None
            }
            (Ticket::Probe { seq }, Outcome::Failure) => self.probe_failed(seq, now),
            (Ticket::Probe { seq }, Outcome::Success) if slow => self.probe_failed(seq, now),
            (Ticket::Probe { seq }, Outcome::Success) => self.probe_succeeded(seq, now),
            (Ticket::Call { .. }, Outcome::Ignored) => None,
            (Ticket::Call { word }, outcome) => {
                self.record_call(word, outcome == Outcome::Failure, slow, now)
            }
        }
    }

    /// The request holding `ticket` went away before its outcome was known: give back its
    /// probe slot, counting neither success nor failure.
    pub(crate) fn abandon(&self, ticket: Ticket) {
        if let Ticket::Probe { seq } = ticket {
            self.release_probe(seq);
        }
    }

    /// The state as the admin page shows it. An open breaker whose time has passed reads as
    /// open with nothing remaining until a request moves it to half-open.
    pub(crate) fn status(&self) -> MachineStatus {
        let now = Instant::now();
        let w = Word::decode(self.word.load(Ordering::Acquire));
        let open_remaining = (w.state == BreakerState::Open)
            .then(|| self.open_until(w).saturating_duration_since(now));
        MachineStatus {
            state: w.state,
            in_state_for: now.saturating_duration_since(self.at(w.since_ms)),
            open_remaining,
            trips: w.trips,
            last_trigger: Trigger::from_code(self.last_trigger.load(Ordering::Relaxed)),
        }
    }

    // --- closed ---

    fn record_call(
        &self,
        word: u64,
        failure: bool,
        slow: bool,
        now: Instant,
    ) -> Option<Transition> {
        // Count only in the closed period the call was admitted in: a call that outlived a
        // trip (or a whole open/half-open cycle) says nothing about the new period.
        if self.word.load(Ordering::Acquire) != word {
            return None;
        }
        let now_ms = self.ms(now);
        self.window.record(now_ms, failure, slow);
        if failure {
            let run = self
                .consecutive
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if self.consecutive_failures > 0 && run >= self.consecutive_failures {
                return self.trip(word, Trigger::Consecutive, now);
            }
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if !(failure || slow) {
            // A fast success cannot raise either rate.
            return None;
        }
        let t = self.window.totals(now_ms);
        if t.calls < self.min_calls || t.calls == 0 {
            return None;
        }
        if failure && reached(t.failures, t.calls, self.failure_rate) {
            return self.trip(word, Trigger::FailureRate, now);
        }
        if slow && reached(t.slow, t.calls, self.slow_call_rate) {
            return self.trip(word, Trigger::SlowRate, now);
        }
        None
    }

    fn trip(&self, word: u64, trigger: Trigger, now: Instant) -> Option<Transition> {
        let w = Word::decode(word);
        let next = Word {
            state: BreakerState::Open,
            trips: 1,
            seq: next_seq(w.seq),
            since_ms: self.ms(now),
        };
        self.cas(word, next.encode()).ok()?;
        self.set_trigger(trigger);
        Some(Transition {
            trigger,
            trips: 1,
            open_for: Some(self.open_time(1)),
        })
    }

    // --- open ---

    /// Open time of the `trips`-th consecutive trip: `open_for · 2^(trips−1)`, capped.
    fn open_time(&self, trips: u32) -> Duration {
        let doublings = trips.saturating_sub(1);
        if doublings >= 32 {
            return self.open_for_max;
        }
        self.open_for
            .checked_mul(1 << doublings)
            .map_or(self.open_for_max, |d| d.min(self.open_for_max))
    }

    fn open_until(&self, w: Word) -> Instant {
        let opened = self.at(w.since_ms);
        opened
            .checked_add(self.open_time(w.trips))
            .unwrap_or(opened)
    }

    // --- half-open ---

    /// Takes a probe slot of the half-open period `seq` whose word is `cur`.
    fn take_probe(&self, cur: u64, seq: u64) -> ProbeClaim {
        let tag = seq & PROBE_SEQ_MASK;
        let mut p = self.probes.load(Ordering::Acquire);
        loop {
            let next = if p >> PROBE_SEQ_SHIFT == tag {
                let admitted = (p >> PROBE_ADMITTED_SHIFT) & PROBE_COUNT_MAX;
                if admitted >= self.half_open_probes {
                    return ProbeClaim::Full;
                }
                p + (1 << PROBE_ADMITTED_SHIFT)
            } else {
                // The slots still belong to an earlier period. Claim them for this one, but
                // only while this period is current: a caller that loaded an old word must
                // not wipe the slots of a newer period.
                let actual = self.word.load(Ordering::Acquire);
                if actual != cur {
                    return ProbeClaim::Moved(actual);
                }
                (tag << PROBE_SEQ_SHIFT) | (1 << PROBE_ADMITTED_SHIFT)
            };
            match self
                .probes
                .compare_exchange_weak(p, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return ProbeClaim::Taken,
                Err(actual) => p = actual,
            }
        }
    }

    fn release_probe(&self, seq: u64) {
        let tag = seq & PROBE_SEQ_MASK;
        let _ = self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                let admitted = (p >> PROBE_ADMITTED_SHIFT) & PROBE_COUNT_MAX;
                (p >> PROBE_SEQ_SHIFT == tag && admitted > 0)
                    .then(|| p - (1 << PROBE_ADMITTED_SHIFT))
            });
    }

    fn probe_failed(&self, seq: u64, now: Instant) -> Option<Transition> {
        let cur = self.word.load(Ordering::Acquire);
        let w = Word::decode(cur);
        if w.state != BreakerState::HalfOpen || w.seq != seq {
            return None;
        }
        let trips = w.trips.saturating_add(1).min(TRIPS_MAX);
        let next = Word {
            state: BreakerState::Open,
            trips,
            seq: next_seq(w.seq),
            since_ms: self.ms(now),
        };
        self.cas(cur, next.encode()).ok()?;
        self.set_trigger(Trigger::ProbeFailed);
        Some(Transition {
            trigger: Trigger::ProbeFailed,
            trips,
            open_for: Some(self.open_time(trips)),
        })
    }

    fn probe_succeeded(&self, seq: u64, now: Instant) -> Option<Transition> {
        let tag = seq & PROBE_SEQ_MASK;
        let before = self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p >> PROBE_SEQ_SHIFT == tag).then(|| p + 1)
            })
            .ok()?;
        if (before & PROBE_COUNT_MAX) + 1 < self.half_open_probes {
            return None;
        }
        // Every slot of this period was taken and each probe succeeded: no probe of it is
        // still in flight, and nothing writes the window while half-open, so the window can
        // be emptied before the breaker closes.
        let cur = self.word.load(Ordering::Acquire);
        let w = Word::decode(cur);
        if w.state != BreakerState::HalfOpen || w.seq != seq {
            return None;
        }
        self.window.reset();
        self.consecutive.store(0, Ordering::Relaxed);
        let next = Word {
            state: BreakerState::Closed,
            trips: 0,
            seq: next_seq(w.seq),
            since_ms: self.ms(now),
        };
        self.cas(cur, next.encode()).ok()?;
        self.set_trigger(Trigger::ProbeSucceeded);
        Some(Transition {
            trigger: Trigger::ProbeSucceeded,
            trips: 0,
            open_for: None,
        })
    }

    // --- helpers ---

    fn cas(&self, cur: u64, next: u64) -> Result<(), u64> {
        self.word
            .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    fn set_trigger(&self, trigger: Trigger) {
        self.last_trigger.store(trigger.code(), Ordering::Relaxed);
    }

    /// Milliseconds from `base` to `now`, saturating at the word's 40 bits (34 years).
    fn ms(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.base).as_millis();
        u64::try_from(ms).unwrap_or(MS_MAX).min(MS_MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base
            .checked_add(Duration::from_millis(ms))
            .unwrap_or(self.base)
    }
}

/// The outcome of trying to take a probe slot.
enum ProbeClaim {
    Taken,
    Full,
    /// The state word changed under the caller; it is now this.
    Moved(u64),
}

/// The decoded state word: `state` (2 bits) | `trips` (8) | `seq` (14) | `since_ms` (40).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word {
    state: BreakerState,
    /// Consecutive trips without a close in between, saturating at [`TRIPS_MAX`].
    trips: u32,
    /// Transition sequence number, wrapping at 2^14: tells periods of one state apart.
    seq: u64,
    /// When the last transition happened, in ms since `Machine::base`.
    since_ms: u64,
}

// === impl Word ===

impl Word {
    fn encode(self) -> u64 {
        self.state.code()
            | (u64::from(self.trips.min(TRIPS_MAX)) << TRIPS_SHIFT)
            | ((self.seq & SEQ_MASK) << SEQ_SHIFT)
            | ((self.since_ms & MS_MAX) << MS_SHIFT)
    }

    fn decode(v: u64) -> Self {
        Self {
            state: BreakerState::from_code(v & 0b11),
            trips: u32::try_from((v >> TRIPS_SHIFT) & u64::from(TRIPS_MAX)).unwrap_or(TRIPS_MAX),
            seq: (v >> SEQ_SHIFT) & SEQ_MASK,
            since_ms: v >> MS_SHIFT,
        }
    }
}

fn next_seq(seq: u64) -> u64 {
    (seq + 1) & SEQ_MASK
}

/// Whether `count` out of `calls` reaches `rate` (u64 → f64 is exact below 2^53 calls).
fn reached(count: u64, calls: u64, rate: f64) -> bool {
    count as f64 >= rate * calls as f64
}

/// `retry_after` of a request refused while half-open: the probes are expected to answer
/// within about this long.
pub(crate) const PROBE_RETRY_AFTER: Duration = Duration::from_secs(1);

const TRIPS_SHIFT: u32 = 2;
const TRIPS_MAX: u32 = 0xFF;
const SEQ_SHIFT: u32 = 10;
const SEQ_MASK: u64 = 0x3FFF;
const MS_SHIFT: u32 = 24;
const MS_MAX: u64 = (1 << 40) - 1;

const PROBE_SEQ_SHIFT: u32 = 48;
const PROBE_SEQ_MASK: u64 = 0xFFFF;
const PROBE_ADMITTED_SHIFT: u32 = 24;
/// Most probe slots of one half-open period (a larger `half_open_probes` is clamped).
const PROBE_COUNT_MAX: u64 = (1 << 24) - 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            min_calls: 4,
            consecutive_failures: 3,
            open_for: Duration::from_secs(10),
            open_for_max: Duration::from_secs(60),
            half_open_probes: 2,
            ..Settings::default()
        }
    }

    fn admit(m: &Machine) -> Ticket {
        match m.admit().0 {
            Admission::Admit(t) => t,
            Admission::Reject { retry_after } => panic!("rejected, retry after {retry_after:?}"),
        }
    }

    fn call(m: &Machine, outcome: Outcome) -> Option<Transition> {
        let t = admit(m);
        m.record(t, outcome, Instant::now(), None)
    }

    fn state(m: &Machine) -> BreakerState {
        m.status().state
    }

    #[test]
    fn word_round_trips() {
        let w = Word {
            state: BreakerState::HalfOpen,
            trips: 200,
            seq: 0x3FFF,
            since_ms: MS_MAX,
        };
        assert_eq!(Word::decode(w.encode()), w);
        let w = Word {
            state: BreakerState::Open,
            trips: 1,
            seq: 7,
            since_ms: 123_456,
        };
        assert_eq!(Word::decode(w.encode()), w);
        assert_eq!(next_seq(SEQ_MASK), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_cycle_with_triggers() {
        let m = Machine::new(&settings());
        assert_eq!(call(&m, Outcome::Failure), None);
        assert_eq!(call(&m, Outcome::Failure), None);
        let t = call(&m, Outcome::Failure).unwrap();
        assert_eq!(t.trigger, Trigger::Consecutive);
        assert_eq!(t.open_for, Some(Duration::from_secs(10)));
        assert_eq!(state(&m), BreakerState::Open);

        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            m.admit(),
            (
                Admission::Reject {
                    retry_after: Duration::from_secs(6)
                },
                None
            )
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        let (a, t) = m.admit();
        assert_eq!(t.unwrap().trigger, Trigger::OpenElapsed);
        let Admission::Admit(p1) = a else { panic!() };
        let p2 = admit(&m);
        assert!(
            matches!(m.admit(), (Admission::Reject { retry_after }, None) if retry_after == PROBE_RETRY_AFTER)
        );
        assert_eq!(m.record(p1, Outcome::Success, Instant::now(), None), None);
        let t = m
            .record(p2, Outcome::Success, Instant::now(), None)
            .unwrap();
        assert_eq!(t.trigger, Trigger::ProbeSucceeded);
        let st = m.status();
        assert_eq!(st.state, BreakerState::Closed);
        assert_eq!(st.trips, 0);
        assert_eq!(st.last_trigger, Some(Trigger::ProbeSucceeded));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_from_an_earlier_period_counts_for_nothing() {
        let m = Machine::new(&settings());
        let late = admit(&m); // admitted while closed, answers after the cycle below
        for _ in 0..3 {
            call(&m, Outcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        call(&m, Outcome::Success);
        call(&m, Outcome::Success);
        assert_eq!(state(&m), BreakerState::Closed);
        // Two failures in the new period, plus the late one: it must not make a third.
        call(&m, Outcome::Failure);
        call(&m, Outcome::Failure);
        assert_eq!(m.record(late, Outcome::Failure, Instant::now(), None), None);
        assert_eq!(m.window.totals(m.ms(Instant::now())).failures, 2);
        assert_eq!(state(&m), BreakerState::Closed);
        assert_eq!(
            call(&m, Outcome::Failure).unwrap().trigger,
            Trigger::Consecutive
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_from_an_earlier_half_open_period_counts_for_nothing() {
        let m = Machine::new(&settings());
        for _ in 0..3 {
            call(&m, Outcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let stale = admit(&m);
        let failing = admit(&m);
        let t = m.record(failing, Outcome::Failure, Instant::now(), None);
        assert_eq!(t.unwrap().open_for, Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        let p1 = admit(&m);
        // The stale probe succeeding neither frees nor fills a slot of the new period.
        assert_eq!(
            m.record(stale, Outcome::Success, Instant::now(), None),
            None
        );
        let p2 = admit(&m);
        assert!(matches!(m.admit().0, Admission::Reject { .. }));
        assert_eq!(m.record(p1, Outcome::Success, Instant::now(), None), None);
        assert_eq!(state(&m), BreakerState::HalfOpen);
        let t = m.record(p2, Outcome::Success, Instant::now(), None);
        assert_eq!(t.unwrap().trigger, Trigger::ProbeSucceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn ignored_and_abandoned_probes_free_their_slot() {
        let m = Machine::new(&settings());
        for _ in 0..3 {
            call(&m, Outcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let p1 = admit(&m);
        let p2 = admit(&m);
        assert!(matches!(m.admit().0, Admission::Reject { .. }));
        m.abandon(p1);
        let p3 = admit(&m);
        assert_eq!(m.record(p2, Outcome::Ignored, Instant::now(), None), None);
        let p4 = admit(&m);
        assert_eq!(m.record(p3, Outcome::Success, Instant::now(), None), None);
        let t = m.record(p4, Outcome::Success, Instant::now(), None);
        assert_eq!(t.unwrap().trigger, Trigger::ProbeSucceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_fails() {
        let s = Settings {
            slow_call_duration: Duration::from_millis(100),
            ..settings()
        };
        let m = Machine::new(&s);
        for _ in 0..3 {
            call(&m, Outcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let p = admit(&m);
        let t = m.record(
            p,
            Outcome::Success,
            Instant::now(),
            Some(Duration::from_millis(101)),
        );
        assert_eq!(t.unwrap().trigger, Trigger::ProbeFailed);
    }

    #[test]
    fn racing_threads_make_each_transition_once() {
        use std::sync::Mutex;
        use std::sync::atomic::AtomicUsize;

        let m = Machine::new(&Settings {
            consecutive_failures: 1,
            open_for: Duration::ZERO, // half-open as soon as a request looks
            half_open_probes: 5,
            ..Settings::default()
        });
        let transitions = Mutex::new(Vec::new());
        let note = |t: Option<Transition>| {
            if let Some(t) = t {
                transitions.lock().unwrap().push(t.trigger);
            }
        };
        // Closed: eight threads fail at once; one trip.
        let tickets: Vec<_> = (0..8).map(|_| admit(&m)).collect();
        std::thread::scope(|s| {
            for t in tickets {
                s.spawn(|| note(m.record(t, Outcome::Failure, Instant::now(), None)));
            }
        });
        // Open, time passed: many threads race for five probe slots; one moves to half-open.
        let probes = Mutex::new(Vec::new());
        let refused = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let (a, t) = m.admit();
                        note(t);
                        match a {
                            Admission::Admit(p) => probes.lock().unwrap().push(p),
                            Admission::Reject { .. } => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        let probes = probes.into_inner().unwrap();
        assert_eq!(probes.len(), 5);
        assert_eq!(refused.into_inner(), 8 * 50 - 5);
        // Every probe succeeds at once: one close.
        std::thread::scope(|s| {
            for p in probes {
                s.spawn(|| note(m.record(p, Outcome::Success, Instant::now(), None)));
            }
        });
        assert_eq!(
            transitions.into_inner().unwrap(),
            [
                Trigger::Consecutive,
                Trigger::OpenElapsed,
                Trigger::ProbeSucceeded
            ]
        );
        assert_eq!(state(&m), BreakerState::Closed);
    }

    #[test]
    fn open_time_doubles_up_to_the_cap() {
        let m = Machine::new(&Settings {
            open_for: Duration::from_secs(10),
            open_for_max: Duration::from_secs(45),
            ..Settings::default()
        });
        let secs: Vec<u64> = [1, 2, 3, 4, 40, 255]
            .map(|t| m.open_time(t).as_secs())
            .to_vec();
        assert_eq!(secs, [10, 20, 40, 45, 45, 45]);
        // A cap below `open_for` does not shorten the first open time.
        let m = Machine::new(&Settings {
            open_for: Duration::from_secs(10),
            open_for_max: Duration::from_secs(1),
            ..Settings::default()
        });
        assert_eq!(m.open_time(3), Duration::from_secs(10));
    }

    #[test]
    fn triggers_are_a_closed_set() {
        for (i, r) in Trigger::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(Trigger::from_code(r.code()), Some(r));
        }
        assert_eq!(Trigger::from_code(0), None);
    }
}
