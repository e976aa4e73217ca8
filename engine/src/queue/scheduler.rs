//! The dispatcher's private state: one FIFO list of slot indices per class
//! and the deficit-round-robin cursor. Plain sequential code: only the holder
//! of the dispatcher role touches it (see `mod.rs`, "The dispatcher").
//!
//! The rule it implements (the module documentation states it for users):
//!
//! - the cursor stays on its class while that class has waiters and
//!   deficit left, serving its head;
//! - otherwise it moves to the next class, in index order and cyclically,
//!   that has waiters (possibly the same one again), and that class's
//!   deficit becomes its weight;
//! - each grant costs its class one unit of deficit; a class whose list
//!   becomes empty (by a grant, a shed, a cancellation or a timeout) has its
//!   deficit reset to 0. Removing a waiter that was not granted costs nothing.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::config::Overload;

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    /// Order of linking, across classes: for "oldest" and "newest".
    seq: u64,
    class: u8,
    linked: bool,
}

#[derive(Clone, Copy)]
struct Class {
    head: u32,
    tail: u32,
    len: u32,
    weight: u32,
    deficit: u32,
}

pub(super) struct Scheduler {
    links: Box<[Link]>,
    classes: Box<[Class]>,
    /// Bit `c` set iff class `c` has waiters.
    nonempty: u64,
    cursor: usize,
    len: usize,
    next_seq: u64,
    /// The mailbox position the dispatcher reads next.
    pub(super) mail_head: u64,
}

impl Scheduler {
    /// An empty scheduler for `slots` slots and one class per weight
    /// (at most 64).
    pub(super) fn new(slots: usize, weights: &[u32]) -> Self {
        let classes: Vec<Class> = weights
            .iter()
            .map(|&weight| Class {
                head: NIL,
                tail: NIL,
                len: 0,
                weight,
                deficit: 0,
            })
            .collect();
        let link = Link {
            prev: NIL,
            next: NIL,
            seq: 0,
            class: 0,
            linked: false,
        };
        Scheduler {
            links: alloc::vec![link; slots].into_boxed_slice(),
            // The first pick moves on from the last class to class 0.
            cursor: classes.len() - 1,
            classes: classes.into_boxed_slice(),
            nonempty: 0,
            len: 0,
            next_seq: 0,
            mail_head: 0,
        }
    }

