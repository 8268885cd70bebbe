//! `crashlab-workload conformance DATA_DIR CHANNEL`: calls msync the ways
//! the seeds name, on the running kernel, and reports each call's return
//! value and errno (`CONF case rc errno detail`). The host sets them beside
//! what POSIX requires and what Linux documents (controller/models/src/conformance.rs).
//!
//! Whether a page was written back is read from the kernel's own page
//! flags (/proc/self/pagemap → /proc/kpageflags: dirty or not), not
//! inferred from timing.

use std::ffi::c_void;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use nix::libc;
use record::Event;

use crate::mapped_file::{fail_io, page_size_bytes, SyscallError};
use crate::Channel;

const FILE_PAGES: usize = 8;

/// What one case reports: its name, msync's return value and errno, and
/// what it saw (`-` for nothing).
type Report<'a> = dyn FnMut(&str, i32, i32, String) + 'a;
/// A page's state as the report says it: written (clean), or "unknown"
/// when the page flags cannot tell.
type Written<'a> = dyn Fn(Option<bool>) -> &'static str + 'a;

pub fn run(dir: &str, channel: &mut Channel) -> Result<(), SyscallError> {
    let page = page_size_bytes();
    let path = format!("{dir}/conformance.dat");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(fail_io("open"))?;
    file.set_len((FILE_PAGES * page) as u64).map_err(fail_io("ftruncate"))?;
    file.sync_all().map_err(fail_io("fsync"))?;
    let map = Map::new(&file, FILE_PAGES * page, libc::MAP_SHARED)?;
    // Control: a page just written must read as dirty, or the page flags
    // cannot tell (no kpageflags, a large folio's tail page) and every
    // "written" below says "unknown".
    map.dirty(7);
    let flags_work = map.page_state(7) == Some(true);
    let written = |state: Option<bool>| match (flags_work, state) {
        (true, Some(dirty)) => yes(!dirty),
        _ => "unknown",
    };
    let mut report = |case: &str, rc: i32, errno: i32, detail: String| {
        channel.emit(&Event::Conf {
            case: case.into(),
            rc,
            errno,
            detail,
        })
    };
    flags_and_alignment(&map, page, &mut report);
    lengths(&map, page, &mut report, &written);
    async_and_sync(&map, page, &mut report, &written);
    timestamps(&file, &map, page, &mut report)?;
    other_mappings(&file, &map, page, &mut report, &written)
}

/// Flags and alignment: EINVAL cases and the flags alone.
fn flags_and_alignment(map: &Map, page: usize, report: &mut Report) {
    // Flags and alignment.
    map.dirty(0);
    let (rc, errno) = map.msync_raw(1, page, libc::MS_SYNC);
    report("unaligned-addr", rc, errno, "-".into());
    let (rc, errno) = map.msync_raw(0, page, libc::MS_SYNC | libc::MS_ASYNC);
    report("sync-and-async", rc, errno, "-".into());
    let (rc, errno) = map.msync_raw(0, page, libc::MS_SYNC | 0x100);
    report("unknown-flag", rc, errno, "-".into());
    let (rc, errno) = map.msync_raw(0, page, 0);
    report("no-flags", rc, errno, "-".into());
    let (rc, errno) = map.msync_raw(0, page, libc::MS_INVALIDATE);
    report("invalidate-only", rc, errno, "-".into());
}

/// Lengths: zero, and one byte into the next page (rounded up).
fn lengths(map: &Map, page: usize, report: &mut Report, written: &Written) {
    map.dirty(1);
    let (rc, errno) = map.msync_raw(page, 0, libc::MS_SYNC);
    report(
        "zero-length",
        rc,
        errno,
        format!("page-written={}", written(map.page_state(1))),
    );
    map.dirty(2);
    map.dirty(3);
    let (rc, errno) = map.msync_raw(2 * page, page + 1, libc::MS_SYNC);
    report(
        "length-not-page-multiple",
        rc,
        errno,
        format!("tail-page-written={}", written(map.page_state(3))),
    );
}

