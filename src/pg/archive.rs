//! Reading a pg_dump custom-format archive as it streams past, to take the manifest.
//!
//! With `--compress=0`, a custom-format archive carries each table's COPY text in
//! length-prefixed chunks. [`ArchiveTap`] parses the header and table of contents, then sums
//! every table's rows with [`super::checksum`], so the manifest costs no second scan of the
//! production database. It also proves the stream complete: every TOC entry that has data
//! must have had its data block when the stream ends.
//!
//! Layout (pg_backup_archiver.c, pg_backup_custom.c): "PGDMP", version (3 bytes), int size,
//! offset size, format, compression, creation time (7 ints), database name, server and pg_dump
//! versions, the TOC, then blocks: a type byte (1 = data, 3 = large objects), the dump id and
//! chunks `int len, bytes` ending with a 0 length. Ints are a sign byte plus `int size` bytes,
//! little-endian.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::checksum::{LineSummer, TableSum};

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// A problem with the archive stream.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("the dump is not a pg_dump custom-format archive ({0})")]
    NotCustomFormat(String),
    #[error("pg_dump archive version {0} is not supported (1.12 to 1.16 are)")]
    Version(String),
    #[error("the dump is compressed; ckan-vault needs --compress=0 (the vault compresses)")]
    Compressed,
    #[error("malformed archive: {0}")]
    Malformed(String),
    #[error("the dump ended early: {0}")]
    Truncated(String),
}

/// One table's data as it passed through the dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    #[serde(flatten)]
    pub sum: TableSum,
    /// pg_dump's `COPY schema.table (cols) FROM stdin;`, from which a check builds its COPY TO.
    pub copy: String,
}

/// What a complete archive held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSummary {
    pub archive_version: String,
    pub database: String,
    pub server_version: String,
    pub pg_dump_version: String,
    /// The database encoding (from the archive's ENCODING entry), used for COPY checks.
    pub encoding: Option<String>,
    /// `schema.table` → rows and checksum.
    pub tables: BTreeMap<String, TableData>,
    pub large_objects: u64,
    pub large_object_bytes: u64,
    pub toc_entries: u64,
}

#[derive(Debug)]
enum State {
    Head,
    BlockStart,
    ChunkLen { id: i64, blob: bool },
    Chunk { id: i64, blob: bool, left: usize },
    BlobOid { id: i64 },
    Failed(ArchiveError),
}

#[derive(Debug)]
struct Entry {
    desc: String,
    key: String,
    copy: String,
    has_data: bool,
}

/// Where a tap hands the archive as it streams past: a parallel restore's loaders.
pub trait DataSink {
    /// The header and TOC are parsed, before any data: `toc` is a complete archive of every
    /// entry without data (pre-data, post-data, sequence values); `list` is a
    /// `pg_restore --use-list` file naming all of them but table data and large objects.
    fn head(&mut self, toc: &[u8], list: &[u8]);
    /// The next bytes of a table's COPY text, cut anywhere (not at row boundaries).
    /// `copy` is pg_dump's `COPY … FROM stdin;` for it.
    fn data(&mut self, table: &str, copy: &str, bytes: &[u8]);
    /// That table's data is complete.
    fn end(&mut self, table: &str);
}

/// For a tap that only checks.
impl DataSink for () {
    fn head(&mut self, _: &[u8], _: &[u8]) {}
    fn data(&mut self, _: &str, _: &str, _: &[u8]) {}
    fn end(&mut self, _: &str) {}
}

/// A push parser fed with the dump's bytes in whatever pieces they arrive.
#[derive(Debug)]
pub struct ArchiveTap {
    state: State,
    buf: Vec<u8>,
    next_try: usize,
    int_size: usize,
    summary: ArchiveSummary,
    entries: HashMap<i64, Entry>,
    seen: HashMap<i64, LineSummer>,
    blocks_done: Vec<i64>,
    /// The header and table of contents as they streamed past, when asked to keep them.
    toc: Option<Vec<u8>>,
    keep_toc: bool,
}

impl Default for ArchiveTap {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveTap {
    pub fn new() -> Self {
        Self {
            state: State::Head,
            buf: Vec::new(),
            next_try: 64,
            int_size: 4,
            summary: ArchiveSummary::default(),
            entries: HashMap::new(),
            seen: HashMap::new(),
            blocks_done: Vec::new(),
            toc: None,
            keep_toc: false,
        }
    }

