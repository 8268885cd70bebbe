//! jbd2 recovery as a map from home block to journal copy (see the crate
//! docs). Journal structures are big-endian.

use std::collections::BTreeMap;

use crate::{be32, crc32c_raw, decline, Fs, JournalCopy, Res, COMPAT_HAS_JOURNAL};

pub(crate) const JBD2_MAGIC: u32 = 0xC03B_3998;
const BLOCKTYPE_DESCRIPTOR: u32 = 1;
const BLOCKTYPE_COMMIT: u32 = 2;
const BLOCKTYPE_SUPERBLOCK_V2: u32 = 4;
const BLOCKTYPE_REVOKE: u32 = 5;

const INCOMPAT_REVOKE: u32 = 0x1;
const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_CSUM_V3: u32 = 0x10;
/// Anything else (async commit, checksum v2, fast commits) is declined.
const INCOMPAT_SUPPORTED: u32 = INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_CSUM_V3;
const CHECKSUM_TYPE_CRC32C: u8 = 4;

const TAG_FLAG_ESCAPE: u32 = 0x1;
const TAG_FLAG_SAME_UUID: u32 = 0x2;
const TAG_FLAG_LAST: u32 = 0x8;
/// `journal_block_tag3_t`.
const TAG3_BYTES: usize = 16;
const UUID_BYTES: usize = 16;
const HEADER_BYTES: usize = 12;
const BLOCK_TAIL_BYTES: usize = 4;

/// The journal: its superblock's fields and where its blocks are.
struct Journal {
    /// Physical filesystem block of each journal block, by extent.
    map: Vec<(u64, u64, u64)>,
    first: u64,
    last: u64,
    sequence: u32,
    start: u64,
    incompat: u32,
    csum_seed: u32,
}

impl Journal {
    fn open(fs: &Fs) -> Res<Journal> {
        if fs.sb.compat & COMPAT_HAS_JOURNAL == 0 || fs.sb.journal_inode == 0 {
            decline!("no internal journal");
        }
        let inode = fs.inode(fs.sb.journal_inode as u64)?;
        let mut map = Vec::new();
        for (logical, physical, len, unwritten) in fs.extents(&inode)? {
            if unwritten {
                decline!("the journal has an unwritten extent");
            }
            map.push((logical, physical, len));
        }
        map.sort_by_key(|e| e.0);
        let bs = fs.sb.block_size as usize;
        let mut journal = Journal {
            map,
            first: 0,
            last: 0,
            sequence: 0,
            start: 0,
            incompat: 0,
            csum_seed: 0,
        };
        let mut sb = vec![0u8; bs];
        fs.read_block(journal.physical(0)?, &mut sb)?;
        if be32(&sb, 0) != JBD2_MAGIC || be32(&sb, 4) != BLOCKTYPE_SUPERBLOCK_V2 {
            decline!("no v2 journal superblock");
        }
        if be32(&sb, 12) as u64 != fs.sb.block_size {
            decline!("journal block size differs from the filesystem's");
        }
        journal.start = be32(&sb, 28) as u64;
        if journal.start == 0 {
            // Nothing to replay: the features do not matter.
            return Ok(journal);
        }
        journal.incompat = be32(&sb, 40);
        if journal.incompat & !INCOMPAT_SUPPORTED != 0 || journal.incompat & INCOMPAT_CSUM_V3 == 0 {
            decline!("journal features {:#x}", journal.incompat);
        }
        if sb[80] != CHECKSUM_TYPE_CRC32C {
            decline!("journal checksum type {}", sb[80]);
        }
        let mut zeroed = sb[..1024].to_vec();
        zeroed[0xFC..0x100].fill(0);
        if crc32c_raw(!0, &zeroed) != be32(&sb, 0xFC) {
            decline!("journal superblock checksum does not match");
        }
        journal.last = be32(&sb, 16) as u64;
        journal.first = be32(&sb, 20) as u64;
        journal.sequence = be32(&sb, 24);
        journal.csum_seed = crc32c_raw(!0, &sb[48..64]);
        let blocks: u64 = journal.map.iter().map(|e| e.2).sum();
        if journal.first == 0 || journal.first >= journal.last || journal.last > blocks {
            decline!("journal bounds out of range");
        }
        if !(journal.first..journal.last).contains(&journal.start) {
            decline!("journal start out of range");
        }
        Ok(journal)
    }

