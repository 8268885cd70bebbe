//! The data file and its MAP_SHARED mapping: every syscall the workload makes
//! on it, each failure carrying the syscall's name and errno.

use std::ffi::c_void;
use std::fmt;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, msync, MapFlags, MsFlags, ProtFlags};

#[derive(Debug)]
pub struct SyscallError {
    pub op: &'static str,
    pub errno: i32,
}

impl fmt::Display for SyscallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: {}",
            self.op,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

fn fail(op: &'static str) -> impl Fn(nix::Error) -> SyscallError {
    move |e| SyscallError { op, errno: e as i32 }
}

fn fail_io(op: &'static str) -> impl Fn(std::io::Error) -> SyscallError {
    move |e| SyscallError {
        op,
        errno: e.raw_os_error().unwrap_or(libc_eio()),
    }
}

fn libc_eio() -> i32 {
    nix::errno::Errno::EIO as i32
}

pub struct MappedFile {
    file: File,
    base: NonNull<c_void>,
    size_bytes: usize,
    page_size_bytes: usize,
}

impl MappedFile {
    /// Creates the file, sizes it and makes both the size and the directory
    /// entry durable before any record is written, as a careful application
    /// would: acked records must not depend on metadata that was never synced.
    pub fn create_durably(path: &str, size_bytes: u64) -> Result<MappedFile, SyscallError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(fail_io("open"))?;
        file.set_len(size_bytes).map_err(fail_io("ftruncate"))?;
        file.sync_all().map_err(fail_io("fsync"))?;
        let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail_io("fsync-dir"))?;

        let size_bytes = usize::try_from(size_bytes).expect("file size fits in memory");
        let len = NonZeroUsize::new(size_bytes).expect("file size is validated non-zero");
        // SAFETY: a fresh shared mapping of a file we own; we never hand out
        // references that outlive `self`, and the file is not truncated while
        // mapped.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(fail("mmap"))?;
        let page_size_bytes = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize;
        Ok(MappedFile {
            file,
            base,
            size_bytes,
            page_size_bytes,
        })
    }

    pub fn page_size_bytes(&self) -> usize {
        self.page_size_bytes
    }

    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    pub fn record_mut(&mut self, slot: u64, record_size: usize) -> &mut [u8] {
        let offset = slot as usize * record_size;
        assert!(offset + record_size <= self.size_bytes, "slot {slot} outside the file");
        // SAFETY: in bounds of the live mapping (asserted); &mut self keeps the
        // slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().cast::<u8>().add(offset), record_size) }
    }

    /// msync over the whole pages containing `[offset, offset + len)`. The
    /// address must be page-aligned (POSIX allows EINVAL otherwise), so the
    /// start is rounded down; the length is rounded up by the kernel.
    pub fn msync(&mut self, offset: usize, len: usize, synchronous: bool) -> Result<(), SyscallError> {
        assert!(offset + len <= self.size_bytes);
        let start = offset - offset % self.page_size_bytes;
        let flags = if synchronous {
            MsFlags::MS_SYNC
        } else {
            MsFlags::MS_ASYNC
        };
        // SAFETY: start lies inside the mapping (offset is in bounds).
        let addr = unsafe { NonNull::new_unchecked(self.base.as_ptr().cast::<u8>().add(start).cast()) };
        // SAFETY: the range is part of our live mapping.
        unsafe { msync(addr, offset + len - start, flags) }.map_err(fail("msync"))
    }

    pub fn fsync(&self) -> Result<(), SyscallError> {
        nix::unistd::fsync(self.file.as_raw_fd()).map_err(fail("fsync"))
    }

    pub fn fdatasync(&self) -> Result<(), SyscallError> {
        nix::unistd::fdatasync(self.file.as_raw_fd()).map_err(fail("fdatasync"))
    }
}
