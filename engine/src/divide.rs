//! Exact division of a `u64` by a divisor fixed at configuration time,
//! without a `div` instruction on the request path.
//!
//! The breaker's time window divides a timestamp by its bucket length on
//! every record, and the retry budget does the same on every deposit. A
//! 64-bit hardware division costs from about ten to several tens of cycles
//! on x86-64, and `thumbv7em` has none at all (a call to `__aeabi_uldivmod`).
//! [`Divisor`] turns the division into two 64×64→128-bit multiplications.
//!
//! # The method
//!
//! After Lemire, Kaser and Kurz, "Faster remainder by direct computation"
//! (2019): for a divisor `d` that is not a power of two, precompute
//! `M = ⌈2^128 / d⌉` (it fits a `u128`, since `d ≥ 3`). Then for every
//! 64-bit `n`, `n / d = ⌊M·n / 2^128⌋`.
//!
//! Why it is exact: write `M·d = 2^128 + e` with `0 ≤ e < d`. Then
//! `M·n / 2^128 = n/d + e·n / (d·2^128)`. The fractional part of `n/d` is at
//! most `(d - 1)/d`, and `e·n < d·2^64 ≤ 2^128` (as `e < d ≤ 2^64` and
//! `n < 2^64`), so the error term is below `1/d` and the floor does not move.
//!
//! `M·n` is a 192-bit product; only its top 64 bits are needed. With
//! `M = hi·2^64 + lo`, `⌊M·n / 2^128⌋ = ⌊(hi·n + ⌊lo·n / 2^64⌋) / 2^64⌋`
//! (dropping the low 64 bits of `lo·n` before the add cannot change the
//! result, as they sit below every bit that is kept), and the sum
//! `hi·n + ⌊lo·n / 2^64⌋ ≤ (2^64 - 1)^2 + 2^64 - 1 < 2^128` does not
//! overflow. A power of two (1 included, whose `M` would be `2^128`) is a
//! shift. The remainder is `n - q·d`, which cannot overflow as `q·d ≤ n`.
//!
//! Checked against `/` and `%` by the property and edge-value tests below
//! (also run under Miri).

use core::ops::{Div, Rem};

/// A nonzero `u64` divisor prepared for exact division by multiplication;
/// see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Divisor {
    /// `⌈2^128 / d⌉`, or 0 when `d` is a power of two.
    multiplier: u128,
    /// The divisor itself (its trailing zeros are the shift for a power of
    /// two: no third field, so two divisors stay as small as they were).
    divisor: u64,
}

impl Divisor {
    /// Prepares `divisor` for division.
    ///
    /// # Panics
    ///
    /// When `divisor` is 0 (every caller passes a validated, nonzero
    /// configuration value).
    pub(crate) const fn new(divisor: u64) -> Self {
        assert!(divisor != 0, "division by zero");
        if divisor.is_power_of_two() {
            Divisor {
                multiplier: 0,
                divisor,
            }
        } else {
            // ⌈2^128 / d⌉ = ⌊(2^128 - 1) / d⌋ + 1 when d does not divide
            // 2^128, which holds for every d that is not a power of two.
            Divisor {
                multiplier: all_ones_divided_by(divisor) + 1,
                divisor,
            }
        }
    }

    /// The divisor.
    #[inline]
    pub(crate) const fn get(self) -> u64 {
        self.divisor
    }

    /// `n / d`, exactly.
    #[inline]
    pub(crate) const fn quotient(self, n: u64) -> u64 {
        if self.multiplier == 0 {
            return n >> self.divisor.trailing_zeros();
        }
        let n = n as u128;
        let lo = (self.multiplier as u64 as u128 * n) >> 64;
        let hi = (self.multiplier >> 64) * n;
        ((hi + lo) >> 64) as u64
    }

    /// `n % d`, exactly.
    #[inline]
    pub(crate) const fn remainder(self, n: u64) -> u64 {
        n - self.quotient(n) * self.divisor
    }
}

/// `⌊(2^128 - 1) / d⌋` for a nonzero `d`, by binary long division with
/// 64-bit operations only: `u128 / u128` is a large library routine on
/// 32-bit targets (about 2 KB of `thumbv7em` code), and this runs once per
/// configuration, never per request.
const fn all_ones_divided_by(d: u64) -> u128 {
    let mut quotient: u128 = 0;
    // Invariant: remainder < d.
    let mut remainder: u64 = 0;
    let mut bit = 0;
    while bit < 128 {
        // Bring down the next dividend bit (every one is 1): the partial
        // remainder 2r + 1 < 2d may need 65 bits, its top bit in `carry`.
        let carry = remainder >> 63;
        remainder = (remainder << 1) | 1;
        quotient <<= 1;
        if carry == 1 || remainder >= d {
            // 2r + 1 - d < d fits 64 bits, so the wrapped difference is exact.
            remainder = remainder.wrapping_sub(d);
            quotient |= 1;
        }
        bit += 1;
    }
    quotient
}