    /// A tap that also keeps the archive's header and table of contents (kilobytes to a few
    /// megabytes: no table data). A restore hands them to `pg_restore --jobs` for the
    /// post-data section, which needs a seekable archive but none of the data blocks.
    pub fn keeping_toc() -> Self {
        Self {
            keep_toc: true,
            ..Self::new()
        }
    }

    /// The header and table of contents, once the stream got past them (see
    /// [`ArchiveTap::keeping_toc`]).
    pub fn take_toc(&mut self) -> Option<Vec<u8>> {
        self.end_into(&mut ());
        self.toc.take()
    }

    /// Feeds the next bytes of the stream. After an error, further input is ignored and the
    /// error is returned again by [`ArchiveTap::finish`].
    pub fn feed(&mut self, data: &[u8]) {
        self.feed_into(data, &mut ());
    }

    /// [`ArchiveTap::feed`], also handing the archive to `sink`.
    pub fn feed_into(&mut self, data: &[u8], sink: &mut dyn DataSink) {
        if matches!(self.state, State::Head) {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= self.next_try {
                // What followed the TOC in the buffer is parsed next.
                let rest = self.try_head(sink);
                self.feed_blocks(&rest, sink);
            }
        } else {
            self.feed_blocks(data, sink);
        }
    }

    /// The stream ended: a small archive may have ended before the buffer grew to the next
    /// parse of the header, so parse it now and hand what follows to `sink`.
    pub fn end_into(&mut self, sink: &mut dyn DataSink) {
        if matches!(self.state, State::Head) {
            let rest = self.try_head(sink);
            self.feed_blocks(&rest, sink);
        }
    }

    fn feed_blocks(&mut self, mut data: &[u8], sink: &mut dyn DataSink) {
        while !data.is_empty() {
            match &mut self.state {
                State::Failed(_) | State::Head => return,
                State::Chunk { id, blob, left } => {
                    let n = (*left).min(data.len());
                    if !*blob {
                        self.seen.entry(*id).or_default().feed(&data[..n]);
                        if let Some(e) = self.entries.get(id).filter(|e| e.desc == "TABLE DATA") {
                            sink.data(&e.key, &e.copy, &data[..n]);
                        }
                    } else {
                        self.summary.large_object_bytes += n as u64;
                    }
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        let (id, blob) = (*id, *blob);
                        self.state = State::ChunkLen { id, blob };
                    }
                }
                _ => {
                    // Small fixed-size items: gather them in `buf`.
                    let need = self.need();
                    let take = need.saturating_sub(self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() == need {
                        self.step(sink);
                    }
                }
            }
        }
    }

    fn need(&self) -> usize {
        match self.state {
            State::BlockStart => 1 + 1 + self.int_size,
            State::ChunkLen { .. } | State::BlobOid { .. } => 1 + self.int_size,
            _ => 0,
        }
    }

    fn read_int(&self, bytes: &[u8]) -> i64 {
        let mut v: i64 = 0;
        for (i, b) in bytes[1..1 + self.int_size].iter().enumerate() {
            v |= (*b as i64) << (8 * i);
        }
        if bytes[0] != 0 { -v } else { v }
    }

    fn fail(&mut self, e: ArchiveError) {
        self.state = State::Failed(e);
    }

    fn step(&mut self, sink: &mut dyn DataSink) {
        let buf = std::mem::take(&mut self.buf);
        match self.state {
            State::BlockStart => {
                let id = self.read_int(&buf[1..]);
                match buf[0] {
                    BLK_DATA => self.state = State::ChunkLen { id, blob: false },
                    BLK_BLOBS => self.state = State::BlobOid { id },
                    t => self.fail(ArchiveError::Malformed(format!("unknown block type {t}"))),
                }
                if !self.entries.contains_key(&id) {
                    self.fail(ArchiveError::Malformed(format!(
                        "data for unknown entry {id}"
                    )));
                }
            }
            State::ChunkLen { id, blob } => {
                let len = self.read_int(&buf);
                if len < 0 {
                    self.fail(ArchiveError::Malformed("negative chunk length".into()));
                } else if len == 0 {
                    if blob {
                        self.state = State::BlobOid { id };
                    } else {
                        self.seen.entry(id).or_default();
                        self.blocks_done.push(id);
                        if let Some(e) = self.entries.get(&id).filter(|e| e.desc == "TABLE DATA") {
                            sink.end(&e.key);
                        }
                        self.state = State::BlockStart;
                    }
                } else {
                    self.state = State::Chunk {
                        id,
                        blob,
                        left: len as usize,
                    };
                }
            }
            State::BlobOid { id } => {
                let oid = self.read_int(&buf);
                if oid == 0 {
                    self.blocks_done.push(id);
                    self.state = State::BlockStart;
                } else {
                    self.summary.large_objects += 1;
                    self.state = State::ChunkLen { id, blob: true };
                }
            }
            _ => unreachable!("step only runs for fixed-size items"),
        }
        self.buf = buf;
        self.buf.clear();
    }

