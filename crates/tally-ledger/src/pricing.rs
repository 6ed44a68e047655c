//! Pricing: credits for a usage, dollars for credits, credits for dollars.
//!
//! Every function is exact decimal arithmetic with one documented rounding
//! (or none), so a replay prices an input to the same digits:
//! - usage: `credits = credits_per_unit × quantity`, never rounded (at most
//!   3 + 3 fractional digits);
//! - dollar value of credits: `credits × dollars_per_credit`, rounded
//!   half-even to the cent;
//! - purchase: `credits = dollars / dollars_per_credit`, truncated (toward
//!   zero) to 4 fractional digits, so a purchase never grants a fraction of a
//!   credit more than was paid for.
//!
//! Inputs are bounded ([`QUANTITY_MAX`] with [`quantity_scale_max`] digits,
//! [`AMOUNT_DOLLARS_MAX`] in whole cents, [`BALANCE_CREDITS_MAX`],
//! [`THRESHOLD_CREDITS_MAX`]) and read exactly (`tally_events::decimal`:
//! a text with more digits than fit is refused, not rounded), so that no sum or product ever needs more than
//! the 28 significant digits of [`Decimal`]: past that, `Decimal` would round
//! silently and the ledger would stop being exact.
//!
//! ```
//! use rust_decimal::Decimal;
//! use tally_events::{Credits, CreditsPerUnit, Dollars, DollarsPerCredit};
//! use tally_ledger::pricing;
//! let d = |s: &str| s.parse::<Decimal>().unwrap();
//! // Kling, 7.5 s at 2 credits/s = 15 credits; at PAYG 0.12 = $1.80.
//! let credits = pricing::usage_credits(CreditsPerUnit::new(d("2")), d("7.5")).unwrap();
//! assert_eq!(credits, Credits::new(d("15")));
//! let payg = DollarsPerCredit::new(d("0.12"));
//! assert_eq!(pricing::dollars_of_credits(credits, payg).unwrap().to_string(), "1.80");
//! // $25.00 at 0.12 buys 208.3333 credits (208.333… truncated).
//! assert_eq!(pricing::credits_of_dollars(Dollars::new(d("25.00")), payg).unwrap().to_string(), "208.3333");
//! ```

use rust_decimal::{Decimal, RoundingStrategy};
use tally_events::{records::Unit, Credits, CreditsPerUnit, Dollars, DollarsPerCredit};

/// Fractional digits a usage quantity of `unit` may have (after
/// normalizing: `7.500` seconds and `1.0` image are fine): images and
/// messages are counted whole, video seconds to the millisecond. No
/// quantity has more than [`QUANTITY_SCALE_MAX`].
pub const fn quantity_scale_max(unit: Unit) -> u32 {
    match unit {
        Unit::Image | Unit::Message => 0,
        Unit::VideoSecond => 3,
    }
}

/// The most fractional digits any usage quantity has.
pub const QUANTITY_SCALE_MAX: u32 = 3;

/// Purchase amounts are whole cents.
pub const AMOUNT_SCALE_MAX: u32 = 2;

/// Credits bought are truncated to this many fractional digits.
pub const PURCHASE_CREDITS_SCALE: u32 = 4;

/// Dollar values are rounded to the cent.
pub const DOLLARS_SCALE: u32 = 2;

/// Largest quantity of one usage event (a million images, seconds or
/// messages): anything larger is a worker bug, and the bound keeps every
/// product exact.
pub const QUANTITY_MAX: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Largest single purchase, in dollars.
pub const AMOUNT_DOLLARS_MAX: Dollars = Dollars::new(Decimal::from_parts(100_000_000, 0, 0, false, 0));

/// Largest balance an account may hold, in credits (10^15). With at most 6
/// fractional digits that is 21 significant digits: every sum stays exact.
pub const BALANCE_CREDITS_MAX: Credits = Credits::new(Decimal::from_parts(0xA4C6_8000, 0x38D7E, 0, false, 0));

/// Largest low-balance threshold, in credits: the largest balance.
pub const THRESHOLD_CREDITS_MAX: Credits = BALANCE_CREDITS_MAX;

/// A low-balance threshold has at most this many fractional digits (a
/// ten-thousandth of a credit, the finest a purchase grants).
pub const THRESHOLD_SCALE_MAX: u32 = 4;

/// Credits of `quantity` units at `credits_per_unit`, exact and normalized;
/// `None` if the product does not fit (quantities are bounded well below).
pub fn usage_credits(credits_per_unit: CreditsPerUnit, quantity: Decimal) -> Option<Credits> {
    credits_per_unit.decimal().checked_mul(quantity).map(|credits| Credits::new(credits.normalize()))
}

/// Dollar value of `credits` at `dollars_per_credit`, rounded half-even to
/// the cent, always written with 2 fractional digits.
pub fn dollars_of_credits(credits: Credits, dollars_per_credit: DollarsPerCredit) -> Option<Dollars> {
    // The product is exact (at most 6 + 4 fractional digits): the only
    // rounding is this one, to the cent.
    let dollars = credits
        .decimal()
        .checked_mul(dollars_per_credit.decimal())?
        .round_dp_with_strategy(DOLLARS_SCALE, RoundingStrategy::MidpointNearestEven);
    Some(cents(dollars))
}

/// Dollars written with exactly 2 fractional digits, zero without a sign
/// (so text forms never show `-0.00`). `value` has at most 2.
pub fn cents(mut value: Decimal) -> Dollars {
    value.rescale(DOLLARS_SCALE);
    Dollars::new(value.normalize_zero())
}

