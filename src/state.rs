//! The breaker's state machine.
//!
//! ```text
//!              trip (a policy fires)
//!   ┌────────┐ ───────────────────────► ┌──────┐
//!   │ Closed │                          │ Open │ ◄──┐ probe failed,
//!   └────────┘ ◄───────┐                └──────┘    │ max wait elapsed
//!        ▲             │ M probes         │         │
//!        │             │ succeeded        │ open duration elapsed
//!        │          ┌──────────┐ ◄────────┘         │
//!        │          │ HalfOpen │ ───────────────────┘
//!        │          └──────────┘
//!        └── force_closed() / reset() from anywhere
//!
//!   Overrides, set by hand:   Disabled     every call passes, nothing is judged
//!                             ForcedOpen   every call is refused
//!                             MetricsOnly  every call passes; the machine runs
//!                                          in the shadow and counts what it
//!                                          would have refused
//! ```
//!
//! **Closed** means requests flow: outcomes feed the window and the policies
//! decide when to trip. **Open** refuses calls without touching the inner
//! service until the open duration (see [`crate::Backoff`]) has
//! elapsed. **HalfOpen** admits exactly `N` probe calls, however many callers
//! race for them: the first failure reopens, `M` successes close. A probe
//! that is dropped, or says nothing ([`Outcome::Ignored`]), gives its permit
//! back.
//!
//! **Judging.** Every judged outcome that changes the window's totals (or
//! the failure streak) is evaluated against the policies, a success
//! included: a window filling up reaches `minimum_calls` with whatever call
//! comes last. A time window is evaluated at every judged outcome, since old
//! buckets age out with time alone. A success replacing a success in a full
//! count window changes nothing, so it is not evaluated (the hot path).
//!
//! **Epochs.** Everything the hot path reads lives in one atomic word: the
//! state, the override, the half-open permit and success counts (11 bits
//! each), and a 36-bit epoch that every transition bumps. A call remembers
//! the epoch it was admitted in; its outcome and its Retry-After hint count
//! only if the epoch has not moved on, so a slow call that started while
//! Closed cannot reopen a breaker that has since recovered, nor stretch its
//! next open duration. (A call would have to stay in flight across 2^36
//! transitions for its epoch to come round again.)
//!
//! **Ordering.** Writes to the window, the streak and the hint go through a
//! writer gate: a writer enters the gate of its epoch, checks the epoch and
//! writes; a transition publishes the new state and epoch with a settling
//! flag, waits for the old epoch's writers to leave the gate, resets the
//! window and the streak (reading a late hint first), and clears the flag.
//! Writers of the new epoch that come while the flag is set wait for it to
//! clear. So no outcome of an old epoch lands in a new one, and no outcome
//! of the new epoch is judged against, or erased with, the old one's.
//! Steady-state successes never enter the gate.
//!
//! **Admission.** `poll_ready` asks the machine to check: a ticket or a
//! refusal, with no permit taken and nothing counted; `call` uses a plain
//! ticket whose epoch is still current (one load), and otherwise asks
//! for an admission, which takes half-open permits and counts refusals.
//!
//! Transitions themselves are rare and take a lock; admission and recording
//! never do. The machine takes the time as an argument and does no I/O: it
//! tells an observer about transitions, and the caller turns those into
//! metrics, logs and hooks.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backoff::{hint_nanos, Backoff, Jitter};
use crate::classify::Outcome;
use crate::padded::CachePadded;
use crate::policy::Policy;
use crate::window::{Counts, Sample, Window};

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Requests flow; outcomes are judged.
    Closed,
    /// Requests are refused until the open duration elapses.
    Open,
    /// A limited number of probe requests test the upstream.
    HalfOpen,
    /// Set by hand: every request flows, nothing is judged.
    Disabled,
    /// Set by hand: every request is refused.
    ForcedOpen,
    /// Set by hand (shadow mode): every request flows, the machine runs in the
    /// shadow and counts the requests it would have refused.
    MetricsOnly,
}

/// The state's label value (`closed`, `half_open`, ...), as in the metrics.
impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    /// Every state, in gauge order.
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Disabled,
        State::ForcedOpen,
        State::MetricsOnly,
    ];

    /// The state's label value: `closed`, `open`, `half_open`, `disabled`,
    /// `forced_open`, `metrics_only`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }
}

/// Why a transition happened; the `reason` label of `transitions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The consecutive-failures policy fired.
    ConsecutiveFailures,
    /// The failure-rate policy fired.
    FailureRate,
    /// The slow-call-rate policy fired.
    SlowCallRate,
    /// A half-open probe failed.
    ProbeFailed,
    /// Enough half-open probes succeeded.
    ProbeSucceeded,
    /// The open duration elapsed.
    TimeoutElapsed,
    /// The breaker waited too long in half-open for its probes.
    MaxWaitElapsed,
    /// Someone called the handle.
    Manual,
}

/// The reason's label value (`failure_rate`, `manual`, ...), as in the
/// metrics.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// The reason's label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::FailureRate => "failure_rate",
            Reason::SlowCallRate => "slow_call_rate",
            Reason::ProbeFailed => "probe_failed",
            Reason::ProbeSucceeded => "probe_succeeded",
            Reason::TimeoutElapsed => "timeout_elapsed",
            Reason::MaxWaitElapsed => "max_wait_elapsed",
            Reason::Manual => "manual",
        }
    }
}

/// A point-in-time view of a breaker.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The state the breaker reports.
    pub state: State,
    /// The state of the machine underneath: differs from `state` under an
    /// override (in MetricsOnly, the shadow state).
    pub machine_state: State,
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// `failures / calls` over the window.
    pub failure_rate: f64,
    /// `slow_calls / calls` over the window.
    pub slow_call_rate: f64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Half-open probes admitted in this half-open period.
    pub half_open_probes: u32,
    /// Half-open probes that succeeded in this half-open period.
    pub half_open_successes: u32,
    /// Calls refused since construction or the last reset.
    pub rejected: u64,
    /// Calls the shadow machine would have refused (MetricsOnly).
    pub shadow_rejected: u64,
    /// Time left before probes are let through, when Open.
    pub open_remaining: Option<Duration>,
    /// How close the policies are to tripping, `0..=1`.
    pub trip_risk: f64,
}

