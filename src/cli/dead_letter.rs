//! `snowplow-relay dead-letter count|list|export|import|replay|drop|parked`: the
//! dead-letter list as an operator reads, fixes and empties it, and the events relays
//! hold parked (which no other tool shows).
//!
//! Which entries a command takes is decided in Redis by one script (`dead_filter.lua`)
//! from [`FilterFlags`]; `replay` and `drop` move entries in atomic steps of up to
//! [`STEP`] (`dead_move.lua`). Entries are printed and read as [`Line`]s.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use base64::Engine;
use clap::{Args, Subcommand};
use snowplow_relay::config::RedisSettings;
use snowplow_relay::ops::metrics::DeadReason;
use snowplow_relay::queue::{
    DeadLetter, DeadLetterFilter, Destination, Move, Parked, Queue, QueueError, Reading,
    UNLABELLED, timestamp,
};

use super::{RelayFlags, runtime};

/// Entries read, moved or written per atomic step.
const STEP: usize = 500;

#[derive(Debug, Subcommand)]
pub(super) enum Action {
    /// Print how many entries the dead-letter list holds (that the filters take).
    Count {
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Print entries, oldest first, one JSON object per line: reason (the metric's
    /// label), detail, status, failed_at, relay, and the element (as `element`, or
    /// `element_base64` when it is not UTF-8). Writes nothing.
    List {
        #[command(flatten)]
        filter: FilterFlags,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Skip this many of the entries the filters take first.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Newest first.
        #[arg(long)]
        newest: bool,
    },
    /// Print every entry the filters take, oldest first, as `list` prints them: a file
    /// `import` reads back byte for byte. Writes nothing.
    Export {
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Append entries read as `export` prints them (from FILE, or standard input) to the
    /// dead-letter list, or with --replay their elements to the list. Every line is
    /// checked before anything is written; then 500 lines per atomic step.
    Import {
        /// The file to read ("-" or none: standard input).
        file: Option<std::path::PathBuf>,
        /// Append the elements to the list, to be relayed, instead.
        #[arg(long)]
        replay: bool,
    },
    /// Move entries the filters take, oldest first, back to the tail of the list
    /// (their elements, byte for byte). Each step of up to 500 entries is atomic: an
    /// interrupted replay loses and duplicates nothing.
    Replay {
        #[command(flatten)]
        filter: FilterFlags,
        #[command(flatten)]
        bound: MoveFlags,
    },
    /// Remove the entries the filters take, in atomic steps of up to 500 (`export`
    /// them first to keep a copy).
    Drop {
        #[command(flatten)]
        filter: FilterFlags,
        #[command(flatten)]
        bound: MoveFlags,
    },
    /// Print the events relays hold parked (they kept failing while other requests
    /// passed, and are retried one by one), one JSON object per line: the relay holding
    /// it, its claim position, when it was parked, the last status, the attempts before
    /// it was parked, the element. Writes nothing.
    Parked {
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Which entries a command takes; each flag may be given more than once (any of them
/// matches), and different flags must all match.
#[derive(Debug, Args)]
pub(super) struct FilterFlags {
    /// Entries of this reason: the `reason` label of
    /// snowplow_relay_events_dead_lettered_total, or `unlabelled` (entries older relays
    /// wrote before entries carried the label).
    #[arg(long, value_parser = reason_label)]
    reason: Vec<String>,
    /// Entries the collector answered with this HTTP status.
    #[arg(long)]
    status: Vec<u16>,
    /// Entries of this relay: its instance id (host:pid:suffix), or its host, or
    /// host:pid.
    #[arg(long)]
    relay: Vec<String>,
    /// Entries dead-lettered at or after this time: RFC 3339 (2026-12-05T10:00:00Z) or
    /// a time ago (90m, 2h, 7days).
    #[arg(long, value_parser = point_in_time)]
    since: Option<String>,
    /// Entries dead-lettered at or before this time (as --since).
    #[arg(long, value_parser = point_in_time)]
    through: Option<String>,
}

impl FilterFlags {
    fn filter(self) -> DeadLetterFilter {
        DeadLetterFilter {
            reasons: self.reason,
            statuses: self.status,
            relays: self.relay,
            since: self.since,
            through: self.through,
        }
    }
}

/// How much a replay or drop moves.
#[derive(Debug, Args)]
pub(super) struct MoveFlags {
    /// At most this many entries (default: all the filters take).
    #[arg(long)]
    limit: Option<u64>,
    /// Print how many entries it would take, and take none.
    #[arg(long)]
    dry_run: bool,
}

fn reason_label(text: &str) -> Result<String, String> {
    let labels: Vec<&str> = DeadReason::ALL
        .iter()
        .map(|reason| reason.as_str())
        .chain([UNLABELLED])
        .collect();
    if labels.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!("expected one of {}", labels.join(", ")))
    }
}

fn point_in_time(text: &str) -> Result<String, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(timestamp(at));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => std::time::SystemTime::now()
            .checked_sub(ago)
            .map(timestamp)
            .ok_or_else(|| format!("{text} ago is before 1970")),
        Err(_) => Err(
            "expected an RFC 3339 time (2026-12-05T10:00:00Z) or a time ago (90m, 2h, 7days)"
                .to_owned(),
        ),
    }
}

pub(super) fn dead_letter(flags: RelayFlags, action: Action) -> ExitCode {
    let settings = match flags.tool_settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    // An import reads and checks its whole input before it connects.
    let imported = match &action {
        Action::Import { file, .. } => match read_import(file.as_deref()) {
            Ok(entries) => Some(entries),
            Err(error) => {
                eprintln!("snowplow-relay: {error}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(act(&settings.redis, action, imported)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("snowplow-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn act(
    redis: &RedisSettings,
    action: Action,
    imported: Option<Vec<Vec<u8>>>,
) -> Result<(), QueueError> {
    let queue = Queue::connect(redis).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match action {
        Action::Count { filter } => {
            let filter = filter.filter();
            let count = if filter.is_empty() {
                queue.dead_letter_count().await?
            } else {
                count(&queue, &filter).await?
            };
            let _ = writeln!(out, "{count}");
        }
        Action::List {
            filter,
            limit,
            offset,
            newest,
        } => {
            let reading = if newest {
                Reading::NewestFirst
            } else {
                Reading::OldestFirst
            };
            print_entries(&queue, &filter.filter(), reading, offset, limit, &mut out).await?;
        }
        Action::Export { filter } => {
            let printed = print_entries(
                &queue,
                &filter.filter(),
                Reading::OldestFirst,
                0,
                u64::MAX,
                &mut out,
            )
            .await?;
            eprintln!("exported {printed} entries");
        }
        Action::Import { replay, .. } => {
            let entries = imported.unwrap_or_default();
            let to = if replay {
                Destination::List
            } else {
                Destination::DeadLetters
            };
            let mut written = 0;
            for step in entries.chunks(STEP) {
                written += queue.push_dead_letters(step, to).await?;
                eprintln!("imported {written}/{} lines", entries.len());
            }
            let _ = writeln!(out, "{written}");
        }
        Action::Replay { filter, bound } => {
            move_entries(&queue, &filter.filter(), bound, Move::Replay, &mut out).await?;
        }
        Action::Drop { filter, bound } => {
            move_entries(&queue, &filter.filter(), bound, Move::Drop, &mut out).await?;
        }
        Action::Parked { limit } => {
            for (instance, entry) in queue.parked(limit).await? {
                let newline = entry.iter().position(|&b| b == b'\n');
                let meta =
                    newline.and_then(|at| serde_json::from_slice::<Parked>(&entry[..at]).ok());
                let line = match (meta, newline) {
                    (Some(meta), Some(at)) => serde_json::json!({
                        "instance": instance,
                        "position": meta.position,
                        "parked_at": meta.parked_at,
                        "status": meta.status,
                        "attempts_before_parking": meta.attempts,
                        "element": String::from_utf8_lossy(&entry[at + 1..]),
                    }),
                    _ => serde_json::json!({
                        "instance": instance,
                        "element": String::from_utf8_lossy(&entry),
                    }),
                };
                let _ = writeln!(out, "{line}");
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

/// How many entries `filter` takes, read in steps (each step one instant; entries
/// written meanwhile at the tail are counted when reached).
async fn count(queue: &Queue, filter: &DeadLetterFilter) -> Result<u64, QueueError> {
    let (mut start, mut total) = (0, 0);
    loop {
        let (read, matched) = queue.count_dead_letters(filter, start, STEP).await?;
        if read == 0 {
            return Ok(total);
        }
        start += read;
        total += matched;
    }
}

/// Prints the entries `filter` takes, skipping `offset` of them, at most `limit`.
/// Returns how many it printed.
async fn print_entries(
    queue: &Queue,
    filter: &DeadLetterFilter,
    reading: Reading,
    mut offset: u64,
    limit: u64,
    out: &mut impl Write,
) -> Result<u64, QueueError> {
    let (mut start, mut printed) = (0, 0);
    while printed < limit {
        let (read, entries) = queue
            .select_dead_letters(filter, start, STEP, reading)
            .await?;
        if read == 0 {
            break;
        }
        start += read;
        for entry in entries {
            if offset > 0 {
                offset -= 1;
                continue;
            }
            if printed == limit {
                break;
            }
            let line = serde_json::to_string(&Line::of(&entry)).expect("serialisable");
            if writeln!(out, "{line}").is_err() {
                // The reader went away (`| head`): nothing more to say.
                return Ok(printed);
            }
            printed += 1;
        }
    }
    Ok(printed)
}

/// A replay or a drop: one pass over the entries the list holds when it starts.
async fn move_entries(
    queue: &Queue,
    filter: &DeadLetterFilter,
    bound: MoveFlags,
    action: Move,
    out: &mut impl Write,
) -> Result<(), QueueError> {
    let limit = bound.limit.unwrap_or(u64::MAX);
    if bound.dry_run {
        let would = count(queue, filter).await?.min(limit);
        let _ = writeln!(out, "{would}");
        return Ok(());
    }
    let verb = match action {
        Move::Replay => "replayed",
        Move::Drop => "dropped",
    };
    let length = queue.dead_letter_count().await?;
    let (mut read, mut moved) = (0, 0);
    while read < length && moved < limit {
        let window = (length - read).min(STEP as u64) as usize;
        let (step_read, step_moved) = queue
            .move_dead_letters(filter, window, action, limit - moved)
            .await?;
        if step_read == 0 {
            break;
        }
        read += step_read;
        moved += step_moved;
        eprintln!("{verb} {moved} of {read}/{length} entries read");
    }
    let _ = writeln!(out, "{moved}");
    Ok(())
}

/// One dead-letter entry as `list` and `export` print it and `import` reads it: the
/// metadata's fields and the element; or, for an entry whose first line is not that
/// metadata, the entry whole. Bytes that are not UTF-8 are written in base64 under the
/// `_base64` name, so a line holds any entry byte for byte.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    element: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    element_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_base64: Option<String>,
}

impl Line {
    fn of(stored: &[u8]) -> Line {
        match DeadLetter::decode(stored) {
            Some((meta, element)) => {
                let (element, element_base64) = text_or_base64(element);
                Line {
                    reason: Some(meta.reason),
                    detail: meta.detail,
                    status: meta.status,
                    failed_at: Some(meta.failed_at),
                    relay: Some(meta.relay),
                    element,
                    element_base64,
                    ..Line::default()
                }
            }
            None => {
                let (entry, entry_base64) = text_or_base64(stored);
                Line {
                    entry,
                    entry_base64,
                    ..Line::default()
                }
            }
        }
    }

    /// The stored entry this line describes.
    fn stored(self) -> Result<Vec<u8>, String> {
        let bytes = |name: &str, text: Option<String>, base64: Option<String>| match (text, base64)
        {
            (Some(text), None) => Ok(Some(text.into_bytes())),
            (None, Some(base64)) => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(Some)
                .map_err(|e| format!("`{name}_base64` is not base64: {e}")),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(format!("both `{name}` and `{name}_base64`")),
        };
        let meta_given = self.reason.is_some()
            || self.detail.is_some()
            || self.status.is_some()
            || self.failed_at.is_some()
            || self.relay.is_some();
        let element = bytes("element", self.element, self.element_base64)?;
        match (bytes("entry", self.entry, self.entry_base64)?, element) {
            (Some(entry), None) if !meta_given => Ok(entry),
            (Some(_), _) => Err("an `entry` line holds nothing else".to_owned()),
            (None, None) => Err("no `element` (or `element_base64`)".to_owned()),
            (None, Some(element)) => {
                let missing = |name: &str| format!("no `{name}`");
                let meta = DeadLetter {
                    reason: self.reason.ok_or_else(|| missing("reason"))?,
                    detail: Some(self.detail.unwrap_or_default()),
                    status: self.status,
                    failed_at: self.failed_at.ok_or_else(|| missing("failed_at"))?,
                    relay: self.relay.ok_or_else(|| missing("relay"))?,
                };
                Ok(meta.encode(&element))
            }
        }
    }
}

fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// Reads and checks every line of an import; the first bad line stops it, named.
fn read_import(file: Option<&std::path::Path>) -> Result<Vec<Vec<u8>>, String> {
    let (name, reader): (String, Box<dyn BufRead>) = match file {
        Some(path) if path != std::path::Path::new("-") => (
            path.display().to_string(),
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            )),
        ),
        _ => (
            "standard input".to_owned(),
            Box::new(std::io::stdin().lock()),
        ),
    };
    let mut entries = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let at = || format!("{name}, line {}", index + 1);
        let line = line.map_err(|e| format!("cannot read {}: {e}", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            format!(
                "{}: not a line as `dead-letter export` writes it: {e}",
                at()
            )
        })?;
        entries.push(parsed.stored().map_err(|e| format!("{}: {e}", at()))?);
    }
    Ok(entries)
}
