//! Reads named files out of an ext4 image as they are after its journal is
//! replayed, without writing anything and without spawning a tool: the
//! host checker's fast path, in place of `e2fsck -E journal_only` plus
//! `debugfs cat` on a scratch copy.
//!
//! It handles the plain case only and declines ([`Outcome::Declined`], with
//! the reason) everything else, so that the caller can fall back to the
//! e2fsprogs tools: any checksum that does not match (a torn journal or
//! metadata block), a journal feature other than 64-bit and checksum v3,
//! fast commits, orphans to process, META_BG, inline data, htree
//! directories, an inode outside the extent format. Within the plain case
//! the result equals what e2fsprogs reads; the controller cross-checks a
//! sample of states against the tools to keep it so.
//!
//! The replay is the jbd2 recovery's three passes in one: scan the
//! committed transactions from the journal superblock's `s_start`, collect
//! their revoke records, then map each tagged home block to its last
//! unrevoked journal copy. The disk is never written; reads of a replayed
//! block are redirected to its journal copy.

mod journal;

use std::collections::BTreeMap;
use std::io;

/// A disk image to read from, at byte offsets.
pub trait ReadAt {
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// One named file after recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum File {
    /// No entry of that name in the root directory.
    Missing,
    Bytes(Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The files, in the order asked for.
    Read(Vec<File>),
    /// Outside the plain case: the reason, for counting.
    Declined(String),
}

/// Files larger than this are declined: a bound on one allocation.
pub const FILE_SIZE_MAX_BYTES: u64 = 1 << 30;
/// The kernel's own limit on extent tree depth.
const EXTENT_DEPTH_MAX: u16 = 5;
/// Extent tree blocks read for one inode: a tree whose index blocks point
/// at each other many times over is declined, not walked.
const EXTENT_NODES_MAX: u32 = 1 << 16;
/// A group descriptor table larger than this is declined (1 TiB of 4 KiB
/// blocks needs 512 KiB).
const GDT_SIZE_MAX_BYTES: u64 = 16 << 20;
/// A root directory larger than this is declined.
const DIR_SIZE_MAX_BYTES: u64 = 16 << 20;

const ROOT_INODE: u64 = 2;
const SUPERBLOCK_OFFSET_BYTES: u64 = 1024;
const SUPERBLOCK_SIZE_BYTES: usize = 1024;
const EXT4_MAGIC: u16 = 0xEF53;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
/// What the reader understands; any other incompat feature is declined.
const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_FLEX_BG
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;

const INODE_FLAG_INDEX: u32 = 0x1000;
const INODE_FLAG_EXTENTS: u32 = 0x80000;
const INODE_FLAG_INLINE_DATA: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// An extent longer than this is unwritten (reads as zeros).
const EXTENT_INIT_MAX_LEN: u16 = 32768;

/// Why a read stops: the disk failed, or the image is outside the plain case.
enum Stop {
    Io(io::Error),
    Declined(String),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Io(e)
    }
}

type Res<T> = Result<T, Stop>;

macro_rules! decline {
    ($($arg:tt)*) => {
        return Err($crate::Stop::Declined(format!($($arg)*)))
    };
}
pub(crate) use decline;

/// Replays `disk`'s journal in memory and reads `names` from its root
/// directory. `Err` only when `disk` cannot be read.
pub fn recover_and_read(disk: &dyn ReadAt, disk_size_bytes: u64, names: &[&str]) -> io::Result<Outcome> {
    match recover_and_read_inner(disk, disk_size_bytes, names) {
        Ok(files) => Ok(Outcome::Read(files)),
        Err(Stop::Declined(reason)) => Ok(Outcome::Declined(reason)),
        Err(Stop::Io(e)) => Err(e),
    }
}

fn recover_and_read_inner(disk: &dyn ReadAt, disk_size_bytes: u64, names: &[&str]) -> Res<Vec<File>> {
    // The journal is found through the metadata as it is before recovery,
    // as the kernel finds it; everything else is read after.
    let before = Fs::open(disk, disk_size_bytes, BTreeMap::new())?;
    let replayed = match before.sb.incompat & INCOMPAT_RECOVER != 0 {
        true => journal::replay_map(&before)?,
        false => {
            journal::check_clean(&before)?;
            BTreeMap::new()
        }
    };
    let fs = Fs::open(disk, disk_size_bytes, replayed)?;
    if fs.sb.ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0 || fs.sb.last_orphan != 0 {
        decline!("orphan inodes to process");
    }
    let root = fs.inode(ROOT_INODE)?;
    if root.flags & INODE_FLAG_INDEX != 0 {
        decline!("the root directory is hashed (htree)");
    }
    let dir = fs.file_bytes(&root, DIR_SIZE_MAX_BYTES)?;
    let entries = fs.dir_entries(&root, &dir)?;
    names
        .iter()
        .map(|name| match entries.get(name.as_bytes()) {
            None => Ok(File::Missing),
            Some(&ino) => {
                let inode = fs.inode(ino as u64)?;
                Ok(File::Bytes(fs.file_bytes(&inode, FILE_SIZE_MAX_BYTES)?))
            }
        })
        .collect()
}

