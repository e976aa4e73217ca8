//! The keyed limiter's default hasher.
//!
//! [`DefaultHashBuilder`] is foldhash's seeded `fast::RandomState` when the
//! engine's `foldhash` feature is on (the tokio and ops adapters turn it on)
//! and `std`'s `RandomState` (SipHash-1-3, seeded per table) when it is off,
//! so that the engine itself needs no hashing crate. It is a newtype rather
//! than a type alias on purpose: Cargo unifies features across a build, so
//! a crate that named the alias's target directly would stop compiling when
//! another crate in the same build turned `foldhash` on. Code that names
//! `DefaultHashBuilder` compiles either way.

use core::fmt;
use core::hash::{BuildHasher, Hasher};

#[cfg(feature = "foldhash")]
type Inner = foldhash::fast::RandomState;
#[cfg(not(feature = "foldhash"))]
type Inner = std::collections::hash_map::RandomState;

/// The default [`BuildHasher`] of [`KeyedRateLimiter`](super::KeyedRateLimiter):
/// randomly seeded per value. foldhash with the engine's `foldhash` feature,
/// else `std`'s SipHash-1-3 `RandomState`. Both are seeded at random, so an
/// attacker who does not know the seed cannot aim keys at one bucket; for a
/// hasher with a stronger guarantee, pass your own to
/// [`KeyedRateLimiter::with_hasher_and_sink`](super::KeyedRateLimiter::with_hasher_and_sink).
#[derive(Clone, Default)]
pub struct DefaultHashBuilder(Inner);

impl fmt::Debug for DefaultHashBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultHashBuilder").finish_non_exhaustive()
    }
}

impl BuildHasher for DefaultHashBuilder {
    type Hasher = KeyHasher;

    #[inline]
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0.build_hasher())
    }
}

/// The [`Hasher`] that [`DefaultHashBuilder`] builds.
#[derive(Clone)]
pub struct KeyHasher(<Inner as BuildHasher>::Hasher);

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher").finish_non_exhaustive()
    }
}

// Every method forwards, so that the inner hasher's own fast paths for
// fixed-width integers (foldhash has them) are kept.
impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i);
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.0.write_u16(i);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.0.write_u32(i);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.0.write_u128(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0.write_usize(i);
    }
    #[inline]
    fn write_i8(&mut self, i: i8) {
        self.0.write_i8(i);
    }
    #[inline]
    fn write_i16(&mut self, i: i16) {
        self.0.write_i16(i);
    }
    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.0.write_i32(i);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.0.write_i64(i);
    }
    #[inline]
    fn write_i128(&mut self, i: i128) {
        self.0.write_i128(i);
    }
    #[inline]
    fn write_isize(&mut self, i: isize) {
        self.0.write_isize(i);
    }
}

#[cfg(test)]
mod tests {
    use super::DefaultHashBuilder;
    use core::hash::BuildHasher;

    #[test]
    fn one_builder_hashes_equal_keys_equally_and_others_apart() {
        let b = DefaultHashBuilder::default();
        assert_eq!(b.hash_one(42u64), b.hash_one(42u64));
        assert_eq!(b.hash_one("alice"), b.hash_one("alice"));
        assert_eq!(b.clone().hash_one(7u32), b.hash_one(7u32));
        // Distinct small keys: a hasher that dropped its input would give
        // one value for all of them.
        let hashes: std::collections::BTreeSet<u64> = (0u64..64).map(|k| b.hash_one(k)).collect();
        assert_eq!(hashes.len(), 64);
    }

    #[test]
    fn builders_are_seeded_apart() {
        // Two builders agreeing on 64 keys would mean a fixed seed.
        let (a, b) = (DefaultHashBuilder::default(), DefaultHashBuilder::default());
        assert!((0u64..64).any(|k| a.hash_one(k) != b.hash_one(k)));
    }
}
