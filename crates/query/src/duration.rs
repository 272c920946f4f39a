//! Go durations (`time.ParseDuration`), as Tempo's `minDuration` and `maxDuration` take them.
//!
//! A duration is a sequence of decimal numbers, each with an optional fraction and a unit:
//! `300ms`, `1.5h`, `2h45m`, `.5s`, `1m30s`. Units are `ns`, `us` (or `µs`, `μs`), `ms`, `s`,
//! `m`, `h`. A bare `0` is zero; any other number needs a unit. Go allows a sign; a negative
//! duration is refused here because no span lasts less than nothing.

use std::fmt;
use std::time::Duration;

/// What is wrong with a duration's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a Go duration like 100ms, 1.5s or 1m30s: {problem}")]
pub struct DurationError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub problem: DurationProblem,
}

/// The ways a duration's text can be wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationProblem {
    /// Nothing was given.
    Empty,
    /// A character where a number was expected.
    ExpectedNumber {
        /// Byte offset in the input.
        at: usize,
    },
    /// A number without a unit.
    MissingUnit {
        /// The number, as written.
        number: String,
    },
    /// A unit that is not one of Go's.
    UnknownUnit {
        /// The unit, as written.
        unit: String,
    },
    /// The duration is negative.
    Negative,
    /// The duration does not fit in 64-bit nanoseconds.
    Overflow,
}

impl fmt::Display for DurationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationProblem::Empty => write!(f, "it is empty"),
            DurationProblem::ExpectedNumber { at } => {
                write!(f, "expected a number at byte {at}")
            }
            DurationProblem::MissingUnit { number } => {
                write!(f, "{number:?} has no unit (ns, us, ms, s, m, h)")
            }
            DurationProblem::UnknownUnit { unit } => {
                write!(
                    f,
                    "unknown unit {unit:?} (valid units are ns, us, µs, ms, s, m, h)"
                )
            }
            DurationProblem::Negative => write!(f, "negative durations are not allowed"),
            DurationProblem::Overflow => write!(f, "it is too long"),
        }
    }
}

/// Nanoseconds in one of each unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return None,
    })
}

/// At most this many fraction digits count (finer than a nanosecond of an hour).
const MAX_FRACTION_DIGITS: usize = 24;

/// Parses a Go duration (`1.5s`, `1m30s`, `500us`, `10ns`, `0`).
///
/// # Errors
///
/// A [`DurationError`] naming the problem: empty text, a missing or unknown unit, a character
/// where a number belongs, a negative or too long duration.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |problem| DurationError {
        input: input.to_string(),
        problem,
    };
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(fail(DurationProblem::Empty));
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let at = input.len() - s.len();
        // The number: [0-9]*(\.[0-9]*)?, with at least one digit.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(fail(DurationProblem::ExpectedNumber { at }));
        }
        let number = &s[..s.len() - rest.len()];
        // The unit: everything up to the next number.
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let (unit, rest) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(fail(DurationProblem::MissingUnit {
                number: number.to_string(),
            }));
        }
        let per_unit = unit_nanos(unit).ok_or_else(|| {
            fail(DurationProblem::UnknownUnit {
                unit: unit.to_string(),
            })
        })?;

        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse::<u128>()
                .map_err(|_| fail(DurationProblem::Overflow))?
        };
        let mut nanos = whole
            .checked_mul(per_unit)
            .ok_or_else(|| fail(DurationProblem::Overflow))?;
        let digits = &frac_part[..frac_part.len().min(MAX_FRACTION_DIGITS)];
        if !digits.is_empty() {
            let frac: u128 = digits
                .parse()
                .map_err(|_| fail(DurationProblem::Overflow))?;
            let scale = 10u128.pow(digits.len() as u32);
            // per_unit <= 3.6e12 and frac < 1e24, so the product fits in u128 (< 3.4e38).
            nanos += frac * per_unit / scale;
        }
        total = total
            .checked_add(nanos)
            .filter(|t| *t <= u64::MAX as u128)
            .ok_or_else(|| fail(DurationProblem::Overflow))?;
        s = rest;
    }
    if negative && total > 0 {
        return Err(fail(DurationProblem::Negative));
    }
    let total = u64::try_from(total).map_err(|_| fail(DurationProblem::Overflow))?;
    Ok(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse_go_duration(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> DurationProblem {
        match parse_go_duration(text) {
            Ok(d) => panic!("{text} parsed as {d:?}"),
            Err(e) => {
                assert_eq!(e.input, text);
                e.problem
            }
        }
    }

    #[test]
    fn go_forms() {
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("500us"), Duration::from_micros(500));
        assert_eq!(ok("500µs"), Duration::from_micros(500));
        assert_eq!(ok("500μs"), Duration::from_micros(500));
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("2h45m"), Duration::from_secs(2 * 3600 + 45 * 60));
        assert_eq!(
            ok("1h1m1s1ms1us1ns"),
            Duration::from_nanos(3_661_001_001_001)
        );
        assert_eq!(ok("1.000000001s"), Duration::from_nanos(1_000_000_001));
        assert_eq!(ok("0.1ns"), Duration::ZERO);
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(err(""), DurationProblem::Empty);
        assert_eq!(err("-"), DurationProblem::Empty);
        assert_eq!(
            err("100"),
            DurationProblem::MissingUnit {
                number: "100".into()
            }
        );
        assert_eq!(
            err("1s5"),
            DurationProblem::MissingUnit { number: "5".into() }
        );
        assert_eq!(
            err("5sec"),
            DurationProblem::UnknownUnit { unit: "sec".into() }
        );
        assert_eq!(err("1d"), DurationProblem::UnknownUnit { unit: "d".into() });
        assert_eq!(err("s"), DurationProblem::ExpectedNumber { at: 0 });
        assert_eq!(err(".s"), DurationProblem::ExpectedNumber { at: 0 });
        assert_eq!(err("1s.ms"), DurationProblem::ExpectedNumber { at: 2 });
        assert_eq!(err(" 1s"), DurationProblem::ExpectedNumber { at: 0 });
        assert_eq!(err("-1s"), DurationProblem::Negative);
        assert_eq!(err("99999999999999999999h"), DurationProblem::Overflow);
        assert_eq!(
            err("1000000000000000000000000000000000000000000s"),
            DurationProblem::Overflow
        );
        let e = parse_go_duration("5sec").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#""5sec" is not a Go duration like 100ms, 1.5s or 1m30s: unknown unit "sec" (valid units are ns, us, µs, ms, s, m, h)"#
        );
    }
}
