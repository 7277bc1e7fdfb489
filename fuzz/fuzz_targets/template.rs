//! The manifest template renderer (`stretcher::template::render`) with a
//! fixed environment: no panic, no hang, and text without `{{` untouched.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn env(key: &str) -> Option<String> {
    match key {
        "HOME_DIR" => Some("/home/app".into()),
        "EMPTY" => Some(String::new()),
        "QUOTE" => Some("a\"b<c>\n\u{2028}{{".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rendered = stretcher::template::render(text, &env);
    if !text.contains("{{") {
        assert_eq!(rendered.ok().as_deref(), Some(text));
    }
});
