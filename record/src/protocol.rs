//! The line protocol the guest prints on its channel (a second serial port).
//!
//! The workload follows the pre/ok protocol of diskchecker.pl: `BEGIN` before
//! it touches the mapping, `ACK` only after the durability call returned 0.
//! The guest's init script adds the lines of the boot and of the check boot.
//!
//! | line                  | who      | meaning                                      |
//! |-----------------------|----------|----------------------------------------------|
//! | `BOOTED role`         | init     | the guest reached /init                       |
//! | `READY slots`         | workload | file created, sized and synced; records start |
//! | `BEGIN seq slot`      | workload | about to write record `seq` into `slot`       |
//! | `ACK seq slot`        | workload | durability call for `seq` returned 0          |
//! | `HOLD acks`           | workload | crash-point hook reached; waiting to be killed|
//! | `ERR op errno`        | workload | a syscall failed; the run ends                |
//! | `DONE records`        | workload | all records written                           |
//! | `GROW file size`      | workload | growth: file grown (ftruncate + mremap)       |
//! | `MSYNC file off len flags errno` | workload | an msync call returned (errno 0: success) |
//! | `INCOHERENT file off how` | workload | invalidate: the two paths disagreed live  |
//! | `SEEN seq slot`       | consumer | ipc: read a published record, intact          |
//! | `SEENBAD seq slot why`| consumer | ipc: a published record read torn/foreign     |
//! | `CONF case rc errno detail` | conformance | one msync call of the suite and its result |
//! | `FSYNC errno`         | workload | io errors: the fsync after a failed msync     |
//! | `READBACK seq what`   | workload | io errors: the failed record read back through the mapping (new, old, zeros, other) |
//! | `MOUNT rc`            | init     | check: mount's exit status                    |
//! | `FILE i size` / `NOFILE i` | init | check: data file i's size / it is absent   |
//! | `EXTENT i logical physical len kind` | checker | file i's bytes `[logical, +len)` are at device byte `physical` (`kind`: `data`, or `unwritten`: reads as zeros) |
//! | `MAPPED i count`      | checker  | file i's extents are complete: `count` lines  |
//! | `UNMAPPED i reason`   | checker  | file i cannot be read by extents; it is copied |
//! | `COPY i rc`           | init     | check: exit status of copying file i out      |
//! | `UMOUNT rc`           | init     | check: umount's exit status                   |
//! | `FSCK tool rc`        | init     | check: read-only fsck's exit status           |
//! | `CHECKED nonce`       | init     | check finished; `nonce` is the host's, echoed |
//! | `ITEM seq id digest`  | relay    | a program under test began item `id` (`crate::items`) as record `seq` |
//! | `CHECKER line`        | init     | one line a program's checker printed (`crate::items::CheckerLine`) |
//! | `CHECKEXIT rc`        | init     | the program's checker exited with `rc`        |
//!
//! The host asks a long-lived checker for a check with `CHECK nonce read`
//! (`read`: `copy`, `extents` or `both`; a one-shot check boot reads the
//! nonce from `crashlab.nonce=` and copies). With `extents` the guest reports
//! each file's extents (FIEMAP) while mounted, then unmounts; the host reads
//! those ranges from the recovered disk (the NBD overlay), so the bytes
//! judged are still those the guest's recovery left. Data file
//! `i` is copied to [`EXPORT_DATA_OFFSET_BYTES`] + `i` × the export stride
//! on the export disk; after a complete copy the guest writes
//! `CRASHLAB-EXPORT nonce i size` into sector `i` ([`EXPORT_TAG_PREFIX`]),
//! so the host can tell this check's bytes from an earlier one's.

use std::fmt;

