//! The manifest parser (`stretcher::manifest::Manifest::parse`): template,
//! YAML 1.1 and the field rules. No panic; what it accepts is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stretcher::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Manifest::parse(text) {
        assert!(m.dest_mode() <= 0o7777, "dest_mode {:o}", m.dest_mode());
        assert!(m.src.is_empty() || !m.dest.is_empty(), "src without dest");
    }
});
