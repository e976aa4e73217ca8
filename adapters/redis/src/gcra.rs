//! The server-side decision: a Lua script run atomically by Redis on its own
//! clock, and the exact Rust reference it is tested against.
//!
//! # Arithmetic
//!
//! A quota of `rate` tokens per `period` emits one token every
//! `T = period / rate`. Redis's clock (`TIME`) ticks in microseconds, so with
//! `P / R` the fraction `period_µs / rate` in lowest terms, `T = P / R` µs
//! exactly. The script counts time ahead of `now` in units of `1 / R` µs, in
//! which `T` is the whole number `P`: nothing is ever rounded, so a rate that
//! does not divide the period (3 a second: `T = 333 333 + 1/3` µs) never
//! drifts.
//!
//! The key holds the theoretical arrival time `TAT = us + fr / R` µs (fields
//! `us`, `fr`, and `r = R`). With `t` the server's `TIME` in µs and
//! `x = max(TAT, t) − t` in units of `1 / R` µs, a request for `n` tokens is
//! admitted iff `x + n·P ≤ b·P` — the GCRA rule `max(TAT, t) + n·T − t ≤ b·T`
//! multiplied by `R`. The script grants the largest `k ≤ want` that passes
//! (nothing when that is below `min`), and stores `TAT' = t + (x + k·P) / R`.
//! Tokens given back first lower `TAT` by `ret·T` (never below `t`: a full
//! bucket holds the burst and no more).
//!
//! Lua 5.1 (Redis's) has only doubles, exact on integers below 2^53. `t` in
//! µs stays below 2^53 until the year 2255; every other quantity is at most
//! `b·P` (checked below 2^53 when the limiter is built and again by the
//! script), and every division is an integer division corrected by one step
//! (`divmod`), so the script's results are exact. Numbers are written into
//! Redis with `%.0f`, not Lua's default `%.14g`, which would round a 16-digit
//! microsecond time.

use core::time::Duration;

use redis::Script;
use tenlives_engine::ConfigError;
use tenlives_engine::rate::Quota;

/// The largest integer a double (Lua 5.1's only number type) holds exactly.
pub const LUA_EXACT_MAX: u64 = (1 << 53) - 1;

/// The Lua source of the decision script. `KEYS[1]`: the quota's key.
/// `ARGV`: `P`, `R`, `b`, `want`, `min`, `ret` (see the module
/// documentation). Returns `{granted, x, wait_µs, now_µs}`: `x` the time the
/// bucket is booked ahead of `now` afterwards (units of `1 / R` µs), `wait`
/// how long until `min` tokens could be granted when none were (`-1`: never,
/// `min > b`; `0` when something was granted).
pub const SCRIPT: &str = r#"
local function int(v)
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) or n < 0 or n > 9007199254740991 then return nil end
  return n
end
local function divmod(a, d)
  local q = math.floor(a / d)
  local r = a - q * d
  if r < 0 then q = q - 1; r = r + d elseif r >= d then q = q + 1; r = r - d end
  return q, r
end
local P, R, b = int(ARGV[1]), int(ARGV[2]), int(ARGV[3])
local want, min, ret = int(ARGV[4]), int(ARGV[5]), int(ARGV[6])
if not (P and R and b and want and min and ret) or P < 1 or R < 1 or b < 1
   or min > want or b * P > 9007199254740991 or want > b or ret > b then
  return redis.error_reply('ERR tenlives: bad arguments')
end
local bp = b * P
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local st = redis.call('HMGET', KEYS[1], 'us', 'fr', 'r')
local x = 0
local us = int(st[1])
if st[1] and not (us and int(st[2]) and int(st[3])) then
  return redis.error_reply('ERR tenlives: malformed state in ' .. KEYS[1])
end
if us then
  local fr = int(st[2])
  local r = int(st[3])
  if r ~= R then
    if fr > 0 then us = us + 1 end
    fr = 0
  end
  if us > now then
    x = (us - now) * R + fr
  elseif us == now then
    x = fr
  end
  if x > 2 * bp then x = 2 * bp end
end
x = x - ret * P
if x < 0 then x = 0 end
local avail = 0
if x < bp then avail = divmod(bp - x, P) end
local k = want
if avail < k then k = avail end
if k < min then k = 0 end
x = x + k * P
local wait = 0
if k == 0 and min > 0 then
  if min > b then
    wait = -1
  else
    local q, r = divmod(x + min * P - bp, R)
    if r > 0 then q = q + 1 end
    wait = q
  end