/// First word of the tag a check writes into sector `i` of the export disk
/// after copying data file `i`: `CRASHLAB-EXPORT nonce i size\n`.
pub const EXPORT_TAG_PREFIX: &str = "CRASHLAB-EXPORT";
/// Where the copy of the first data file starts on the export disk (the
/// sectors before it hold the tags).
pub const EXPORT_DATA_OFFSET_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Booted {
        role: String,
    },
    Ready {
        slots: u64,
    },
    Begin {
        seq: u64,
        slot: u64,
    },
    Ack {
        seq: u64,
        slot: u64,
    },
    Hold {
        acks: u64,
    },
    Error {
        op: String,
        errno: i32,
    },
    Done {
        records: u64,
    },
    Grow {
        file: u32,
        size_bytes: u64,
    },
    Msync {
        file: u32,
        offset_bytes: u64,
        len_bytes: u64,
        flags: std::sync::Arc<str>,
        errno: i32,
    },
    Incoherent {
        file: u32,
        offset_bytes: u64,
        how: String,
    },
    Seen {
        seq: u64,
        slot: u64,
    },
    SeenBad {
        seq: u64,
        slot: u64,
        why: String,
    },
    Conf {
        case: String,
        rc: i32,
        errno: i32,
        detail: String,
    },
    Fsync {
        errno: i32,
    },
    Readback {
        seq: u64,
        what: String,
    },
    Mount {
        rc: i32,
    },
    File {
        file: u32,
        size_bytes: u64,
    },
    NoFile {
        file: u32,
    },
    Extent {
        file: u32,
        logical_bytes: u64,
        physical_bytes: u64,
        len_bytes: u64,
        /// Unwritten (preallocated): reads as zeros whatever the disk holds.
        unwritten: bool,
    },
    Mapped {
        file: u32,
        extents: u64,
    },
    Unmapped {
        file: u32,
        reason: String,
    },
    Copy {
        file: u32,
        rc: i32,
    },
    Umount {
        rc: i32,
    },
    Fsck {
        tool: String,
        rc: i32,
    },
    Checked {
        nonce: u64,
    },
    /// An item of a program under test; `key` as its `BEGIN` gave it.
    Item {
        seq: u64,
        id: u64,
        digest: crate::items::Digest,
        key: Option<u64>,
    },
    CheckerOutput {
        line: String,
    },
    /// A program's `NOTE` line (protocol 1.1+), passed on by the relay so
    /// that the results keep it; never judged.
    Note {
        text: String,
    },
    /// (1.2) The program reached its named point for the `occurrence`-th time.
    Point {
        name: String,
        occurrence: u64,
    },
    CheckerExit {
        rc: i32,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Booted { role } => write!(f, "BOOTED {role}"),
            Self::Ready { slots } => write!(f, "READY {slots}"),
            Self::Begin { seq, slot } => write!(f, "BEGIN {seq} {slot}"),
            Self::Ack { seq, slot } => write!(f, "ACK {seq} {slot}"),
            Self::Hold { acks } => write!(f, "HOLD {acks}"),
            Self::Error { op, errno } => write!(f, "ERR {op} {errno}"),
            Self::Done { records } => write!(f, "DONE {records}"),
            Self::Grow { file, size_bytes } => write!(f, "GROW {file} {size_bytes}"),
            Self::Msync {
                file,
                offset_bytes,
                len_bytes,
                flags,
                errno,
            } => write!(f, "MSYNC {file} {offset_bytes} {len_bytes} {flags} {errno}"),
            Self::Incoherent {
                file,
                offset_bytes,
                how,
            } => write!(f, "INCOHERENT {file} {offset_bytes} {how}"),
            Self::Seen { seq, slot } => write!(f, "SEEN {seq} {slot}"),
            Self::SeenBad { seq, slot, why } => write!(f, "SEENBAD {seq} {slot} {why}"),
            Self::Conf {
                case,
                rc,
                errno,
                detail,
            } => write!(f, "CONF {case} {rc} {errno} {detail}"),
            Self::Fsync { errno } => write!(f, "FSYNC {errno}"),
            Self::Readback { seq, what } => write!(f, "READBACK {seq} {what}"),
            Self::Mount { rc } => write!(f, "MOUNT {rc}"),
            Self::File { file, size_bytes } => write!(f, "FILE {file} {size_bytes}"),
            Self::NoFile { file } => write!(f, "NOFILE {file}"),
            Self::Extent {
                file,
                logical_bytes,
                physical_bytes,
                len_bytes,
                unwritten,
            } => {
                let kind = if *unwritten { "unwritten" } else { "data" };
                write!(f, "EXTENT {file} {logical_bytes} {physical_bytes} {len_bytes} {kind}")
            }
            Self::Mapped { file, extents } => write!(f, "MAPPED {file} {extents}"),
            Self::Unmapped { file, reason } => write!(f, "UNMAPPED {file} {reason}"),
            Self::Copy { file, rc } => write!(f, "COPY {file} {rc}"),
            Self::Umount { rc } => write!(f, "UMOUNT {rc}"),
            Self::Fsck { tool, rc } => write!(f, "FSCK {tool} {rc}"),
            Self::Checked { nonce } => write!(f, "CHECKED {nonce}"),
            Self::Item {
                seq,
                id,
                digest,
                key: None,
            } => write!(f, "ITEM {seq} {id} {digest}"),
            Self::Item {
                seq,
                id,
                digest,
                key: Some(key),
            } => write!(f, "ITEM {seq} {id} {digest} {key}"),
            Self::CheckerOutput { line } => write!(f, "CHECKER {line}"),
            Self::Note { text } => write!(f, "NOTE {text}"),
            Self::Point { name, occurrence } => write!(f, "POINT {name} {occurrence}"),
            Self::CheckerExit { rc } => write!(f, "CHECKEXIT {rc}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub line_number: usize,
    pub line: String,
    pub reason: &'static str,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "protocol line {}: {} in {:?}",
            self.line_number, self.reason, self.line
        )
    }
}

