//! Loading one table's COPY text through several `COPY … FROM STDIN` sessions at once.
//!
//! A restore is bound by the server backend that parses the rows of its biggest table (on
//! CKAN sites `activity` holds most of the data), and `pg_restore --jobs` splits work only by
//! table. A loader splits one table's rows, at row boundaries, over `sessions` psql
//! processes, each fed by a thread from a small bounded queue, so memory stays a few
//! megabytes per session whatever the table's size.

use std::io::Write;
use std::process::Stdio;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::{Pg, PgError, Target, tools};

/// Rows go to the sessions in batches of about this many bytes.
const BATCH: usize = 1 << 20;
/// Batches queued per session.
const QUEUE: usize = 4;

/// One table being loaded; see the module documentation.
pub struct CopyLoader {
    table: String,
    sessions: Vec<Session>,
    next: usize,
    rows: Batcher,
}

/// Cuts COPY text into batches of whole rows, and stops at the end-of-copy marker.
#[derive(Default)]
struct Batcher {
    pending: Vec<u8>,
    /// Where the last newline in `pending` is: a batch ends there.
    last_newline: Option<usize>,
    /// The end-of-copy marker `\.` was seen: what follows is not data.
    ended: bool,
}

impl Batcher {
    /// Takes the next bytes; returns a batch once at least `BATCH` bytes of whole rows wait.
    /// Each byte is looked at about once, however long a row is.
    fn push(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        if let Some(i) = memchr::memrchr(b'\n', data) {
            self.last_newline = Some(self.pending.len() + i);
        }
        self.pending.extend_from_slice(data);
        let cut = self.last_newline.filter(|_| self.pending.len() >= BATCH)?;
        let rest = self.pending.split_off(cut + 1);
        self.last_newline = None;
        let batch = std::mem::replace(&mut self.pending, rest);
        self.rows(batch)
    }

    /// The rows left at the end of the table's data.
    fn finish(&mut self) -> Option<Vec<u8>> {
        let last = std::mem::take(&mut self.pending);
        (!self.ended).then(|| self.rows(last)).flatten()
    }

    /// `batch` up to the end-of-copy marker, which pg_dump may put after the last row
    /// (followed only by blank lines, and never a row: COPY writes a backslash as `\\`).
    fn rows(&mut self, mut batch: Vec<u8>) -> Option<Vec<u8>> {
        let body = batch.len() - batch.iter().rev().take_while(|&&b| b == b'\n').count();
        let marker = if &batch[..body] == b"\\." {
            Some(0)
        } else if batch[..body].ends_with(b"\n\\.") {
            Some(body - 2)
        } else {
            None
        };
        if let Some(end) = marker {
            batch.truncate(end);
            self.ended = true;
        }
        (!batch.is_empty()).then_some(batch)
    }
}

struct Session {
    queue: SyncSender<Vec<u8>>,
    thread: JoinHandle<Result<(), PgError>>,
}

impl Pg {
    /// Starts `sessions` COPY sessions into `t` for pg_dump's `COPY … FROM stdin;` statement
    /// `copy_from`, reading text in `encoding` (the dumped database's).
    pub fn copy_loader(
        &self,
        t: &Target,
        copy_from: &str,
        encoding: Option<&str>,
        sessions: usize,
    ) -> Result<CopyLoader, PgError> {
        let sql = copy_from
            .trim()
            .strip_suffix("stdin;")
            .filter(|h| h.starts_with("COPY "))
            .map(|head| format!("{head}STDIN"))
            .ok_or_else(|| PgError::Unexpected(format!("not a COPY statement: {copy_from}")))?;
        let table = super::split_copy_head(&sql).map_or(sql.clone(), |(t, _)| t.to_string());
        let mut started = Vec::new();
        for _ in 0..sessions.max(1) {
            let mut c = self.command(t, "psql")?;
            c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(t.conn.to_conninfo())
                .arg("-c")
                .arg(&sql)
                // As pg_restore: rows are loaded as dumped, whatever row-level policies say.
                .env("PGOPTIONS", "-c row_security=off")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Some(enc) = encoding {
                c.env("PGCLIENTENCODING", enc);
            }
            let mut child = c.spawn().map_err(|source| PgError::Spawn {
                program: "psql".into(),
                source,
            })?;
            let (queue, batches) = sync_channel::<Vec<u8>>(QUEUE);
            let thread = std::thread::spawn(move || {
                let errs = tools::read_in_background(child.stderr.take().expect("piped"));
                let mut stdin = child.stdin.take().expect("piped");
                for batch in batches {
                    // A session that failed exits; its error is on stderr, read below.
                    if stdin.write_all(&batch).is_err() {
                        break;
                    }
                }
                drop(stdin);
                let status = child.wait().map_err(PgError::Io)?;
                let stderr = errs.join().unwrap_or_default();
                if status.success() {
                    Ok(())
                } else {
                    Err(PgError::Failed {
                        program: "psql COPY".into(),
                        status: status.to_string(),
                        stderr: tools::last_lines(&stderr),
                    })
                }
            });
            started.push(Session { queue, thread });
        }
        Ok(CopyLoader {
            table,
            sessions: started,
            next: 0,
            rows: Batcher::default(),
        })
    }
}