/// The filesystem's size as its superblock gives it (blocks times block
/// size), if `disk` holds an ext4 filesystem this crate reads: the part of
/// the disk the filesystem's tools look at.
pub fn filesystem_size_bytes(disk: &dyn ReadAt, disk_size_bytes: u64) -> Option<u64> {
    let mut raw = vec![0u8; SUPERBLOCK_SIZE_BYTES];
    disk.read_at(SUPERBLOCK_OFFSET_BYTES, &mut raw).ok()?;
    let sb = Superblock::parse(&raw, disk_size_bytes).ok()?;
    Some(sb.blocks_count * sb.block_size)
}

/// A home block replayed from the journal: where its last copy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JournalCopy {
    pub disk_offset_bytes: u64,
    /// The copy's first four bytes were the journal magic, escaped.
    pub escaped: bool,
}

pub(crate) struct Superblock {
    pub block_size: u64,
    pub blocks_count: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u64,
    pub inodes_count: u64,
    pub inode_size: u64,
    pub desc_size: u64,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub journal_inode: u32,
    pub last_orphan: u32,
    /// Seed of every metadata checksum; `None` without metadata_csum.
    pub csum_seed: Option<u32>,
}

impl Superblock {
    fn parse(b: &[u8], disk_size_bytes: u64) -> Res<Superblock> {
        if le16(b, 56) != EXT4_MAGIC {
            decline!("no ext4 superblock");
        }
        let ro_compat = le32(b, 100);
        let csum_seed = Self::csum_seed(b, ro_compat)?;
        let log_block_size = le32(b, 24);
        if log_block_size > 6 {
            decline!("block size 2^{} KiB", log_block_size);
        }
        let block_size = 1024u64 << log_block_size;
        let incompat = le32(b, 96);
        let blocks_count = le32(b, 4) as u64
            | if incompat & INCOMPAT_64BIT != 0 {
                (le32(b, 0x150) as u64) << 32
            } else {
                0
            };
        let inode_size = if le32(b, 76) == 0 { 128 } else { le16(b, 88) as u64 };
        let desc_size = match incompat & INCOMPAT_64BIT != 0 {
            true => le16(b, 254) as u64,
            false => 32,
        };
        let sb = Superblock {
            block_size,
            blocks_count,
            first_data_block: le32(b, 20) as u64,
            blocks_per_group: le32(b, 32) as u64,
            inodes_per_group: le32(b, 40) as u64,
            inodes_count: le32(b, 0) as u64,
            inode_size,
            desc_size,
            compat: le32(b, 92),
            incompat,
            ro_compat,
            journal_inode: le32(b, 224),
            last_orphan: le32(b, 232),
            csum_seed,
        };
        if sb.incompat & !INCOMPAT_SUPPORTED != 0 {
            decline!("incompat features {:#x}", sb.incompat & !INCOMPAT_SUPPORTED);
        }
        if sb.ro_compat & RO_COMPAT_BIGALLOC != 0 {
            decline!("bigalloc");
        }
        if sb.incompat & INCOMPAT_EXTENTS == 0 {
            decline!("no extents feature");
        }
        let sane = sb.blocks_count > sb.first_data_block
            && sb.blocks_count.saturating_mul(block_size) <= disk_size_bytes
            && sb.blocks_per_group > 0
            && sb.inodes_per_group > 0
            && (128..=block_size).contains(&sb.inode_size)
            && sb.inode_size.is_power_of_two()
            && (32..=1024).contains(&sb.desc_size)
            && sb.desc_size.is_power_of_two();
        if !sane {
            decline!("superblock geometry out of range");
        }
        Ok(sb)
    }