/// MS_ASYNC returns at once (does it start writeback?); MS_SYNC writes.
fn async_and_sync(map: &Map, page: usize, report: &mut Report, written: &Written) {
    map.dirty(4);
    let (rc, errno) = map.msync_raw(4 * page, page, libc::MS_ASYNC);
    report(
        "ms-async",
        rc,
        errno,
        format!("page-written={}", written(map.page_state(4))),
    );
    let (rc, errno) = map.msync_raw(4 * page, page, libc::MS_SYNC);
    report(
        "ms-sync",
        rc,
        errno,
        format!("page-written={}", written(map.page_state(4))),
    );
}

/// Timestamps: marked for update by a write through the mapping synced
/// with msync.
fn timestamps(file: &File, map: &Map, page: usize, report: &mut Report) -> Result<(), SyscallError> {
    let before =
        nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(file)).map_err(crate::mapped_file::fail("fstat"))?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    map.dirty(5);
    let (rc, errno) = map.msync_raw(5 * page, page, libc::MS_SYNC);
    let after =
        nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(file)).map_err(crate::mapped_file::fail("fstat"))?;
    let newer = |(s1, n1): (i64, i64), (s0, n0): (i64, i64)| (s1, n1) > (s0, n0);
    report(
        "mtime-ctime-updated",
        rc,
        errno,
        format!(
            "mtime={},ctime={}",
            yes(newer(
                (after.st_mtime, after.st_mtime_nsec),
                (before.st_mtime, before.st_mtime_nsec)
            )),
            yes(newer(
                (after.st_ctime, after.st_ctime_nsec),
                (before.st_ctime, before.st_ctime_nsec)
            ))
        ),
    );

    Ok(())
}

/// A locked page invalidated, a private mapping, ranges not mapped, and
/// memory that is no file mapping.
fn other_mappings(
    file: &File,
    map: &Map,
    page: usize,
    report: &mut Report,
    written: &Written,
) -> Result<(), SyscallError> {
    // mlock + MS_INVALIDATE: POSIX says EBUSY.
    // SAFETY: the first page of our live mapping.
    let locked = unsafe { libc::mlock(map.addr(0), page) } == 0;
    let (rc, errno) = map.msync_raw(0, page, libc::MS_SYNC | libc::MS_INVALIDATE);
    report("invalidate-locked", rc, errno, format!("mlock={}", yes(locked)));
    // SAFETY: as above.
    unsafe { libc::munlock(map.addr(0), page) };

    // MAP_PRIVATE: msync must not write a private change to the file.
    let private = Map::new(file, page, libc::MAP_PRIVATE)?;
    private.fill(0, 0x5a);
    let (rc, errno) = private.msync_raw(0, page, libc::MS_SYNC);
    let mut first = [0u8; 1];
    file.read_exact_at(&mut first, 0).map_err(fail_io("pread"))?;
    report(
        "private-mapping",
        rc,
        errno,
        format!("file-changed={}", yes(first[0] == 0x5a)),
    );

    // Ranges not mapped: wholly (a page unmapped just before), and partly
    // (the mapped part is synced).
    let mut gone = Map::new(file, page, libc::MAP_SHARED)?;
    gone.unmap_tail(0);
    let (rc, errno) = gone.msync_raw(0, page, libc::MS_SYNC);
    report("unmapped", rc, errno, "-".into());
    let mut partial = Map::new(file, 2 * page, libc::MAP_SHARED)?;
    partial.dirty(0);
    partial.unmap_tail(page);
    let (rc, errno) = partial.msync_raw(0, 2 * page, libc::MS_SYNC);
    report(
        "partly-unmapped",
        rc,
        errno,
        format!("mapped-part-written={}", written(partial.page_state(0))),
    );

    // Memory that is not a file mapping at all.
    let anon = Map::anonymous(page)?;
    anon.fill(0, 1);
    let (rc, errno) = anon.msync_raw(0, page, libc::MS_SYNC);
    report("anonymous-mapping", rc, errno, "-".into());
    Ok(())
}

fn yes(b: bool) -> &'static str {
    match b {
        true => "yes",
        false => "no",
    }
}

/// A raw mapping, for calls the safe wrappers would refuse.
struct Map {
    base: NonNull<c_void>,
    len: usize,
}