impl Div<Divisor> for u64 {
    type Output = u64;

    #[inline]
    fn div(self, d: Divisor) -> u64 {
        d.quotient(self)
    }
}

impl Rem<Divisor> for u64 {
    type Output = u64;

    #[inline]
    fn rem(self, d: Divisor) -> u64 {
        d.remainder(self)
    }
}

#[cfg(test)]
mod tests {
    use super::Divisor;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn check(d: u64, n: u64) {
        let div = Divisor::new(d);
        assert_eq!(n / div, n / d, "{n} / {d}");
        assert_eq!(n % div, n % d, "{n} % {d}");
        assert_eq!(div.get(), d);
    }

    /// Divisors where a multiply-and-shift division typically goes wrong:
    /// small values, powers of two and their neighbours, the extremes.
    fn edge_divisors() -> Vec<u64> {
        let mut ds: Vec<u64> = [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 641, 1_000_000_007]
            .into_iter()
            .collect();
        for k in 1..64 {
            let p = 1u64 << k;
            ds.extend([p - 1, p, p + 1]);
        }
        ds.extend([
            u64::MAX,
            u64::MAX - 1,
            u64::MAX / 2,
            u64::MAX / 3,
            u32::MAX.into(),
            u64::from(u32::MAX) + 2,
            1_000_000_000,
            60_000_000_000,
            6_700_417,
            274_177,
        ]);
        ds
    }

    /// Dividends near multiples of `d` (where a quotient off by one shows as
    /// a wrong remainder of 0 or d - 1), near powers of two and the extremes.
    fn edge_dividends(d: u64) -> Vec<u64> {
        let mut ns: Vec<u64> = [0, 1, 2, 3, u64::MAX, u64::MAX - 1, u32::MAX.into()]
            .into_iter()
            .collect();
        for k in [
            1u64,
            2,
            3,
            1000,
            u64::MAX / d / 2,
            u64::MAX / d - 1,
            u64::MAX / d,
        ] {
            if let Some(m) = k.checked_mul(d) {
                ns.extend([m.wrapping_sub(1), m, m.saturating_add(1)]);
            }
        }
        for k in (0..64).step_by(if cfg!(miri) { 9 } else { 1 }) {
            let p = 1u64 << k;
            ns.extend([p - 1, p, p + 1]);
        }
        ns
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "integer arithmetic without unsafe or atomics: nothing for Miri to find, half a minute under it"
    )]
    fn edge_values_match_the_hardware_division() {
        let ds = edge_divisors();
        for &d in &ds {
            for n in edge_dividends(d) {
                check(d, n);
            }
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "integer arithmetic without unsafe or atomics: nothing for Miri to find, half a minute under it"
    )]
    fn every_small_dividend_and_divisor() {
        let max = 600;
        for d in 1..max {
            for n in 0..max * 3 {
                check(d, n);
            }
        }
    }

    #[test]
    fn multiplier_is_the_ceiling_of_two_to_the_128_over_d() {
        // For d = 3: 2^128 = 3·⌊2^128/3⌋ + 1, so ⌈2^128/3⌉ = (2^128 + 2)/3.
        assert_eq!(Divisor::new(3).multiplier, u128::MAX / 3 + 1);
        assert_eq!(Divisor::new(3).multiplier.wrapping_mul(3), 2);
        // A power of two is a shift.
        assert_eq!(Divisor::new(1 << 20).multiplier, 0);
    }

    #[test]
    fn long_division_of_all_ones_matches_u128_division() {
        for d in edge_divisors()
            .into_iter()
            .step_by(if cfg!(miri) { 11 } else { 1 })
        {
            assert_eq!(
                super::all_ones_divided_by(d),
                u128::MAX / u128::from(d),
                "d = {d}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "division by zero")]
    fn zero_divisor_panics() {
        let _ = Divisor::new(0);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 8 } else { 20_000 },
            // No regression file: Miri's isolation has no file system.
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_divisor_and_dividend(d in 1..=u64::MAX, n in any::<u64>()) {
            check(d, n);
            prop_assert_eq!(super::all_ones_divided_by(d), u128::MAX / u128::from(d));
        }

        #[test]
        fn random_divisor_of_any_width(bits in 0u32..64, d in any::<u64>(), n in any::<u64>()) {
            // Uniform `d` is almost always 64 bits wide; draw its width first.
            let d = (d >> bits).max(1);
            check(d, n);
        }

        #[test]
        fn dividends_next_to_multiples(d in 2..=u64::MAX, k in any::<u64>(), off in 0u64..3) {
            let m = (k % (u64::MAX / d + 1)) * d;
            check(d, m.wrapping_add(off).wrapping_sub(1));
        }
    }
}