/// A transition, as hooks see it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StateChange {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// The breaker as it was just before the transition, before its counts
    /// were reset.
    pub snapshot: Snapshot,
    /// Whether this happened in the shadow machine of MetricsOnly mode.
    pub shadow: bool,
    /// When returning to Closed: the time since the breaker left Closed.
    pub recovery: Option<Duration>,
    /// When opening: how long the breaker stays open.
    pub open_for: Option<Duration>,
    /// The breaker's name (its `service` label): tells keyed breakers,
    /// which share their hooks, apart.
    pub service: Arc<str>,
}

/// Told about every transition.
pub(crate) trait Observer {
    /// Whether a trip policy may open the breaker now (called with the
    /// transition lock held, for a trip that would refuse calls): a keyed
    /// layer's open-share guard may say no.
    fn may_trip(&self, _reason: Reason) -> bool {
        true
    }
    /// Called with the transition lock held: keep it short (metrics).
    fn on_transition_locked(&self, change: &StateChange);
    /// Called after the lock is released (logs, user hooks).
    fn on_transition(&self, change: StateChange);
    /// The breaker's name, for [`StateChange::service`].
    fn name(&self) -> Arc<str> {
        Arc::from("")
    }
}

// The state word:
// | epoch:36 | unused:1 | settling:1 | successes:11 | admitted:11 | mode:2 | machine:2 |
const MACHINE_MASK: u64 = 0b11;
const MODE_SHIFT: u64 = 2;
const ADMITTED_SHIFT: u64 = 4;
const SUCCESSES_SHIFT: u64 = 15;
/// Set by a transition from the moment it publishes the new state until it
/// has reset what the new epoch starts without (window, streak, hint):
/// writers of the new epoch wait for it to clear.
const SETTLING: u64 = 1 << 26;
const EPOCH_SHIFT: u64 = 28;
const COUNT_MASK: u64 = 0x7FF;

/// The epoch's width: a call would have to stay in flight across 2^36
/// transitions (about 19 hours of nothing but transitions at one a
/// microsecond) for its epoch to come round again.
pub(crate) const EPOCH_BITS: u32 = 36;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

const NORMAL: u64 = 0;
const DISABLED: u64 = 1;
const FORCED_OPEN: u64 = 2;
const METRICS_ONLY: u64 = 3;

/// The largest number of half-open permits the state word can count.
pub(crate) const MAX_PERMITS: u32 = COUNT_MASK as u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn new(machine: u64, mode: u64, epoch: u64) -> Self {
        Word(machine | mode << MODE_SHIFT | (epoch & EPOCH_MASK) << EPOCH_SHIFT)
    }
    #[inline]
    fn machine(self) -> u64 {
        self.0 & MACHINE_MASK
    }
    #[inline]
    fn mode(self) -> u64 {
        (self.0 >> MODE_SHIFT) & 0b11
    }
    fn admitted(self) -> u32 {
        ((self.0 >> ADMITTED_SHIFT) & COUNT_MASK) as u32
    }
    fn successes(self) -> u32 {
        ((self.0 >> SUCCESSES_SHIFT) & COUNT_MASK) as u32
    }
    #[inline]
    fn epoch(self) -> u64 {
        self.0 >> EPOCH_SHIFT
    }
    #[inline]
    fn settling(self) -> bool {
        self.0 & SETTLING != 0
    }
    fn machine_state(self) -> State {
        match self.machine() {
            CLOSED => State::Closed,
            OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }
    fn state(self) -> State {
        match self.mode() {
            DISABLED => State::Disabled,
            FORCED_OPEN => State::ForcedOpen,
            METRICS_ONLY => State::MetricsOnly,
            _ => self.machine_state(),
        }
    }
}

/// What a transition moves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Closed,
    Open,
    HalfOpen,
    Disabled,
    ForcedOpen,
    MetricsOnly,
    Reset,
}

/// Permission for one call, remembered until its outcome is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket(NonZeroU64);

/// Ticket bits: the low bit is always set (so `Option<Ticket>` is one word),
/// then the probe, judged and deferred flags; the epoch sits at the same
/// bits as in the state word, so one XOR and shift compares them. One word,
/// so the service stores and reloads it whole between `poll_ready` and
/// `call`.
const TICKET_SET: u64 = 1;
const TICKET_PROBE: u64 = 1 << 1;
const TICKET_JUDGED: u64 = 1 << 2;
/// Taken by `poll_ready` where `call` must still ask the machine (a
/// half-open probe permit, a shadow-mode call).
const TICKET_DEFERRED: u64 = 1 << 3;

impl Ticket {
    #[inline]
    fn new(epoch: u64, flags: u64) -> Self {
        Ticket(NonZeroU64::MIN | ((epoch & EPOCH_MASK) << EPOCH_SHIFT | flags | TICKET_SET))
    }

    #[inline]
    fn epoch(self) -> u64 {
        self.0.get() >> EPOCH_SHIFT
    }

    /// Whether this call is a half-open probe.
    #[inline]
    pub(crate) fn is_probe(&self) -> bool {
        self.0.get() & TICKET_PROBE != 0
    }

    /// Whether the outcome feeds the machine.
    #[inline]
    pub(crate) fn is_judged(self) -> bool {
        self.0.get() & TICKET_JUDGED != 0
    }
}

/// The machine's answer to "may this call go through?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Permitted(Ticket),
    /// Let through only because the breaker is in shadow mode.
    Shadow(Ticket),
    Rejected {
        state: State,
        /// When Open: the time left, in nanoseconds (see [`Refusal::left`]).
        left: u64,
    },
}