impl Map {
    fn new(file: &File, len: usize, flags: i32) -> Result<Map, SyscallError> {
        // SAFETY: maps `len` bytes of an open file; the pointer is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                std::os::fd::AsRawFd::as_raw_fd(file),
                0,
            )
        };
        Self::checked(base, len)
    }

    fn anonymous(len: usize) -> Result<Map, SyscallError> {
        // SAFETY: a fresh anonymous mapping.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::checked(base, len)
    }

    fn checked(base: *mut c_void, len: usize) -> Result<Map, SyscallError> {
        if base == libc::MAP_FAILED {
            return Err(SyscallError {
                op: "mmap",
                errno: nix::errno::Errno::last() as i32,
            });
        }
        Ok(Map {
            base: NonNull::new(base).expect("mmap never returns null on success"),
            len,
        })
    }

    fn addr(&self, offset: usize) -> *mut c_void {
        // SAFETY: callers stay inside the mapping (or one page past, which
        // msync must reject on its own).
        unsafe { self.base.as_ptr().cast::<u8>().add(offset).cast() }
    }

    /// The raw call: (return value, errno or 0).
    fn msync_raw(&self, offset: usize, len: usize, flags: i32) -> (i32, i32) {
        // SAFETY: msync only inspects the address range; invalid ranges are
        // what some cases test, and the kernel rejects them.
        let rc = unsafe { libc::msync(self.addr(offset), len, flags) };
        let errno = if rc == 0 { 0 } else { nix::errno::Errno::last() as i32 };
        (rc, errno)
    }

    fn fill(&self, page_index: usize, byte: u8) {
        let page = page_size_bytes();
        assert!((page_index + 1) * page <= self.len);
        // SAFETY: inside the mapping (asserted).
        unsafe { std::ptr::write_bytes(self.addr(page_index * page).cast::<u8>(), byte, page) };
    }

    /// Writes through the mapping so the page is dirty.
    fn dirty(&self, page_index: usize) {
        self.fill(page_index, 0xa0 + page_index as u8);
    }

    /// Unmaps the mapping from `offset` on (page-aligned); the rest of the
    /// range stays the caller's to msync, and drop unmaps only what is left.
    fn unmap_tail(&mut self, offset: usize) {
        assert!(offset < self.len);
        // SAFETY: our own mapping's tail; nothing points into it, and
        // `len` shrinks so it is never unmapped twice.
        unsafe { libc::munmap(self.addr(offset), self.len - offset) };
        self.len = offset;
    }

    /// Whether the page is dirty (or under writeback), as the kernel keeps
    /// it (pagemap + kpageflags, the flags of the folio's head page); `None`
    /// when the flags cannot tell: not resident, or unreadable.
    fn page_state(&self, page_index: usize) -> Option<bool> {
        const KPF_DIRTY: u64 = 1 << 4;
        const KPF_WRITEBACK: u64 = 1 << 8;
        const KPF_COMPOUND_TAIL: u64 = 1 << 16;
        let page = page_size_bytes() as u64;
        let vaddr = self.addr(page_index * page as usize) as u64;
        let read_u64 = |path: &str, index: u64| -> Option<u64> {
            let mut word = [0u8; 8];
            File::open(path).ok()?.read_exact_at(&mut word, index * 8).ok()?;
            Some(u64::from_le_bytes(word))
        };
        let entry = read_u64("/proc/self/pagemap", vaddr / page)?;
        let pfn = entry & ((1 << 55) - 1);
        if entry >> 63 == 0 || pfn == 0 {
            return None;
        }
        // A large folio keeps its flags on its head page: walk back to it
        // (folios of the page cache are at most a few MiB).
        const KPF_COMPOUND_HEAD: u64 = 1 << 15;
        const FOLIO_PAGES_MAX: u64 = 2048;
        let mut flags = read_u64("/proc/kpageflags", pfn)?;
        let mut head = pfn;
        while flags & KPF_COMPOUND_TAIL != 0 && flags & KPF_COMPOUND_HEAD == 0 {
            if pfn - head >= FOLIO_PAGES_MAX || head == 0 {
                return None;
            }
            head -= 1;
            flags = read_u64("/proc/kpageflags", head)?;
        }
        Some(flags & (KPF_DIRTY | KPF_WRITEBACK) != 0)
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: what is left of our own mapping.
            unsafe { libc::munmap(self.base.as_ptr(), self.len) };
        }
    }
}
