//! Every input the fuzzers keep (`fuzz/corpus/<target>/`, minimised) and every input that
//! once failed (`fuzz/regressions/<target>/`), through the same checks the fuzz targets
//! run (`tests/support/properties.rs`), on stable Rust in every test run.

use std::path::Path;

use crate::support::properties;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for folder in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                inputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    inputs
}

fn run(target: &str, check: impl Fn(&[u8])) {
    let inputs = inputs(target);
    assert!(
        !inputs.is_empty(),
        "no inputs kept for fuzz target {target}"
    );
    for (name, data) in &inputs {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(data)));
        assert!(result.is_ok(), "{target}: {name} fails again");
    }
    eprintln!("{target}: {} kept inputs pass", inputs.len());
}

#[test]
fn kept_event_inputs_pass() {
    run("event", properties::event_encodings);
}

#[test]
fn kept_config_inputs_pass() {
    run("config", properties::config_loading);
}

#[test]
fn kept_collector_inputs_pass() {
    let collector = properties::collector_with_bounds();
    run("collector", |data| {
        properties::collector_requests(&collector, data)
    });
}
