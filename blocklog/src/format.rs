//! On-disk layout of a dm-log-writes log as QEMU's `blklogwrites` driver
//! writes it. All integers are little-endian.
//!
//! ```text
//! offset 0            superblock sector: magic u64, version u64, nr_entries u64,
//!                     sectorsize u32, then zeros up to one log sector
//! offset 1*ss         entry 0 header sector: sector u64, nr_sectors u64,
//!                     flags u64, data_len u64, then zeros up to one log sector
//! offset 2*ss         entry 0 data: nr_sectors * ss bytes (none for flush/discard)
//! ...                 entry 1 header sector, entry 1 data, ...
//! ```
//! (`ss` = the log sector size from the superblock.)

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// "rhswfsj" read as a little-endian integer.
pub const WRITE_LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
pub const WRITE_LOG_VERSION: u64 = 1;

/// Bytes of the meaningful part of the superblock (the rest of its sector is zero).
pub const SUPERBLOCK_SIZE_BYTES: usize = 28;
/// Bytes of `struct log_write_entry` (the rest of its header sector is zero).
pub const ENTRY_HEADER_SIZE_BYTES: usize = 32;

/// The unit crash states tear writes at and `LogEntry::sector` counts in.
pub const SECTOR_SIZE_BYTES: u64 = 512;

/// Smallest log sector size accepted. QEMU accepts down to 32 bytes, but then
/// entry sectors are not whole 512-byte device sectors and nothing in this
/// crate's model (512-byte tearing) would hold.
pub const MIN_LOG_SECTOR_SIZE_BYTES: u32 = 512;
/// QEMU's own upper bound (`sector_size < 1 << 24`).
pub const MAX_LOG_SECTOR_SIZE_BYTES: u32 = (1 << 24) - 1;

/// Bit set of a log entry's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct EntryFlags(pub u64);

impl EntryFlags {
    pub const FLUSH: u64 = 1 << 0;
    /// Never set by QEMU 7.2 (it does not log FUA); kept for kernel logs.
    pub const FUA: u64 = 1 << 1;
    pub const DISCARD: u64 = 1 << 2;
    /// Never set by QEMU; kernel marks carry an inline string.
    pub const MARK: u64 = 1 << 3;
    /// Kernel-only hint (REQ_META); QEMU's own mask rejects it, we accept it.
    pub const METADATA: u64 = 1 << 4;
    pub const KNOWN: u64 = Self::FLUSH | Self::FUA | Self::DISCARD | Self::MARK | Self::METADATA;

    pub fn contains(self, bit: u64) -> bool {
        self.0 & bit == bit
    }
    pub fn is_flush(self) -> bool {
        self.contains(Self::FLUSH)
    }
    pub fn is_fua(self) -> bool {
        self.contains(Self::FUA)
    }
    pub fn is_discard(self) -> bool {
        self.contains(Self::DISCARD)
    }
    pub fn is_mark(self) -> bool {
        self.contains(Self::MARK)
    }
    pub fn unknown_bits(self) -> u64 {
        self.0 & !Self::KNOWN
    }
}

/// The decoded superblock fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub magic: u64,
    pub version: u64,
    pub nr_entries: u64,
    pub sector_size_bytes: u32,
}

impl Superblock {
    pub fn decode(bytes: &[u8; SUPERBLOCK_SIZE_BYTES]) -> Self {
        Superblock {
            magic: le_u64(&bytes[0..8]),
            version: le_u64(&bytes[8..16]),
            nr_entries: le_u64(&bytes[16..24]),
            sector_size_bytes: u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")),
        }
    }

    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE_BYTES] {
        let mut out = [0u8; SUPERBLOCK_SIZE_BYTES];
        out[0..8].copy_from_slice(&self.magic.to_le_bytes());
        out[8..16].copy_from_slice(&self.version.to_le_bytes());
        out[16..24].copy_from_slice(&self.nr_entries.to_le_bytes());
        out[24..28].copy_from_slice(&self.sector_size_bytes.to_le_bytes());
        out
    }
}

/// `struct log_write_entry` as stored; `sector`/`nr_sectors` are in log-sector
/// units here (QEMU: `offset >> sectorbits`), not yet converted to 512 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub sector: u64,
    pub nr_sectors: u64,
    pub flags: EntryFlags,
    pub data_len: u64,
}

impl EntryHeader {
    pub fn decode(bytes: &[u8; ENTRY_HEADER_SIZE_BYTES]) -> Self {
        EntryHeader {
            sector: le_u64(&bytes[0..8]),
            nr_sectors: le_u64(&bytes[8..16]),
            flags: EntryFlags(le_u64(&bytes[16..24])),
            data_len: le_u64(&bytes[24..32]),
        }
    }

    pub fn encode(&self) -> [u8; ENTRY_HEADER_SIZE_BYTES] {
        let mut out = [0u8; ENTRY_HEADER_SIZE_BYTES];
        out[0..8].copy_from_slice(&self.sector.to_le_bytes());
        out[8..16].copy_from_slice(&self.nr_sectors.to_le_bytes());
        out[16..24].copy_from_slice(&self.flags.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        out
    }

    /// An all-zero header cannot be a real QEMU entry (a flush has flags=1,
    /// a write has nr_sectors>0), so it marks the end of the written log.
    pub fn is_end_marker(&self) -> bool {
        self.sector == 0 && self.nr_sectors == 0 && self.flags.0 == 0 && self.data_len == 0
    }
}

/// True for the sector sizes this crate can interpret (see
/// [`MIN_LOG_SECTOR_SIZE_BYTES`]).
pub fn log_sector_size_supported(size_bytes: u32) -> bool {
    size_bytes.is_power_of_two() && (MIN_LOG_SECTOR_SIZE_BYTES..=MAX_LOG_SECTOR_SIZE_BYTES).contains(&size_bytes)
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_spells_rhswfsj() {
        assert_eq!(&WRITE_LOG_MAGIC.to_le_bytes()[..7], b"rhswfsj");
        assert_eq!(WRITE_LOG_MAGIC.to_le_bytes()[7], 0);
    }

    #[test]
    fn header_round_trips() {
        let header = EntryHeader {
            sector: 7,
            nr_sectors: 3,
            flags: EntryFlags(5),
            data_len: 0,
        };
        assert_eq!(EntryHeader::decode(&header.encode()), header);
        assert!(!header.is_end_marker());
        assert!(EntryHeader::decode(&[0; 32]).is_end_marker());
    }

    #[test]
    fn sector_sizes() {
        assert!(log_sector_size_supported(512));
        assert!(log_sector_size_supported(4096));
        assert!(!log_sector_size_supported(256));
        assert!(!log_sector_size_supported(1000));
        assert!(!log_sector_size_supported(1 << 24));
    }
}