    /// With metadata_csum: the superblock's own checksum checked, and the
    /// seed of every other metadata checksum (stored, or from the UUID).
    fn csum_seed(b: &[u8], ro_compat: u32) -> Res<Option<u32>> {
        Ok(match ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            true => {
                if crc32c_raw(!0, &b[..0x3FC]) != le32(b, 0x3FC) {
                    decline!("superblock checksum does not match");
                }
                let incompat = le32(b, 96);
                Some(match incompat & INCOMPAT_CSUM_SEED != 0 {
                    true => le32(b, 0x270),
                    false => crc32c_raw(!0, &b[104..120]),
                })
            }
            false => None,
        })
    }

    fn group_count(&self) -> u64 {
        (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group)
    }
}

/// A filesystem as read through the replayed journal copies.
pub(crate) struct Fs<'a> {
    disk: &'a dyn ReadAt,
    replayed: BTreeMap<u64, JournalCopy>,
    pub sb: Superblock,
    /// Each group's inode table block.
    inode_tables: Vec<u64>,
}

pub(crate) struct Inode {
    number: u64,
    size_bytes: u64,
    flags: u32,
    /// The 60-byte `i_block` area: the extent tree's root.
    block_area: [u8; 60],
    /// Seed of this inode's extent and directory block checksums.
    csum_seed: Option<u32>,
}

