//! Rate limits and usage credits, as admins set them on keys and owners: named limits of so
//! many requests per window, a credit balance with an optional refill, and the owner id a
//! key may name. Built only by parsing; the JSON forms here are also how the store keeps them.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use super::ParseError;

/// At most this many limits on one key or owner.
pub const MAX_LIMITS: usize = 5;
/// The longest window: 31 days.
pub const MAX_WINDOW: u64 = 31 * 86_400;
/// The largest limit or credit amount: far beyond any real quota, and small enough that a
/// count times a window never overflows, and that every value is a Structured Field integer.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000;

/// A limit's name: 1 to 32 of `a-z`, `0-9`, `_` and `-`, starting with a letter, so that it
/// is a Structured Field string as it is and never needs escaping. `credits` is taken (the
/// headers name the credit balance so), and an owner's limits show as `owner.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LimitName(Box<str>);

impl LimitName {
    pub fn parse(name: &str) -> Result<Self, ParseError> {
        let well_formed = (1..=32).contains(&name.len())
            && name.as_bytes()[0].is_ascii_lowercase()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !well_formed || name == CREDITS {
            return Err(ParseError(
                "limits: each name must be 1 to 32 characters of a-z, 0-9, '_' and '-', starting with a letter, \
                 and not \"credits\"",
            ));
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name the credit balance goes by in the headers.
pub const CREDITS: &str = "credits";

/// How a limit is decided across replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// In memory, shared between replicas asynchronously: never waits on the network, and may
    /// overshoot by what other replicas admit between two syncs.
    #[default]
    Fast,
    /// Atomically in the shared state: exact across any number of replicas.
    Strict,
}

/// One limit: at most `limit` (weighted) requests per `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Limit {
    pub name: LimitName,
    pub limit: u64,
    pub window_seconds: u64,
    pub consistency: Consistency,
}

/// A limit as given, before it is judged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitInput {
    pub name: String,
    pub limit: i64,
    pub window_seconds: i64,
    #[serde(default)]
    pub consistency: Consistency,
}

impl Limit {
    pub fn parse(input: &LimitInput) -> Result<Self, ParseError> {
        let name = LimitName::parse(&input.name)?;
        let limit = u64::try_from(input.limit)
            .ok()
            .filter(|l| (1..=MAX_AMOUNT).contains(l))
            .ok_or(ParseError("limits: each limit must be a whole number from 1 to 1000000000000"))?;
        let window_seconds = u64::try_from(input.window_seconds)
            .ok()
            .filter(|w| (1..=MAX_WINDOW).contains(w))
            .ok_or(ParseError("limits: each window_seconds must be from 1 to 2678400 (31 days)"))?;
        Ok(Self { name, limit, window_seconds, consistency: input.consistency })
    }
}

/// A key's or an owner's limits: at most `MAX_LIMITS`, with distinct names. Shared, so that
/// carrying them on every verification costs no allocation, and no limits nothing at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits(Option<Arc<[Limit]>>);

impl Limits {
    pub fn parse(inputs: &[LimitInput]) -> Result<Self, ParseError> {
        if inputs.len() > MAX_LIMITS {
            return Err(ParseError("limits: at most 5"));
        }
        let limits = inputs.iter().map(Limit::parse).collect::<Result<Vec<_>, _>>()?;
        for (i, limit) in limits.iter().enumerate() {
            if limits[..i].iter().any(|l| l.name == limit.name) {
                return Err(ParseError("limits: each name may appear once"));
            }
        }
        Ok(Self((!limits.is_empty()).then(|| limits.into())))
    }

    /// As the store keeps them: the JSON array `to_stored` wrote, or nothing for none.
    pub fn from_stored(stored: Option<&str>) -> Result<Self, ParseError> {
        match stored {
            None => Ok(Self::default()),
            Some(json) => {
                let inputs: Vec<LimitInput> =
                    serde_json::from_str(json).map_err(|_| ParseError("limits: not a JSON array of limits"))?;
                Self::parse(&inputs)
            }
        }
    }

