//! Choosing a stripe: which of several per-core counter copies this thread
//! writes, so that threads on different cores do not write the same cache line.
//!
//! With `std`, each thread is given a stripe once, round-robin, and keeps it in
//! a thread-local: two threads land on different stripes until there are more
//! threads than stripes. Without `std` (and under loom, whose threads share one
//! OS thread) the stripe is derived from the address of a stack slot, which
//! differs between threads because each has its own stack. Under loom it is a
//! hash of loom's thread id, which is deterministic across executions.
//!
//! A stripe is only a hint for spreading writes: correctness never depends on
//! which stripe a thread picks, or on two threads picking different ones.

/// How many stripes striped structures keep. A power of two.
#[cfg(not(tenlives_loom))]
pub(crate) const STRIPES: usize = 8;
/// Under loom, two stripes keep the models small while still letting two
/// threads write different stripes or share one.
#[cfg(tenlives_loom)]
pub(crate) const STRIPES: usize = 2;

/// The stripe this thread writes, in `0..STRIPES`.
#[inline]
pub(crate) fn current() -> usize {
    imp::current()
}

#[cfg(all(feature = "std", not(tenlives_loom)))]
mod imp {
    use super::STRIPES;
    use core::cell::Cell;
    use core::sync::atomic::{AtomicUsize, Ordering};

    const UNASSIGNED: usize = usize::MAX;
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    std::thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(UNASSIGNED) };
    }

    #[inline]
    pub(super) fn current() -> usize {
        STRIPE.with(|s| {
            let v = s.get();
            if v != UNASSIGNED {
                return v;
            }
            // ordering: Relaxed; the counter only spreads threads, it guards no data.
            let v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(v);
            v
        })
    }
}

#[cfg(tenlives_loom)]
mod imp {
    use super::STRIPES;
    use core::fmt::Write;

    /// Folds the bytes written to it (FNV-1a).
    struct Fold(u64);

    impl Write for Fold {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            Ok(())
        }
    }

    /// loom numbers its threads deterministically within an execution, and
    /// shows only that number in `Debug` (its `Hash` also covers the execution,
    /// which differs every time). Hashing the `Debug` text gives every
    /// execution of a model the same stripes, as loom requires.
    pub(super) fn current() -> usize {
        let mut fold = Fold(0xcbf2_9ce4_8422_2325);
        let _ = write!(fold, "{:?}", loom::thread::current().id());
        (fold.0 as usize) % STRIPES
    }
}

#[cfg(all(not(feature = "std"), not(tenlives_loom)))]
mod imp {
    use super::STRIPES;

    #[inline]
    pub(super) fn current() -> usize {
        let marker = 0u8;
        let addr = core::ptr::addr_of!(marker) as usize;
        // Thread stacks sit at least 64 KiB apart; mix the bits above that so
        // neighbouring stacks fall on different stripes.
        let mixed = (addr >> 16).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize);
        (mixed >> (usize::BITS - STRIPES.trailing_zeros())) & (STRIPES - 1)
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    #[test]
    fn stripe_is_in_range_and_stable_per_thread() {
        let a = super::current();
        assert!(a < super::STRIPES);
        assert_eq!(a, super::current());
    }

    #[cfg(feature = "std")]
    #[test]
    fn threads_spread_over_stripes() {
        let mut seen = [false; super::STRIPES];
        let handles: std::vec::Vec<_> = (0..super::STRIPES)
            .map(|_| std::thread::spawn(super::current))
            .collect();
        for h in handles {
            seen[h.join().unwrap()] = true;
        }
        // Round-robin assignment: any STRIPES consecutive new threads cover every
        // stripe unless other tests created threads concurrently; at least two differ.
        assert!(seen.iter().filter(|s| **s).count() >= 2);
    }
}
