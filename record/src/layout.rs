//! Record layout (all integers little endian):
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 8    | magic `b"CRSHLAB\x01"`                   |
//! | 8      | 4    | format version (1)                      |
//! | 12     | 4    | record size in bytes                    |
//! | 16     | 8    | sequence number                         |
//! | 24     | 8    | slot index (`seq % slots`)              |
//! | 32     | 8    | workload seed                           |
//! | 40     | n    | payload, a pure function of (seed, seq) |
//! | end-4  | 4    | crc32c of every byte before it          |
//!
//! The payload fills the record so that a torn write shows up in every
//! 512-byte sector, and so that the verifier can rebuild the exact bytes of
//! any version of any slot from the workload parameters alone.

use std::fmt;

pub const MAGIC: [u8; 8] = *b"CRSHLAB\x01";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_SIZE_BYTES: usize = 40;
pub const CRC_SIZE_BYTES: usize = 4;
/// Torn writes are judged at this granularity: the smallest unit a disk
/// promises to write atomically.
pub const SECTOR_SIZE_BYTES: usize = 512;
pub const RECORD_SIZE_MIN_BYTES: usize = 512;
pub const RECORD_SIZE_MAX_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub record_size_bytes: u32,
    pub seq: u64,
    pub slot: u64,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordLayoutError {
    WrongLength { expected_bytes: usize, found_bytes: usize },
    BadMagic,
    BadVersion(u32),
    BadCrc { stored: u32, computed: u32 },
    SizeMismatch { header_bytes: u32, buffer_bytes: usize },
}

impl fmt::Display for RecordLayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength {
                expected_bytes,
                found_bytes,
            } => {
                write!(f, "record is {found_bytes} bytes, expected {expected_bytes}")
            }
            Self::BadMagic => write!(f, "no record magic"),
            Self::BadVersion(v) => write!(f, "record format version {v}, expected {FORMAT_VERSION}"),
            Self::BadCrc { stored, computed } => {
                write!(f, "crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::SizeMismatch {
                header_bytes,
                buffer_bytes,
            } => {
                write!(f, "header says {header_bytes} bytes, slot holds {buffer_bytes}")
            }
        }
    }
}

impl std::error::Error for RecordLayoutError {}

/// Checks a record size the way every component must: a multiple of the
/// sector size between 512 bytes and 64 KiB.
pub fn check_record_size(size_bytes: usize) -> Result<(), String> {
    if !(RECORD_SIZE_MIN_BYTES..=RECORD_SIZE_MAX_BYTES).contains(&size_bytes)
        || !size_bytes.is_multiple_of(SECTOR_SIZE_BYTES)
    {
        return Err(format!(
            "record size {size_bytes} bytes is not allowed: use a multiple of {SECTOR_SIZE_BYTES} \
             between {RECORD_SIZE_MIN_BYTES} and {RECORD_SIZE_MAX_BYTES}"
        ));
    }
    Ok(())
}

/// SplitMix64: a tiny, well-mixed generator. The payload must be a pure
/// function of (seed, seq) that both sides compute identically.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes the full record for `header` into `out` (whose length must equal
/// the record size).
pub fn encode(header: &RecordHeader, out: &mut [u8]) {
    let size = header.record_size_bytes as usize;
    assert!(check_record_size(size).is_ok(), "record size {size} not allowed");
    assert_eq!(out.len(), size, "output buffer must be exactly one record");
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&header.record_size_bytes.to_le_bytes());
    out[16..24].copy_from_slice(&header.seq.to_le_bytes());
    out[24..32].copy_from_slice(&header.slot.to_le_bytes());
    out[32..40].copy_from_slice(&header.seed.to_le_bytes());
    let payload_end = size - CRC_SIZE_BYTES;
    let mut state = header.seed ^ header.seq.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    for chunk in out[HEADER_SIZE_BYTES..payload_end].chunks_mut(8) {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let crc = crc32c::crc32c(&out[..payload_end]);
    out[payload_end..].copy_from_slice(&crc.to_le_bytes());
}

