//! Upstream's spellings of durations and sizes: Go's `time.ParseDuration` and
//! `Duration.String`, go-humanize's `ParseBytes`, `Bytes` and `Comma`. No crate
//! matches these exactly, and operators' flags and log scrapers depend on them.

use std::time::Duration;

/// Parses a Go duration (`1m30s`, `1.5s`, `300ms`) or bare seconds (`30`, `2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"));
    }
    parse_go_duration(s)
}

fn parse_go_duration(orig: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {orig:?}");
    let mut s = orig.strip_prefix('+').unwrap_or(orig);
    if s.starts_with('-') {
        return Err(format!("negative duration {orig:?}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !s.is_empty() {
        let num_len = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let num = &s[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        s = &s[num_len..];
        let unit_len = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let nanos_per_unit = match &s[..unit_len] {
            "ns" => 1e0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("missing unit in duration {orig:?}")),
            u => return Err(format!("unknown unit {u:?} in duration {orig:?}")),
        };
        total += value * nanos_per_unit;
        s = &s[unit_len..];
    }
    if total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Formats a duration as Go's `Duration.String` does: `4.187495s`, `330.35ms`, `1m30s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    fn frac(v: u128, prec: u32) -> String {
        let scale = 10u128.pow(prec);
        let digits = format!("{:0width$}", v % scale, width = prec as usize);
        let digits = digits.trim_end_matches('0');
        if digits.is_empty() {
            format!("{}", v / scale)
        } else {
            format!("{}.{}", v / scale, digits)
        }
    }
    match nanos {
        0 => "0s".to_string(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}\u{b5}s", frac(n, 3)),
        n if n < 1_000_000_000 => format!("{}ms", frac(n, 6)),
        n => {
            let secs = frac(n % 60_000_000_000, 9);
            let minutes = n / 60_000_000_000;
            match (minutes / 60, minutes % 60) {
                (0, 0) => format!("{secs}s"),
                (0, m) => format!("{m}m{secs}s"),
                (h, m) => format!("{h}h{m}m{secs}s"),
            }
        }
    }
}

/// Parses a size as go-humanize's `ParseBytes`: `10M` = 10,000,000, `10MiB` =
/// 10,485,760, `1.5MB`, `500k`, `1,024`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(s.len());
    let num: String = s[..num_len].chars().filter(|c| *c != ',').collect();
    let value: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let unit = s[num_len..].trim().to_ascii_lowercase();
    let multiplier: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024f64.powi(2),
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" => 1e15,
        "pi" | "pib" => 1024f64.powi(5),
        "e" | "eb" => 1e18,
        "ei" | "eib" => 1024f64.powi(6),
        _ => return Err(format!("unhandled size name {unit:?} in {s:?}")),
    };
    let bytes = value * multiplier;
    if bytes >= u64::MAX as f64 {
        return Err(format!("size too large: {s:?}"));
    }
    Ok(bytes as u64)
}

/// Formats a byte count as go-humanize's `Bytes`: `83 MB`, `1.5 kB`, `9 B`.
pub fn format_bytes(n: u64) -> String {
    const SUFFIXES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let exp = ((n as f64).ln() / 1000f64.ln()).floor() as i32;
    let exp = exp.clamp(0, SUFFIXES.len() as i32 - 1);
    let value = ((n as f64) / 1000f64.powi(exp) * 10.0 + 0.5).floor() / 10.0;
    let suffix = SUFFIXES[exp as usize];
    if value < 10.0 {
        format!("{value:.1} {suffix}")
    } else {
        format!("{value:.0} {suffix}")
    }
}

/// Formats an integer with thousands separators, as go-humanize's `Comma`.
pub fn comma(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations_and_bare_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(
            parse_duration("1h2m3.5s"),
            Ok(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "1x", "1.2.3s", "-1s", "abc", "1m-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_like_go_duration_string() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(
            format_duration(Duration::from_nanos(4_187_495_000)),
            "4.187495s"
        );
        assert_eq!(
            format_duration(Duration::from_nanos(330_350_000)),
            "330.35ms"
        );
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration(Duration::from_nanos(1500)), "1.5\u{b5}s");
        assert_eq!(format_duration(Duration::from_nanos(42)), "42ns");
    }

    #[test]
    fn parses_humanize_sizes() {
        assert_eq!(parse_bytes("10M"), Ok(10_000_000));
        assert_eq!(parse_bytes("10MiB"), Ok(10_485_760));
        assert_eq!(parse_bytes("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_bytes("500k"), Ok(500_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("1,024 kB"), Ok(1_024_000));
        assert!(parse_bytes("10 parsecs").is_err());
        assert!(parse_bytes("fast").is_err());
    }

    #[test]
    fn formats_humanize_sizes_and_commas() {
        assert_eq!(format_bytes(9), "9 B");
        assert_eq!(format_bytes(52_000_000), "52 MB");
        assert_eq!(format_bytes(1_500), "1.5 kB");
        assert_eq!(format_bytes(82_854_982), "83 MB");
        assert_eq!(comma(218_761_853), "218,761,853");
        assert_eq!(comma(999), "999");
        assert_eq!(comma(1000), "1,000");
    }
}
