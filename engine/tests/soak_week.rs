//! S1: a week of traffic in virtual time. A seeded load with daily cycles
//! (quiet nights, busy days, a ten-minute spike a day), an upstream that
//! fails outright for minutes once a day and another that turns slow for an
//! hour once a day, and configuration changes at run time, all driven
//! through every engine primitive on a [`ManualClock`]: keyed and direct
//! GCRA rate limiters, a client-side throttle, two circuit breakers (count
//! window and time window), an admission queue over a bulkhead, AIMD and
//! gradient adaptive limiters, a retry budget with jittered backoff, a timer
//! wheel for call deadlines and one event ring that every primitive reports
//! to. Single-threaded and deterministic for a seed.
//!
//! Checked at every simulated second and at the end (after the calls still
//! in flight have drained):
//! - conservation: every permit the driver holds is the primitive's count
//!   (bulkhead, adaptive limiters, breaker probes, queue waiters, timer
//!   entries), and everything is back to zero at the end; events emitted =
//!   consumed + reported lost;
//! - no drift: a key polled to refusal every simulated second has been
//!   granted exactly `burst + rate × elapsed` (within one token) over the
//!   week; every retry the budget grants keeps its window's withdrawals
//!   within `ratio × deposits + reserve`;
//! - memory flat: the bytes live on the heap at the end of each simulated day
//!   stay within `SLACK` of the first day's (the keyed table, the rings and
//!   the driver's own queues are warm by then).
//!
//! The load averages about 2 requests per simulated second, about 1.2
//! million a week (see `docs/soak.md` for the figures and the time it takes).

#![cfg(not(miri))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tenlives_engine::adaptive::{AdaptiveLimiter, Aimd, Gradient, WindowConfig};
use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome, RawPermit};
use tenlives_engine::bulkhead::{Bulkhead, RawBulkheadPermit};
use tenlives_engine::events::{EventKind, EventRing, Received, Slot};
use tenlives_engine::queue::{AdmissionQueue, QueueConfig, QueuePermit, Waiter};
use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimiter, WhenFull};
use tenlives_engine::retry::{Backoff, BackoffIter, RetryBudget, RetryBudgetConfig};
use tenlives_engine::throttle::{Throttle, ThrottleConfig, ThrottleTicket};
use tenlives_engine::time::{Clock, ManualClock, Timestamp};
use tenlives_engine::timer::{TimerEntry, TimerWheel};

struct Tracking;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only
// tracks live bytes on the side, without allocating.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

const SEC: u64 = 1_000_000_000;
const MINUTE: u64 = 60;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;
const DAYS: u64 = 7;
/// Where the clock starts: a year in, so nothing leans on time zero.
const T0: u64 = 365 * DAY * SEC;
/// A call that has not answered after this long times out (its timer fires).
const CALL_TIMEOUT: u64 = 2 * SEC;
/// How long a caller waits in the admission queue at most.
const QUEUE_WAIT: u64 = 300_000_000;
/// Bytes the heap may differ by between the end of the first day and the end
/// of any later one: epoch bags in flight, never per-request state (a week is
/// 1.2 million requests; a leak of even one byte each would show).
const SLACK: isize = 64 * 1024;
/// Room the driver reserves for its own queues, so that it allocates
/// nothing after the start (asserted).
const DRIVER_ROOM: usize = 1 << 14;
/// Client keys of the keyed limiter, against a table of `KEYED_CAPACITY`.
const CLIENTS: u64 = 2_000;
const KEYED_CAPACITY: usize = 512;
/// The key polled to refusal every simulated second: it saturates.
const SATURATED_KEY: u64 = 0;

type Sink = Arc<EventRing<Box<[Slot]>>>;
type Queue = AdmissionQueue<Bulkhead<Sink>, Sink>;
type Hasher = BuildHasherDefault<DefaultHasher>;

/// SplitMix64: the load generator's randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + ((u128::from(self.next()) * u128::from(hi - lo + 1)) >> 64) as u64
    }
    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.between(0, 999) < per_mille
    }
}

/// What happens on one simulated day, drawn from the seed.
#[derive(Clone, Copy, Debug)]
struct DayPlan {
    /// Second of the day the ten-minute spike starts.
    spike: u64,
    /// Upstream A fails every call from here for `outage_len` seconds.
    outage: u64,
    outage_len: u64,
    /// Upstream B answers in 1.2 to 2.6 s for an hour from here.
    slow: u64,
}

