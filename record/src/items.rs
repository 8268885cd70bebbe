//! The workload protocol (version 1.1, docs/workload-protocol.md): the
//! lines a program under test prints on its stdout, and the lines its
//! checker prints after recovery. crashlab's own record workload speaks it
//! too, through the same relay.
//!
//! An *item* is whatever the program promises: a transaction, a record, a
//! message. The program names each by an id and a digest (a fingerprint of
//! its contents that the checker can recompute from what it finds).
//!
//! | program line       | meaning                                              |
//! |--------------------|------------------------------------------------------|
//! | `READY`            | the program's initial state is durable; items start  |
//! | `BEGIN id digest`  | about to make item `id` durable                      |
//! | `BEGIN id digest key` | the same; item `id` replaces key `key`'s earlier items (1.1) |
//! | `ACK id`           | the call that promised item `id` durable returned ok |
//! | `DONE`             | every item written; the program exits 0              |
//! | `ERR op errno`     | a call failed; the program exits non-zero            |
//! | `NOTE text`        | free text, logged, never judged                      |
//! | `EVENT line`       | a `record::protocol` line, passed to the host as it is; crashlab's own workload only (1.1) |
//!
//! | checker line       | meaning                                              |
//! |--------------------|------------------------------------------------------|
//! | `ITEM id digest`   | item `id` is there, whole, with this digest          |
//! | `CORRUPT what`     | damage the checker saw (`what`: free text)           |
//! | `END items`        | the last line: how many `ITEM` lines came before     |
//! | `NOTE text`        | free text, logged, never judged                      |
//!
//! No I/O here: the guest's relay and the host both parse with these.

use std::fmt;

/// The protocol's major version, which a program and its checker see in
/// `CRASHLAB_PROTOCOL`. Minor versions only add what a program may use
/// (1.1: item keys, `EVENT`, the reply); a 1.0 program runs unchanged.
pub const PROTOCOL_VERSION: u32 = 1;
/// The minor version this crate speaks.
pub const PROTOCOL_MINOR: u32 = 1;
/// The longest line either may print, newline excluded.
pub const LINE_MAX_BYTES: usize = 4096;
/// Digests are 1 to this many lowercase hex digits.
pub const DIGEST_MAX_CHARS: usize = 64;
/// Item ids are 0..=this (they fit an i64 in any language).
pub const ITEM_ID_MAX: u64 = i64::MAX as u64;

/// An item's fingerprint: 1 to 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Result<Digest, &'static str> {
        if text.is_empty() || text.len() > DIGEST_MAX_CHARS {
            return Err("a digest is 1 to 64 hex digits");
        }
        if !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("a digest is lowercase hex digits");
        }
        Ok(Digest(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn parse_item_id(text: &str) -> Result<u64, &'static str> {
    // Digits only: no sign, no spaces, no "0x".
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("an item id is a decimal number");
    }
    match text.parse::<u64>() {
        Ok(id) if id <= ITEM_ID_MAX => Ok(id),
        _ => Err("an item id is at most 2^63 - 1"),
    }
}

pub fn parse_item_key(text: &str) -> Result<u64, &'static str> {
    parse_item_id(text).map_err(|_| "an item key is a decimal number, at most 2^63 - 1")
}

/// Free text: the rest of the line, printable, without control characters.
fn parse_text(text: &str) -> Result<String, &'static str> {
    if text.chars().any(char::is_control) {
        return Err("text holds a control character");
    }
    Ok(text.to_string())
}

/// Splits `TAG rest` and checks the line's length and encoding.
fn split_line(line: &str) -> Result<(&str, &str), &'static str> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.len() > LINE_MAX_BYTES {
        return Err("line longer than 4096 bytes");
    }
    Ok(line.split_once(' ').unwrap_or((line, "")))
}

/// Exactly `N` space-separated fields.
fn fields<const N: usize>(rest: &str) -> Result<[&str; N], &'static str> {
    let words: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(' ').collect()
    };
    words.try_into().map_err(|_| "wrong number of fields")
}

