//! What an admission queue is configured with, and why a caller was turned
//! away.

use alloc::boxed::Box;
use alloc::vec;
use core::fmt;

use crate::error::ConfigError;

/// The most classes (partitions, priority classes) a queue can have.
pub const MAX_CLASSES: usize = 64;

/// The largest queue capacity accepted.
pub const MAX_CAPACITY: u32 = 1 << 20;

/// What happens when a caller arrives at a full queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overload {
    /// The newcomer is refused at once ([`Rejected::QueueFull`]); the
    /// waiters keep their places.
    #[default]
    ShedNewest,
    /// The waiter that has waited longest (of any class) is shed
    /// ([`Rejected::ShedOldest`]) and the newcomer takes a place.
    ShedOldest,
    /// The newest waiter of the lowest-priority class is shed
    /// ([`Rejected::ShedLowPriority`]), which may be the newcomer itself. A
    /// class's priority is its weight; among classes of equal weight, the one
    /// with the most waiters counts as lowest (then the higher index).
    ShedLowestPriority,
}

/// How an admission queue orders its waiters, how many it holds and what it
/// does when full. See the [module documentation](super) for the scheduling
/// rule each strategy follows.
///
/// ```
/// use tenlives_engine::queue::{Overload, QueueConfig};
///
/// let fifo = QueueConfig::fifo(64)?;
/// assert_eq!(fifo.classes(), 1);
/// let tenants = QueueConfig::round_robin(64, 8)?.overload(Overload::ShedLowestPriority);
/// assert_eq!(tenants.weights(), &[1; 8]);
/// let classes = QueueConfig::weighted(64, &[1, 2, 5])?.overload(Overload::ShedOldest);
/// assert_eq!(classes.capacity(), 64);
/// assert!(QueueConfig::weighted(64, &[1, 0]).is_err());
/// # Ok::<(), tenlives_engine::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    capacity: u32,
    weights: Box<[u32]>,
    overload: Overload,
}

impl QueueConfig {
    /// One queue, served in order of arrival; at most `capacity` waiters.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero capacity, [`ConfigError::TooLarge`]
    /// above [`MAX_CAPACITY`].
    pub fn fifo(capacity: u32) -> Result<Self, ConfigError> {
        Self::weighted(capacity, &[1])
    }

    /// `partitions` queues (tenants, say) served in turn, one grant each per
    /// round; at most `capacity` waiters in all.
    ///
    /// # Errors
    ///
    /// As [`fifo`](Self::fifo), and [`ConfigError::Zero`] or
    /// [`ConfigError::TooLarge`] for `partitions` outside `1..=64`.
    pub fn round_robin(capacity: u32, partitions: u16) -> Result<Self, ConfigError> {
        check_classes(usize::from(partitions))?;
        Self::weighted(capacity, &vec![1; usize::from(partitions)])
    }