impl DayPlan {
    fn draw(rng: &mut Rng) -> Self {
        DayPlan {
            spike: rng.between(10 * HOUR, 16 * HOUR),
            outage: rng.between(8 * HOUR, 20 * HOUR),
            outage_len: rng.between(5 * MINUTE, 20 * MINUTE),
            slow: rng.between(6 * HOUR, 18 * HOUR),
        }
    }
}

/// Requests per simulated second, in thousandths, at second `s` of a day:
/// 0.3 a second at night, ramping to 3 by 09:00, back down from 18:00 to
/// midnight, 30 a second during the spike.
fn load_milli(plan: &DayPlan, s: u64) -> u64 {
    if (plan.spike..plan.spike + 10 * MINUTE).contains(&s) {
        return 30_000;
    }
    let night = 300;
    let day = 3_000;
    match s {
        s if s < 6 * HOUR => night,
        s if s < 9 * HOUR => night + (day - night) * (s - 6 * HOUR) / (3 * HOUR),
        s if s < 18 * HOUR => day,
        s => day - (day - night) * (s - 18 * HOUR) / (6 * HOUR),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    /// Behind breaker A (count window) and the admission queue.
    A,
    /// Behind breaker B (time window) and the AIMD limiter.
    BAimd,
    /// Behind breaker B and the gradient limiter.
    BGradient,
}

/// A request's retry state: how many retries so far and its backoff.
struct Retry {
    attempt: u32,
    backoff: BackoffIter,
}

/// The limit permit a call holds.
enum Limit<'a> {
    Queue(QueuePermit<'a, Bulkhead<Sink>, Sink>),
    Adaptive(RawBulkheadPermit),
}

struct Call<'a> {
    upstream: Upstream,
    started: u64,
    breaker: RawPermit,
    limit: Limit<'a>,
    ticket: ThrottleTicket<'a, Sink>,
    timer: TimerEntry,
    failed: bool,
    timed_out: bool,
    retry: Option<Retry>,
}

/// A caller waiting in the admission queue for upstream A.
struct Pending<'a> {
    waiter: Waiter<'a, Bulkhead<Sink>, Sink>,
    breaker: RawPermit,
    ticket: ThrottleTicket<'a, Sink>,
    retry: Option<Retry>,
}

enum Job<'a> {
    Arrival(Option<Retry>),
    Done(Call<'a>),
    Tick,
}

/// The driver's view: what it holds and what it counted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    arrivals: u64,
    retries_scheduled: u64,
    retries_arrived: u64,
    keyed_refused: u64,
    rate_refused: u64,
    throttled: u64,
    breaker_rejected: u64,
    queue_full: u64,
    queue_timed_out: u64,
    adaptive_full: u64,
    calls_started: u64,
    calls_done: u64,
    calls_failed: u64,
    calls_timed_out: u64,
    budget_refused: u64,
    retries_exhausted: u64,
    /// Permits held by calls in flight, per limit.
    in_flight_queue: u32,
    in_flight_aimd: u32,
    in_flight_gradient: u32,
    timers_registered: u64,
    timers_cancelled: u64,
    timers_fired: u64,
    saturated_granted: u64,
    config_changes: u64,
    config_events_read: u64,
    /// Seconds at which a breaker was half-open, its probes checked.
    half_open_checks: u64,
    events_read: u64,
    events_lost: u64,
    deposits: u64,
    withdrawals: u64,
}

struct Schedule<'a> {
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slab: Vec<Option<Job<'a>>>,
    free: Vec<usize>,
    seq: u64,
}

impl<'a> Schedule<'a> {
    fn new() -> Self {
        Schedule {
            heap: BinaryHeap::with_capacity(DRIVER_ROOM),
            slab: Vec::with_capacity(DRIVER_ROOM),
            free: Vec::with_capacity(DRIVER_ROOM),
            seq: 0,
        }
    }
    fn at(&mut self, t: u64, job: Job<'a>) {
        let index = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(job);
                i
            }
            None => {
                self.slab.push(Some(job));
                self.slab.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, index)));
    }
    fn next_time(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }
    fn pop(&mut self) -> (u64, Job<'a>) {
        let Reverse((t, _, index)) = self.heap.pop().expect("a job");
        let job = self.slab[index].take().expect("a scheduled job");
        self.free.push(index);
        (t, job)
    }
    /// The driver's reserved room still suffices (so it never allocated).
    fn assert_within_room(&self) {
        assert!(self.heap.capacity() == DRIVER_ROOM && self.slab.capacity() == DRIVER_ROOM);
    }
}