    fn physical(&self, logical: u64) -> Res<u64> {
        let i = self.map.partition_point(|e| e.0 + e.2 <= logical);
        match self.map.get(i) {
            Some(&(l, p, _)) if l <= logical => Ok(p + (logical - l)),
            _ => decline!("journal block {logical} is not mapped"),
        }
    }

    fn next(&self, block: u64) -> u64 {
        match block + 1 >= self.last {
            true => self.first,
            false => block + 1,
        }
    }

    fn tail_csum_ok(&self, block: &[u8]) -> bool {
        let at = block.len() - BLOCK_TAIL_BYTES;
        let mut zeroed = block.to_vec();
        zeroed[at..].fill(0);
        crc32c_raw(self.csum_seed, &zeroed) == be32(block, at)
    }
}

/// One tagged block of a transaction.
struct Tag {
    home: u64,
    copy: JournalCopy,
}

/// A journal whose filesystem does not need recovery must be empty.
pub(crate) fn check_clean(fs: &Fs) -> Res<()> {
    if fs.sb.compat & COMPAT_HAS_JOURNAL == 0 {
        return Ok(());
    }
    let journal = Journal::open(fs)?;
    if journal.start != 0 {
        decline!("a journal with transactions on a filesystem that needs no recovery");
    }
    Ok(())
}

/// Home block to the copy recovery would write there.
pub(crate) fn replay_map(fs: &Fs) -> Res<BTreeMap<u64, JournalCopy>> {
    let journal = Journal::open(fs)?;
    let mut replayed = BTreeMap::new();
    if journal.start == 0 {
        return Ok(replayed);
    }
    let mut scan = Scan {
        fs,
        tag_blocknr_high: journal.incompat & INCOMPAT_64BIT != 0,
        at: journal.start,
        sequence: journal.sequence,
        // A scan never reads more blocks than the journal has: a cycle is
        // declined, not followed.
        budget: journal.last - journal.first,
        journal: &journal,
        committed: Vec::new(),
        revoked: BTreeMap::new(),
        open_tags: Vec::new(),
        open_revokes: Vec::new(),
    };
    let mut block = vec![0u8; fs.sb.block_size as usize];
    loop {
        scan.spend_one()?;
        fs.read_block(journal.physical(scan.at)?, &mut block)?;
        if be32(&block, 0) != JBD2_MAGIC || be32(&block, 8) != scan.sequence {
            break; // the end of the log
        }
        match be32(&block, 4) {
            BLOCKTYPE_DESCRIPTOR => scan.descriptor(&block)?,
            BLOCKTYPE_COMMIT => scan.commit(&block)?,
            BLOCKTYPE_REVOKE => scan.revoke(&block)?,
            other => decline!("journal block type {other} in the log"),
        }
        scan.at = journal.next(scan.at);
    }
    // A transaction without its commit block is not replayed.
    for (sequence, tags) in scan.committed {
        for tag in tags {
            let revoked_by_later = scan
                .revoked
                .get(&tag.home)
                .is_some_and(|&r| r.wrapping_sub(sequence) as i32 >= 0);
            if !revoked_by_later {
                replayed.insert(tag.home, tag.copy);
            }
        }
    }
    Ok(replayed)
}

/// A scan of the journal's log from its start: where it is, what it has
/// read so far.
struct Scan<'a> {
    fs: &'a Fs<'a>,
    journal: &'a Journal,
    tag_blocknr_high: bool,
    /// The journal block being read.
    at: u64,
    /// The transaction expected next.
    sequence: u32,
    /// Journal blocks the scan may still read.
    budget: u64,
    /// Committed transactions' tags, in order.
    committed: Vec<(u32, Vec<Tag>)>,
    /// Each revoked block with the latest transaction that revoked it.
    revoked: BTreeMap<u64, u32>,
    /// The open transaction's tags and revokes.
    open_tags: Vec<Tag>,
    open_revokes: Vec<u64>,
}