impl std::error::Error for ProtocolError {}

impl Event {
    /// Parses one line (without its newline; a trailing `\r` from the tty is
    /// ignored).
    pub fn parse(line: &str) -> Result<Event, &'static str> {
        // A checker's line is carried whole; it is parsed as such later.
        if let Some(rest) = line.trim_end_matches('\r').strip_prefix("CHECKER ") {
            return Ok(Event::CheckerOutput { line: rest.to_string() });
        }
        if let Some(text) = line.trim_end_matches('\r').strip_prefix("NOTE ") {
            return Ok(Event::Note { text: text.to_string() });
        }
        let mut words = line.trim_end_matches('\r').split(' ');
        let tag = words.next().unwrap_or("");
        let event = match tag {
            "MOUNT" | "FILE" | "NOFILE" | "EXTENT" | "MAPPED" | "UNMAPPED" | "COPY" | "UMOUNT" | "FSCK" | "CHECKED"
            | "ITEM" | "CHECKEXIT" => Event::parse_check(tag, &mut words)?,
            _ => Event::parse_workload(tag, &mut words)?,
        };
        if words.next().is_some() {
            return Err("trailing fields");
        }
        Ok(event)
    }

    // Over 70 lines: one match arm per line of the workload's vocabulary,
    // each its fields in order; split, it would read as a table cut in two.
    /// The workload's lines (and the relay's, and the conformance run's).
    fn parse_workload<'a>(tag: &str, words: &mut impl Iterator<Item = &'a str>) -> Result<Event, &'static str> {
        Ok(match tag {
            "BOOTED" => Event::Booted {
                role: field(words)?.to_string(),
            },
            "READY" => Event::Ready {
                slots: num(field(words)?)?,
            },
            "POINT" => Event::Point {
                name: crate::items::NamedPoint::check_name(field(words)?)?.to_string(),
                occurrence: num(field(words)?)?,
            },
            "BEGIN" => Event::Begin {
                seq: num(field(words)?)?,
                slot: num(field(words)?)?,
            },
            "ACK" => Event::Ack {
                seq: num(field(words)?)?,
                slot: num(field(words)?)?,
            },
            "HOLD" => Event::Hold {
                acks: num(field(words)?)?,
            },
            "ERR" => Event::Error {
                op: field(words)?.to_string(),
                errno: int(field(words)?)?,
            },
            "DONE" => Event::Done {
                records: num(field(words)?)?,
            },
            "GROW" => Event::Grow {
                file: small(field(words)?)?,
                size_bytes: num(field(words)?)?,
            },
            "MSYNC" => Event::Msync {
                file: small(field(words)?)?,
                offset_bytes: num(field(words)?)?,
                len_bytes: num(field(words)?)?,
                flags: field(words)?.into(),
                errno: int(field(words)?)?,
            },
            "INCOHERENT" => Event::Incoherent {
                file: small(field(words)?)?,
                offset_bytes: num(field(words)?)?,
                how: field(words)?.to_string(),
            },
            "SEEN" => Event::Seen {
                seq: num(field(words)?)?,
                slot: num(field(words)?)?,
            },
            "CONF" => Event::Conf {
                case: field(words)?.to_string(),
                rc: int(field(words)?)?,
                errno: int(field(words)?)?,
                detail: field(words)?.to_string(),
            },
            "FSYNC" => Event::Fsync {
                errno: int(field(words)?)?,
            },
            "READBACK" => Event::Readback {
                seq: num(field(words)?)?,
                what: field(words)?.to_string(),
            },
            "SEENBAD" => Event::SeenBad {
                seq: num(field(words)?)?,
                slot: num(field(words)?)?,
                why: field(words)?.to_string(),
            },
            _ => return Err("unknown tag"),
        })
    }

    /// The check's lines: what the checker VM found on a recovered disk.
    fn parse_check<'a>(tag: &str, words: &mut impl Iterator<Item = &'a str>) -> Result<Event, &'static str> {
        Ok(match tag {
            "MOUNT" => Event::Mount {
                rc: int(field(words)?)?,
            },
            "FILE" => Event::File {
                file: small(field(words)?)?,
                size_bytes: num(field(words)?)?,
            },
            "NOFILE" => Event::NoFile {
                file: small(field(words)?)?,
            },
            "EXTENT" => Event::Extent {
                file: small(field(words)?)?,
                logical_bytes: num(field(words)?)?,
                physical_bytes: num(field(words)?)?,
                len_bytes: num(field(words)?)?,
                unwritten: match field(words)? {
                    "data" => false,
                    "unwritten" => true,
                    _ => return Err("extent kind is neither data nor unwritten"),
                },
            },
            "MAPPED" => Event::Mapped {
                file: small(field(words)?)?,
                extents: num(field(words)?)?,
            },
            "UNMAPPED" => Event::Unmapped {
                file: small(field(words)?)?,
                reason: field(words)?.to_string(),
            },
            "COPY" => Event::Copy {
                file: small(field(words)?)?,
                rc: int(field(words)?)?,
            },
            "UMOUNT" => Event::Umount {
                rc: int(field(words)?)?,
            },
            "FSCK" => Event::Fsck {
                tool: field(words)?.to_string(),
                rc: int(field(words)?)?,
            },
            "CHECKED" => Event::Checked {
                nonce: num(field(words)?)?,
            },
            "ITEM" => Event::Item {
                seq: num(field(words)?)?,
                id: crate::items::parse_item_id(field(words)?)?,
                digest: crate::items::Digest::parse(field(words)?)?,
                key: match words.next() {
                    Some(key) => Some(crate::items::parse_item_key(key)?),
                    None => None,
                },
            },
            "CHECKEXIT" => Event::CheckerExit {
                rc: int(field(words)?)?,
            },
            _ => return Err("unknown tag"),
        })
    }
}