end
if x == 0 then
  redis.call('DEL', KEYS[1])
else
  local q, r = divmod(x, R)
  redis.call('HSET', KEYS[1], 'us', string.format('%.0f', now + q),
    'fr', string.format('%.0f', r), 'r', string.format('%.0f', R))
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.floor(q / 1000) + 1))
end
return {k, x, wait, now}
"#;

/// The script, ready for `EVALSHA` (with an `EVAL` fallback on `NOSCRIPT`,
/// e.g. after a Redis restart).
pub fn script() -> Script {
    Script::new(SCRIPT)
}

/// A global quota in the script's units: `T = p / r` µs, burst `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcraParams {
    /// Numerator of `T` in µs (lowest terms).
    pub p: u64,
    /// Denominator of `T` in µs (lowest terms).
    pub r: u64,
    /// Burst, in tokens.
    pub b: u64,
}

fn gcd(mut x: u64, mut y: u64) -> u64 {
    while y != 0 {
        let t = x % y;
        x = y;
        y = t;
    }
    x
}

impl GcraParams {
    /// The parameters of `quota`, whose period must be a whole number of
    /// microseconds (Redis's clock) and whose `b·P` must stay below 2^53
    /// (Lua's exact integers).
    ///
    /// # Errors
    ///
    /// [`ConfigError::TooLarge`] for a period with a fraction of a
    /// microsecond (field `period`, value its nanoseconds) or for a `b·P`
    /// beyond 2^53 (field `burst * period / gcd(rate, period)`).
    pub fn from_quota(quota: &Quota) -> Result<Self, ConfigError> {
        let period_ns = u64::try_from(quota.period().as_nanos()).unwrap_or(u64::MAX);
        if period_ns % 1_000 != 0 {
            return Err(ConfigError::TooLarge {
                field: "period (must be whole microseconds)",
                value: period_ns,
                max: period_ns - period_ns % 1_000,
            });
        }
        let period_us = period_ns / 1_000;
        let rate = u64::from(quota.rate());
        let g = gcd(period_us, rate);
        let (p, r) = (period_us / g, rate / g);
        let b = u64::from(quota.burst());
        match b.checked_mul(p) {
            Some(bp) if bp <= LUA_EXACT_MAX => Ok(GcraParams { p, r, b }),
            _ => Err(ConfigError::TooLarge {
                field: "burst * period_us / gcd(rate, period_us)",
                value: b.saturating_mul(p),
                max: LUA_EXACT_MAX,
            }),
        }
    }

    /// `T`, rounded down to a nanosecond (for display and bounds).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(((u128::from(self.p) * 1_000) / u128::from(self.r)) as u64)
    }
}

/// One script call's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Tokens granted.
    pub granted: u64,
    /// How far the bucket is booked ahead of `now` afterwards, in units of
    /// `1 / R` µs.
    pub ahead: u64,
    /// When nothing was granted: µs until `min` tokens could be (`None`:
    /// never, `min` exceeds the burst). `Some(0)` otherwise.
    pub wait_us: Option<u64>,
    /// The server's time of the decision, in µs since the Unix epoch.
    pub now_us: u64,
}

impl Reply {
    /// Parses the script's `{granted, x, wait, now}`.
    pub(crate) fn from_values(v: &[i64]) -> Option<Reply> {
        match *v {
            [k, x, w, now] if k >= 0 && x >= 0 && now >= 0 && w >= -1 => Some(Reply {
                granted: k as u64,
                ahead: x as u64,
                wait_us: u64::try_from(w).ok(),
                now_us: now as u64,
            }),
            _ => None,
        }
    }
}

/// The exact reference model: the GCRA rule applied with 128-bit integers to
/// an absolute theoretical arrival time, in units of `1 / R` µs since the
/// Unix epoch — no relative times, no doubles, so it checks the script's
/// arithmetic rather than repeating it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reference {
    /// `TAT · R`, or `None` before the first grant.
    tat: Option<u128>,
}

impl Reference {
    /// A fresh quota: the bucket is full.
    pub fn new() -> Self {
        Reference::default()
    }