impl<'a> Fs<'a> {
    fn open(disk: &'a dyn ReadAt, disk_size_bytes: u64, replayed: BTreeMap<u64, JournalCopy>) -> Res<Fs<'a>> {
        let mut fs = Fs {
            disk,
            replayed,
            // Placeholder until the real one is read through the overlay.
            sb: Superblock {
                block_size: 1024,
                blocks_count: disk_size_bytes / 1024,
                first_data_block: 0,
                blocks_per_group: 1,
                inodes_per_group: 1,
                inodes_count: 0,
                inode_size: 128,
                desc_size: 32,
                compat: 0,
                incompat: 0,
                ro_compat: 0,
                journal_inode: 0,
                last_orphan: 0,
                csum_seed: None,
            },
            inode_tables: Vec::new(),
        };
        let mut raw = vec![0u8; SUPERBLOCK_SIZE_BYTES];
        fs.read_bytes_any_block_size(SUPERBLOCK_OFFSET_BYTES, &mut raw)?;
        fs.sb = Superblock::parse(&raw, disk_size_bytes)?;
        // The superblock's own block may be in the journal at the real
        // block size: read it again now that the block size is known.
        fs.read_bytes(SUPERBLOCK_OFFSET_BYTES, &mut raw)?;
        fs.sb = Superblock::parse(&raw, disk_size_bytes)?;
        let groups = fs.sb.group_count();
        if groups.saturating_mul(fs.sb.desc_size) > GDT_SIZE_MAX_BYTES {
            decline!("{groups} block groups: a descriptor table above the bound");
        }
        let gdt_offset = (fs.sb.first_data_block + 1) * fs.sb.block_size;
        let mut gdt = vec![0u8; (groups * fs.sb.desc_size) as usize];
        fs.read_bytes(gdt_offset, &mut gdt)?;
        for g in 0..groups {
            let d = &gdt[(g * fs.sb.desc_size) as usize..((g + 1) * fs.sb.desc_size) as usize];
            if let Some(seed) = fs.sb.csum_seed {
                let mut copy = d.to_vec();
                copy[0x1E..0x20].fill(0);
                let csum = crc32c_raw(crc32c_raw(seed, &(g as u32).to_le_bytes()), &copy) & 0xFFFF;
                if csum != le16(d, 0x1E) as u32 {
                    decline!("group descriptor {g} checksum does not match");
                }
            }
            let table = le32(d, 8) as u64
                | if fs.sb.desc_size >= 64 {
                    (le32(d, 0x28) as u64) << 32
                } else {
                    0
                };
            if table == 0 || table >= fs.sb.blocks_count {
                decline!("group {g}'s inode table at block {table}");
            }
            fs.inode_tables.push(table);
        }
        Ok(fs)
    }

    /// Before the block size is known, only the superblock is read; a
    /// replayed copy can only be mapped once it is.
    fn read_bytes_any_block_size(&self, offset_bytes: u64, buf: &mut [u8]) -> Res<()> {
        self.disk.read_at(offset_bytes, buf)?;
        Ok(())
    }

    /// Reads bytes at a disk offset, replayed blocks from their journal copy.
    pub(crate) fn read_bytes(&self, offset_bytes: u64, buf: &mut [u8]) -> Res<()> {
        let end = offset_bytes + buf.len() as u64;
        if end > self.sb.blocks_count * self.sb.block_size {
            decline!("a read past the filesystem's end (byte {end})");
        }
        self.disk.read_at(offset_bytes, buf)?;
        let bs = self.sb.block_size;
        for (&block, copy) in self.replayed.range(offset_bytes / bs..end.div_ceil(bs)) {
            let block_start = block * bs;
            let from = block_start.max(offset_bytes);
            let to = (block_start + bs).min(end);
            let mut whole = vec![0u8; bs as usize];
            self.disk.read_at(copy.disk_offset_bytes, &mut whole)?;
            if copy.escaped {
                whole[..4].copy_from_slice(&journal::JBD2_MAGIC.to_be_bytes());
            }
            buf[(from - offset_bytes) as usize..(to - offset_bytes) as usize]
                .copy_from_slice(&whole[(from - block_start) as usize..(to - block_start) as usize]);
        }
        Ok(())
    }

    pub(crate) fn read_block(&self, block: u64, buf: &mut [u8]) -> Res<()> {
        debug_assert_eq!(buf.len() as u64, self.sb.block_size);
        if block >= self.sb.blocks_count {
            decline!("block {block} past the filesystem's end");
        }
        self.read_bytes(block * self.sb.block_size, buf)
    }

    pub(crate) fn inode(&self, number: u64) -> Res<Inode> {
        if number == 0 || number > self.sb.inodes_count {
            decline!("inode {number} out of range");
        }
        let group = (number - 1) / self.sb.inodes_per_group;
        let index = (number - 1) % self.sb.inodes_per_group;
        let Some(&table) = self.inode_tables.get(group as usize) else {
            decline!("inode {number} in a group past the last");
        };
        let mut raw = vec![0u8; self.sb.inode_size as usize];
        self.read_bytes(table * self.sb.block_size + index * self.sb.inode_size, &mut raw)?;
        let csum_seed = match self.sb.csum_seed {
            Some(fs_seed) => {
                let generation = le32(&raw, 0x64);
                let seed = crc32c_raw(
                    crc32c_raw(fs_seed, &(number as u32).to_le_bytes()),
                    &generation.to_le_bytes(),
                );
                verify_inode_csum(&raw, seed, number)?;
                Some(seed)
            }
            None => None,
        };
        let flags = le32(&raw, 0x20);
        if flags & INODE_FLAG_INLINE_DATA != 0 {
            decline!("inode {number} has inline data");
        }
        if flags & INODE_FLAG_EXTENTS == 0 {
            decline!("inode {number} is block-mapped, not extent-mapped");
        }
        let mut block_area = [0u8; 60];
        block_area.copy_from_slice(&raw[0x28..0x28 + 60]);
        Ok(Inode {
            number,
            size_bytes: le32(&raw, 4) as u64 | (le32(&raw, 0x6C) as u64) << 32,
            flags,
            block_area,
            csum_seed,
        })
    }

    /// Every leaf extent of `inode`: (logical block, physical block, blocks,
    /// unwritten).
    pub(crate) fn extents(&self, inode: &Inode) -> Res<Vec<(u64, u64, u64, bool)>> {
        let mut out = Vec::new();
        let mut nodes_read = 0;
        self.walk_extent_node(inode, &inode.block_area, None, &mut nodes_read, &mut out)?;
        Ok(out)
    }

    fn walk_extent_node(
        &self,
        inode: &Inode,
        node: &[u8],
        expected_depth: Option<u16>,
        nodes_read: &mut u32,
        out: &mut Vec<(u64, u64, u64, bool)>,
    ) -> Res<()> {
        let n = inode.number;
        if le16(node, 0) != EXTENT_MAGIC {
            decline!("inode {n}: bad extent header");
        }
        let entries = le16(node, 2) as usize;
        let max = le16(node, 4) as usize;
        let depth = le16(node, 6);
        if entries > max || 12 + max * 12 > node.len() || depth > EXTENT_DEPTH_MAX {
            decline!("inode {n}: extent header out of range");
        }
        if expected_depth.is_some_and(|d| d != depth) {
            decline!("inode {n}: extent tree depth inconsistent");
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let raw_len = le16(e, 4);
                let (len, unwritten) = match raw_len > EXTENT_INIT_MAX_LEN {
                    true => (raw_len - EXTENT_INIT_MAX_LEN, true),
                    false => (raw_len, false),
                };
                let physical = (le16(e, 6) as u64) << 32 | le32(e, 8) as u64;
                out.push((le32(e, 0) as u64, physical, len as u64, unwritten));
            } else {
                let child = le32(e, 4) as u64 | (le16(e, 8) as u64) << 32;
                *nodes_read += 1;
                if *nodes_read > EXTENT_NODES_MAX {
                    decline!("inode {n}: more than {EXTENT_NODES_MAX} extent tree blocks");
                }
                let mut block = vec![0u8; self.sb.block_size as usize];
                self.read_block(child, &mut block)?;
                if let Some(seed) = inode.csum_seed {
                    let tail = 12 + le16(&block, 4) as usize * 12;
                    if tail + 4 > block.len() || crc32c_raw(seed, &block[..tail]) != le32(&block, tail) {
                        decline!("inode {n}: extent block {child} checksum does not match");
                    }
                }
                self.walk_extent_node(inode, &block, Some(depth - 1), nodes_read, out)?;
            }
        }
        Ok(())
    }

