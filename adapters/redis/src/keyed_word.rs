//! The keyed limiter's slot word: a key's lease tokens and the slot's
//! generation in one `u64`, so that a request takes a token only if the
//! slot still holds the key it found.
//!
//! | bits | field | written by |
//! |---|---|---|
//! | 32..64 | generation, bumped when the slot's key is evicted (wraps) | the task |
//! | 0..32 | lease tokens of the slot's key | requests (take one at a generation), the task (grant, take out) |
//!
//! This file is self-contained on purpose, like `lease.rs`: its atomics come
//! through the cfg shim below, and the loom model
//! (`loom-tests/tests/loom_redis_keyed.rs`) compiles this very file with
//! `--cfg tenlives_loom`.

#[cfg(not(tenlives_loom))]
use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(tenlives_loom)]
use loom::sync::atomic::{AtomicU64, Ordering};

const TOKENS: u64 = (1 << 32) - 1;

#[inline]
fn gen_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// A slot's generation and lease tokens.
#[derive(Debug)]
pub(crate) struct SlotWord {
    word: AtomicU64,
}

impl SlotWord {
    /// Generation 0, no tokens.
    pub(crate) fn new() -> Self {
        SlotWord {
            word: AtomicU64::new(0),
        }
    }

    /// The generation, read by a request *before* it reads the slot's key.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        // ordering: Acquire; pairs with the Release of `evict`: a request
        // that reads the new generation also reads the key pointer the task
        // nulled before it bumped the generation (or a newer one), never the
        // evicted key.
        gen_of(self.word.load(Ordering::Acquire))
    }

    /// Takes one token of generation `generation` (the request path).
    #[inline]
    pub(crate) fn take(&self, generation: u32) -> bool {
        // ordering: Relaxed; the generation and the count are one word, so
        // the compare-and-swap itself checks the token is still the key's.
        self.word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (gen_of(w) == generation && w & TOKENS > 0).then(|| w - 1)
            })
            .is_ok()
    }

    /// Adds a grant to the current generation (the task, which alone
    /// changes the generation). Saturates at `2^32 − 1` tokens (a lease is
    /// at most the burst, a `u32`).
    pub(crate) fn grant(&self, n: u64) {
        // ordering: Relaxed; a count.
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some((w & !TOKENS) | ((w & TOKENS) + n).min(TOKENS))
            });
    }

    /// Takes out the tokens above `keep` and returns how many (the task).
    pub(crate) fn take_above(&self, keep: u64) -> u64 {
        // ordering: Relaxed; see `take`.
        self.word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w & TOKENS > keep).then_some((w & !TOKENS) | keep)
            })
            .map_or(0, |w| (w & TOKENS) - keep)
    }

    /// Moves to the next generation with no tokens and returns the tokens
    /// taken out (the task, after it nulled the slot's key).
    pub(crate) fn evict(&self) -> u64 {
        // ordering: Relaxed for the read (only the task changes the
        // generation); Release on the swap: see `generation`.
        let next = u64::from(gen_of(self.word.load(Ordering::Relaxed)).wrapping_add(1)) << 32;
        self.word.swap(next, Ordering::Release) & TOKENS
    }

    /// The tokens held now (a snapshot).
    #[inline]
    pub(crate) fn held(&self) -> u64 {
        // ordering: Relaxed; a snapshot.
        self.word.load(Ordering::Relaxed) & TOKENS
    }
}
