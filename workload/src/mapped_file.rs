//! A data file and its MAP_SHARED mappings: every syscall the workload
//! makes on them, each failure carrying the syscall's name and errno.

use std::ffi::c_void;
use std::fmt;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, mremap, MRemapFlags, MapFlags, MsFlags, ProtFlags};

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

pub fn fail(op: &'static str) -> impl Fn(nix::Error) -> SyscallError {
    move |e| SyscallError { op, errno: e as i32 }
}

pub fn fail_io(op: &'static str) -> impl Fn(std::io::Error) -> SyscallError {
    move |e| SyscallError {
        op,
        errno: e.raw_os_error().unwrap_or(nix::errno::Errno::EIO as i32),
    }
}

/// The page size the workload runs with (x86-64: 4096; checked at start).
pub fn page_size_bytes() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as usize
}

/// One MAP_SHARED mapping of the whole file (as long as it is now).
pub struct Mapping {
    base: NonNull<c_void>,
    len_bytes: usize,
}

/// What an msync call was, for the `MSYNC` line.
pub struct MsyncCall {
    pub offset_bytes: usize,
    pub len_bytes: usize,
    pub flags: MsFlags,
}

impl MsyncCall {
    pub fn flag_names(&self) -> String {
        let mut names = Vec::new();
        for (flag, name) in [
            (MsFlags::MS_SYNC, "MS_SYNC"),
            (MsFlags::MS_ASYNC, "MS_ASYNC"),
            (MsFlags::MS_INVALIDATE, "MS_INVALIDATE"),
        ] {
            if self.flags.contains(flag) {
                names.push(name);
            }
        }
        match names.is_empty() {
            true => "0".to_string(),
            false => names.join("|"),
        }
    }
}

impl Mapping {
    fn map(file: &File, len_bytes: usize) -> Result<Mapping, SyscallError> {
        let len = NonZeroUsize::new(len_bytes).expect("mappings are never empty");
        // SAFETY: a fresh shared mapping of a file we own; slices into it
        // never outlive `self`, and the file is not truncated below it.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .map_err(fail("mmap"))?;
        Ok(Mapping { base, len_bytes })
    }

    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    pub fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len_bytes, "{offset}+{len} outside the mapping");
        // SAFETY: in bounds of the live mapping (asserted); &mut self keeps
        // the slice unique within this process.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().cast::<u8>().add(offset), len) }
    }

    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.len_bytes, "{offset}+{len} outside the mapping");
        // SAFETY: as above, shared.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<u8>().add(offset), len) }
    }

    /// msync over `[offset, offset + len)`, the start rounded down to a page
    /// (POSIX allows EINVAL otherwise); the kernel rounds the length up.
    /// Returns the call made, and its result.
    pub fn msync(&mut self, offset: usize, len: usize, flags: MsFlags) -> (MsyncCall, Result<(), SyscallError>) {
        assert!(offset + len <= self.len_bytes);
        let start = offset - offset % page_size_bytes();
        let call = MsyncCall {
            offset_bytes: start,
            len_bytes: offset + len - start,
            flags,
        };
        // SAFETY: the range lies inside our live mapping.
        let result = unsafe {
            let addr = NonNull::new_unchecked(self.base.as_ptr().cast::<u8>().add(start).cast());
            nix::sys::mman::msync(addr, call.len_bytes, flags)
        };
        (call, result.map_err(fail("msync")))
    }

    /// Grows the mapping to `new_len` (the file must already be that long).
    pub fn grow(&mut self, new_len: usize) -> Result<(), SyscallError> {
        // SAFETY: remaps our own mapping; no slice into it is alive (&mut).
        let base = unsafe { mremap(self.base, self.len_bytes, new_len, MRemapFlags::MREMAP_MAYMOVE, None) }
            .map_err(fail("mremap"))?;
        self.base = base;
        self.len_bytes = new_len;
        Ok(())
    }
}

/// A data file with one or more shared mappings of it.
pub struct DataFile {
    file: File,
    size_bytes: usize,
    mappings: Vec<Mapping>,
}

impl DataFile {
    /// Creates the file, sizes it and makes both the size and the directory
    /// entry durable before any record is written, as a careful application
    /// would: acked records must not depend on metadata that was never
    /// synced. Maps it `mappings` times.
    pub fn create_durably(path: &str, size_bytes: u64, mappings: usize) -> Result<DataFile, SyscallError> {
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
        let mappings = (0..mappings)
            .map(|_| Mapping::map(&file, size_bytes))
            .collect::<Result<_, _>>()?;
        Ok(DataFile {
            file,
            size_bytes,
            mappings,
        })
    }

    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    pub fn mapping(&mut self, index: usize) -> &mut Mapping {
        &mut self.mappings[index]
    }

    /// Grows the file with ftruncate, then every mapping with mremap.
    pub fn grow(&mut self, new_size_bytes: usize) -> Result<(), SyscallError> {
        assert!(new_size_bytes > self.size_bytes);
        self.file.set_len(new_size_bytes as u64).map_err(fail_io("ftruncate"))?;
        for mapping in &mut self.mappings {
            mapping.grow(new_size_bytes)?;
        }
        self.size_bytes = new_size_bytes;
        Ok(())
    }

    pub fn pwrite(&self, offset: usize, bytes: &[u8]) -> Result<(), SyscallError> {
        self.file.write_all_at(bytes, offset as u64).map_err(fail_io("pwrite"))
    }

    pub fn pread(&self, offset: usize, buf: &mut [u8]) -> Result<(), SyscallError> {
        self.file.read_exact_at(buf, offset as u64).map_err(fail_io("pread"))
    }

    pub fn fsync(&self) -> Result<(), SyscallError> {
        nix::unistd::fsync(self.file.as_raw_fd()).map_err(fail("fsync"))
    }

    pub fn fdatasync(&self) -> Result<(), SyscallError> {
        nix::unistd::fdatasync(self.file.as_raw_fd()).map_err(fail("fdatasync"))
    }
}