/// One line of a program under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgramLine {
    Ready,
    /// `key`: the item replaces the earlier items of the same key (a slot
    /// rewritten, a key overwritten); `None`: it replaces nothing.
    Begin {
        id: u64,
        digest: Digest,
        key: Option<u64>,
    },
    Ack {
        id: u64,
    },
    Done,
    Err {
        op: String,
        errno: i32,
    },
    Note(String),
    /// (1.2) `POINT name`: the program reached a moment it names, where
    /// `--crash-at name:n` crashes it the n-th time.
    Point(String),
    /// A line of crashlab's own vocabulary (`record::protocol`), for its
    /// record workload: the relay checks and passes it on.
    Event(String),
}

impl ProgramLine {
    pub fn parse(line: &str) -> Result<ProgramLine, &'static str> {
        let (tag, rest) = split_line(line)?;
        Ok(match tag {
            "READY" => {
                let [] = fields(rest)?;
                ProgramLine::Ready
            }
            "BEGIN" => {
                let (id, digest, key) = match rest.split(' ').count() {
                    3 => {
                        let [id, digest, key] = fields(rest)?;
                        (id, digest, Some(parse_item_key(key)?))
                    }
                    _ => {
                        let [id, digest] = fields(rest)?;
                        (id, digest, None)
                    }
                };
                ProgramLine::Begin {
                    id: parse_item_id(id)?,
                    digest: Digest::parse(digest)?,
                    key,
                }
            }
            "ACK" => {
                let [id] = fields(rest)?;
                ProgramLine::Ack { id: parse_item_id(id)? }
            }
            "DONE" => {
                let [] = fields(rest)?;
                ProgramLine::Done
            }
            "ERR" => {
                let [op, errno] = fields(rest)?;
                if op.is_empty() || !op.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("ERR names its operation in one word");
                }
                ProgramLine::Err {
                    op: op.to_string(),
                    errno: errno.parse().map_err(|_| "errno is not an integer")?,
                }
            }
            "NOTE" => ProgramLine::Note(parse_text(rest)?),
            "POINT" => {
                let [name] = fields(rest)?;
                ProgramLine::Point(NamedPoint::check_name(name)?.to_string())
            }
            "EVENT" => {
                if rest.is_empty() {
                    return Err("EVENT carries a line");
                }
                ProgramLine::Event(parse_text(rest)?)
            }
            _ => return Err("unknown tag (READY, BEGIN, ACK, DONE, ERR, NOTE, POINT or EVENT)"),
        })
    }
}

impl fmt::Display for ProgramLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => write!(f, "READY"),
            Self::Begin { id, digest, key: None } => write!(f, "BEGIN {id} {digest}"),
            Self::Begin {
                id,
                digest,
                key: Some(key),
            } => write!(f, "BEGIN {id} {digest} {key}"),
            Self::Ack { id } => write!(f, "ACK {id}"),
            Self::Done => write!(f, "DONE"),
            Self::Err { op, errno } => write!(f, "ERR {op} {errno}"),
            Self::Note(text) => write!(f, "NOTE {text}"),
            Self::Point(name) => write!(f, "POINT {name}"),
            Self::Event(line) => write!(f, "EVENT {line}"),
        }
    }
}

/// A crash point a program names: the `occurrence`-th time it prints
/// `POINT name` (`--crash-at name:n`; `name` alone is the first time).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NamedPoint {
    pub name: String,
    pub occurrence: u64,
}

/// A point's name: 1 to 64 of `A-Z a-z 0-9 _ . -` (one word on every line
/// and command line it travels through).
pub const POINT_NAME_MAX_BYTES: usize = 64;

impl NamedPoint {
    pub fn check_name(name: &str) -> Result<&str, &'static str> {
        let ok = !name.is_empty()
            && name.len() <= POINT_NAME_MAX_BYTES
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        match ok {
            true => Ok(name),
            false => Err("a point's name is 1 to 64 of A-Z a-z 0-9 _ . -"),
        }
    }
}

