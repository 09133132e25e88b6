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
    pending: Vec<u8>,
    /// The end-of-copy marker `\.` was seen: what follows is not data.
    ended: bool,
}

struct Session {
    queue: Option<SyncSender<Vec<u8>>>,
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
            started.push(Session {
                queue: Some(queue),
                thread,
            });
        }
        Ok(CopyLoader {
            table,
            sessions: started,
            next: 0,
            pending: Vec::new(),
            ended: false,
        })
    }
}

impl CopyLoader {
    /// The next bytes of the table's COPY text, cut anywhere. False when a session has
    /// stopped: [`CopyLoader::finish`] then says why.
    #[must_use]
    pub fn feed(&mut self, data: &[u8]) -> bool {
        if self.ended {
            return true;
        }
        self.pending.extend_from_slice(data);
        while self.pending.len() >= BATCH && !self.ended {
            let Some(cut) = memchr::memrchr(b'\n', &self.pending) else {
                // One row longer than a batch: wait for its end.
                return true;
            };
            let rest = self.pending.split_off(cut + 1);
            let batch = std::mem::replace(&mut self.pending, rest);
            if !self.send(batch) {
                return false;
            }
        }
        true
    }

    /// Sends the last rows, waits for every session and returns the first failure.
    pub fn finish(mut self) -> Result<(), PgError> {
        let mut last = std::mem::take(&mut self.pending);
        if !self.ended && !last.is_empty() {
            // pg_dump may end the data with the end-of-copy marker without a newline.
            if last == b"\\." || last.ends_with(b"\n\\.") {
                last.truncate(last.len() - 2);
            }
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

    /// Hands complete rows to the next session, up to the end-of-copy marker; false when
    /// that session has stopped.
    fn send(&mut self, mut batch: Vec<u8>) -> bool {
        if let Some(end) = end_of_copy(&batch) {
            batch.truncate(end);
            self.ended = true;
        }
        if batch.is_empty() {
            return true;
        }
        let n = self.sessions.len();
        let session = &self.sessions[self.next % n];
        self.next += 1;
        session
            .queue
            .as_ref()
            .is_some_and(|q| q.send(batch).is_ok())
    }
}

/// Where the end-of-copy line `\.` starts in rows that begin at a line start. A row can never
/// be `\.`: COPY writes a backslash in data as `\\`.
fn end_of_copy(rows: &[u8]) -> Option<usize> {
    if rows.starts_with(b"\\.\n") || rows == b"\\." {
        return Some(0);
    }
    memchr::memmem::find(rows, b"\n\\.\n").map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_copy_marker_is_found_only_as_a_whole_line() {
        assert_eq!(end_of_copy(b"1\n2\n\\.\n\n"), Some(4));
        assert_eq!(end_of_copy(b"\\.\n"), Some(0));
        assert_eq!(
            end_of_copy(b"1\t\\\\.\n2\n"),
            None,
            "an escaped backslash is data"
        );
        assert_eq!(end_of_copy(b"\\\\.\n"), None);
        assert_eq!(end_of_copy(b"1\n2\n"), None);
    }
}
