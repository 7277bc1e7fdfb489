//! The archive extractor (`stretcher::archive::extract`): any input, as a
//! file, extracted into a fresh dir next to an empty canary dir. No panic,
//! and nothing written outside the extraction dir: the canary stays empty
//! and the parent holds only the two dirs. Extraction is capped at 64 MiB
//! so a bomb ends quickly.
#![no_main]

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stretcher::archive::{extract, MaxSize};
use tokio_util::sync::CancellationToken;

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the parent dir")
        .map(|e| {
            e.expect("a dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Makes everything under `dir` writable again, so it can be removed.
fn unlock(dir: &Path) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    for e in list.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::set_permissions(&path, Permissions::from_mode(0o700));
            unlock(&path);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("a temp dir");
    let archive = scratch.path().join("input");
    std::fs::write(&archive, data).expect("write the input");
    let parent = scratch.path().join("parent");
    let out = parent.join("out");
    let canary = parent.join("canary");
    std::fs::create_dir_all(&out).expect("create out");
    std::fs::create_dir(&canary).expect("create canary");

    let _ = extract(
        &archive,
        &out,
        "fuzz",
        MaxSize::Bytes(64 << 20),
        &CancellationToken::new(),
    );

    assert_eq!(
        entries(&parent),
        ["canary", "out"],
        "something landed next to the extraction dir"
    );
    assert!(
        entries(&canary).is_empty(),
        "something landed in the canary dir"
    );
    let _ = std::fs::set_permissions(&out, Permissions::from_mode(0o700));
    unlock(&out);
});
