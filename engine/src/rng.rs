//! A small seedable pseudo-random generator for jitter: SplitMix64.
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014; the public-domain reference is Vigna's
//! `splitmix64.c`) is one 64-bit add and a 64-bit finaliser per output. It
//! passes BigCrush, has a period of 2^64, and — what jitter needs — any two
//! seeds, even consecutive integers, give unrelated streams, because the
//! finaliser mixes the counter thoroughly. Its state is one `u64`, so a
//! backoff iterator stays small and `Copy`-cheap.
//!
//! Why not a crate: `rand_core` + `rand_xoshiro` (default features off) would
//! do, but jitter needs neither a cryptographic generator nor a huge period,
//! the whole algorithm is the eight lines below (checked against the
//! reference outputs in the tests), and keeping it here keeps `rand_core`'s
//! version out of the engine's public API and its dependency tree.

/// The SplitMix64 generator. Not for cryptography.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`.
    #[inline]
    pub(crate) const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi` (`lo <= hi`), by Lemire's widening multiply:
    /// no division, and a bias below `(hi - lo + 1) / 2^64`, which is
    /// invisible at nanosecond delays.
    #[inline]
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        let r = self.next_u64();
        match (hi - lo).checked_add(1) {
            Some(span) => lo + ((u128::from(r) * u128::from(span)) >> 64) as u64,
            None => r, // the whole u64 range
        }
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_outputs() {
        // The first outputs of the reference `splitmix64.c` seeded with 1234567.
        let mut g = SplitMix64::new(1_234_567);
        let expected = [
            6_457_827_717_110_365_317,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
            4_593_380_528_125_082_431,
            16_408_922_859_458_223_821,
        ];
        for e in expected {
            assert_eq!(g.next_u64(), e);
        }
    }

    #[test]
    fn between_stays_in_bounds_and_covers_them() {
        let mut g = SplitMix64::new(7);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let x = g.between(10, 14);
            assert!((10..=14).contains(&x));
            seen[(x - 10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(g.between(3, 3), 3);
        let _ = g.between(0, u64::MAX);
    }
}