    /// Waiters linked.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_linked(&self, slot: usize) -> bool {
        self.links[slot].linked
    }

    /// Appends `slot` to `class`'s list.
    pub(super) fn push(&mut self, slot: usize, class: usize) {
        debug_assert!(!self.links[slot].linked);
        let q = &mut self.classes[class];
        let tail = q.tail;
        self.links[slot] = Link {
            prev: tail,
            next: NIL,
            seq: self.next_seq,
            class: class as u8,
            linked: true,
        };
        self.next_seq += 1;
        if tail == NIL {
            q.head = slot as u32;
        } else {
            self.links[tail as usize].next = slot as u32;
        }
        q.tail = slot as u32;
        q.len += 1;
        self.nonempty |= 1 << class;
        self.len += 1;
    }

    /// Unlinks `slot`, which must be linked. Costs its class no deficit.
    pub(super) fn remove(&mut self, slot: usize) {
        let Link {
            prev, next, class, ..
        } = self.links[slot];
        debug_assert!(self.links[slot].linked);
        self.links[slot].linked = false;
        let class = usize::from(class);
        let q = &mut self.classes[class];
        if prev == NIL {
            q.head = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            q.tail = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
        q.len -= 1;
        if q.len == 0 {
            q.deficit = 0;
            self.nonempty &= !(1 << class);
        }
        self.len -= 1;
    }

    /// The slot to serve next, by the rule in the module documentation, or
    /// `None` if nobody is linked. Picking again without a grant or a removal
    /// in between returns the same slot.
    pub(super) fn pick(&mut self) -> Option<usize> {
        if self.nonempty == 0 {
            return None;
        }
        let current = &self.classes[self.cursor];
        if current.len == 0 || current.deficit == 0 {
            let next = self.next_nonempty_after(self.cursor);
            self.cursor = next;
            let q = &mut self.classes[next];
            q.deficit = q.weight;
        }
        Some(self.classes[self.cursor].head as usize)
    }

    /// Unlinks `slot`, just granted: it must be what `pick` returned.
    pub(super) fn served(&mut self, slot: usize) {
        debug_assert_eq!(usize::from(self.links[slot].class), self.cursor);
        debug_assert_eq!(self.classes[self.cursor].head as usize, slot);
        self.classes[self.cursor].deficit -= 1;
        self.remove(slot);
    }

    /// The next class with waiters strictly after `class`, cyclically
    /// (`class` itself if it is the only one). Needs `nonempty != 0`.
    fn next_nonempty_after(&self, class: usize) -> usize {
        let n = self.classes.len();
        // `class + 1` taken modulo `n`, and below the sum taken modulo `n`,
        // by a comparison: both are below `2n`, and a division here cost a
        // tenth of a pass's time.
        let shift = if class + 1 == n { 0 } else { class + 1 };
        // Rotate so that bit 0 is class `class + 1`; the classes above `n`
        // are never set, so only the low `n` bits matter.
        let rotated = if shift == 0 {
            self.nonempty
        } else {
            (self.nonempty >> shift) | (self.nonempty << (n - shift))
        };
        let mask = if n == 64 { u64::MAX } else { (1 << n) - 1 };
        let next = shift + (rotated & mask).trailing_zeros() as usize;
        if next >= n { next - n } else { next }
    }

    /// The waiter the overload policy sheds when the queue is over
    /// capacity, or `None` if nobody is linked.
    pub(super) fn victim(&self, policy: Overload) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        let mut classes = self.nonempty;
        while classes != 0 {
            let c = classes.trailing_zeros() as usize;
            classes &= classes - 1;
            let q = &self.classes[c];
            let candidate = match policy {
                Overload::ShedNewest => (q.tail as usize, self.links[q.tail as usize].seq),
                Overload::ShedOldest => {
                    (q.head as usize, u64::MAX - self.links[q.head as usize].seq)
                }
                // Lower weight first, then more waiters, then higher index:
                // a larger key is a better victim.
                Overload::ShedLowestPriority => (
                    q.tail as usize,
                    (u64::from(u32::MAX - q.weight) << 32) | u64::from(q.len),
                ),
            };
            // `>=`: on a tie the later (higher) class wins.
            if best.is_none_or(|(_, key)| candidate.1 >= key) {
                best = Some(candidate);
            }
        }
        best.map(|(slot, _)| slot)
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;
    use alloc::vec;

    fn drain(s: &mut Scheduler) -> Vec<usize> {
        let mut order = Vec::new();
        while let Some(slot) = s.pick() {
            s.served(slot);
            order.push(slot);
        }
        order
    }

    #[test]
    fn fifo_serves_in_order_and_removal_keeps_the_rest() {
        let mut s = Scheduler::new(8, &[1]);
        for slot in [3, 1, 4, 0, 5] {
            s.push(slot, 0);
        }
        s.remove(4);
        s.remove(3);
        assert_eq!(s.len(), 3);
        assert_eq!(drain(&mut s), [1, 0, 5]);
        assert_eq!(s.pick(), None);
    }

    #[test]
    fn deficit_round_robin_serves_weight_per_visit() {
        let mut s = Scheduler::new(32, &[1, 3, 2]);
        // Classes 0: slots 0..5, 1: 10..15, 2: 20..25.
        for i in 0..5 {
            for c in 0..3 {
                s.push(c * 10 + i, c);
            }
        }
        assert_eq!(
            drain(&mut s),
            [
                0, 10, 11, 12, 20, 21, // round 1: 1 + 3 + 2
                1, 13, 14, 22, 23, // class 1 ran out of waiters
                2, 24, 3, 4,
            ]
        );
    }

    #[test]
    fn an_emptied_class_loses_its_deficit_and_the_cursor_wraps() {
        let mut s = Scheduler::new(8, &[3, 1]);
        s.push(0, 0);
        s.push(1, 0);
        s.push(5, 1);
        assert_eq!(s.pick(), Some(0));
        s.served(0);
        s.remove(1); // class 0 empties: deficit 2 -> 0
        assert_eq!(s.pick(), Some(5));
        s.push(2, 0);
        s.served(5);
        // Class 1 is empty; the cursor wraps to class 0 with a fresh deficit.
        s.push(3, 0);
        s.push(4, 0);
        s.push(6, 0);
        assert_eq!(drain(&mut s), [2, 3, 4, 6]);
    }

    #[test]
    fn victims_follow_the_policy() {
        let mut s = Scheduler::new(16, &[2, 1, 1]);
        s.push(0, 0); // oldest
        s.push(1, 1);
        s.push(2, 2);
        s.push(3, 2);
        s.push(4, 1); // newest
        assert_eq!(s.victim(Overload::ShedNewest), Some(4));
        assert_eq!(s.victim(Overload::ShedOldest), Some(0));
        // Classes 1 and 2 both weigh 1 and hold 2: the higher index loses.
        assert_eq!(s.victim(Overload::ShedLowestPriority), Some(3));
        s.push(5, 1);
        assert_eq!(s.victim(Overload::ShedLowestPriority), Some(5));
        let empty = Scheduler::new(4, &[1]);
        assert_eq!(empty.victim(Overload::ShedOldest), None);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "integer arithmetic without unsafe or atomics: nothing for Miri to find, half a minute under it"
    )]
    fn the_next_class_is_the_first_with_waiters_after_the_cursor() {
        let mut mask_seed = 0x9e37_79b9_7f4a_7c15_u64;
        for n in [1, 2, 3, 5, 8, 31, 32, 33, 63, 64] {
            let mut s = Scheduler::new(64, &vec![1; n]);
            let all = if n == 64 { u64::MAX } else { (1 << n) - 1 };
            for _ in 0..50 {
                mask_seed = mask_seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                // Sparse and dense sets of classes, and single classes.
                let mask = match mask_seed % 3 {
                    0 => (mask_seed >> 7) & (mask_seed >> 29),
                    1 => mask_seed >> 3,
                    _ => 1 << ((mask_seed >> 40) % n as u64),
                } & all;
                if mask == 0 {
                    continue;
                }
                s.nonempty = mask;
                for class in 0..n {
                    let expected = (1..=n)
                        .map(|step| (class + step) % n)
                        .find(|&c| mask >> c & 1 == 1);
                    assert_eq!(
                        Some(s.next_nonempty_after(class)),
                        expected,
                        "{n} classes, waiters in {mask:#x}, after {class}"
                    );
                }
            }
        }
    }

    #[test]
    fn sixty_four_classes_rotate() {
        let weights = [1; 64];
        let mut s = Scheduler::new(64, &weights);
        for c in [63, 0, 31] {
            s.push(c, c);
        }
        assert_eq!(drain(&mut s), [0, 31, 63]);
        // The cursor rests on class 63: the next visit wraps to class 1.
        s.push(63, 63);
        s.push(1, 1);
        assert_eq!(drain(&mut s), [1, 63]);
    }
}