    pub fn to_stored(&self) -> Option<String> {
        self.0.as_ref().and_then(|l| serde_json::to_string(&**l).ok())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Limit> {
        self.0.iter().flat_map(|l| l.iter())
    }
}

/// When a credit balance is set back to its refill amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    /// At every midnight UTC.
    Daily,
    /// At midnight UTC on this day of every month (1 to 28, so that every month has it).
    Monthly { day: u8 },
}

/// A refill: the balance becomes `amount` at each interval's edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refill {
    pub amount: u64,
    pub interval: Interval,
}

/// A refill as given, and as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefillInput {
    pub amount: i64,
    pub interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<i64>,
}

impl Refill {
    pub fn parse(input: &RefillInput) -> Result<Self, ParseError> {
        let amount = u64::try_from(input.amount)
            .ok()
            .filter(|a| (1..=MAX_AMOUNT).contains(a))
            .ok_or(ParseError("credits.refill.amount: a whole number from 1 to 1000000000000"))?;
        let interval = match (input.interval.as_str(), input.day) {
            ("daily", None) => Interval::Daily,
            ("daily", Some(_)) => return Err(ParseError("credits.refill.day: only for a monthly refill")),
            ("monthly", day) => match day.unwrap_or(1) {
                day @ 1..=28 => Interval::Monthly { day: day as u8 },
                _ => return Err(ParseError("credits.refill.day: from 1 to 28")),
            },
            _ => return Err(ParseError("credits.refill.interval: daily or monthly")),
        };
        Ok(Self { amount, interval })
    }

    pub fn to_input(self) -> RefillInput {
        let (interval, day) = match self.interval {
            Interval::Daily => ("daily", None),
            Interval::Monthly { day } => ("monthly", Some(i64::from(day))),
        };
        RefillInput { amount: self.amount as i64, interval: interval.into(), day }
    }

    pub fn from_stored(stored: &str) -> Result<Self, ParseError> {
        let input: RefillInput =
            serde_json::from_str(stored).map_err(|_| ParseError("credits.refill: not a stored refill"))?;
        Self::parse(&input)
    }

    pub fn to_stored(self) -> String {
        serde_json::to_string(&self.to_input()).unwrap_or_default()
    }

    /// The number of the refill period `now` falls in: days since the epoch, or months
    /// since January 1970 counted from each month's refill day. A balance from an earlier
    /// period is refilled before use.
    pub fn period(&self, now: i64) -> i64 {
        let days = now.div_euclid(86_400);
        match self.interval {
            Interval::Daily => days,
            Interval::Monthly { day } => {
                let (year, month, mday) = civil_from_days(days);
                let months = (year - 1970) * 12 + month - 1;
                if mday < i64::from(day) { months - 1 } else { months }
            }
        }
    }

    /// When the period after `period` begins.
    pub fn next_refill_at(&self, period: i64) -> i64 {
        match self.interval {
            Interval::Daily => (period + 1) * 86_400,
            Interval::Monthly { day } => {
                let next = period + 1;
                let (year, month) = (1970 + next.div_euclid(12), next.rem_euclid(12) + 1);
                (days_from_civil(year, month, i64::from(day))) * 86_400
            }
        }
    }
}

/// Days since 1970-01-01 as (year, month 1-12, day 1-31): Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A credit balance as an admin sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    pub remaining: u64,
    pub refill: Option<Refill>,
}

/// Credits as given at generation or on an owner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditsInput {
    pub remaining: i64,
    #[serde(default)]
    pub refill: Option<RefillInput>,
}

impl Credits {
    pub fn parse(input: &CreditsInput) -> Result<Self, ParseError> {
        let remaining = parse_amount(input.remaining, "credits.remaining: a whole number from 0 to 1000000000000")?;
        let refill = input.refill.as_ref().map(Refill::parse).transpose()?;
        Ok(Self { remaining, refill })
    }
}