impl CopyLoader {
    /// The next bytes of the table's COPY text, cut anywhere. False when a session has
    /// stopped: [`CopyLoader::finish`] then says why.
    #[must_use]
    pub fn feed(&mut self, data: &[u8]) -> bool {
        match self.rows.push(data) {
            Some(batch) => self.send(batch),
            None => true,
        }
    }

    /// Sends the last rows, waits for every session and returns the first failure.
    pub fn finish(mut self) -> Result<(), PgError> {
        if let Some(last) = self.rows.finish() {
            self.send(last);
        }
        let mut first = None;
        for s in self.sessions {
            drop(s.queue);
            let r = s.thread.join().unwrap_or_else(|_| {
                Err(PgError::Unexpected(
                    "a COPY session's thread panicked".into(),
                ))
            });
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| {
            Err(PgError::Unexpected(format!("{}: {e}", self.table)))
        })
    }

    /// Hands a batch of rows to the next session; false when that session has stopped.
    fn send(&mut self, batch: Vec<u8>) -> bool {
        let session = &self.sessions[self.next % self.sessions.len()];
        self.next += 1;
        session.queue.send(batch).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a batcher hands out, fed in pieces of `piece` bytes.
    fn batches(data: &[u8], piece: usize) -> (Vec<Vec<u8>>, bool) {
        let mut b = Batcher::default();
        let mut out: Vec<Vec<u8>> = data.chunks(piece).filter_map(|c| b.push(c)).collect();
        out.extend(b.finish());
        (out, b.ended)
    }

    #[test]
    fn batches_hold_whole_rows_and_all_of_them() {
        let row = |i: usize| format!("{i}\t{}\n", "x".repeat(i % 5000));
        let text: String = (0..6000).map(row).collect();
        for piece in [1 << 10, 64 << 10, 3 << 20] {
            let (out, ended) = batches(text.as_bytes(), piece);
            assert!(!ended);
            assert!(out.len() > 1, "{piece}: {} batches", out.len());
            assert!(out.iter().all(|b| b.ends_with(b"\n")));
            assert_eq!(out.concat(), text.as_bytes(), "{piece}");
        }
    }

    #[test]
    fn a_row_longer_than_a_batch_stays_whole() {
        let long = format!("1\t{}\n2\tb\n", "y".repeat(3 * BATCH));
        let (out, _) = batches(long.as_bytes(), 4096);
        assert_eq!(out.concat(), long.as_bytes());
        assert!(out.iter().all(|b| b.ends_with(b"\n")));
    }

    #[test]
    fn the_end_of_copy_marker_ends_the_rows_only_as_a_whole_line() {
        assert_eq!(
            batches(b"1\n2\n\\.\n\n\n", 3),
            (vec![b"1\n2\n".to_vec()], true)
        );
        assert_eq!(batches(b"\\.\n", 1).0, Vec::<Vec<u8>>::new());
        assert_eq!(batches(b"1\n\\.", 64).0, vec![b"1\n".to_vec()]);
        // An escaped backslash is data; so are empty rows (one empty text column).
        let data = b"1\t\\\\.\n\\\\.\n\n\n";
        assert_eq!(batches(data, 5), (vec![data.to_vec()], false));
    }
}
