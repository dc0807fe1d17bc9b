//! The `--record` file: every good event appended as one JSON line, by a thread of its
//! own, so that no request waits on the disk (a request hands its lines over and goes
//! on). The lines are written in the order their requests were stored, and flushed once
//! the writer has nothing more waiting.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use bytes::Bytes;

/// Batches of lines waiting for the writer at most; past that, lines are not recorded
/// (and an error says how many), rather than holding a request or growing memory.
const WAITING_BATCHES: usize = 4096;

/// Appends lines to a file from a writer thread.
#[derive(Debug)]
pub(super) struct Recorder {
    lines: SyncSender<Vec<Bytes>>,
}

impl Recorder {
    /// Opens `path` for appending and starts its writer.
    pub(super) fn open(path: &Path) -> std::io::Result<Recorder> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open --record {}: {e}", path.display()),
                )
            })?;
        let (lines, waiting) = sync_channel(WAITING_BATCHES);
        std::thread::Builder::new()
            .name("collector-record".into())
            .spawn(move || write(std::io::BufWriter::new(file), waiting))?;
        Ok(Recorder { lines })
    }

    /// Hands `lines` to the writer; never waits.
    pub(super) fn record(&self, lines: Vec<Bytes>) {
        if lines.is_empty() {
            return;
        }
        let count = lines.len();
        match self.lines.try_send(lines) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => tracing::error!(
                events = count,
                "the --record file is not keeping up; these events were not recorded"
            ),
            Err(TrySendError::Disconnected(_)) => tracing::error!(
                events = count,
                "the --record writer stopped (see the error before); these events were not \
                 recorded"
            ),
        }
    }
}

/// The writer: appends each batch, flushes when nothing more waits, ends when every
/// [`Recorder`] is gone (or at the first write error, said once).
fn write(mut file: std::io::BufWriter<std::fs::File>, waiting: Receiver<Vec<Bytes>>) {
    while let Ok(lines) = waiting.recv() {
        let mut batch = Some(lines);
        let written = (|| {
            while let Some(lines) = batch.take() {
                for line in &lines {
                    file.write_all(line)?;
                    file.write_all(b"\n")?;
                }
                batch = waiting.try_recv().ok();
            }
            file.flush()
        })();
        if let Err(error) = written {
            tracing::error!(%error, "cannot append to the --record file; recording stopped");
            return;
        }
    }
}