    /// Parses the header and TOC once the buffer holds them; returns the bytes after them.
    fn try_head(&mut self, sink: &mut dyn DataSink) -> Vec<u8> {
        let mut cur = Cursor {
            data: &self.buf,
            pos: 0,
            int_size: 4,
            off_size: 8,
        };
        match parse_head(&mut cur) {
            Ok((summary, entries, int_size)) => {
                let rest = self.buf[cur.pos..].to_vec();
                if self.keep_toc {
                    self.toc = Some(self.buf[..cur.pos].to_vec());
                }
                self.summary = summary;
                self.entries = entries;
                self.int_size = int_size;
                sink.head(&self.buf[..cur.pos], &self.list_without_table_data());
                self.buf.clear();
                self.state = State::BlockStart;
                return rest;
            }
            Err(HeadError::Incomplete) => {
                // Re-parse only after the buffer doubled: the TOC of a big schema is megabytes.
                self.next_try = self.buf.len() * 2;
            }
            Err(HeadError::Bad(e)) => self.fail(e),
        }
        Vec::new()
    }

    /// See [`DataSink::head`]: with `--section=data` the list restores what the data section
    /// holds besides rows, such as sequence values.
    fn list_without_table_data(&self) -> Vec<u8> {
        let mut ids: Vec<i64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.desc != "TABLE DATA" && !e.desc.contains("BLOB"))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.iter()
            .map(|id| format!("{id}\n"))
            .collect::<String>()
            .into_bytes()
    }

    /// Ends the stream: checks that every table's data arrived and returns the summary.
    pub fn finish(mut self) -> Result<ArchiveSummary, ArchiveError> {
        if matches!(self.state, State::Head) {
            self.end_into(&mut ());
            if matches!(self.state, State::Head) {
                return Err(ArchiveError::Truncated(format!(
                    "only {} bytes, the header or table of contents is incomplete",
                    self.buf.len()
                )));
            }
        }
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::BlockStart if self.buf.is_empty() => {}
            State::BlockStart => {
                return Err(ArchiveError::Truncated("inside a block header".into()));
            }
            _ => return Err(ArchiveError::Truncated("inside a table's data".into())),
        }
        let done: std::collections::HashSet<i64> = self.blocks_done.iter().copied().collect();
        let mut missing: Vec<&str> = self
            .entries
            .iter()
            .filter(|(id, e)| e.has_data && !done.contains(id))
            .map(|(_, e)| e.key.as_str())
            .collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            return Err(ArchiveError::Truncated(format!(
                "no data for {} of {} entries, first: {}",
                missing.len(),
                self.entries.values().filter(|e| e.has_data).count(),
                missing[0]
            )));
        }
        for (id, summer) in self.seen {
            let entry = &self.entries[&id];
            if entry.desc != "TABLE DATA" {
                continue;
            }
            let sum = summer.finish().map_err(|n| {
                ArchiveError::Malformed(format!(
                    "{}: last row lacks a newline ({n} bytes)",
                    entry.key
                ))
            })?;
            self.summary.tables.insert(
                entry.key.clone(),
                TableData {
                    sum,
                    copy: entry.copy.clone(),
                },
            );
        }
        Ok(self.summary)
    }
}

enum HeadError {
    Incomplete,
    Bad(ArchiveError),
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    int_size: usize,
    off_size: usize,
}

impl Cursor<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], HeadError> {
        if self.pos + n > self.data.len() {
            return Err(HeadError::Incomplete);
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, HeadError> {
        Ok(self.bytes(1)?[0])
    }
    fn int(&mut self) -> Result<i64, HeadError> {
        let n = self.int_size;
        let b = self.bytes(1 + n)?;
        let mut v: i64 = 0;
        for (i, x) in b[1..].iter().enumerate() {
            v |= (*x as i64) << (8 * i);
        }
        Ok(if b[0] != 0 { -v } else { v })
    }
    fn string(&mut self) -> Result<Option<String>, HeadError> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        if len > 1 << 30 {
            return Err(HeadError::Bad(ArchiveError::Malformed(
                "string longer than 1 GiB".into(),
            )));
        }
        let b = self.bytes(len as usize)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }
    fn text(&mut self) -> Result<String, HeadError> {
        Ok(self.string()?.unwrap_or_default())
    }
}