    /// The file's bytes: holes and unwritten extents read as zeros.
    pub(crate) fn file_bytes(&self, inode: &Inode, size_max_bytes: u64) -> Res<Vec<u8>> {
        if inode.size_bytes > size_max_bytes {
            decline!("inode {} is {} bytes, above the bound", inode.number, inode.size_bytes);
        }
        let bs = self.sb.block_size;
        let mut bytes = vec![0u8; inode.size_bytes as usize];
        let mut extents = self.extents(inode)?;
        extents.sort_by_key(|e| e.0);
        let mut covered_to = 0u64;
        for (logical, physical, len, unwritten) in extents {
            if logical < covered_to {
                decline!("inode {}: overlapping extents", inode.number);
            }
            covered_to = logical + len;
            if physical + len > self.sb.blocks_count {
                decline!("inode {}: extent past the filesystem's end", inode.number);
            }
            let start = logical * bs;
            if unwritten || start >= inode.size_bytes {
                continue;
            }
            let end = ((logical + len) * bs).min(inode.size_bytes);
            self.read_bytes(physical * bs, &mut bytes[start as usize..end as usize])?;
        }
        Ok(bytes)
    }

    /// A linear directory's live entries, name to inode.
    fn dir_entries(&self, dir: &Inode, bytes: &[u8]) -> Res<BTreeMap<Vec<u8>, u32>> {
        let bs = self.sb.block_size as usize;
        let mut entries = BTreeMap::new();
        for (i, block) in bytes.chunks(bs).enumerate() {
            if block.len() != bs {
                decline!("directory size not a whole number of blocks");
            }
            let mut end = bs;
            if let Some(seed) = dir.csum_seed {
                // The checksum tail: a fake entry of 12 bytes at the end.
                let tail = &block[bs - 12..];
                if le32(tail, 0) != 0 || le16(tail, 4) != 12 || tail[7] != 0xDE {
                    decline!("directory block {i} has no checksum tail");
                }
                if crc32c_raw(seed, &block[..bs - 12]) != le32(tail, 8) {
                    decline!("directory block {i} checksum does not match");
                }
                end = bs - 12;
            }
            let mut at = 0;
            while at < end {
                if at + 8 > end {
                    decline!("directory block {i}: entry header past the end");
                }
                let ino = le32(block, at);
                let rec_len = le16(block, at + 4) as usize;
                let name_len = match self.sb.incompat & INCOMPAT_FILETYPE != 0 {
                    true => block[at + 6] as usize,
                    false => le16(block, at + 6) as usize,
                };
                if rec_len < 8 || at + rec_len > end || 8 + name_len > rec_len {
                    decline!("directory block {i}: malformed entry");
                }
                if ino != 0 {
                    entries.entry(block[at + 8..at + 8 + name_len].to_vec()).or_insert(ino);
                }
                at += rec_len;
            }
        }
        Ok(entries)
    }
}

fn verify_inode_csum(raw: &[u8], seed: u32, number: u64) -> Res<()> {
    const CSUM_LO: usize = 0x7C;
    const EXTRA_ISIZE: usize = 0x80;
    const CSUM_HI: usize = 0x82;
    let mut copy = raw.to_vec();
    copy[CSUM_LO..CSUM_LO + 2].fill(0);
    let has_hi = raw.len() > 128 && le16(raw, EXTRA_ISIZE) >= 4;
    if has_hi {
        copy[CSUM_HI..CSUM_HI + 2].fill(0);
    }
    let csum = crc32c_raw(seed, &copy);
    let (provided, calculated) = match has_hi {
        true => (le16(raw, CSUM_LO) as u32 | (le16(raw, CSUM_HI) as u32) << 16, csum),
        false => (le16(raw, CSUM_LO) as u32, csum & 0xFFFF),
    };
    if provided != calculated {
        decline!("inode {number} checksum does not match");
    }
    Ok(())
}

/// The kernel's `crc32c(seed, data)`: no inversion before or after, unlike
/// the standard CRC-32C the crate computes.
pub(crate) fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