    /// Decides `(want, min, ret)` at `now_us` exactly as the script must.
    pub fn decide(&mut self, q: &GcraParams, now_us: u64, want: u64, min: u64, ret: u64) -> Reply {
        let (p, r, b) = (u128::from(q.p), u128::from(q.r), u128::from(q.b));
        let t = u128::from(now_us) * r;
        // Give back first: TAT − ret·T, never below now.
        let tat = self.tat.unwrap_or(0).saturating_sub(u128::from(ret) * p);
        let start = tat.max(t);
        // Admitted iff start + k·T − t ≤ b·T, i.e. k ≤ (b·P − (start − t)) / P.
        let room = (b * p).saturating_sub(start - t) / p;
        let mut k = u128::from(want).min(room);
        if k < u128::from(min) {
            k = 0;
        }
        let new_tat = start + k * p;
        self.tat = Some(new_tat);
        let wait_us = if k == 0 && min > 0 {
            if min > q.b {
                None
            } else {
                // Smallest whole µs w with TAT + min·T − b·T ≤ t + w.
                let need = (new_tat + u128::from(min) * p).saturating_sub(b * p + t);
                Some(need.div_ceil(r) as u64)
            }
        } else {
            Some(0)
        };
        Reply {
            granted: k as u64,
            ahead: (new_tat - t) as u64,
            wait_us,
            now_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_in_lowest_terms() {
        let q = Quota::per_second(3).unwrap();
        let p = GcraParams::from_quota(&q).unwrap();
        assert_eq!((p.p, p.r, p.b), (1_000_000, 3, 3));
        let q = Quota::new(1_000, Duration::from_millis(100)).unwrap();
        let p = GcraParams::from_quota(&q).unwrap();
        assert_eq!((p.p, p.r), (100, 1));
        assert_eq!(p.emission_interval(), Duration::from_micros(100));
    }

    #[test]
    fn sub_microsecond_periods_and_huge_bursts_are_refused() {
        let q = Quota::new(1, Duration::from_nanos(1_500)).unwrap();
        assert!(GcraParams::from_quota(&q).is_err());
        let q = Quota::per_hour(1).unwrap().with_burst(u32::MAX).unwrap();
        assert!(GcraParams::from_quota(&q).is_err());
    }

    #[test]
    fn reference_follows_the_gcra_rule() {
        // 3 per second, burst 2: T = 333 333 1/3 µs.
        let q =
            GcraParams::from_quota(&Quota::per_second(3).unwrap().with_burst(2).unwrap()).unwrap();
        let mut m = Reference::new();
        let t0 = 1_000_000_000;
        assert_eq!(m.decide(&q, t0, 5, 1, 0).granted, 2);
        let r = m.decide(&q, t0, 1, 1, 0);
        assert_eq!(r.granted, 0);
        // One token appears T later: 333 333.33 µs, so 333 334 whole µs.
        assert_eq!(r.wait_us, Some(333_334));
        assert_eq!(m.decide(&q, t0 + 333_333, 1, 1, 0).granted, 0);
        assert_eq!(m.decide(&q, t0 + 333_334, 1, 1, 0).granted, 1);
        // Giving one back makes exactly one available again.
        assert_eq!(m.decide(&q, t0 + 333_334, 0, 0, 1).granted, 0);
        assert_eq!(m.decide(&q, t0 + 333_334, 2, 1, 0).granted, 1);
        // min above the burst: never.
        assert_eq!(m.decide(&q, t0 + 333_334, 3, 3, 0).wait_us, None);
    }

    #[test]
    fn reference_never_exceeds_burst_plus_elapsed_over_t() {
        let q = GcraParams::from_quota(
            &Quota::new(7, Duration::from_millis(3))
                .unwrap()
                .with_burst(4)
                .unwrap(),
        )
        .unwrap();
        let mut m = Reference::new();
        let t0 = 5_000_000u64;
        let mut granted = 0u128;
        let mut t = t0;
        for i in 0..10_000u64 {
            t += (i * 7919) % 311;
            granted += u128::from(m.decide(&q, t, 1 + i % 4, 1, 0).granted);
            // granted ≤ b + (t − t0) / T = b + (t − t0)·R / P.
            let bound = u128::from(q.b) + u128::from(t - t0) * u128::from(q.r) / u128::from(q.p);
            assert!(granted <= bound, "{granted} > {bound} at {t}");
        }
    }
}
