//! A log *writer* that lays out entries the way QEMU 7.2's blklogwrites does,
//! for tests here and in other crates. Not a QEMU replacement: no I/O.

use crate::format::{
    EntryFlags, EntryHeader, Superblock, SECTOR_SIZE_BYTES, SUPERBLOCK_SIZE_BYTES, WRITE_LOG_MAGIC, WRITE_LOG_VERSION,
};

/// QEMU's default `log-super-update-interval`.
pub const SUPER_UPDATE_INTERVAL: u64 = 4096;

#[derive(Debug, Clone)]
pub struct LogWriter {
    sector_size_bytes: u32,
    bytes: Vec<u8>,
    nr_entries: u64,
}

impl LogWriter {
    /// An empty log: sector 0 reserved (still zero, as QEMU leaves it until
    /// the first flush).
    pub fn new(sector_size_bytes: u32) -> Self {
        assert!(sector_size_bytes.is_power_of_two() && sector_size_bytes >= 512);
        LogWriter {
            sector_size_bytes,
            bytes: vec![0; sector_size_bytes as usize],
            nr_entries: 0,
        }
    }

    /// Logs a write of `data` at 512-byte sector `sector`. Both must be
    /// aligned to the log sector size, as QEMU's request alignment ensures.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> &mut Self {
        let log_sector_bytes = u64::from(self.sector_size_bytes);
        assert_eq!(data.len() as u64 % log_sector_bytes, 0, "data not sector aligned");
        assert_eq!(sector * SECTOR_SIZE_BYTES % log_sector_bytes, 0, "offset not aligned");
        let header = EntryHeader {
            sector: sector * SECTOR_SIZE_BYTES / log_sector_bytes,
            nr_sectors: data.len() as u64 / log_sector_bytes,
            flags: EntryFlags(0),
            data_len: 0,
        };
        self.raw_entry(&header, data)
    }

    /// Logs a FUA write (as a kernel dm-log-writes target does; QEMU never
    /// sets the flag) of `len_sectors` sectors filled with `byte`.
    pub fn write_fill_fua(&mut self, sector: u64, len_sectors: u64, byte: u8) -> &mut Self {
        let log_sector_bytes = u64::from(self.sector_size_bytes);
        let data = vec![byte; (len_sectors * SECTOR_SIZE_BYTES) as usize];
        let header = EntryHeader {
            sector: sector * SECTOR_SIZE_BYTES / log_sector_bytes,
            nr_sectors: data.len() as u64 / log_sector_bytes,
            flags: EntryFlags(EntryFlags::FUA),
            data_len: 0,
        };
        self.raw_entry(&header, &data)
    }

    /// Logs a write of `len_sectors` 512-byte sectors all filled with `byte`.
    pub fn write_fill(&mut self, sector: u64, len_sectors: u64, byte: u8) -> &mut Self {
        let data = vec![byte; (len_sectors * SECTOR_SIZE_BYTES) as usize];
        self.write(sector, &data)
    }

    /// Logs a flush and rewrites the superblock, as QEMU does.
    pub fn flush(&mut self) -> &mut Self {
        let header = EntryHeader {
            sector: 0,
            nr_sectors: 0,
            flags: EntryFlags(EntryFlags::FLUSH),
            data_len: 0,
        };
        self.raw_entry(&header, &[]);
        self.write_superblock(self.nr_entries)
    }

    /// Logs a discard of `len_sectors` 512-byte sectors (no data in the log).
    pub fn discard(&mut self, sector: u64, len_sectors: u64) -> &mut Self {
        let scale = u64::from(self.sector_size_bytes) / SECTOR_SIZE_BYTES;
        let header = EntryHeader {
            sector: sector / scale,
            nr_sectors: len_sectors / scale,
            flags: EntryFlags(EntryFlags::DISCARD),
            data_len: 0,
        };
        self.raw_entry(&header, &[])
    }

    /// Appends any header (padded to one log sector) followed by `data`
    /// (padded to whole log sectors). Updates the superblock every
    /// [`SUPER_UPDATE_INTERVAL`] entries like QEMU.
    pub fn raw_entry(&mut self, header: &EntryHeader, data: &[u8]) -> &mut Self {
        self.append_padded(&header.encode());
        if !data.is_empty() {
            self.append_padded(data);
        }
        self.nr_entries += 1;
        if self.nr_entries.is_multiple_of(SUPER_UPDATE_INTERVAL) {
            self.write_superblock(self.nr_entries);
        }
        self
    }

    /// Overwrites sector 0 with a superblock claiming `nr_entries`.
    pub fn write_superblock(&mut self, nr_entries: u64) -> &mut Self {
        let superblock = Superblock {
            magic: WRITE_LOG_MAGIC,
            version: WRITE_LOG_VERSION,
            nr_entries,
            sector_size_bytes: self.sector_size_bytes,
        };
        self.bytes[..SUPERBLOCK_SIZE_BYTES].copy_from_slice(&superblock.encode());
        self
    }

    /// Number of entries appended so far.
    pub fn nr_entries(&self) -> u64 {
        self.nr_entries
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn append_padded(&mut self, data: &[u8]) {
        let sector = self.sector_size_bytes as usize;
        let padded_len = data.len().div_ceil(sector) * sector;
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len() + padded_len - data.len(), 0);
    }
}
