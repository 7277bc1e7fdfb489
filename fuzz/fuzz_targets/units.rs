//! The Go duration and go-humanize size parsers and formatters
//! (`stretcher::units`): no panic, and what they print reads back the same.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stretcher::units::{comma, format_bytes, format_duration, parse_bytes, parse_duration};

/// Below 2^52 ns (about 52 days) every nanosecond count is exact in the f64
/// arithmetic that durations are parsed with.
const EXACT: Duration = Duration::from_nanos(1 << 52);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        let printed = format_duration(d);
        if d < EXACT {
            assert_eq!(parse_duration(&printed), Ok(d), "{text:?} printed as {printed:?}");
        }
    }
    if let Ok(n) = parse_bytes(text) {
        let _ = format_bytes(n);
        let printed = comma(n);
        assert_eq!(parse_bytes(&printed), Ok(n), "{text:?} printed as {printed:?}");
    }
});
