//! Two things the build adds to the binary:
//!
//! - the commit a build comes from, for `--version`, the start-up log line and the
//!   `build_info` metric: `SNOWPLOW_RELAY_COMMIT` when set (a Docker or tarball build,
//!   which has no `.git`: `docker build --build-arg SNOWPLOW_RELAY_COMMIT=$(git rev-parse
//!   --short HEAD)`), else `git rev-parse --short=7 HEAD` in a git checkout, else
//!   "unknown";
//! - Iglu Central (`iglu/schemas`, 679 schemas, 1.9 MB), each file deflated on its own
//!   into `$OUT_DIR/iglu.bin` (about 0.4 MB) with a sorted index in
//!   `$OUT_DIR/iglu_index.rs`, for `src/micro/iglu.rs` to inflate the one it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    pack_iglu(Path::new("iglu/schemas"));
    println!("cargo::rerun-if-env-changed=SNOWPLOW_RELAY_COMMIT");
    let commit = std::env::var("SNOWPLOW_RELAY_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=SNOWPLOW_RELAY_COMMIT={commit}");
}

/// The checkout's commit, watching what moves it (HEAD, and the branch it names).
fn git_commit() -> Option<String> {
    let git_dir = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let git_dir = String::from_utf8(git_dir.stdout).ok()?.trim().to_owned();
    println!("cargo::rerun-if-changed={git_dir}/HEAD");
    if let Ok(head) = std::fs::read_to_string(format!("{git_dir}/HEAD"))
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        // Cargo reruns a script whose watched file is missing at every build (which
        // rebuilt the crate each time): watch only the files that exist (a packed
        // branch has no file of its own; a fresh clone may have no packed-refs).
        for watched in [
            format!("{git_dir}/{branch}"),
            format!("{git_dir}/packed-refs"),
        ] {
            if std::path::Path::new(&watched).exists() {
                println!("cargo::rerun-if-changed={watched}");
            }
        }
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

/// Deflates every schema under `root` into one blob and writes its index: `(path, start,
/// end)`, sorted by path (`vendor/name/format/version`). Skipped when the files are
/// those of the last pack (the script reruns at every commit, for the commit's name).
fn pack_iglu(root: &Path) {
    println!("cargo::rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut files = Vec::new();
    collect(root, root, &mut files);
    files.sort();
    let mut stamp = String::new();
    for (path, file) in &files {
        let metadata = std::fs::metadata(file).expect("schema metadata");
        let modified = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        stamp.push_str(&format!("{path} {} {modified:?}\n", metadata.len()));
    }
    let stamp_file = out.join("iglu.stamp");
    if std::fs::read_to_string(&stamp_file).is_ok_and(|old| old == stamp) {
        return;
    }
    let mut blob = Vec::new();
    let mut index = String::from("&[\n");
    for (path, file) in &files {
        let text = std::fs::read(file).expect("schema file");
        let start = blob.len();
        blob.extend(miniz_oxide::deflate::compress_to_vec(&text, 9));
        index.push_str(&format!("    ({path:?}, {start}, {}),\n", blob.len()));
    }
    index.push_str("]\n");
    std::fs::write(out.join("iglu.bin"), blob).expect("write iglu.bin");
    std::fs::write(out.join("iglu_index.rs"), index).expect("write iglu_index.rs");
    std::fs::write(stamp_file, stamp).expect("write iglu.stamp");
}

/// Every file under `dir`, as (its path below `root` with `/` separators, its path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("iglu/schemas is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let relative = path.strip_prefix(root).expect("below root");
            let parts: Vec<_> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            files.push((parts.join("/"), path));
        }
    }
}