impl Scan<'_> {
    fn spend_one(&mut self) -> Res<()> {
        if self.budget == 0 {
            decline!("the journal scan wrapped around");
        }
        self.budget -= 1;
        Ok(())
    }

    /// A descriptor block: its tags, each with the data block after it.
    fn descriptor(&mut self, block: &[u8]) -> Res<()> {
        let (fs, journal) = (self.fs, self.journal);
        let bs = fs.sb.block_size as usize;
        if !journal.tail_csum_ok(block) {
            decline!("descriptor block checksum does not match (journal block {})", self.at);
        }
        let mut data = vec![0u8; bs];
        let mut offset = HEADER_BYTES;
        while offset + TAG3_BYTES <= bs - BLOCK_TAIL_BYTES {
            let flags = be32(block, offset + 4);
            let mut home = be32(block, offset) as u64;
            if self.tag_blocknr_high {
                home |= (be32(block, offset + 8) as u64) << 32;
            }
            let tag_csum = be32(block, offset + 12);
            self.at = journal.next(self.at);
            self.spend_one()?;
            let data_physical = journal.physical(self.at)?;
            fs.read_block(data_physical, &mut data)?;
            let csum = crc32c_raw(crc32c_raw(journal.csum_seed, &self.sequence.to_be_bytes()), &data);
            if csum != tag_csum {
                decline!("journal data block checksum does not match (journal block {})", self.at);
            }
            if home >= fs.sb.blocks_count {
                decline!("journal tag for block {home}, past the filesystem's end");
            }
            self.open_tags.push(Tag {
                home,
                copy: JournalCopy {
                    disk_offset_bytes: data_physical * fs.sb.block_size,
                    escaped: flags & TAG_FLAG_ESCAPE != 0,
                },
            });
            offset += TAG3_BYTES;
            if flags & TAG_FLAG_SAME_UUID == 0 {
                offset += UUID_BYTES;
            }
            if flags & TAG_FLAG_LAST != 0 {
                break;
            }
        }
        Ok(())
    }

    /// A commit block: the open transaction committed, its revokes counted.
    fn commit(&mut self, block: &[u8]) -> Res<()> {
        let mut zeroed = block.to_vec();
        zeroed[16..20].fill(0);
        if crc32c_raw(self.journal.csum_seed, &zeroed) != be32(block, 16) {
            decline!("commit block checksum does not match (journal block {})", self.at);
        }
        let sequence = self.sequence;
        for home in self.open_revokes.drain(..) {
            let latest = self.revoked.entry(home).or_insert(sequence);
            if sequence.wrapping_sub(*latest) as i32 > 0 {
                *latest = sequence;
            }
        }
        self.committed.push((sequence, std::mem::take(&mut self.open_tags)));
        self.sequence = sequence.wrapping_add(1);
        Ok(())
    }

    /// A revoke block: the blocks it names, for the open transaction.
    fn revoke(&mut self, block: &[u8]) -> Res<()> {
        let bs = self.fs.sb.block_size as usize;
        if !self.journal.tail_csum_ok(block) {
            decline!("revoke block checksum does not match (journal block {})", self.at);
        }
        let used = be32(block, 12) as usize;
        if used < 16 || used > bs - BLOCK_TAIL_BYTES {
            decline!("revoke block count out of range");
        }
        let record_bytes = if self.tag_blocknr_high { 8 } else { 4 };
        let mut offset = 16;
        while offset + record_bytes <= used {
            let home = match self.tag_blocknr_high {
                true => (be32(block, offset) as u64) << 32 | be32(block, offset + 4) as u64,
                false => be32(block, offset) as u64,
            };
            self.open_revokes.push(home);
            offset += record_bytes;
        }
        Ok(())
    }
}