/// A refusal decided in `poll_ready`, delivered (and counted) by `call`:
/// the state, and when Open the time left as of `poll_ready` (made a
/// `Duration` only when
/// [`CircuitOpen::retry_after`](crate::CircuitOpen::retry_after) asks).
///
/// One word, written and read whole: the service keeps it from
/// `poll_ready` to `call`, and a wider read of a narrower write (a state
/// byte, then the refusal read back at once) stalls the processor. Only
/// Open, HalfOpen and ForcedOpen refuse, and only Open knows the time
/// left, which is never 0: the two highest values stand for the other two
/// states, every other value is Open's time left, exactly (up to 584
/// years).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal(NonZeroU64);

impl Refusal {
    const FORCED_OPEN: u64 = u64::MAX;
    const HALF_OPEN: u64 = u64::MAX - 1;
    /// The longest time left an Open refusal holds (nanoseconds).
    const MAX_LEFT: u64 = u64::MAX - 2;

    /// Open, with `left` nanoseconds to go (a 0, which `open_elapsed`
    /// never gives, is taken as 1).
    #[inline]
    pub(crate) fn open(left: u64) -> Self {
        Refusal(NonZeroU64::new(left.min(Self::MAX_LEFT)).unwrap_or(NonZeroU64::MIN))
    }

    /// HalfOpen, every probe permit taken.
    pub(crate) fn half_open() -> Self {
        const WORD: NonZeroU64 = match NonZeroU64::new(Refusal::HALF_OPEN) {
            Some(word) => word,
            None => unreachable!(),
        };
        Refusal(WORD)
    }

    /// ForcedOpen.
    pub(crate) fn forced_open() -> Self {
        Refusal(NonZeroU64::MAX)
    }

    /// The state the breaker refused in.
    #[inline]
    pub(crate) fn state(self) -> State {
        match self.0.get() {
            Self::FORCED_OPEN => State::ForcedOpen,
            Self::HALF_OPEN => State::HalfOpen,
            _ => State::Open,
        }
    }

    /// The time left in nanoseconds, or [`NO_RETRY_AFTER`].
    #[inline]
    pub(crate) fn left(self) -> u64 {
        match self.0.get() {
            Self::FORCED_OPEN | Self::HALF_OPEN => NO_RETRY_AFTER,
            left => left,
        }
    }
}

/// [`Refusal::left`] when the time left is not known (not Open).
pub(crate) const NO_RETRY_AFTER: u64 = u64::MAX;

/// Half-open settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HalfOpen {
    pub(crate) permits: u32,
    pub(crate) successes: u32,
    pub(crate) max_wait: Option<u64>,
}

/// Settings of the machine.
#[derive(Clone, Debug)]
pub(crate) struct MachineConfig {
    pub(crate) policy: Policy,
    pub(crate) half_open: HalfOpen,
    pub(crate) backoff: Backoff,
    pub(crate) retry_after_cap: Duration,
}

#[derive(Debug, Default)]
struct Episode {
    /// Opens in a row without closing: the backoff attempt.
    attempt: u32,
    /// When the breaker last left Closed for Open or ForcedOpen.
    left_closed_at: Option<u64>,
}

/// The state machine. Methods take `now` in nanoseconds.
#[derive(Debug)]
pub(crate) struct Machine {
    /// Read by every call, written by transitions only.
    word: CachePadded<AtomicU64>,
    open_until: AtomicU64,
    phase_since: AtomicU64,
    /// Failures in a row; written only inside the writer gate.
    consecutive: AtomicU32,
    /// A server's hint for the next open duration (nanoseconds, 0 for none);
    /// written only inside the writer gate, so it belongs to one epoch.
    hint: AtomicU64,
    /// The writer gate: outcomes that change the window, the streak or the
    /// hint of epoch `e` hold `writers[e & 1]` while they check the epoch
    /// and write. A transition bumps the epoch, then waits for the old
    /// epoch's writers to leave before it resets or reads what they write.
    writers: [AtomicU32; 2],
    /// Whether the last evaluation found fewer calls than the minimum: in a
    /// time window, only then can a success in the current bucket (no
    /// bucket rolled) cross a threshold, by reaching the minimum.
    below_minimum: AtomicBool,
    rejected: AtomicU64,
    shadow_rejected: AtomicU64,
    window: Window,
    config: MachineConfig,
    jitter: Jitter,
    episode: Mutex<Episode>,
    /// The mode `force_closed()` and `reset()` return to: NORMAL, or
    /// DISABLED for a machine that judges nothing.
    base_mode: u64,
}

impl Machine {
    pub(crate) fn new(config: MachineConfig, window: Window, seed: u64) -> Self {
        Machine {
            word: CachePadded(AtomicU64::new(Word::new(CLOSED, NORMAL, 0).0)),
            open_until: AtomicU64::new(0),
            phase_since: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            hint: AtomicU64::new(0),
            writers: [AtomicU32::new(0), AtomicU32::new(0)],
            below_minimum: AtomicBool::new(true),
            rejected: AtomicU64::new(0),
            shadow_rejected: AtomicU64::new(0),
            window,
            config,
            jitter: Jitter::new(seed),
            episode: Mutex::new(Episode::default()),
            base_mode: NORMAL,
        }
    }

    /// A machine that lets every call through unjudged (the Disabled
    /// override from the start, with no transition, and the mode that
    /// `force_closed()` and `reset()` return to): the keyed layer's overflow
    /// breaker.
    pub(crate) fn unjudged(config: MachineConfig, window: Window, seed: u64) -> Self {
        let mut machine = Machine::new(config, window, seed);
        machine.base_mode = DISABLED;
        machine
            .word
            .store(Word::new(CLOSED, DISABLED, 0).0, Ordering::Release);
        machine
    }

    /// Starts at `epoch`, to test what happens where the epoch is large.
    #[cfg(test)]
    fn at_epoch(self, epoch: u64) -> Self {
        self.word
            .store(Word::new(CLOSED, NORMAL, epoch).0, Ordering::Release);
        self
    }

