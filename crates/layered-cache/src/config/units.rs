//! Durations (`"5m"`, `"200ms"`, `"1h30m"`) and byte sizes (`"256MiB"`)
//! as a person writes them in a config file, and the serde glue for both.
//!
//! Written here rather than taken from `humantime`: the grammar needed is a
//! dozen lines, and owning it lets every error say what would have been
//! right ("use ms, s, m, h or d") and keeps the dependency tree as it is.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// The units a duration may use, longest name first where names share a
/// start (`ms` before `m`), with their length.
const DURATION_UNITS: &[(&str, Duration)] = &[
    ("ns", Duration::from_nanos(1)),
    ("us", Duration::from_micros(1)),
    ("µs", Duration::from_micros(1)),
    ("ms", Duration::from_millis(1)),
    ("min", Duration::from_secs(60)),
    ("s", Duration::from_secs(1)),
    ("m", Duration::from_secs(60)),
    ("h", Duration::from_secs(3600)),
    ("d", Duration::from_secs(86_400)),
];

/// Parses a duration: one or more `<whole number><unit>` terms, added up
/// (`"1h30m"`, `"1m 30s"`), with the units `ns`, `us`, `ms`, `s`, `m` (or
/// `min`), `h` and `d`.
///
/// ```
/// # use std::time::Duration;
/// # use layered_cache::config::parse_duration;
/// assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse_duration("5").unwrap_err().contains("unit"));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let hint =
        "write a number and a unit (ns, us, ms, s, m, h, d), as in \"200ms\", \"5m\" or \"1h30m\"";
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("an empty duration: {hint}"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: {hint}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: the number is too large"))?;
        rest = &rest[digits..];
        let Some(&(unit, length)) = DURATION_UNITS.iter().find(|(unit, _)| {
            rest.strip_prefix(unit)
                // `m` must not swallow the `m` of `ms`, nor `s` a following letter.
                .is_some_and(|after| !after.starts_with(|c: char| c.is_alphabetic()))
        }) else {
            return Err(
                if rest.is_empty() || rest.starts_with(char::is_whitespace) {
                    format!("invalid duration {text:?}: the number has no unit; {hint}")
                } else if rest.starts_with('.') {
                    format!(
                        "invalid duration {text:?}: whole numbers only; write \"1s500ms\" for 1.5 s"
                    )
                } else {
                    format!("invalid duration {text:?}: unknown unit; {hint}")
                },
            );
        };
        rest = rest[unit.len()..].trim_start();
        let term = u32::try_from(number)
            .ok()
            .and_then(|n| length.checked_mul(n))
            .ok_or_else(|| format!("invalid duration {text:?}: too long"))?;
        total = total
            .checked_add(term)
            .ok_or_else(|| format!("invalid duration {text:?}: too long"))?;
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it back: the largest
/// units first, every term exact (`90 s` is `"1m30s"`, zero is `"0s"`).
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let mut nanos = duration.as_nanos();
    let mut out = String::new();
    for (unit, length) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        let count = nanos / length;
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
            nanos %= length;
        }
    }
    out
}

/// Parses a byte size: a whole number of bytes, or one with a unit: `B`,
/// `KB`/`MB`/`GB` (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024).
///
/// ```
/// # use layered_cache::config::parse_size;
/// assert_eq!(parse_size("256MiB"), Ok(256 << 20));
/// assert_eq!(parse_size("1 GB"), Ok(1_000_000_000));
/// assert_eq!(parse_size("512"), Ok(512));
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let hint = "write a number of bytes, or one with a unit (B, KB, MB, GB, KiB, MiB, GiB), as in \"256MiB\"";
    let trimmed = text.trim();
    let digits = trimmed.len()
        - trimmed
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    if digits == 0 {
        return Err(format!("invalid size {text:?}: {hint}"));
    }
    let number: u64 = trimmed[..digits]
        .parse()
        .map_err(|_| format!("invalid size {text:?}: the number is too large"))?;
    let factor: u64 = match trimmed[digits..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("invalid size {text:?}: unknown unit; {hint}")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Serde glue for a [`Duration`] written as a string (`"5m"`).
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*value))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        // The visitor refuses "off" itself when `off` is false.
        d.deserialize_any(DurationVisitor { off: false })
            .map(Option::unwrap_or_default)
    }
}