    /// One queue per weight, served by deficit round robin: under
    /// saturation, class `c` gets `weights[c] / sum(weights)` of the grants.
    /// At most `capacity` waiters in all.
    ///
    /// # Errors
    ///
    /// As [`fifo`](Self::fifo); [`ConfigError::Zero`] for no weights or a
    /// zero weight, [`ConfigError::TooLarge`] for more than 64 classes.
    pub fn weighted(capacity: u32, weights: &[u32]) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        if capacity > MAX_CAPACITY {
            return Err(ConfigError::TooLarge {
                field: "capacity",
                value: capacity.into(),
                max: MAX_CAPACITY.into(),
            });
        }
        check_classes(weights.len())?;
        if weights.contains(&0) {
            return Err(ConfigError::Zero { field: "weight" });
        }
        Ok(QueueConfig {
            capacity,
            weights: weights.into(),
            overload: Overload::default(),
        })
    }

    /// The same configuration with overload policy `overload`.
    #[must_use]
    pub fn overload(mut self, overload: Overload) -> Self {
        self.overload = overload;
        self
    }

    /// The most waiters the queue holds.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The number of classes (1 for FIFO).
    pub fn classes(&self) -> u16 {
        // At most MAX_CLASSES, checked at construction.
        self.weights.len() as u16
    }

    /// Each class's weight (all 1 for FIFO and round robin).
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The overload policy.
    pub fn overload_policy(&self) -> Overload {
        self.overload
    }

    /// The starvation bound of the [module documentation](super#no-starvation):
    /// a waiter of `class` queued behind `ahead` waiters of its own class is
    /// granted by the `ceil((ahead + 1) / weight) * sum(weights)`-th grant
    /// the queue makes after it joined, its own included, unless it is shed
    /// or times out first. `None` for a class that does not exist.
    ///
    /// ```
    /// use tenlives_engine::queue::QueueConfig;
    ///
    /// let c = QueueConfig::weighted(100, &[1, 3])?;
    /// // Class 1 (weight 3) behind 5 of its own: served in its 2nd visit
    /// // from now; each visit comes within a round of 1 + 3 grants.
    /// assert_eq!(c.grant_bound(1, 5), Some(8));
    /// assert_eq!(QueueConfig::fifo(10)?.grant_bound(0, 9), Some(10));
    /// # Ok::<(), tenlives_engine::ConfigError>(())
    /// ```
    pub fn grant_bound(&self, class: u16, ahead: u32) -> Option<u64> {
        let weight = u64::from(*self.weights.get(usize::from(class))?);
        let round: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        Some((u64::from(ahead) + 1).div_ceil(weight) * round)
    }
}

fn check_classes(classes: usize) -> Result<(), ConfigError> {
    if classes == 0 {
        Err(ConfigError::Zero { field: "classes" })
    } else if classes > MAX_CLASSES {
        Err(ConfigError::TooLarge {
            field: "classes",
            value: classes as u64,
            max: MAX_CLASSES as u64,
        })
    } else {
        Ok(())
    }
}

/// Why a caller got no permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejected {
    /// The queue was full when the caller arrived (under
    /// [`Overload::ShedNewest`], or whatever the policy when every slot was
    /// holding a waiter or an unread verdict).
    QueueFull,
    /// Shed to make room for a newer caller: it was the oldest waiter
    /// ([`Overload::ShedOldest`]).
    ShedOldest,
    /// Shed when the queue overflowed: its class had the lowest priority
    /// ([`Overload::ShedLowestPriority`]).
    ShedLowPriority,
    /// The deadline passed before a permit came.
    TimedOut,
    /// There is no such class.
    UnknownClass {
        /// The class asked for.
        class: u16,
        /// How many classes the queue has.
        classes: u16,
    },
}

impl Rejected {
    /// The code this rejection carries in a `QUEUE_REJECTED` event.
    pub(super) fn code(self) -> u64 {
        match self {
            Rejected::QueueFull => 1,
            Rejected::ShedOldest => 2,
            Rejected::ShedLowPriority => 3,
            Rejected::TimedOut => 4,
            Rejected::UnknownClass { .. } => 5,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::QueueFull => f.write_str("admission queue is full"),
            Rejected::ShedOldest => {
                f.write_str("shed from the admission queue as its oldest waiter")
            }
            Rejected::ShedLowPriority => {
                f.write_str("shed from the admission queue as its lowest-priority waiter")
            }
            Rejected::TimedOut => f.write_str("deadline passed while waiting for a permit"),
            Rejected::UnknownClass { class, classes } => write!(
                f,
                "class {class} does not exist; the admission queue has {classes}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Rejected {}

/// A refused [`try_acquire`](super::AdmissionQueue::try_acquire): no permit
/// was free, or callers are already waiting for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Busy {
    pub(super) waiting: u32,
}

impl Busy {
    /// Waiters in the queue at the instant of the refusal (0 if the permit
    /// source itself was out of permits).
    pub fn waiting(&self) -> u32 {
        self.waiting
    }
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.waiting == 0 {
            f.write_str("no permit is free")
        } else {
            write!(f, "{} callers are waiting for a permit", self.waiting)
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Busy {}