fn breaker_a(window: u32, rate: f64) -> BreakerConfig {
    BreakerConfig::builder()
        .count_window(window)
        .failure_rate(rate)
        .minimum_calls(20)
        .open_duration(Duration::from_secs(5))
        .open_backoff(2.0, Duration::from_secs(60))
        .half_open_probes(3)
        .build()
        .unwrap()
}

fn breaker_b(window: Duration, buckets: u32) -> BreakerConfig {
    BreakerConfig::builder()
        .time_window(window, buckets)
        .failure_rate(50.0)
        .slow_calls(50.0, Duration::from_secs(1))
        .minimum_calls(10)
        .open_duration(Duration::from_secs(10))
        .half_open_probes(2)
        .build()
        .unwrap()
}

fn aimd(min: u32, max: u32) -> Aimd {
    Aimd::builder()
        .limits(min, min, max)
        .latency_threshold(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn gradient(min: u32, max: u32) -> Gradient {
    Gradient::builder().limits(min, min, max).build().unwrap()
}

fn budget(ratio: f64) -> RetryBudgetConfig {
    RetryBudgetConfig::builder()
        .ratio(ratio)
        .min_per_second(1)
        .build()
        .unwrap()
}

fn throttle(k: f64, seed: u64) -> ThrottleConfig {
    ThrottleConfig::builder().k(k).seed(seed).build().unwrap()
}

fn day_quota() -> Quota {
    Quota::per_second(8).unwrap().with_burst(40).unwrap()
}

fn night_quota() -> Quota {
    Quota::new(5, Duration::from_secs(3))
        .unwrap()
        .with_burst(10)
        .unwrap()
}

/// Pins and flushes the epoch collector (replaced quotas and configurations
/// are freed through it) until the heap stops shrinking; the bytes live.
fn settle() -> isize {
    let mut live = LIVE.load(Ordering::SeqCst);
    for _ in 0..1_000 {
        crossbeam_epoch::pin().flush();
        let now = LIVE.load(Ordering::SeqCst);
        if now >= live {
            break;
        }
        live = now;
    }
    LIVE.load(Ordering::SeqCst)
}

#[allow(clippy::too_many_lines)]
/// Runs `days` simulated days from `seed` and checks them; what the driver
/// counted.
fn soak(seed: u64, days: u64) -> Counts {
    let mut rng = Rng(seed);
    let clock = ManualClock::starting_at(Timestamp::from_nanos(T0));
    let at = |s: u64| Timestamp::from_nanos(s);
    // Small enough that the spike overwrites events before the drain (every
    // ten simulated seconds) reads them: the loss reports are exercised.
    let ring: Sink = Arc::new(EventRing::with_capacity(256).unwrap());
    let mut consumer = ring.consumer();

    let keyed_quota = Quota::per_second(1).unwrap().with_burst(5).unwrap();
    let keyed: KeyedRateLimiter<u64, Hasher, Sink> = KeyedRateLimiter::with_hasher_and_sink(
        KeyedConfig::new(keyed_quota, KEYED_CAPACITY)
            .unwrap()
            .when_full(WhenFull::Admit),
        Hasher::default(),
        Arc::clone(&ring),
        1,
    );
    let direct = RateLimiter::with_sink(day_quota(), Arc::clone(&ring), 2);
    let throttle_k = [2.0, 1.5];
    let thr = Throttle::with_sink(throttle(throttle_k[0], seed), Arc::clone(&ring), 3);
    let a_configs = [breaker_a(100, 50.0), breaker_a(200, 60.0)];
    let brk_a = CircuitBreaker::with_sink(a_configs[0].clone(), Arc::clone(&ring), 4);
    let b_configs = [
        breaker_b(Duration::from_secs(60), 6),
        breaker_b(Duration::from_secs(30), 3),
    ];
    let brk_b = CircuitBreaker::with_sink(b_configs[0].clone(), Arc::clone(&ring), 5);
    let queue: Queue = AdmissionQueue::with_sink(
        Bulkhead::with_sink(2, Arc::clone(&ring), 6).unwrap(),
        QueueConfig::fifo(16).unwrap(),
        Arc::clone(&ring),
        7,
    );
    let window = WindowConfig::new(Duration::from_secs(1), 5).unwrap();
    let now0 = clock.now();
    let lim_aimd = AdaptiveLimiter::from_parts(
        aimd(2, 20),
        window,
        now0,
        Bulkhead::with_sink(2, Arc::clone(&ring), 8).unwrap(),
    );
    let lim_grad = AdaptiveLimiter::from_parts(
        gradient(2, 20),
        window,
        now0,
        Bulkhead::with_sink(2, Arc::clone(&ring), 9).unwrap(),
    );
    let budget_ratios = [0.2, 0.1];
    let retry_budget = RetryBudget::with_sink(budget(budget_ratios[0]), Arc::clone(&ring), 10);
    let backoff = Backoff::full_jitter(Duration::from_millis(50), 2.0, Duration::from_secs(5))
        .unwrap()
        .with_max_retries(3);
    let wheel = TimerWheel::new(256, Duration::from_millis(1)).unwrap();
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);

    let mut n = Counts::default();
    let mut sched = Schedule::new();
    let mut waiting: Vec<Pending<'_>> = Vec::with_capacity(DRIVER_ROOM);
    let mut offsets: Vec<u64> = Vec::with_capacity(DRIVER_ROOM);
    let mut plans = [DayPlan::draw(&mut rng); DAYS as usize];
    for p in plans.iter_mut().skip(1) {
        *p = DayPlan::draw(&mut rng);
    }
    let mut first_day_heap: Option<isize> = None;
    let mut saturated_since: Option<u64> = None;
    let end = T0 + days * DAY * SEC;

    sched.at(T0, Job::Tick);
    // Starts a call on `upstream` holding `limit`: its timer, its end.
    macro_rules! start_call {
        ($now:expr, $upstream:expr, $breaker:expr, $limit:expr, $ticket:expr, $retry:expr) => {{
            let now: u64 = $now;
            let upstream: Upstream = $upstream;
            let limit: Limit<'_> = $limit;
            let day = ((now - T0) / (DAY * SEC)) as usize;
            let s = (now - T0) / SEC % DAY;
            let plan = &plans[day.min(plans.len() - 1)];
            let (latency, failed) = match upstream {
                Upstream::A => {
                    let down = (plan.outage..plan.outage + plan.outage_len).contains(&s);
                    (rng.between(100, 900) * 1_000_000, down || rng.chance(20))
                }
                _ => {
                    let slow = (plan.slow..plan.slow + HOUR).contains(&s);
                    let ms = if slow {
                        rng.between(1_200, 2_600)
                    } else {
                        rng.between(10, 120)
                    };
                    (ms * 1_000_000, rng.chance(10))
                }
            };
            let deadline = now + CALL_TIMEOUT;
            let timer = wheel
                .register(at(deadline), waker)
                .expect("a timer entry free")
                .entry;
            n.timers_registered += 1;
            // A call that outlives its deadline ends when its timer fires:
            // on the wheel's 1 ms grid, rounded up.
            let timed_out = latency >= CALL_TIMEOUT;
            let ends = if timed_out {
                deadline.div_ceil(1_000_000) * 1_000_000
            } else {
                now + latency
            };
            match &limit {
                Limit::Queue(_) => n.in_flight_queue += 1,
                Limit::Adaptive(_) if upstream == Upstream::BAimd => n.in_flight_aimd += 1,
                Limit::Adaptive(_) => n.in_flight_gradient += 1,
            }
            n.calls_started += 1;
            sched.at(
                ends,
                Job::Done(Call {
                    upstream,
                    started: now,
                    breaker: $breaker,
                    limit,
                    ticket: $ticket,
                    timer,
                    failed,
                    timed_out,
                    retry: $retry,
                }),
            );
        }};
    }

    // Polls the queue's waiters: starts the calls granted, drops the rest.
    macro_rules! poll_waiters {
        ($now:expr) => {{
            let now: u64 = $now;
            let mut i = 0;
            while i < waiting.len() {
                match waiting[i].waiter.poll_permit(&mut cx, at(now)) {
                    Poll::Pending => i += 1,
                    Poll::Ready(verdict) => {
                        let p = waiting.swap_remove(i);
                        match verdict {
                            Ok(permit) => start_call!(
                                now,
                                Upstream::A,
                                p.breaker,
                                Limit::Queue(permit),
                                p.ticket,
                                p.retry
                            ),
                            Err(_) => {
                                n.queue_timed_out += 1;
                                brk_a.release(p.breaker);
                                drop(p.ticket);
                            }
                        }
                    }
                }
            }
        }};
    }

    let drain_events = |consumer: &mut tenlives_engine::events::Consumer<'_, Box<[Slot]>>,
                        n: &mut Counts| {
        while let Some(r) = consumer.try_recv() {
            match r {
                Received::Event(e) => {
                    n.events_read += 1;
                    // The adaptive limiters' own limit moves are
                    // bulkhead limit changes too: only the queue's
                    // bulkhead (source 6) is changed by the driver.
                    if e.kind == EventKind::CONFIG_CHANGED
                        || (e.kind == EventKind::BULKHEAD_LIMIT_CHANGED && e.source == 6)
                    {
                        n.config_events_read += 1;
                    }
                }
                Received::Lost(k) => n.events_lost += k,
                other => panic!("unexpected {other:?}"),
            }
        }
    };

    // The direct limiter's current quota, since when, and what it admitted
    // since: never more than a burst plus the tokens the time since brought.
    let mut era = (day_quota(), T0, 0u64);
    while let Some(t) = sched.next_time() {
        let now_ts = clock.advance_to(at(t));
        assert_eq!(now_ts.as_nanos(), t, "the schedule never goes back");
        // Timers first: a call whose deadline is now finds its timer fired.
        if wheel.next_due().is_some_and(|d| d.as_nanos() <= t) {
            n.timers_fired += wheel.expire(now_ts).fired as u64;
        }
        let (t, job) = sched.pop();
        match job {
            Job::Tick => {
                let sec = (t - T0) / SEC;
                let s = sec % DAY;
                let day = (sec / DAY) as usize;
                // The saturated key: polled to refusal every second.
                while keyed.check_key(&SATURATED_KEY, now_ts).is_ok() {
                    n.saturated_granted += 1;
                }
                let since = *saturated_since.get_or_insert(t);
                if queue.waiting() > 0 {
                    queue.expire(now_ts);
                }
                poll_waiters!(t);
                if sec.is_multiple_of(MINUTE) {
                    keyed.sweep(now_ts);
                }
                if sec.is_multiple_of(10) {
                    drain_events(&mut consumer, &mut n);
                }
                if sec.is_multiple_of(HOUR) {
                    let hour = s / HOUR;
                    // Configuration changes at run time.
                    match hour {
                        7 => {
                            direct.set_quota(day_quota(), now_ts);
                            era = (day_quota(), t, 0);
                            queue.source().set_limit(3).unwrap();
                            queue.dispatch();
                            poll_waiters!(t);
                            n.config_changes += 2;
                        }
                        21 => {
                            direct.set_quota(night_quota(), now_ts);
                            era = (night_quota(), t, 0);
                            queue.source().set_limit(2).unwrap();
                            n.config_changes += 2;
                        }
                        12 => {
                            let i = 1 - day % 2;
                            brk_a.set_config(a_configs[i].clone(), now_ts);
                            brk_b.set_config(b_configs[i].clone(), now_ts);
                            retry_budget.set_config(budget(budget_ratios[i]), now_ts);
                            thr.set_config(throttle(throttle_k[i], seed ^ day as u64), now_ts);
                            let (lo, hi) = if i == 1 { (4, 40) } else { (2, 20) };
                            lim_aimd.set_algorithm(aimd(lo, hi), now_ts);
                            lim_grad.set_algorithm(gradient(lo, hi), now_ts);
                            n.config_changes += 6;
                        }
                        _ => {}
                    }
                    drain_events(&mut consumer, &mut n);
                    sched.assert_within_room();
                    assert!(waiting.capacity() == DRIVER_ROOM);
                    assert_eq!(
                        ring.emitted(),
                        n.events_read + n.events_lost,
                        "events emitted = consumed + reported lost"
                    );
                }
                // Every simulated second: what the driver holds is what the
                // primitives count, and no drift.
                n.half_open_checks += check_conservation(
                    &n, &queue, &lim_aimd, &lim_grad, &brk_a, &brk_b, &waiting, &sched, now_ts,
                );
                let elapsed = Duration::from_nanos(t - since);
                let expected = u64::from(keyed_quota.burst()) + keyed_quota.tokens_by(elapsed);
                assert!(
                    n.saturated_granted.abs_diff(expected) <= 1,
                    "drift at second {sec}: the saturated key got {} tokens, rate x time + burst is {expected}",
                    n.saturated_granted
                );
                assert!(keyed.in_use() <= KEYED_CAPACITY, "the keyed table grew");
                let (quota, since, admitted) = era;
                let bound =
                    u64::from(quota.burst()) + quota.tokens_by(Duration::from_nanos(t - since));
                assert!(
                    admitted <= bound,
                    "the direct limiter admitted {admitted} under {quota:?} since {since}, past {bound}"
                );
                if sec.is_multiple_of(DAY) && sec > 0 {
                    let live = settle();
                    let first = *first_day_heap.get_or_insert(live);
                    eprintln!(
                        "soak: day {} heap {live} bytes ({:+} from day 1), {} requests, {} calls, {} events ({} lost)",
                        sec / DAY,
                        live - first,
                        n.arrivals,
                        n.calls_started,
                        ring.emitted(),
                        n.events_lost
                    );
                    assert!(
                        live - first <= SLACK,
                        "heap grew by {} bytes between day 1 and day {}",
                        live - first,
                        sec / DAY
                    );
                }
                if t < end {
                    // The next second's arrivals, at random instants in it.
                    let plan = &plans[day.min(plans.len() - 1)];
                    let milli = load_milli(plan, s);
                    let mut k = milli / 1_000;
                    if rng.between(0, 999) < milli % 1_000 {
                        k += 1;
                    }
                    offsets.clear();
                    offsets.extend((0..k).map(|_| rng.between(0, SEC - 1)));
                    for &o in &offsets {
                        sched.at(t + o, Job::Arrival(None));
                    }
                    sched.at(t + SEC, Job::Tick);
                } else if !sched.heap.is_empty() || !waiting.is_empty() {
                    // Draining: ticks go on until the last call is done.
                    sched.at(t + SEC, Job::Tick);
                }
            }
            Job::Arrival(retry) => {
                let is_retry = retry.is_some();
                if is_retry {
                    n.retries_arrived += 1;
                } else {
                    n.arrivals += 1;
                    retry_budget.deposit(now_ts);
                    n.deposits += 1;
                    // Two thirds of the traffic from ten busy clients, the
                    // rest spread over the others.
                    let client = if rng.chance(667) {
                        rng.between(1, 10)
                    } else {
                        rng.between(11, CLIENTS)
                    };
                    if keyed.check_key(&client, now_ts).is_err() {
                        n.keyed_refused += 1;
                        continue;
                    }
                }
                if direct.check(now_ts).is_err() {
                    n.rate_refused += 1;
                    continue;
                }
                era.2 += 1;
                let Ok(ticket) = thr.try_admit(now_ts) else {
                    n.throttled += 1;
                    continue;
                };
                let upstream = match rng.between(0, 9) {
                    0..=5 => Upstream::A,
                    6 | 7 => Upstream::BAimd,
                    _ => Upstream::BGradient,
                };
                if upstream == Upstream::A {
                    let Ok(permit) = brk_a.try_acquire_raw(now_ts) else {
                        n.breaker_rejected += 1;
                        continue;
                    };
                    if let Ok(q) = queue.try_acquire() {
                        start_call!(t, upstream, permit, Limit::Queue(q), ticket, retry);
                        continue;
                    }
                    match queue.enqueue(0, at(t + QUEUE_WAIT), waker) {
                        Ok(waiter) => {
                            waiting.push(Pending {
                                waiter,
                                breaker: permit,
                                ticket,
                                retry,
                            });
                            poll_waiters!(t);
                        }
                        Err(_) => {
                            n.queue_full += 1;
                            brk_a.release(permit);
                        }
                    }
                } else {
                    let Ok(permit) = brk_b.try_acquire_raw(now_ts) else {
                        n.breaker_rejected += 1;
                        continue;
                    };
                    let granted = if upstream == Upstream::BAimd {
                        lim_aimd.try_acquire(now_ts).map(|p| p.into_raw())
                    } else {
                        lim_grad.try_acquire(now_ts).map(|p| p.into_raw())
                    };
                    match granted {
                        Ok(raw) => {
                            start_call!(t, upstream, permit, Limit::Adaptive(raw), ticket, retry)
                        }
                        Err(_) => {
                            n.adaptive_full += 1;
                            brk_b.release(permit);
                        }
                    }
                }
            }
            Job::Done(call) => {
                let Call {
                    upstream,
                    started,
                    breaker,
                    limit,
                    ticket,
                    timer,
                    failed,
                    timed_out,
                    retry,
                } = call;
                assert_eq!(
                    wheel.fired(&timer),
                    timed_out,
                    "the timer fired exactly for the calls past their deadline"
                );
                wheel.cancel(timer);
                n.timers_cancelled += 1;
                n.calls_done += 1;
                let bad = failed || timed_out;
                if timed_out {
                    n.calls_timed_out += 1;
                }
                if bad {
                    n.calls_failed += 1;
                }
                let outcome = if bad {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                match upstream {
                    Upstream::A => brk_a.record(breaker, outcome, now_ts),
                    _ => brk_b.record(breaker, outcome, now_ts),
                }
                if bad {
                    ticket.refused(now_ts);
                } else {
                    ticket.accepted(now_ts);
                }
                let rtt = (!bad).then_some(t - started);
                match limit {
                    Limit::Queue(permit) => {
                        n.in_flight_queue -= 1;
                        drop(permit);
                        poll_waiters!(t);
                    }
                    Limit::Adaptive(raw) if upstream == Upstream::BAimd => {
                        n.in_flight_aimd -= 1;
                        lim_aimd.complete_raw(raw, rtt, now_ts);
                    }
                    Limit::Adaptive(raw) => {
                        n.in_flight_gradient -= 1;
                        lim_grad.complete_raw(raw, rtt, now_ts);
                    }
                }
                if bad && t < end {
                    // Retry with backoff, if the budget allows.
                    let mut r = retry.unwrap_or_else(|| Retry {
                        attempt: 0,
                        backoff: backoff.iter(rng.next()),
                    });
                    match r.backoff.next() {
                        None => n.retries_exhausted += 1,
                        Some(delay) => {
                            if retry_budget.try_withdraw(now_ts) {
                                n.withdrawals += 1;
                                let c = retry_budget.counts(now_ts);
                                let config = retry_budget.config();
                                assert!(
                                    c.withdrawals * 1_000_000
                                        <= c.deposits * u64::from(config.ratio_ppm())
                                            + u64::from(config.reserve()) * 1_000_000,
                                    "the retry budget granted past its ratio: {c:?} under {config:?}"
                                );
                                r.attempt += 1;
                                assert!(r.attempt <= 3, "backoff stops after its retries");
                                n.retries_scheduled += 1;
                                sched.at(t + delay.as_nanos() as u64, Job::Arrival(Some(r)));
                            } else {
                                n.budget_refused += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    // The end: everything drained, everything back.
    let now_ts = clock.now();
    queue.expire(now_ts);
    poll_waiters!(now_ts.as_nanos());
    drain_events(&mut consumer, &mut n);
    assert!(waiting.is_empty(), "callers still waiting at the end");
    check_conservation(
        &n, &queue, &lim_aimd, &lim_grad, &brk_a, &brk_b, &waiting, &sched, now_ts,
    );
    assert_eq!(
        n.in_flight_queue + n.in_flight_aimd + n.in_flight_gradient,
        0
    );
    assert_eq!(queue.source().in_flight(), 0, "queue permits back");
    // Queue slots back: with every permit held, a full capacity of callers
    // finds a place, and the next is refused only because the queue is full.
    let held: Vec<_> = (0..queue.source().limit())
        .map(|_| queue.try_acquire().expect("a free permit"))
        .collect();
    let full: Vec<_> = (0..queue.config().capacity())
        .map(|_| {
            queue
                .enqueue(0, Timestamp::MAX, waker)
                .expect("a free slot")
        })
        .collect();
    assert!(
        queue.enqueue(0, Timestamp::MAX, waker).is_err(),
        "a full queue refuses"
    );
    assert_eq!(queue.waiting(), queue.config().capacity());
    drop(full);
    drop(held);
    assert_eq!((queue.waiting(), queue.source().in_flight()), (0, 0));
    drain_events(&mut consumer, &mut n); // what that check reported
    assert_eq!(lim_aimd.in_flight(), 0, "AIMD permits back");
    assert_eq!(lim_grad.in_flight(), 0, "gradient permits back");
    for b in [&brk_a, &brk_b] {
        let snap = b.snapshot(now_ts);
        assert!(
            snap.state != BreakerState::HalfOpen || snap.probes_admitted == snap.probes_reported,
            "breaker probes back to zero: {snap:?}"
        );
    }
    // `next_due` may still name a cancelled timer's tick; a sweep finds
    // nothing armed.
    let sweep = wheel.expire(Timestamp::MAX);
    assert_eq!(
        (sweep.fired, sweep.next),
        (0, None),
        "no timer armed at the end"
    );
    assert_eq!(
        n.timers_registered, n.timers_cancelled,
        "every timer given back"
    );
    assert_eq!(
        n.timers_fired, n.calls_timed_out,
        "a timer fired for each call that timed out"
    );
    assert_eq!(n.calls_started, n.calls_done, "every call ended");
    assert_eq!(
        n.retries_scheduled, n.retries_arrived,
        "every retry scheduled arrived"
    );
    assert_eq!(
        ring.emitted(),
        n.events_read + n.events_lost,
        "events emitted = consumed + reported lost"
    );
    assert_eq!(consumer.cursor(), ring.emitted());
    let since = saturated_since.expect("ticks ran");
    let expected = u64::from(keyed_quota.burst())
        + keyed_quota.tokens_by(now_ts.saturating_duration_since(at(since)));
    assert!(
        n.saturated_granted.abs_diff(expected) <= 1,
        "drift over the run: the saturated key got {} tokens, rate x time + burst is {expected}",
        n.saturated_granted
    );
    // Each change emits one event, which was read or is among those lost.
    assert!(
        n.config_events_read <= n.config_changes
            && n.config_events_read + n.events_lost >= n.config_changes,
        "one event per configuration change: {} read for {} changes",
        n.config_events_read,
        n.config_changes
    );
    // Every request ended somewhere.
    let first_attempts_out = n.keyed_refused;
    let attempts = n.arrivals + n.retries_arrived - first_attempts_out;
    assert_eq!(
        attempts,
        n.rate_refused
            + n.throttled
            + n.breaker_rejected
            + n.queue_full
            + n.queue_timed_out
            + n.adaptive_full
            + n.calls_started,
        "every attempt is accounted for: {n:#?}"
    );
    n
}

/// The driver's holdings against the primitives' counts; how many breakers
/// were half-open (their probes checked).
#[allow(clippy::too_many_arguments)]
fn check_conservation(
    n: &Counts,
    queue: &Queue,
    lim_aimd: &AdaptiveLimiter<Aimd, Sink>,
    lim_grad: &AdaptiveLimiter<Gradient, Sink>,
    brk_a: &CircuitBreaker<Sink>,
    brk_b: &CircuitBreaker<Sink>,
    waiting: &[Pending<'_>],
    sched: &Schedule<'_>,
    now: Timestamp,
) -> u64 {
    let mut half_open = 0;
    assert_eq!(
        queue.source().in_flight(),
        n.in_flight_queue,
        "the bulkhead behind the queue counts the permits the calls hold"
    );
    assert_eq!(lim_aimd.in_flight(), n.in_flight_aimd, "AIMD permits");
    assert_eq!(
        lim_grad.in_flight(),
        n.in_flight_gradient,
        "gradient permits"
    );
    assert_eq!(
        queue.waiting() as usize,
        waiting.len(),
        "queue slots: the queue's waiters are the driver's"
    );
    assert_eq!(
        n.timers_registered - n.timers_cancelled,
        u64::from(n.in_flight_queue + n.in_flight_aimd + n.in_flight_gradient),
        "timer entries: one per call in flight"
    );
    // Probes: admitted and unreported = the probes the driver holds.
    for (b, is_a) in [(brk_a, true), (brk_b, false)] {
        let snap = b.snapshot(now);
        if snap.state != BreakerState::HalfOpen {
            continue;
        }
        half_open += 1;
        let generation = b.generation();
        let mut held = 0;
        for job in sched.slab.iter().flatten() {
            if let Job::Done(c) = job
                && (c.upstream == Upstream::A) == is_a
                && c.breaker.is_probe()
                && c.breaker.generation() == generation
            {
                held += 1;
            }
        }
        if is_a {
            held += waiting
                .iter()
                .filter(|p| p.breaker.is_probe() && p.breaker.generation() == generation)
                .count();
        }
        assert_eq!(
            (snap.probes_admitted - snap.probes_reported) as usize,
            held,
            "breaker probes in flight: {snap:?}"
        );
    }
    half_open
}

#[test]
fn a_week_of_traffic_in_virtual_time() {
    const SEED: u64 = 0x05EE_D0FA_3EEC;
    // Deterministic for a seed: a day, twice, counts the same.
    let started = Instant::now();
    assert_eq!(soak(SEED, 1), soak(SEED, 1), "the same seed, the same day");
    eprintln!("soak: two simulated days took {:?}", started.elapsed());

    let started = Instant::now();
    let n = soak(SEED, DAYS);
    eprintln!(
        "soak: a simulated week took {:?}: {n:#?}",
        started.elapsed()
    );
    // The load and the episodes happened: the checks above had work to see.
    assert!(n.arrivals > 1_000_000, "a week's load: {n:?}");
    assert!(
        n.calls_failed > 0 && n.calls_timed_out > 0,
        "failures and timeouts: {n:?}"
    );
    assert!(
        n.breaker_rejected > 0 && n.rate_refused > 0 && n.keyed_refused > 0,
        "{n:?}"
    );
    assert!(
        n.queue_timed_out > 0 && n.throttled > 0 && n.budget_refused > 0,
        "{n:?}"
    );
    assert!(n.events_lost > 0 && n.retries_arrived > 0, "{n:?}");
    assert!(
        n.half_open_checks > 0,
        "half-open breakers were seen: {n:?}"
    );
}
