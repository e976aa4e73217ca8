//! Guarantee L7 of the keyed rate limiter (`docs/guarantees.md`), in a test
//! binary of its own: its 100 000-key tables pin the epoch on every check,
//! and a test that shares a process with it could see its own reclamation
//! held back while this thread is descheduled.

use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota, RateLimitError};
use tenlives_engine::time::Timestamp;

/// L7: a table of `capacity` entries takes `capacity` distinct keys at one
/// instant (no evictions possible) without running out of room: the keys
/// spread over the buckets even when their hashes are weak in the low bits
/// (sequential integers through foldhash); a chain has no length limit, so
/// only a full arena refuses. Deterministic: fixed hasher seeds.
#[test]
fn a_table_holds_its_capacity_in_live_keys() {
    use foldhash::fast::FixedState;
    use tenlives_engine::events::NoSink;
    let quota = Quota::per_second(1).unwrap();
    for seed in 0..8u64 {
        let config = KeyedConfig::new(quota, 100_000).unwrap();
        let limiter =
            KeyedRateLimiter::with_hasher_and_sink(config, FixedState::with_seed(seed), NoSink, 0);
        let now = Timestamp::ZERO;
        let refused = (0..100_000u64)
            .filter(|k| limiter.check_key(k, now).is_err())
            .count();
        assert_eq!(refused, 0, "seed {seed}: {refused} keys found no room");
        assert_eq!(limiter.in_use(), 100_000);
        assert_eq!(
            limiter.check_key(&100_000, now),
            Err(RateLimitError::TableFull)
        );
    }
}