impl fmt::Display for NamedPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.occurrence)
    }
}

impl std::str::FromStr for NamedPoint {
    type Err = String;
    fn from_str(text: &str) -> Result<NamedPoint, String> {
        let (name, occurrence) = match text.rsplit_once(':') {
            Some((name, n)) => (
                name,
                n.parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("{text:?}: the occurrence after ':' is a number from 1"))?,
            ),
            None => (text, 1),
        };
        let name = NamedPoint::check_name(name).map_err(|why| format!("{text:?}: {why}"))?;
        Ok(NamedPoint {
            name: name.to_string(),
            occurrence,
        })
    }
}

/// One line of a checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckerLine {
    Item { id: u64, digest: Digest },
    Corrupt(String),
    End { items: u64 },
    Note(String),
}

impl CheckerLine {
    pub fn parse(line: &str) -> Result<CheckerLine, &'static str> {
        let (tag, rest) = split_line(line)?;
        Ok(match tag {
            "ITEM" => {
                let [id, digest] = fields(rest)?;
                CheckerLine::Item {
                    id: parse_item_id(id)?,
                    digest: Digest::parse(digest)?,
                }
            }
            "CORRUPT" => {
                if rest.is_empty() {
                    return Err("CORRUPT says what");
                }
                CheckerLine::Corrupt(parse_text(rest)?)
            }
            "END" => {
                let [items] = fields(rest)?;
                CheckerLine::End {
                    items: items.parse().map_err(|_| "END gives a count")?,
                }
            }
            "NOTE" => CheckerLine::Note(parse_text(rest)?),
            _ => return Err("unknown tag (ITEM, CORRUPT, END or NOTE)"),
        })
    }
}

impl fmt::Display for CheckerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Item { id, digest } => write!(f, "ITEM {id} {digest}"),
            Self::Corrupt(what) => write!(f, "CORRUPT {what}"),
            Self::End { items } => write!(f, "END {items}"),
            Self::Note(text) => write!(f, "NOTE {text}"),
        }
    }
}

/// What a checker reported, as a whole. The host gathers it from the
/// checker's lines and exit status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckerReport {
    /// Exit status of the checker (non-zero: it could not examine the data).
    pub exit_code: i32,
    pub items: Vec<(u64, Digest)>,
    pub corrupt: Vec<String>,
    /// The `END` count, if the checker got that far.
    pub end_items: Option<u64>,
    /// The first line that broke the protocol, with its reason.
    pub bad_line: Option<(String, &'static str)>,
}

/// Items a checker may report, at most: a bound on what a verdict holds.
pub const CHECKER_ITEMS_MAX: usize = 1 << 22;

