//! Go-style durations (`500ms`, `15s`, `1m30s`), as the flags take them and the logs
//! print them. A leaf: it uses nothing else in the crate, so any layer may.

use std::time::Duration;

/// Parses a Go-style duration: `500ms`, `15s`, `1m30s`, `1.5h`. Units: ns, us, µs, ms,
/// s, m, h. A bare `0` is allowed; negative values are not.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const RULE: &str = "must be a duration like 500ms, 15s or 1m30s";
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(RULE.into());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{RULE} (missing unit)"))?;
        if num_len == 0 {
            return Err(RULE.into());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| RULE.to_string())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(format!("{RULE} (unknown unit {other:?})")),
        };
        rest = &rest[unit_len..];
        total_nanos += number * nanos_per_unit;
    }
    if total_nanos > 1e18 {
        return Err(format!("{RULE} (too large)"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Formats a duration the way `parse_duration` reads it back: `1m30s`, `500ms`, `2s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}us", d.as_micros())
        };
    }
    if ms % 1000 != 0 {
        return if ms > 1000 {
            format!("{}s", d.as_secs_f64())
        } else {
            format!("{ms}ms")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || out.is_empty() {
        out += &format!("{s}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_form() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2h45m10s"), Ok(Duration::from_secs(9910)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "15", "-1s", "1x", "s", "1.2.3s", "ms5", "1m 30s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations_format_round_trip() {
        for text in ["500ms", "15s", "1m30s", "2h", "1h0m1s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn a_leaf_of_the_crate() {
        let code = include_str!("duration.rs");
        let code = code.split("#[cfg(test)]").next().unwrap();
        for path in [concat!("crate", "::"), concat!("super", "::")] {
            assert!(!code.contains(path), "duration.rs must not use {path}");
        }
    }
}
