//! Names the commit a build comes from, for `--version`, the start-up log line and the
//! `build_info` metric: `SNOWPLOW_RELAY_COMMIT` when set (a Docker or tarball build,
//! which has no `.git`: `docker build --build-arg SNOWPLOW_RELAY_COMMIT=$(git rev-parse
//! --short HEAD)`), else `git rev-parse --short=7 HEAD` in a git checkout, else
//! "unknown".

use std::process::Command;

fn main() {
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
        for watched in [format!("{git_dir}/{branch}"), format!("{git_dir}/packed-refs")] {
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