    #[inline]
    fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    /// The state the breaker reports.
    #[inline]
    pub(crate) fn state(&self) -> State {
        self.load().state()
    }

    /// When the machine last changed state or override (clock nanoseconds).
    pub(crate) fn phase_since(&self) -> u64 {
        self.phase_since.load(Ordering::Acquire)
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Acquire)
    }

    pub(crate) fn window(&self) -> &Window {
        &self.window
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// Whether a plain ticket taken by `poll_ready` still stands: no
    /// transition since, and nothing left for `call` to ask. One load.
    #[inline]
    pub(crate) fn stands(&self, ticket: Ticket) -> bool {
        let t = ticket.0.get();
        t & TICKET_DEFERRED == 0 && (self.word.load(Ordering::Acquire) ^ t) >> EPOCH_SHIFT == 0
    }

    /// Whether the epoch a ticket was taken in is still the current one.
    #[inline]
    pub(crate) fn is_current(&self, ticket: Ticket) -> bool {
        (self.word.load(Ordering::Acquire) ^ ticket.0.get()) >> EPOCH_SHIFT == 0
    }

    /// The decision of `poll_ready`: a ticket, or a refusal. Takes no
    /// permit and counts nothing: a service made ready and never called
    /// holds nothing. A half-open probe permit and a shadow-mode call are
    /// decided by [`admit`](Self::admit) at `call` (a deferred ticket).
    #[inline]
    pub(crate) fn check(
        &self,
        now: impl Fn() -> u64,
        obs: &dyn Observer,
    ) -> Result<Ticket, Refusal> {
        let w = self.load();
        if w.machine() == CLOSED && w.mode() == NORMAL {
            return Ok(Ticket::new(w.epoch(), TICKET_JUDGED));
        }
        self.check_slow(now, obs)
    }

    #[cold]
    #[inline(never)]
    fn check_slow(&self, now: impl Fn() -> u64, obs: &dyn Observer) -> Result<Ticket, Refusal> {
        loop {
            let w = self.load();
            let epoch = w.epoch();
            match w.mode() {
                DISABLED => return Ok(Ticket::new(epoch, 0)),
                FORCED_OPEN => return Err(Refusal::forced_open()),
                METRICS_ONLY => return Ok(Ticket::new(epoch, TICKET_DEFERRED)),
                _ => {}
            }
            match w.machine() {
                CLOSED => return Ok(Ticket::new(epoch, TICKET_JUDGED)),
                OPEN => match self.open_elapsed(epoch, &now, obs) {
                    None => continue,
                    Some(left) => return Err(Refusal::open(left)),
                },
                _ => {
                    if self.max_wait_elapsed(w, &now, obs) {
                        continue;
                    }
                    if w.admitted() >= self.config.half_open.permits {
                        return Err(Refusal::half_open());
                    }
                    return Ok(Ticket::new(epoch, TICKET_DEFERRED));
                }
            }
        }
    }

    /// Counts a refusal decided by [`check`](Self::check) as `call` delivers
    /// it.
    pub(crate) fn count_refusal(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// In Open: half-opens if the open duration has elapsed (`None`: the
    /// caller looks again), else the time left in nanoseconds (never 0).
    fn open_elapsed(&self, epoch: u64, now: &impl Fn() -> u64, obs: &dyn Observer) -> Option<u64> {
        let now = now();
        let until = self.open_until.load(Ordering::Acquire);
        if now < until {
            return Some(until - now);
        }
        self.transition(
            Some(epoch),
            Target::HalfOpen,
            Reason::TimeoutElapsed,
            now,
            obs,
        );
        None
    }

    /// In half-open with a maximum wait: reopens if it has elapsed. Returns
    /// whether the machine moved (the caller looks again).
    fn max_wait_elapsed(&self, w: Word, now: &impl Fn() -> u64, obs: &dyn Observer) -> bool {
        let Some(max_wait) = self.config.half_open.max_wait else {
            return false;
        };
        let now = now();
        let since = self.phase_since.load(Ordering::Acquire);
        if now.saturating_sub(since) < max_wait {
            return false;
        }
        self.transition(
            Some(w.epoch()),
            Target::Open,
            Reason::MaxWaitElapsed,
            now,
            obs,
        );
        true
    }

    /// Decides whether a call may go through now, taking a half-open probe
    /// permit if it is one and counting a refusal. `now` is read only if
    /// needed.
    #[inline]
    pub(crate) fn admit(&self, now: impl Fn() -> u64, obs: &dyn Observer) -> Admission {
        let w = self.load();
        if w.machine() == CLOSED && w.mode() == NORMAL {
            return Admission::Permitted(Ticket::new(w.epoch(), TICKET_JUDGED));
        }
        self.admit_slow(now, obs)
    }

    #[cold]
    #[inline(never)]
    fn admit_slow(&self, now: impl Fn() -> u64, obs: &dyn Observer) -> Admission {
        loop {
            let w = self.load();
            let epoch = w.epoch();
            let ticket = Ticket::new(epoch, TICKET_JUDGED);
            match w.mode() {
                DISABLED => {
                    return Admission::Permitted(Ticket::new(epoch, 0));
                }
                FORCED_OPEN => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    return Admission::Rejected {
                        state: State::ForcedOpen,
                        left: NO_RETRY_AFTER,
                    };
                }
                _ => {}
            }
            let shadow = w.mode() == METRICS_ONLY;
            let refused = |state: State, left: u64| {
                if shadow {
                    self.shadow_rejected.fetch_add(1, Ordering::Relaxed);
                    Admission::Shadow(Ticket::new(epoch, 0))
                } else {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    Admission::Rejected { state, left }
                }
            };
            match w.machine() {
                CLOSED => return Admission::Permitted(ticket),
                OPEN => match self.open_elapsed(epoch, &now, obs) {
                    None => continue,
                    Some(left) => return refused(State::Open, left),
                },
                _ => {
                    if self.max_wait_elapsed(w, &now, obs) {
                        continue;
                    }
                    if w.admitted() >= self.config.half_open.permits {
                        return refused(State::HalfOpen, NO_RETRY_AFTER);
                    }
                    let next = w.0 + (1 << ADMITTED_SHIFT);
                    if self
                        .word
                        .compare_exchange(w.0, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Admission::Permitted(Ticket::new(
                            epoch,
                            TICKET_JUDGED | TICKET_PROBE,
                        ));
                    }
                }
            }
        }
    }

    /// Runs `write` (with the state word) if the ticket's epoch is current,
    /// inside the writer gate: a transition that ends this epoch waits for
    /// `write` to finish before it resets or reads what `write` wrote, and a
    /// `write` that starts after the transition sees the new epoch and does
    /// not run. While the transition that began this epoch is still
    /// settling (resetting the window, the streak and the hint), `write`
    /// waits for it, so it never lands in what is being reset. `write` must
    /// not transition.
    ///
    /// Why it holds: the gate increment and the epoch check are SeqCst, and
    /// so are the transition's epoch bump and its read of the gate. Either
    /// the increment comes first in that single order, and the transition
    /// sees it and waits; or the bump does, and the check sees the new epoch.
    /// The transition clears the settling flag (SeqCst) after its resets, so
    /// a writer that sees the flag clear sees the resets done.
    #[inline]
    fn gated<R>(&self, ticket: Ticket, write: impl FnOnce(Word) -> R) -> Option<R> {
        let gate = &self.writers[(ticket.epoch() & 1) as usize];
        let mut spins = 0u32;
        loop {
            gate.fetch_add(1, Ordering::SeqCst);
            let w = Word(self.word.load(Ordering::SeqCst));
            if w.epoch() != ticket.epoch() {
                gate.fetch_sub(1, Ordering::Release);
                return None;
            }
            if !w.settling() {
                let result = write(w);
                gate.fetch_sub(1, Ordering::Release);
                return Some(result);
            }
            // The transition that began this epoch is still resetting: out
            // of the gate (it does not wait for this epoch's writers) until
            // it is done.
            gate.fetch_sub(1, Ordering::Release);
            backoff(&mut spins);
        }
    }

    /// Waits for the writers of `epoch` to leave the gate. Called by a
    /// transition after it bumped the epoch past `epoch`: writers hold the
    /// gate for a few atomic operations, never across a lock or a call.
    fn drain(&self, epoch: u64) {
        let gate = &self.writers[(epoch & 1) as usize];
        let mut spins = 0u32;
        while gate.load(Ordering::SeqCst) != 0 {
            backoff(&mut spins);
        }
    }

    /// The hot path of [`record`](Self::record): the success of a plain
    /// call (judged, not a probe) in Closed, with no streak and no hint to
    /// clear, in a count window. `None` when any of that does not hold, and
    /// nothing was recorded; otherwise whether the window's totals changed
    /// (then the caller must [`evaluate`](Self::evaluate): a window still
    /// filling up may just have reached the minimum of calls).
    #[inline(always)]
    pub(crate) fn record_plain_success(&self, ticket: Ticket) -> Option<bool> {
        if ticket.0.get() & (TICKET_PROBE | TICKET_JUDGED) != TICKET_JUDGED {
            return None;
        }
        let w = self.load();
        // Closed, and not settling (a success then waits in the gate).
        if w.epoch() != ticket.epoch() || w.0 & (MACHINE_MASK | SETTLING) != CLOSED {
            return None;
        }
        if self.consecutive.load(Ordering::Relaxed) != 0 || self.hint.load(Ordering::Relaxed) != 0 {
            return None;
        }
        match &self.window {
            Window::Count(window) => {
                let slot = window.next_slot();
                // The steady state: a success replacing a success changes
                // nothing and writes nothing.
                if window.holds(slot, Sample::SUCCESS) {
                    return Some(false);
                }
                Some(self.write_success(ticket, slot))
            }
            Window::Time(_) => None,
        }
    }

    /// A success that changes the count window: written inside the gate.
    #[cold]
    #[inline(never)]
    fn write_success(&self, ticket: Ticket, slot: usize) -> bool {
        let Window::Count(window) = &self.window else {
            return false;
        };
        self.gated(ticket, |w| {
            w.machine() == CLOSED && window.replace(slot, Sample::SUCCESS)
        })
        .unwrap_or(false)
    }

    /// Records a call's outcome. Returns whether the window's totals or the
    /// failure streak changed (the rates and trip risk need refreshing).
    /// Every judged outcome that can make a policy fire is evaluated: in a
    /// count window, every one that changes the totals; in a time window,
    /// every failure or slow call, every call that rolls a bucket (old ones
    /// have aged out), and every call while the window holds fewer than the
    /// minimum. A success added to the current bucket of a time window that
    /// holds the minimum only lowers the rates, and is not evaluated.
    #[inline]
    pub(crate) fn record(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        elapsed: u64,
        now: u64,
        obs: &dyn Observer,
    ) -> bool {
        if !ticket.is_judged() {
            return false;
        }
        let slow = self.config.policy.is_slow(elapsed);
        if ticket.is_probe() {
            if self.is_current(ticket) {
                self.record_probe(ticket, outcome, slow, now, obs);
            }
            return false;
        }
        let failure = match outcome {
            Outcome::Ignored => return false,
            Outcome::Success => false,
            Outcome::Failure(_) => true,
        };
        let written = self.gated(ticket, |w| {
            if w.machine() != CLOSED {
                return false;
            }
            // A streak that starts, grows or ends changes the consecutive
            // policy's trip risk even when the window's totals stay the same.
            let mut streak_changed = false;
            if failure {
                self.consecutive.fetch_add(1, Ordering::AcqRel);
                streak_changed = true;
            } else {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                    streak_changed = true;
                }
                // A success since the hint says the upstream answered again:
                // the hint must not stretch a trip much later.
                if self.hint.load(Ordering::Relaxed) != 0 {
                    self.hint.store(0, Ordering::Relaxed);
                }
            }
            self.window.record(Sample { failure, slow }, now) || streak_changed
        });
        let Some(changed) = written else {
            return false;
        };
        if changed || (self.window.needs_time() && self.below_minimum.load(Ordering::Relaxed)) {
            self.evaluate(ticket, now, obs);
        }
        changed
    }

    /// Trips if a policy says so, while the ticket's epoch is current and
    /// the machine Closed.
    pub(crate) fn evaluate(&self, ticket: Ticket, now: u64, obs: &dyn Observer) {
        let w = self.load();
        if w.epoch() != ticket.epoch() || w.machine() != CLOSED {
            return;
        }
        let counts = self.window.counts(now);
        let consecutive = self.consecutive.load(Ordering::Acquire);
        self.below_minimum.store(
            counts.calls < self.config.policy.minimum_calls,
            Ordering::Relaxed,
        );
        if let Some(reason) = self.config.policy.evaluate(&counts, consecutive) {
            self.transition(Some(ticket.epoch()), Target::Open, reason, now, obs);
        }
    }

    fn record_probe(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        slow: bool,
        now: u64,
        obs: &dyn Observer,
    ) {
        match outcome {
            Outcome::Ignored => self.release(ticket),
            Outcome::Failure(_) => {
                self.transition(
                    Some(ticket.epoch()),
                    Target::Open,
                    Reason::ProbeFailed,
                    now,
                    obs,
                );
            }
            Outcome::Success if slow => {
                self.transition(
                    Some(ticket.epoch()),
                    Target::Open,
                    Reason::ProbeFailed,
                    now,
                    obs,
                );
            }
            Outcome::Success => {
                let bumped = self
                    .word
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                        let w = Word(w);
                        (w.epoch() == ticket.epoch() && w.successes() < MAX_PERMITS)
                            .then_some(w.0 + (1 << SUCCESSES_SHIFT))
                    });
                if let Ok(before) = bumped {
                    if Word(before).successes() + 1 >= self.config.half_open.successes {
                        self.transition(
                            Some(ticket.epoch()),
                            Target::Closed,
                            Reason::ProbeSucceeded,
                            now,
                            obs,
                        );
                    }
                }
            }
        }
    }

    /// Gives a probe permit back, if its half-open period is still current.
    pub(crate) fn release(&self, ticket: Ticket) {
        if !ticket.is_probe() {
            return;
        }
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let w = Word(w);
                (w.epoch() == ticket.epoch() && w.admitted() > 0)
                    .then_some(w.0 - (1 << ADMITTED_SHIFT))
            });
    }

    /// Remembers a server's hint (Retry-After) for the next open duration:
    /// only from a judged call of the current epoch, and only until the
    /// epoch ends (the transition that ends it uses it if it opens) or a
    /// success in Closed makes it stale.
    pub(crate) fn hint(&self, ticket: Ticket, retry_after: Duration) {
        if !ticket.is_judged() {
            return;
        }
        let nanos = hint_nanos(retry_after, self.config.retry_after_cap).max(1);
        self.gated(ticket, |_| self.hint.store(nanos, Ordering::Release));
    }

    /// Moves the machine, unless `expect` is given and the epoch has moved on.
    /// Returns whether this call made the transition.
    ///
    /// The order matters: the new state is published with a new epoch and
    /// the settling flag (outcomes of the old epoch are ignored from then
    /// on, and writers of the new one wait), then the transition waits for
    /// the old epoch's writers still inside the gate, resets the window, the
    /// streak and the hint (reading a late hint first), and clears the flag.
    /// So no outcome of an old epoch lands in a new one, and no outcome of
    /// the new epoch is judged against, or erased with, the old one's.
    ///
    /// A trip by a policy is checked again under the lock, against the
    /// window and streak as they are then.
    pub(crate) fn transition(
        &self,
        expect: Option<u64>,
        target: Target,
        reason: Reason,
        now: u64,
        obs: &dyn Observer,
    ) -> bool {
        let change = {
            let mut episode = self.episode.lock().unwrap_or_else(|p| p.into_inner());
            let mut w = self.load();
            if expect.is_some_and(|e| e != w.epoch()) {
                return false;
            }
            let policy_trip = matches!(
                reason,
                Reason::ConsecutiveFailures | Reason::FailureRate | Reason::SlowCallRate
            );
            let reason = if policy_trip {
                let counts = self.window.counts(now);
                let consecutive = self.consecutive.load(Ordering::Acquire);
                match self.config.policy.evaluate(&counts, consecutive) {
                    // A trip that would refuse calls (not a shadow one, not
                    // while disabled or already forced open) may be held back.
                    Some(reason) if w.mode() == NORMAL && !obs.may_trip(reason) => return false,
                    Some(reason) => reason,
                    None => return false,
                }
            } else {
                reason
            };
            let snapshot = self.snapshot_of(w, now);
            let (machine, mode) = match target {
                // The machine closing itself keeps an override (shadow mode);
                // closing by hand lifts it.
                Target::Closed if reason != Reason::Manual => (CLOSED, w.mode()),
                Target::Closed | Target::Reset => (CLOSED, self.base_mode),
                Target::Open => (OPEN, w.mode()),
                Target::HalfOpen => (HALF_OPEN, w.mode()),
                Target::Disabled => (w.machine(), DISABLED),
                Target::ForcedOpen => (w.machine(), FORCED_OPEN),
                Target::MetricsOnly => (CLOSED, METRICS_ONLY),
            };
            let mut open_for = None;
            if target == Target::Open {
                let backoff = self
                    .config
                    .backoff
                    .duration(episode.attempt, || self.jitter.next());
                let hint = Duration::from_nanos(self.hint.swap(0, Ordering::AcqRel));
                let d = backoff.max(hint);
                episode.attempt = episode.attempt.saturating_add(1);
                self.open_until.store(
                    now.saturating_add(crate::clock::duration_nanos(d)),
                    Ordering::Release,
                );
                open_for = Some(d);
            }
            self.phase_since.store(now, Ordering::Release);
            // Only permit and success counts change outside the lock, and they
            // are reset here, so retry until the word is ours.
            let next = loop {
                let next = Word(Word::new(machine, mode, w.epoch().wrapping_add(1)).0 | SETTLING);
                match self
                    .word
                    .compare_exchange(w.0, next.0, Ordering::SeqCst, Ordering::Acquire)
                {
                    Ok(_) => break next,
                    Err(actual) => w = Word(actual),
                }
            };
            self.drain(w.epoch());
            // A hint is one epoch's: given by a call that was still inside
            // the gate when the epoch ended, it counts for this opening;
            // otherwise it goes.
            let late = self.hint.swap(0, Ordering::AcqRel);
            if let (Some(d), true) = (open_for, late != 0) {
                let d = d.max(Duration::from_nanos(late));
                self.open_until.store(
                    now.saturating_add(crate::clock::duration_nanos(d)),
                    Ordering::Release,
                );
                open_for = Some(d);
            }
            if machine == CLOSED
                && (w.machine() != CLOSED
                    || matches!(target, Target::Closed | Target::Reset | Target::MetricsOnly))
            {
                self.window.clear();
                self.below_minimum.store(true, Ordering::Relaxed);
                self.consecutive.store(0, Ordering::Release);
                episode.attempt = 0;
            }
            if target == Target::Reset {
                episode.left_closed_at = None;
                self.rejected.store(0, Ordering::Release);
                self.shadow_rejected.store(0, Ordering::Release);
            }
            // Settled: writers of the new epoch may go.
            self.word.fetch_and(!SETTLING, Ordering::SeqCst);
            let shadow = w.mode() == METRICS_ONLY && next.mode() == METRICS_ONLY;
            let (from, to) = if shadow {
                (w.machine_state(), next.machine_state())
            } else {
                (w.state(), next.state())
            };
            let mut recovery = None;
            if !shadow {
                if matches!(to, State::Open | State::ForcedOpen) && episode.left_closed_at.is_none()
                {
                    episode.left_closed_at = Some(now);
                }
                if to == State::Closed {
                    recovery = episode
                        .left_closed_at
                        .take()
                        .map(|at| Duration::from_nanos(now.saturating_sub(at)));
                }
            }
            let change = StateChange {
                from,
                to,
                reason,
                snapshot,
                shadow,
                recovery,
                open_for,
                service: obs.name(),
            };
            obs.on_transition_locked(&change);
            change
        };
        obs.on_transition(change);
        true
    }

    /// A snapshot at `now`.
    pub(crate) fn snapshot(&self, now: u64) -> Snapshot {
        self.snapshot_of(self.load(), now)
    }

    fn snapshot_of(&self, w: Word, now: u64) -> Snapshot {
        let counts: Counts = self.window.counts(now);
        let consecutive = self.consecutive.load(Ordering::Acquire);
        let open_remaining = (w.machine() == OPEN).then(|| {
            Duration::from_nanos(self.open_until.load(Ordering::Acquire).saturating_sub(now))
        });
        Snapshot {
            state: w.state(),
            machine_state: w.machine_state(),
            calls: counts.calls,
            failures: counts.failures,
            slow_calls: counts.slow,
            failure_rate: counts.failure_rate(),
            slow_call_rate: counts.slow_call_rate(),
            consecutive_failures: consecutive,
            half_open_probes: w.admitted(),
            half_open_successes: w.successes(),
            rejected: self.rejected.load(Ordering::Acquire),
            shadow_rejected: self.shadow_rejected.load(Ordering::Acquire),
            open_remaining,
            trip_risk: if w.machine() == CLOSED {
                self.config.policy.trip_risk(&counts, consecutive)
            } else {
                1.0
            },
        }
    }
}

