//! loom model of the keyed fleet limiter's slot
//! (adapters/redis/src/keyed_word.rs, `SlotWord`, and the key pointer
//! protocol of adapters/redis/src/keyed.rs).
//!
//! The word is the limiter's own file, compiled here through `#[path]`
//! with loom's atomics. The key pointer is a crossbeam-epoch `Atomic` in
//! the limiter; here it is a loom `AtomicUsize` holding a key id (0: none),
//! read and written with the orderings `keyed.rs` uses: a request reads the
//! generation (`SlotWord::generation`, Acquire) *before* the key (Acquire)
//! and takes only at that generation; the task evicts by nulling the key
//! (AcqRel) and then `SlotWord::evict` (Release), and installs the next
//! key by storing it (Release) and granting its tokens.
//!
//! F6 (docs/guarantees.md): a request of key A never takes a token granted
//! for key B, and every token of A is spent by a request of A or taken out
//! by the eviction, exactly once. Preemption bound 3.
#![cfg(tenlives_loom)]

#[allow(dead_code)]
#[path = "../../adapters/redis/src/keyed_word.rs"]
mod keyed_word;

use keyed_word::SlotWord;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use tenlives_loom_tests::model;

const A: usize = 1;
const B: usize = 2;

struct Slot {
    word: SlotWord,
    key: AtomicUsize,
}

/// A request for `key`, as `KShared::find` then `try_acquire_at` make it:
/// true when it took a token.
fn request(slot: &Slot, key: usize) -> bool {
    let generation = slot.word.generation();
    slot.key.load(Ordering::Acquire) == key && slot.word.take(generation)
}

/// Key A holds `lease` tokens; two requests of A race the task evicting A
/// (and, with `reinstall`, installing B with one token).
fn race(lease: u64, reinstall: bool) {
    model(3, move || {
        let slot = Arc::new(Slot {
            word: SlotWord::new(),
            key: AtomicUsize::new(A),
        });
        slot.word.grant(lease);
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let slot = slot.clone();
                thread::spawn(move || u64::from(request(&slot, A)))
            })
            .collect();
        // The task: evict A, then maybe install B.
        slot.key.swap(0, Ordering::AcqRel);
        let returned = slot.word.evict();
        if reinstall {
            slot.key.store(B, Ordering::Release);
            slot.word.grant(1);
        }
        let spent: u64 = requests.into_iter().map(|t| t.join().unwrap()).sum();
        // A's tokens: spent by A's requests or taken out, exactly once.
        assert_eq!(
            spent + returned,
            lease,
            "spent {spent} returned {returned} lease {lease}"
        );
        // B's token is untouched by A's requests.
        let expected = u64::from(reinstall);
        assert_eq!(slot.word.held(), expected, "B's token taken by A");
    });
}

/// Two requests of A racing A's eviction: A's 2 tokens are spent or given
/// back, exactly once.
#[test]
fn requests_race_an_eviction() {
    race(2, false);
}

/// Two requests of A racing A's eviction and B's install in the same slot:
/// B's token is never taken by a request of A.
#[test]
fn requests_of_an_evicted_key_never_take_the_next_key_s_tokens() {
    race(1, true);
}