type Head = (ArchiveSummary, HashMap<i64, Entry>, usize);

fn parse_head(c: &mut Cursor<'_>) -> Result<Head, HeadError> {
    let bad = |s: String| HeadError::Bad(ArchiveError::Malformed(s));
    let magic = c.bytes(5)?;
    if magic != b"PGDMP" {
        return Err(HeadError::Bad(ArchiveError::NotCustomFormat(
            "no PGDMP signature".into(),
        )));
    }
    let (vmaj, vmin, vrev) = (c.byte()?, c.byte()?, c.byte()?);
    let version = (vmaj, vmin);
    let version_str = format!("{vmaj}.{vmin}.{vrev}");
    if !((1, 12)..=(1, 16)).contains(&version) {
        return Err(HeadError::Bad(ArchiveError::Version(version_str)));
    }
    c.int_size = c.byte()? as usize;
    c.off_size = c.byte()? as usize;
    if !(1..=8).contains(&c.int_size) || !(1..=16).contains(&c.off_size) {
        return Err(bad(format!(
            "int size {} / offset size {}",
            c.int_size, c.off_size
        )));
    }
    let format = c.byte()?;
    if format != 1 {
        return Err(HeadError::Bad(ArchiveError::NotCustomFormat(format!(
            "format byte {format}"
        ))));
    }
    let compressed = if version >= (1, 15) {
        c.byte()? != 0
    } else {
        c.int()? != 0
    };
    if compressed {
        return Err(HeadError::Bad(ArchiveError::Compressed));
    }
    for _ in 0..7 {
        c.int()?;
    }
    let mut summary = ArchiveSummary {
        archive_version: version_str,
        database: c.text()?,
        server_version: c.text()?,
        pg_dump_version: c.text()?,
        ..Default::default()
    };
    let count = c.int()?;
    if !(0..=10_000_000).contains(&count) {
        return Err(bad(format!("{count} TOC entries")));
    }
    summary.toc_entries = count as u64;
    let mut entries = HashMap::with_capacity(count as usize);
    for _ in 0..count {
        let id = c.int()?;
        let had_dumper = c.int()? != 0;
        let _tableoid = c.string()?;
        let _oid = c.string()?;
        let tag = c.text()?;
        let desc = c.text()?;
        let _section = c.int()?;
        let defn = c.text()?;
        let _drop = c.string()?;
        let copy = c.text()?;
        let namespace = c.text()?;
        let _tablespace = c.string()?;
        let _tableam = c.string()?;
        if version >= (1, 16) {
            let _relkind = c.int()?;
        }
        let _owner = c.string()?;
        let _with_oids = c.string()?;
        while c.string()?.is_some() {}
        // Custom format's extra TOC data: the data offset (flag byte + offset bytes).
        c.bytes(1 + c.off_size)?;
        if desc == "ENCODING" {
            summary.encoding = defn.split('\'').nth(1).map(str::to_string);
        }
        let key = if namespace.is_empty() {
            tag.clone()
        } else {
            format!("{namespace}.{tag}")
        };
        entries.insert(
            id,
            Entry {
                desc,
                key,
                copy,
                has_data: had_dumper,
            },
        );
    }
    let int_size = c.int_size;
    Ok((summary, entries, int_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal version 1.14 archive with one table of two rows, built by hand.
    fn sample(rows: &[&[u8]], terminate: bool) -> Vec<u8> {
        let mut v = b"PGDMP".to_vec();
        v.extend([1, 14, 0, 4, 8, 1]);
        let int = |v: &mut Vec<u8>, x: i64| {
            v.push(u8::from(x < 0));
            v.extend((x.unsigned_abs() as u32).to_le_bytes());
        };
        let s = |v: &mut Vec<u8>, x: Option<&str>| match x {
            None => {
                v.push(1);
                v.extend(1u32.to_le_bytes());
            }
            Some(t) => {
                v.push(0);
                v.extend((t.len() as u32).to_le_bytes());
                v.extend(t.as_bytes());
            }
        };
        int(&mut v, 0); // compression
        for _ in 0..7 {
            int(&mut v, 1);
        }
        s(&mut v, Some("ckan"));
        s(&mut v, Some("15.8"));
        s(&mut v, Some("15.8"));
        int(&mut v, 2);
        // entry 1: ENCODING, no data
        for (id, dumper, tag, desc, defn, copy, ns) in [
            (
                1,
                0,
                "ENCODING",
                "ENCODING",
                "SET client_encoding = 'UTF8';\n",
                "",
                "",
            ),
            (
                2,
                1,
                "user",
                "TABLE DATA",
                "",
                "COPY public.\"user\" (id, name) FROM stdin;\n",
                "public",
            ),
        ] {
            int(&mut v, id);
            int(&mut v, dumper);
            s(&mut v, Some("0"));
            s(&mut v, Some("0"));
            s(&mut v, Some(tag));
            s(&mut v, Some(desc));
            int(&mut v, 1);
            s(&mut v, Some(defn));
            s(&mut v, Some(""));
            s(&mut v, Some(copy));
            s(&mut v, Some(ns));
            s(&mut v, Some(""));
            s(&mut v, Some(""));
            s(&mut v, Some("postgres"));
            s(&mut v, Some("false"));
            s(&mut v, None);
            v.push(1);
            v.extend([0u8; 8]);
        }
        v.push(BLK_DATA);
        int(&mut v, 2);
        for r in rows {
            int(&mut v, r.len() as i64);
            v.extend(*r);
        }
        if terminate {
            int(&mut v, 0);
        }
        v
    }

    fn run(bytes: &[u8], piece: usize) -> Result<ArchiveSummary, ArchiveError> {
        let mut t = ArchiveTap::new();
        for c in bytes.chunks(piece) {
            t.feed(c);
        }
        t.finish()
    }

    #[test]
    fn sums_rows_whatever_the_piece_size() {
        let bytes = sample(&[b"1\talice\n", b"2\tbob\n"], true);
        let whole = run(&bytes, bytes.len()).unwrap();
        for piece in [1, 2, 3, 7, 64] {
            assert_eq!(run(&bytes, piece).unwrap(), whole, "piece {piece}");
        }
        let t = &whole.tables["public.user"];
        assert_eq!(t.sum.rows, 2);
        assert!(t.copy.starts_with("COPY public.\"user\""));
        assert_eq!(whole.encoding.as_deref(), Some("UTF8"));
        assert_eq!(whole.server_version, "15.8");
        let mut direct = super::super::checksum::LineSummer::default();
        direct.feed(b"2\tbob\n1\talice\n");
        assert_eq!(t.sum, direct.finish().unwrap());
    }

    #[test]
    fn keeps_exactly_the_header_and_toc_when_asked() {
        let bytes = sample(&[b"1\talice\n", b"2\tbob\n"], true);
        // The first data block starts right after the TOC: its type byte and dump id 2.
        let head_len = bytes.len() - (1 + 5) - (5 + 8) - (5 + 6) - 5;
        assert_eq!(bytes[head_len], BLK_DATA);
        for piece in [1, 3, 64, bytes.len()] {
            let mut t = ArchiveTap::keeping_toc();
            for c in bytes.chunks(piece) {
                t.feed(c);
            }
            assert_eq!(
                t.take_toc().as_deref(),
                Some(&bytes[..head_len]),
                "piece {piece}"
            );
            assert!(t.finish().is_ok());
        }
        let mut plain = ArchiveTap::new();
        plain.feed(&bytes);
        assert_eq!(plain.take_toc(), None);
    }

    #[test]
    fn truncated_streams_are_errors() {
        let bytes = sample(&[b"1\talice\n", b"2\tbob\n"], true);
        for cut in [3, 40, bytes.len() - 8, bytes.len() - 5, bytes.len() - 1] {
            assert!(run(&bytes[..cut], 5).is_err(), "cut at {cut}");
        }
        // A stream that stops cleanly between blocks but before a table's data.
        let no_data = sample(&[], false);
        let head_len = no_data.len() - 6;
        let err = run(&no_data[..head_len], 9).unwrap_err();
        assert!(err.to_string().contains("public.user"), "{err}");
    }

    #[test]
    fn rejects_other_formats() {
        assert!(matches!(
            run(b"-- PostgreSQL database dump\n", 4),
            Err(ArchiveError::NotCustomFormat(_))
        ));
        let mut bytes = sample(&[], true);
        bytes[6] = 9;
        assert!(matches!(run(&bytes, 100), Err(ArchiveError::Version(_))));
    }
}
