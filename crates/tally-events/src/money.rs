//! Money and credits as types: [`Credits`], [`Dollars`], and the two
//! prices between them and usage, [`DollarsPerCredit`] and
//! [`CreditsPerUnit`].
//!
//! Each is a `rust_decimal::Decimal` that cannot be mistaken for another:
//! `dollars_of_credits(credits, price)` cannot take its arguments swapped,
//! a balance cannot be compared with a dollar amount, a threshold in
//! credits cannot be set from a price. On the wire they are decimal text
//! (the schemas did not change), read exactly by [`crate::decimal`].
//!
//! Arithmetic: `checked_add`/`checked_sub` for the rules, which refuse what
//! would not fit; `+`, `-` and `Sum` (which panic on overflow, like
//! `Decimal`'s) for reports and tests over bounded values.
//!
//! ```
//! use tally_events::money::{Credits, Dollars};
//! let balance: Credits = "12.5".parse().unwrap();
//! assert_eq!(balance.checked_sub("2.5".parse().unwrap()), Some("10".parse().unwrap()));
//! let paid: Dollars = "25.00".parse().unwrap();
//! assert_eq!(paid.to_string(), "25.00");
//! ```

use std::{
    fmt,
    ops::{Add, AddAssign, Neg, Sub, SubAssign},
    str::FromStr,
};

use rust_decimal::Decimal;
use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

use crate::decimal::{parse_exact, DecimalError};

macro_rules! decimal_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(Decimal);

        impl $name {
            /// Zero.
            pub const ZERO: $name = $name(Decimal::ZERO);

            /// The amount `value`.
            #[inline]
            pub const fn new(value: Decimal) -> Self {
                $name(value)
            }

            /// The amount as a plain decimal.
            #[inline]
            pub const fn decimal(self) -> Decimal {
                self.0
            }

            /// Whether it is zero.
            #[inline]
            pub fn is_zero(self) -> bool {
                self.0.is_zero()
            }

            /// Whether it is below zero.
            #[inline]
            pub fn is_negative(self) -> bool {
                self.0.is_sign_negative() && !self.0.is_zero()
            }

            /// The same value without trailing zeros (`7.50` is `7.5`).
            #[inline]
            pub fn normalize(self) -> Self {
                $name(self.0.normalize())
            }

            /// Fractional digits as written.
            #[inline]
            pub fn scale(self) -> u32 {
                self.0.scale()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = DecimalError;
            /// Exact plain decimal text (see [`crate::decimal`]).
            #[inline]
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_exact(text).map($name)
            }
        }

        impl Serialize for $name {
            #[inline]
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            #[inline]
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                parse_exact(&text).map($name).map_err(D::Error::custom)
            }
        }
    };
}

macro_rules! amount_arithmetic {
    ($name:ident) => {
        impl $name {
            /// `self + other`, or `None` if it does not fit.
            #[inline]
            pub fn checked_add(self, other: $name) -> Option<$name> {
                self.0.checked_add(other.0).map($name)
            }

            /// `self - other`, or `None` if it does not fit.
            #[inline]
            pub fn checked_sub(self, other: $name) -> Option<$name> {
                self.0.checked_sub(other.0).map($name)
            }
        }

        impl Add for $name {
            type Output = $name;
            #[inline]
            fn add(self, other: $name) -> $name {
                $name(self.0 + other.0)
            }
        }

        impl Sub for $name {
            type Output = $name;
            #[inline]
            fn sub(self, other: $name) -> $name {
                $name(self.0 - other.0)
            }
        }

        impl Neg for $name {
            type Output = $name;
            #[inline]
            fn neg(self) -> $name {
                $name(-self.0)
            }
        }

        impl AddAssign for $name {
            #[inline]
            fn add_assign(&mut self, other: $name) {
                self.0 += other.0;
            }
        }

        impl SubAssign for $name {
            #[inline]
            fn sub_assign(&mut self, other: $name) {
                self.0 -= other.0;
            }
        }

        impl std::iter::Sum for $name {
            #[inline]
            fn sum<I: Iterator<Item = $name>>(iter: I) -> $name {
                iter.fold($name::ZERO, |a, b| a + b)
            }
        }

        impl<'a> std::iter::Sum<&'a $name> for $name {
            #[inline]
            fn sum<I: Iterator<Item = &'a $name>>(iter: I) -> $name {
                iter.fold($name::ZERO, |a, b| a + *b)
            }
        }
    };
}

decimal_newtype!(
    /// A number of AI credits: a balance, a debit, a purchase's credits, a
    /// low-balance threshold.
    Credits
);
amount_arithmetic!(Credits);

decimal_newtype!(
    /// An amount of US dollars: paid for credits, or the value of credits at
    /// a tier's price.
    Dollars
);
amount_arithmetic!(Dollars);

decimal_newtype!(
    /// The dollar price of one credit at a plan tier (rate table).
    DollarsPerCredit
);

decimal_newtype!(
    /// The credit cost of one unit of a service (an image, a video second,
    /// a message), from the rate table.
    CreditsPerUnit
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_exact_and_keeps_its_digits() {
        let credits: Credits = "208.3333".parse().expect("credits");
        assert_eq!(credits.to_string(), "208.3333");
        assert!("1.0000000000000000000000000000001".parse::<Dollars>().is_err(), "never rounded");
        assert_eq!("7.50".parse::<Credits>().expect("credits").normalize().to_string(), "7.5");
    }

    #[test]
    fn arithmetic_refuses_what_does_not_fit() {
        let max = Credits::new(Decimal::MAX);
        assert_eq!(max.checked_add(Credits::new(Decimal::ONE)), None);
        let a: Credits = "10".parse().expect("credits");
        let b: Credits = "2.5".parse().expect("credits");
        assert_eq!(a - b, "7.5".parse().expect("credits"));
        assert!((b - a).is_negative());
        assert_eq!([a, b].iter().sum::<Credits>(), "12.5".parse().expect("credits"));
    }
}