/// The crc32c a record for `header` stores: its fingerprint (the digest
/// the record workload gives each record under the workload protocol).
pub fn stored_crc(header: &RecordHeader) -> u32 {
    let bytes = encode_vec(header);
    let tail: [u8; CRC_SIZE_BYTES] = bytes[bytes.len() - CRC_SIZE_BYTES..].try_into().expect("a crc's bytes");
    u32::from_le_bytes(tail)
}

/// Returns a freshly allocated record.
pub fn encode_vec(header: &RecordHeader) -> Vec<u8> {
    let mut out = vec![0u8; header.record_size_bytes as usize];
    encode(header, &mut out);
    out
}

/// The seq that `bytes` claim to hold, unchecked (no magic, size or crc):
/// a guess a reader confirms by comparing with that record's encoding,
/// which costs one crc less than `decode` and then a compare.
pub fn claimed_seq(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?))
}

/// Parses and fully checks one record (magic, version, size, crc).
pub fn decode(bytes: &[u8]) -> Result<RecordHeader, RecordLayoutError> {
    if bytes.len() < HEADER_SIZE_BYTES + CRC_SIZE_BYTES {
        return Err(RecordLayoutError::WrongLength {
            expected_bytes: RECORD_SIZE_MIN_BYTES,
            found_bytes: bytes.len(),
        });
    }
    if bytes[0..8] != MAGIC {
        return Err(RecordLayoutError::BadMagic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(RecordLayoutError::BadVersion(version));
    }
    let record_size_bytes = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    if record_size_bytes as usize != bytes.len() {
        return Err(RecordLayoutError::SizeMismatch {
            header_bytes: record_size_bytes,
            buffer_bytes: bytes.len(),
        });
    }
    let payload_end = bytes.len() - CRC_SIZE_BYTES;
    let stored = u32::from_le_bytes(bytes[payload_end..].try_into().unwrap());
    let computed = crc32c::crc32c(&bytes[..payload_end]);
    if stored != computed {
        return Err(RecordLayoutError::BadCrc { stored, computed });
    }
    Ok(RecordHeader {
        record_size_bytes,
        seq: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
        slot: u64::from_le_bytes(bytes[24..32].try_into().unwrap()),
        seed: u64::from_le_bytes(bytes[32..40].try_into().unwrap()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> RecordHeader {
        RecordHeader {
            record_size_bytes: 4096,
            seq,
            slot: seq % 16,
            seed: 7,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode_vec(&header(33));
        assert_eq!(decode(&bytes), Ok(header(33)));
    }

    #[test]
    fn payload_depends_on_seed_and_seq() {
        let a = encode_vec(&header(1));
        let b = encode_vec(&header(2));
        let c = encode_vec(&RecordHeader { seed: 8, ..header(1) });
        assert_ne!(a[HEADER_SIZE_BYTES..], b[HEADER_SIZE_BYTES..]);
        assert_ne!(a[HEADER_SIZE_BYTES..], c[HEADER_SIZE_BYTES..]);
        assert_eq!(a, encode_vec(&header(1)), "encoding is deterministic");
    }

    #[test]
    fn every_sector_differs_between_versions() {
        // Torn-write detection relies on each sector telling versions apart.
        let a = encode_vec(&header(1));
        let b = encode_vec(&header(17));
        for (sa, sb) in a.chunks(SECTOR_SIZE_BYTES).zip(b.chunks(SECTOR_SIZE_BYTES)) {
            assert_ne!(sa, sb);
        }
    }

    #[test]
    fn single_bit_flip_is_caught() {
        let mut bytes = encode_vec(&header(5));
        bytes[1000] ^= 0x10;
        assert!(matches!(decode(&bytes), Err(RecordLayoutError::BadCrc { .. })));
        let mut bytes = encode_vec(&header(5));
        bytes[0] = b'X';
        assert_eq!(decode(&bytes), Err(RecordLayoutError::BadMagic));
    }

    #[test]
    fn record_sizes() {
        assert!(check_record_size(512).is_ok());
        assert!(check_record_size(1536).is_ok());
        assert!(check_record_size(65536).is_ok());
        assert!(check_record_size(0).is_err());
        assert!(check_record_size(1000).is_err());
        assert!(check_record_size(65536 + 512).is_err());
    }
}

/// Acknowledgement records: one 512-byte sector per ack, written by the
/// workload with O_DIRECT into a reserved area of the test disk, past the
/// end of the filesystem, after the durability call returned and before the
/// `ACK` line. In a block-write log its position is then the exact moment
/// of the ack (see ARCHITECTURE.md, "Placing acks in the log").
pub mod ack {
    use super::SECTOR_SIZE_BYTES;

    pub const ACK_MAGIC: [u8; 8] = *b"CRSHACK\x01";
    pub const ACK_SIZE_BYTES: usize = SECTOR_SIZE_BYTES;
    /// The area's first sector holds the ready marker, written once after
    /// the data files were created and synced, before `READY`: a crash
    /// state from before it predates the workload's promises. The ack of
    /// record `seq` is at sector `seq + 1` (its `ack_index` is `seq`), so
    /// several writer processes never share a sector.
    pub const READY_MARKER_INDEX: u64 = u64::MAX;

    /// Byte offset of ack number `ack_index` (or of the ready marker) from
    /// the start of the ack area.
    pub fn sector_offset_bytes(ack_index: u64) -> u64 {
        let sector = if ack_index == READY_MARKER_INDEX {
            0
        } else {
            ack_index.saturating_add(1)
        };
        // Saturating: an index read back from a disk is untrusted; a
        // saturated offset matches no real sector.
        sector.saturating_mul(ACK_SIZE_BYTES as u64)
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AckRecord {
        /// The record's seq (its sector in the area is `ack_index + 1`), or
        /// `READY_MARKER_INDEX`.
        pub ack_index: u64,
        pub seq: u64,
        pub slot: u64,
        pub seed: u64,
    }

    pub fn encode(ack: &AckRecord) -> [u8; ACK_SIZE_BYTES] {
        let mut out = [0u8; ACK_SIZE_BYTES];
        out[0..8].copy_from_slice(&ACK_MAGIC);
        out[8..16].copy_from_slice(&ack.ack_index.to_le_bytes());
        out[16..24].copy_from_slice(&ack.seq.to_le_bytes());
        out[24..32].copy_from_slice(&ack.slot.to_le_bytes());
        out[32..40].copy_from_slice(&ack.seed.to_le_bytes());
        let crc = crc32c::crc32c(&out[..ACK_SIZE_BYTES - 4]);
        out[ACK_SIZE_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` for anything but an intact ack record (zeros, torn, garbage).
    pub fn decode(bytes: &[u8]) -> Option<AckRecord> {
        if bytes.len() != ACK_SIZE_BYTES || bytes[0..8] != ACK_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[ACK_SIZE_BYTES - 4..].try_into().ok()?);
        if crc != crc32c::crc32c(&bytes[..ACK_SIZE_BYTES - 4]) {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        Some(AckRecord {
            ack_index: word(8),
            seq: word(16),
            slot: word(24),
            seed: word(32),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trip_and_corruption() {
            let a = AckRecord {
                ack_index: 3,
                seq: 9,
                slot: 1,
                seed: 77,
            };
            let mut bytes = encode(&a);
            assert_eq!(decode(&bytes), Some(a));
            bytes[20] ^= 1;
            assert_eq!(decode(&bytes), None);
            assert_eq!(decode(&[0u8; ACK_SIZE_BYTES]), None);
        }
    }
}