/// Waits a little: spins first, then yields to the thread it waits for.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_reasons_display_as_their_label_values() {
        assert_eq!(State::HalfOpen.to_string(), "half_open");
        assert_eq!(State::MetricsOnly.to_string(), "metrics_only");
        assert_eq!(Reason::FailureRate.to_string(), "failure_rate");
        for state in State::ALL {
            assert_eq!(state.to_string(), state.as_str());
        }
    }

    #[test]
    fn a_refusal_keeps_its_state_and_time_left_exactly() {
        let huge = [
            (1 << 61) - 1,
            1 << 61,
            u64::MAX - 1_234_567_891,
            u64::MAX - 2,
        ];
        for left in [1, 2, 20_000_000_000, (1 << 61) - 2]
            .into_iter()
            .chain(huge)
        {
            let refusal = Refusal::open(left);
            assert_eq!((refusal.state(), refusal.left()), (State::Open, left));
        }
        // Past 584 years, 584 years; never 0, never taken for another state.
        for left in [u64::MAX - 1, u64::MAX] {
            assert_eq!(Refusal::open(left).left(), u64::MAX - 2);
        }
        assert_eq!(Refusal::open(0).left(), 1);
        for (refusal, state) in [
            (Refusal::half_open(), State::HalfOpen),
            (Refusal::forced_open(), State::ForcedOpen),
        ] {
            assert_eq!((refusal.state(), refusal.left()), (state, NO_RETRY_AFTER));
        }
    }

    use crate::classify::FailureKind;
    use crate::window::CountWindow;

    struct Quiet;

    impl Observer for Quiet {
        fn on_transition_locked(&self, _: &StateChange) {}
        fn on_transition(&self, _: StateChange) {}
    }

    fn machine(consecutive: u32) -> Machine {
        let config = MachineConfig {
            policy: Policy {
                consecutive_failures: Some(consecutive),
                failure_rate: None,
                slow_call_rate: None,
                slow_call_duration: None,
                minimum_calls: 1,
            },
            half_open: HalfOpen {
                permits: 1,
                successes: 1,
                max_wait: None,
            },
            backoff: Backoff::fixed(Duration::from_secs(5)),
            retry_after_cap: Duration::from_secs(300),
        };
        Machine::new(config, Window::Count(CountWindow::new(10)), 7)
    }

    fn ticket(m: &Machine) -> Ticket {
        match m.admit(|| 0, &Quiet) {
            Admission::Permitted(ticket) => ticket,
            other => panic!("not admitted: {other:?}"),
        }
    }

    const FAILED: Outcome = Outcome::Failure(FailureKind::ERROR);

    /// A call in flight across 2^24 transitions: with the old 24-bit epoch
    /// the epoch came round again, the call was judged current, and its
    /// late failure tripped the breaker.
    #[test]
    fn an_epoch_does_not_come_round_after_2_pow_24_transitions() {
        let m = machine(1);
        let old = ticket(&m);
        let m = m.at_epoch(old.epoch() + (1 << 24));
        assert!(!m.is_current(old));
        assert!(!m.record(old, FAILED, 0, 0, &Quiet));
        assert_eq!(m.state(), State::Closed, "a stale failure must not trip");
        // The epoch carries past 2^24 and 2^32 in the word and the ticket.
        for start in [(1u64 << 24) - 1, (1u64 << 32) - 1, EPOCH_MASK - 1] {
            let m = machine(1).at_epoch(start);
            assert!(m.transition(None, Target::Disabled, Reason::Manual, 0, &Quiet));
            assert!(m.transition(None, Target::Closed, Reason::Manual, 0, &Quiet));
            let t = ticket(&m);
            assert_eq!(t.epoch(), (start + 2) & EPOCH_MASK);
            assert!(m.is_current(t) && m.stands(t));
            m.record(t, FAILED, 0, 0, &Quiet);
            assert_eq!(m.state(), State::Open, "from epoch {start}");
        }
    }

    /// A Retry-After hint from a call of an older epoch, or an unjudged
    /// one, must not stretch the next open duration.
    #[test]
    fn hints_count_only_in_their_own_epoch() {
        let m = machine(1);
        let old = ticket(&m);
        m.transition(None, Target::Disabled, Reason::Manual, 0, &Quiet);
        let unjudged = ticket(&m);
        m.hint(unjudged, Duration::from_secs(200));
        m.transition(None, Target::Closed, Reason::Manual, 0, &Quiet);
        m.hint(old, Duration::from_secs(100));
        m.record(ticket(&m), FAILED, 0, 0, &Quiet);
        assert_eq!(m.snapshot(0).open_remaining, Some(Duration::from_secs(5)));

        // A current call's hint counts, and ends with its epoch.
        let m = machine(1);
        let current = ticket(&m);
        m.hint(current, Duration::from_secs(100));
        m.record(current, FAILED, 0, 0, &Quiet);
        assert_eq!(m.snapshot(0).open_remaining, Some(Duration::from_secs(100)));
    }

    /// An outcome writing while a transition ends its epoch cannot land in
    /// the new epoch: the transition bumps the epoch, waits for the writers
    /// still inside the gate, and only then clears. Here the write comes
    /// after the bump (the transition is parked waiting for it), so with the
    /// old order (clear, then bump, no wait) it would have survived.
    #[test]
    fn a_write_racing_a_transition_never_lands_in_the_new_epoch() {
        let m = Arc::new(machine(100));
        let t = ticket(&m);
        let written = m.gated(t, |_| {
            let transition = {
                let m = m.clone();
                std::thread::spawn(move || {
                    m.transition(None, Target::Closed, Reason::Manual, 0, &Quiet)
                })
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while m.is_current(t) {
                assert!(std::time::Instant::now() < deadline, "no transition");
                std::thread::yield_now();
            }
            // The epoch has moved on, and the transition waits for us.
            assert!(!transition.is_finished());
            m.consecutive.fetch_add(1, Ordering::AcqRel);
            m.window.record(
                Sample {
                    failure: true,
                    slow: false,
                },
                0,
            );
            transition
        });
        assert!(written.expect("current when it entered").join().unwrap());
        let snapshot = m.snapshot(0);
        assert_eq!((snapshot.calls, snapshot.failures), (0, 0));
        assert_eq!(snapshot.consecutive_failures, 0);
        // After the bump, the gate turns old tickets away.
        assert_eq!(m.gated(t, |_| ()), None);
    }

    /// An outcome of the new epoch, recorded while the transition that
    /// began it is still resetting, waits for the reset: it is neither
    /// judged against the old streak nor erased with it. (Published before
    /// the reset, the new state let a failure right after a recovery re-trip
    /// a breaker on the streak that tripped it before.)
    #[test]
    fn a_new_epoch_write_waits_for_the_reset() {
        let m = Arc::new(machine(4));
        for _ in 0..3 {
            m.record(ticket(&m), FAILED, 0, 0, &Quiet);
        }
        assert_eq!(m.consecutive_failures(), 3);
        let t = ticket(&m);
        let (transition, writer) = m
            .gated(t, |_| {
                let transition = {
                    let m = m.clone();
                    std::thread::spawn(move || {
                        m.transition(None, Target::Closed, Reason::Manual, 0, &Quiet)
                    })
                };
                while m.is_current(t) {
                    std::thread::yield_now();
                }
                // Published, settling, and waiting for this old writer.
                let fresh = ticket(&m);
                let writer = {
                    let m = m.clone();
                    std::thread::spawn(move || m.record(fresh, FAILED, 0, 0, &Quiet))
                };
                for _ in 0..100_000 {
                    if writer.is_finished() {
                        break;
                    }
                    std::thread::yield_now();
                }
                assert!(!writer.is_finished(), "wrote before the reset");
                (transition, writer)
            })
            .unwrap();
        assert!(transition.join().unwrap());
        assert!(writer.join().unwrap());
        assert_eq!(m.state(), State::Closed, "one failure after the reset");
        assert_eq!(m.consecutive_failures(), 1);
        assert_eq!(m.snapshot(0).failures, 1);
    }
}