/// A number of credits from 0 to `MAX_AMOUNT`.
pub fn parse_amount(value: i64, message: &'static str) -> Result<u64, ParseError> {
    u64::try_from(value).ok().filter(|v| *v <= MAX_AMOUNT).ok_or(ParseError(message))
}

/// The customer a key belongs to, in the admin's own system: 1 to 256 printable characters.
/// Keys of one account naming the same owner share the owner's limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(Arc<str>);

impl OwnerId {
    pub fn parse(owner: &str) -> Result<Self, ParseError> {
        let chars = owner.chars().count();
        if chars == 0 || chars > 256 || owner.chars().any(char::is_control) || owner.trim().is_empty() {
            return Err(ParseError("owner: must be 1 to 256 printable characters"));
        }
        Ok(Self(owner.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, limit: i64, window: i64) -> LimitInput {
        LimitInput { name: name.into(), limit, window_seconds: window, consistency: Consistency::Fast }
    }

    #[test]
    fn limits_are_bounded_and_distinct() {
        assert!(Limits::parse(&[input("burst", 100, 60), input("daily", 10_000, 86_400)]).is_ok());
        for bad in [
            vec![input("burst", 0, 60)],
            vec![input("burst", -1, 60)],
            vec![input("burst", 1, 0)],
            vec![input("burst", 1, 31 * 86_400 + 1)],
            vec![input("Burst", 1, 1)],
            vec![input("credits", 1, 1)],
            vec![input("1x", 1, 1)],
            vec![input("a\"b", 1, 1)],
            vec![input(&"a".repeat(33), 1, 1)],
            vec![input("a", 1, 1), input("a", 2, 2)],
            (0..6).map(|i| input(&format!("l{i}"), 1, 1)).collect(),
        ] {
            assert!(Limits::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(Limits::parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn limits_round_trip_through_the_store() {
        let limits = Limits::parse(&[
            input("burst", 100, 60),
            LimitInput { consistency: Consistency::Strict, ..input("day", 5, 86_400) },
        ])
        .unwrap();
        let stored = limits.to_stored().unwrap();
        assert_eq!(Limits::from_stored(Some(&stored)).unwrap(), limits);
        assert_eq!(Limits::from_stored(None).unwrap(), Limits::default());
    }

    #[test]
    fn refills_happen_at_the_interval_edge() {
        let daily = Refill { amount: 10, interval: Interval::Daily };
        // 2026-12-02T23:59:59Z and the next second.
        let before = 1_796_255_999;
        assert_eq!(daily.period(before) + 1, daily.period(before + 1));
        assert_eq!(daily.next_refill_at(daily.period(before)), before + 1);
        let monthly = Refill { amount: 10, interval: Interval::Monthly { day: 15 } };
        // 2026-11-14T23:59:59Z, then the 15th.
        let eve = before - 18 * 86_400;
        assert_eq!(monthly.period(eve) + 1, monthly.period(eve + 1));
        assert_eq!(monthly.next_refill_at(monthly.period(eve)), eve + 1);
        assert_eq!(monthly.period(eve + 1), monthly.period(eve + 1 + 29 * 86_400), "the same period until 2026-12-15");
        for days in [0, 59, 365, 10_957, 20_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn refill_inputs_are_judged() {
        let refill = |amount, interval: &str, day| RefillInput { amount, interval: interval.into(), day };
        assert!(Refill::parse(&refill(1, "daily", None)).is_ok());
        assert_eq!(Refill::parse(&refill(1, "monthly", None)).unwrap().interval, Interval::Monthly { day: 1 });
        for bad in [
            refill(0, "daily", None),
            refill(1, "weekly", None),
            refill(1, "monthly", Some(29)),
            refill(1, "daily", Some(1)),
        ] {
            assert!(Refill::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owners_are_printable_and_bounded() {
        assert!(OwnerId::parse("cus_123").is_ok());
        assert!(OwnerId::parse(&"é".repeat(256)).is_ok());
        for bad in ["", " ", "a\nb", &"x".repeat(257)] {
            assert!(OwnerId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