/// Credits bought by `dollars` at `dollars_per_credit`: the quotient
/// truncated toward zero to 4 fractional digits, normalized. `None` if
/// `dollars_per_credit` is not positive or the quotient does not fit.
pub fn credits_of_dollars(dollars: Dollars, dollars_per_credit: DollarsPerCredit) -> Option<Credits> {
    let (dollars, dollars_per_credit) = (dollars.decimal(), dollars_per_credit.decimal());
    if dollars_per_credit <= Decimal::ZERO {
        return None;
    }
    let step = Decimal::new(1, PURCHASE_CREDITS_SCALE);
    let mut credits = dollars
        .checked_div(dollars_per_credit)?
        .round_dp_with_strategy(PURCHASE_CREDITS_SCALE, RoundingStrategy::ToZero);
    // Decimal division rounds its 28th significant digit, which could in
    // principle carry a quotient like 2.99999… up to 3 before truncation.
    // Settle the result exactly with multiplications (exact at these
    // scales): credits × price <= dollars < (credits + step) × price.
    if credits.checked_mul(dollars_per_credit)? > dollars {
        credits -= step;
    } else if credits.checked_add(step)?.checked_mul(dollars_per_credit)? <= dollars {
        credits += step;
    }
    Some(Credits::new(credits.normalize()))
}

/// Zero without a sign, so text forms never show `-0.00`.
trait NormalizeZero {
    fn normalize_zero(self) -> Self;
}

impl NormalizeZero for Decimal {
    fn normalize_zero(mut self) -> Self {
        if self.is_zero() {
            self.set_sign_positive(true);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal literal")
    }
    fn c(s: &str) -> Credits {
        Credits::new(d(s))
    }
    fn per_unit(s: &str) -> CreditsPerUnit {
        CreditsPerUnit::new(d(s))
    }
    fn price(s: &str) -> DollarsPerCredit {
        DollarsPerCredit::new(d(s))
    }
    fn usd(s: &str) -> Dollars {
        Dollars::new(d(s))
    }

    #[test]
    fn balance_max_is_ten_to_the_fifteen() {
        assert_eq!(BALANCE_CREDITS_MAX, c("1000000000000000"));
    }

    #[test]
    fn usage_is_exact() {
        // SMS: 3 messages × 0.05 = 0.15 credits, no rounding.
        assert_eq!(usage_credits(per_unit("0.05"), d("3")), Some(c("0.15")));
        // Seedance: 1.5 × 3.333 s = 4.9995 credits.
        assert_eq!(usage_credits(per_unit("1.5"), d("3.333")).map(|c| c.to_string()), Some("4.9995".into()));
        // Normalized: 2 × 7.50 = 15, not 15.00.
        assert_eq!(usage_credits(per_unit("2"), d("7.50")).map(|c| c.to_string()), Some("15".into()));
    }

    #[test]
    fn dollars_round_half_even_to_the_cent() {
        // SMS 0.15 credits × 0.12 = 0.0180 → $0.02.
        assert_eq!(dollars_of_credits(c("0.15"), price("0.12")).map(|c| c.to_string()), Some("0.02".into()));
        // Exact midpoints go to the even cent: 1.25 × 0.1 = 0.125 → 0.12; 1.35 × 0.1 = 0.135 → 0.14.
        assert_eq!(dollars_of_credits(c("1.25"), price("0.1")).map(|c| c.to_string()), Some("0.12".into()));
        assert_eq!(dollars_of_credits(c("1.35"), price("0.1")).map(|c| c.to_string()), Some("0.14".into()));
        // 15 credits × 0.12 = 1.80, written with two digits.
        assert_eq!(dollars_of_credits(c("15"), price("0.12")).map(|c| c.to_string()), Some("1.80".into()));
        assert_eq!(dollars_of_credits(c("0"), price("0.12")).map(|c| c.to_string()), Some("0.00".into()));
    }

    #[test]
    fn purchases_truncate_to_four_places() {
        // $25.00 / 0.12 = 208.3333… → 208.3333.
        assert_eq!(credits_of_dollars(usd("25.00"), price("0.12")).map(|c| c.to_string()), Some("208.3333".into()));
        // $24.00 / 0.12 = 200 exactly.
        assert_eq!(credits_of_dollars(usd("24.00"), price("0.12")).map(|c| c.to_string()), Some("200".into()));
        // $10.00 / 0.08 = 125; $0.01 / 0.12 = 0.08333… → 0.0833.
        assert_eq!(credits_of_dollars(usd("10.00"), price("0.08")), Some(c("125")));
        assert_eq!(credits_of_dollars(usd("0.01"), price("0.12")), Some(c("0.0833")));
        // $2.00 / 0.0003 = 6666.666… → 6666.6666 (never rounded up).
        assert_eq!(credits_of_dollars(usd("2.00"), price("0.0003")), Some(c("6666.6666")));
        assert_eq!(credits_of_dollars(usd("1"), price("0")), None);
    }

    #[test]
    fn purchase_truncation_is_exact_for_all_small_amounts() {
        // The settle step must hold: credits × price <= amount < (credits + 0.0001) × price.
        let step = d("0.0001");
        for price in ["0.12", "0.10", "0.08", "0.07", "0.0003", "0.1234"] {
            let price = d(price);
            for cents in (1..5000).step_by(7) {
                let amount = Decimal::new(cents, 2);
                let credits =
                    credits_of_dollars(Dollars::new(amount), DollarsPerCredit::new(price)).expect("fits").decimal();
                assert!(credits * price <= amount, "{amount} / {price} = {credits}");
                assert!((credits + step) * price > amount, "{amount} / {price} = {credits}");
            }
        }
    }
}