/// Serde glue for an `Option<Duration>`: a duration, or `"off"` for `None`
/// (TOML has no null, and some settings are on by default).
pub(crate) mod optional_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.serialize_str(&format_duration(*value)),
            None => s.serialize_str("off"),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(DurationVisitor { off: true })
    }
}

struct DurationVisitor {
    /// Whether `"off"` is accepted (as `None`).
    off: bool,
}

impl Visitor<'_> for DurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.off {
            f.write_str("a duration such as \"200ms\", \"5m\" or \"1h30m\", or \"off\"")
        } else {
            f.write_str("a duration such as \"200ms\", \"5m\" or \"1h30m\"")
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if text.trim() == "off" {
            return match self.off {
                true => Ok(None),
                false => Err(E::custom(
                    "this setting cannot be \"off\": give it a duration, as in \"5m\"",
                )),
            };
        }
        parse_duration(text).map(Some).map_err(E::custom)
    }

    // A bare number is the likeliest mistake: say what is missing.
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "a duration is a string with a unit, as in \"{n}s\" or \"{n}ms\", not a bare number"
        )))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "a duration is a string with a unit, as in \"{n}s\" or \"{n}ms\", not a bare number"
        )))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "a duration is a string with a unit, as in \"{n}s\", not a bare number"
        )))
    }
}

/// Serde glue for a byte size: a number of bytes, or a string with a unit.
pub(crate) mod size {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        // The visitor refuses "off" itself when `off` is false.
        d.deserialize_any(SizeVisitor { off: false })
            .map(Option::unwrap_or_default)
    }
}

/// Serde glue for an `Option<u64>` byte size, `"off"` for `None`.
pub(crate) mod optional_size {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.serialize_u64(*value),
            None => s.serialize_str("off"),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(SizeVisitor { off: true })
    }
}

struct SizeVisitor {
    /// Whether `"off"` is accepted (as `None`).
    off: bool,
}

impl Visitor<'_> for SizeVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.off {
            f.write_str("a size in bytes, a string such as \"256MiB\", or \"off\"")
        } else {
            f.write_str("a size in bytes, or a string such as \"256MiB\"")
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if text.trim() == "off" {
            return match self.off {
                true => Ok(None),
                false => Err(E::custom(
                    "this setting cannot be \"off\": give it a size, as in \"16MiB\"",
                )),
            };
        }
        parse_size(text).map(Some).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        u64::try_from(n)
            .map(Some)
            .map_err(|_| E::custom(format!("a size cannot be negative (got {n})")))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("200ms", ms(200)),
            ("5m", ms(300_000)),
            ("5min", ms(300_000)),
            ("1h30m", ms(5_400_000)),
            ("1m 30s", ms(90_000)),
            (" 2d ", ms(172_800_000)),
            ("0s", Duration::ZERO),
            ("1s500ms", ms(1500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
            assert_eq!(
                parse_duration(&format_duration(expected)),
                Ok(expected),
                "{text:?}"
            );
        }
        assert_eq!(format_duration(ms(90_000)), "1m30s");
        assert_eq!(format_duration(ms(1500)), "1s500ms");
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("", "empty"),
            ("5", "no unit"),
            ("5 ", "no unit"),
            ("5x", "unknown unit"),
            ("5sec", "unknown unit"),
            ("1.5s", "whole numbers"),
            ("m", "number and a unit"),
            ("-5s", "number and a unit"),
            ("99999999999999999999999s", "too large"),
            ("9999999999999d", "too long"),
        ] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert_eq!(parse_size("7B"), Ok(7));
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("number of bytes"));
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