/// The next field of a line.
fn field<'a>(words: &mut impl Iterator<Item = &'a str>) -> Result<&'a str, &'static str> {
    words.next().ok_or("missing field")
}

fn num(s: &str) -> Result<u64, &'static str> {
    s.parse::<u64>().map_err(|_| "field is not a number")
}

fn int(s: &str) -> Result<i32, &'static str> {
    s.parse::<i32>().map_err(|_| "field is not an integer")
}

fn small(s: &str) -> Result<u32, &'static str> {
    s.parse::<u32>().map_err(|_| "field is not a small number")
}

/// A whole protocol log, as the host recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtocolLog {
    pub events: Vec<Event>,
    /// The last line had no newline: the VM was killed while printing it. It
    /// is kept out of `events`, because a half-printed ACK is no ACK.
    pub truncated_tail: Option<String>,
}

/// Parses a log. Every complete line must parse; an incomplete last line is
/// expected after a kill and is reported, not trusted.
pub fn parse_log(text: &str) -> Result<ProtocolLog, ProtocolError> {
    let mut log = ProtocolLog::default();
    let mut rest = text;
    let mut line_number = 0;
    while !rest.is_empty() {
        line_number += 1;
        let Some(end) = rest.find('\n') else {
            log.truncated_tail = Some(rest.to_string());
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.trim_end_matches('\r').is_empty() {
            continue;
        }
        let event = Event::parse(line).map_err(|reason| ProtocolError {
            line_number,
            line: line.to_string(),
            reason,
        })?;
        log.events.push(event);
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let events = [
            Event::Booted {
                role: "workload".into(),
            },
            Event::Ready { slots: 1024 },
            Event::Begin { seq: 5, slot: 5 },
            Event::Ack { seq: 5, slot: 5 },
            Event::Hold { acks: 6 },
            Event::Error {
                op: "msync".into(),
                errno: 5,
            },
            Event::Done { records: 10 },
            Event::Grow {
                file: 0,
                size_bytes: 8192,
            },
            Event::Msync {
                file: 1,
                offset_bytes: 4096,
                len_bytes: 4097,
                flags: "MS_SYNC|MS_INVALIDATE".into(),
                errno: 0,
            },
            Event::Incoherent {
                file: 0,
                offset_bytes: 512,
                how: "map-after-pwrite".into(),
            },
            Event::Seen { seq: 3, slot: 3 },
            Event::Fsync { errno: 5 },
            Event::Readback {
                seq: 9,
                what: "new".into(),
            },
            Event::Conf {
                case: "partly-unmapped".into(),
                rc: -1,
                errno: 12,
                detail: "mapped-part-written=yes".into(),
            },
            Event::SeenBad {
                seq: 4,
                slot: 4,
                why: "torn".into(),
            },
            Event::Mount { rc: 0 },
            Event::File {
                file: 0,
                size_bytes: 4096,
            },
            Event::NoFile { file: 1 },
            Event::Extent {
                file: 0,
                logical_bytes: 4096,
                physical_bytes: 1 << 30,
                len_bytes: 8192,
                unwritten: true,
            },
            Event::Mapped { file: 1, extents: 3 },
            Event::Unmapped {
                file: 0,
                reason: "inline-data".into(),
            },
            Event::Copy { file: 0, rc: 1 },
            Event::Umount { rc: 0 },
            Event::Fsck {
                tool: "e2fsck".into(),
                rc: 0,
            },
            Event::Checked { nonce: 77 },
            Event::Item {
                seq: 3,
                id: 1 << 40,
                digest: crate::items::Digest::parse("c0ffee").unwrap(),
                key: None,
            },
            Event::Item {
                seq: 4,
                id: 9,
                digest: crate::items::Digest::parse("0").unwrap(),
                key: Some(2),
            },
            Event::CheckerOutput {
                line: "CORRUPT page 7: bad checksum".into(),
            },
            Event::CheckerExit { rc: 1 },
        ];
        for e in events {
            assert_eq!(Event::parse(&e.to_string()), Ok(e));
        }
    }

    #[test]
    fn tty_carriage_returns_and_truncated_tail() {
        let log = parse_log("READY 4\r\nBEGIN 0 0\r\nACK 0 0\r\nBEGIN 1 1\r\nAC").unwrap();
        assert_eq!(log.events.len(), 4);
        assert_eq!(log.truncated_tail.as_deref(), Some("AC"));
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        let err = parse_log("READY 4\nACK x 0\n").unwrap_err();
        assert_eq!(err.line_number, 2);
        assert_eq!(err.reason, "field is not a number");
        assert!(parse_log("ACK 1 2 3\n").is_err());
        assert!(parse_log("HELLO\n").is_err());
    }
}