impl CheckerReport {
    /// Gathers a checker's stdout. Lines after `END` or past the bounds are
    /// a broken report, as is a line that does not parse.
    pub fn from_output(stdout: &str, exit_code: i32) -> CheckerReport {
        let mut report = CheckerReport {
            exit_code,
            ..CheckerReport::default()
        };
        for line in stdout.lines() {
            if report.bad_line.is_some() {
                break;
            }
            if report.end_items.is_some() {
                report.bad_line = Some((line.to_string(), "a line after END"));
                break;
            }
            match CheckerLine::parse(line) {
                Ok(CheckerLine::Item { id, digest }) => {
                    if report.items.len() >= CHECKER_ITEMS_MAX {
                        report.bad_line = Some((line.to_string(), "more items than crashlab reads"));
                    } else {
                        report.items.push((id, digest));
                    }
                }
                Ok(CheckerLine::Corrupt(what)) => {
                    if report.corrupt.len() < CHECKER_ITEMS_MAX {
                        report.corrupt.push(what);
                    }
                }
                Ok(CheckerLine::End { items }) => report.end_items = Some(items),
                Ok(CheckerLine::Note(_)) => {}
                Err(reason) => {
                    let shown: String = line.chars().take(200).collect();
                    report.bad_line = Some((shown, reason));
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lines_round_trip() {
        let lines = [
            ProgramLine::Ready,
            ProgramLine::Begin {
                id: 7,
                digest: Digest::parse("00ff").unwrap(),
                key: None,
            },
            ProgramLine::Begin {
                id: 8,
                digest: Digest::parse("01").unwrap(),
                key: Some(3),
            },
            ProgramLine::Event("MSYNC 0 0 4096 MS_SYNC 0".into()),
            ProgramLine::Ack { id: ITEM_ID_MAX },
            ProgramLine::Done,
            ProgramLine::Err {
                op: "mdb_txn_commit".into(),
                errno: 5,
            },
            ProgramLine::Note("opened the environment".into()),
        ];
        for line in lines {
            assert_eq!(ProgramLine::parse(&line.to_string()), Ok(line));
        }
    }

    #[test]
    fn bad_program_lines_say_why() {
        for (line, why) in [
            ("BEGIN 1", "wrong number of fields"),
            ("BEGIN -1 ab", "an item id is a decimal number"),
            ("BEGIN 9223372036854775808 ab", "an item id is at most 2^63 - 1"),
            ("BEGIN 1 AB", "a digest is lowercase hex digits"),
            ("BEGIN 1 ", "a digest is 1 to 64 hex digits"),
            ("ACK 1 2", "wrong number of fields"),
            ("BEGIN 1 ab x", "an item key is a decimal number, at most 2^63 - 1"),
            ("BEGIN 1 ab 2 3", "wrong number of fields"),
            ("EVENT", "EVENT carries a line"),
            ("READY now", "wrong number of fields"),
            (
                "COMMIT 1",
                "unknown tag (READY, BEGIN, ACK, DONE, ERR, NOTE, POINT or EVENT)",
            ),
            ("POINT", "wrong number of fields"),
            ("POINT a b", "wrong number of fields"),
            ("POINT a/b", "a point's name is 1 to 64 of A-Z a-z 0-9 _ . -"),
            ("NOTE a\tb", "text holds a control character"),
        ] {
            assert_eq!(ProgramLine::parse(line), Err(why), "{line}");
        }
        assert!(ProgramLine::parse(&format!("NOTE {}", "x".repeat(LINE_MAX_BYTES))).is_err());
        assert!(Digest::parse(&"a".repeat(65)).is_err());
        assert_eq!(ProgramLine::parse("ACK 3\r"), Ok(ProgramLine::Ack { id: 3 }));
    }

    #[test]
    fn a_named_point_reads_name_and_occurrence() {
        let p: NamedPoint = "committed".parse().unwrap();
        assert_eq!((p.name.as_str(), p.occurrence), ("committed", 1));
        assert_eq!("wal.sync:12".parse::<NamedPoint>().unwrap().to_string(), "wal.sync:12");
        for bad in ["", "a:0", "a:x", "a b:1", ":3"] {
            assert!(bad.parse::<NamedPoint>().is_err(), "{bad:?}");
        }
        assert_eq!(
            ProgramLine::parse("POINT wal.sync"),
            Ok(ProgramLine::Point("wal.sync".into()))
        );
    }

    #[test]
    fn a_checker_report_is_gathered_and_its_breaks_are_named() {
        let report = CheckerReport::from_output("NOTE hi\nITEM 1 aa\nITEM 2 bb\nCORRUPT page 9 checksum\nEND 2\n", 0);
        assert_eq!(report.items.len(), 2);
        assert_eq!(report.corrupt, ["page 9 checksum"]);
        assert_eq!(report.end_items, Some(2));
        assert_eq!(report.bad_line, None);
        let after_end = CheckerReport::from_output("END 0\nITEM 1 aa\n", 0);
        assert_eq!(after_end.bad_line.unwrap().1, "a line after END");
        let garbage = CheckerReport::from_output("ITEM one aa\n", 0);
        assert_eq!(garbage.bad_line.unwrap().1, "an item id is a decimal number");
        let cut = CheckerReport::from_output("ITEM 1 aa\n", 0);
        assert_eq!(cut.end_items, None);
    }
}
