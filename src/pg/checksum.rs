//! The table checksum shared by the manifest (at dump time) and every later check.
//!
//! Defined over COPY text lines, so it can be computed from the rows passing through the dump
//! stream and later from `COPY … TO STDOUT` of a restored database, without a second scan of
//! production. Each line (without its `\n`) is hashed with XXH3-128 and the hashes are added
//! modulo 2^128: the sum does not depend on row order (a restore may return rows in another
//! order) but counts duplicates. It detects accidental damage and mismatched restores; the
//! vault's authenticated encryption and each stream's SHA-256 cover tampering.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// Rows, bytes and the order-independent checksum of one table's COPY text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSum {
    pub rows: u64,
    pub bytes: u64,
    #[serde(with = "hex_u128")]
    pub checksum: u128,
}

impl LineSummer {
    fn add_line(&mut self, line: &[u8]) {
        if self.ended {
            return;
        }
        if line == b"\\." {
            self.ended = true;
            return;
        }
        self.sum.add_line(line);
    }
}

impl TableSum {
    /// Adds the sum of a disjoint part of the same table. The checksum is a sum, so a table
    /// read in parts (one session each, to use every core) sums to what it sums to whole.
    pub fn merge(&mut self, part: TableSum) {
        self.rows += part.rows;
        self.bytes += part.bytes;
        self.checksum = self.checksum.wrapping_add(part.checksum);
    }

    fn add_line(&mut self, line: &[u8]) {
        self.rows += 1;
        self.bytes += line.len() as u64 + 1;
        self.checksum = self.checksum.wrapping_add(xxh3_128(line));
    }
}

/// Splits a byte stream into COPY lines and sums them, whatever the read boundaries.
///
/// pg_dump ends each table's data with the end-of-copy marker `\.` and blank lines; they are
/// not rows (a real row can never be `\.`: COPY escapes backslashes), so summing stops there.
#[derive(Debug, Default)]
pub struct LineSummer {
    partial: Vec<u8>,
    sum: TableSum,
    ended: bool,
}

impl LineSummer {
    pub fn feed(&mut self, mut data: &[u8]) {
        while let Some(pos) = memchr::memchr(b'\n', data) {
            if self.partial.is_empty() {
                self.add_line(&data[..pos]);
            } else {
                self.partial.extend_from_slice(&data[..pos]);
                let line = std::mem::take(&mut self.partial);
                self.add_line(&line);
                self.partial = line;
                self.partial.clear();
            }
            data = &data[pos + 1..];
        }
        self.partial.extend_from_slice(data);
    }

    /// The sum so far; `Err` with the byte count when the last line has no newline.
    pub fn finish(self) -> Result<TableSum, usize> {
        if self.partial.is_empty() {
            Ok(self.sum)
        } else {
            Err(self.partial.len())
        }
    }
}

mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        u128::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(chunks: &[&[u8]]) -> TableSum {
        let mut s = LineSummer::default();
        for c in chunks {
            s.feed(c);
        }
        s.finish().unwrap()
    }

    #[test]
    fn independent_of_order_and_boundaries_but_not_of_duplicates() {
        let a = sum(&[b"1\talice\n2\tbob\n"]);
        let b = sum(&[b"2\tb", b"ob\n1\tal", b"ice\n"]);
        assert_eq!(a, b);
        assert_eq!(a.rows, 2);
        assert_eq!(a.bytes, 14);
        let dup = sum(&[b"1\talice\n1\talice\n2\tbob\n"]);
        assert_ne!(a.checksum, dup.checksum);
        let changed = sum(&[b"1\talicf\n2\tbob\n"]);
        assert_ne!(a.checksum, changed.checksum);
        let empty = sum(&[]);
        assert_eq!((empty.rows, empty.checksum), (0, 0));
    }

    #[test]
    fn parts_merge_to_the_whole() {
        let whole = sum(&[b"1\talice\n2\tbob\n3\tcarol\n"]);
        let mut parts = sum(&[b"3\tcarol\n"]);
        parts.merge(sum(&[b"1\talice\n2\tbob\n"]));
        assert_eq!(parts, whole);
        let mut short = sum(&[b"3\tcarol\n"]);
        short.merge(sum(&[b"1\talice\n"]));
        assert_ne!(short, whole);
    }

    #[test]
    fn end_of_copy_marker_is_not_a_row() {
        assert_eq!(sum(&[b"1\n2\n\\.\n\n\n"]), sum(&[b"2\n1\n"]));
        assert_eq!(sum(&[b"\\.\n\n\n"]).rows, 0);
        // An escaped backslash row is data.
        assert_eq!(sum(&[b"\\\\.\n"]).rows, 1);
    }

    #[test]
    fn trailing_partial_line_is_reported() {
        let mut s = LineSummer::default();
        s.feed(b"1\n2");
        assert_eq!(s.finish(), Err(1));
    }

    #[test]
    fn serializes_checksum_as_hex() {
        let t = sum(&[b"x\n"]);
        let j = serde_json::to_string(&t).unwrap();
        let back: TableSum = serde_json::from_str(&j).unwrap();
        assert_eq!(back, t);
        assert!(j.contains("\"checksum\":\""));
    }
}
