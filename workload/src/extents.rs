//! `crashlab-workload extents I PATH CHANNEL`: the checker's map of data
//! file `I` (FIEMAP), so the host can read the recovered file's bytes from
//! the disk instead of the guest copying them out.
//!
//! Prints `FILE I size`, `EXTENT` lines and `MAPPED I count` when every byte of the file is
//! either in a plain extent at a device offset (`data`), preallocated
//! (`unwritten`: reads as zeros) or in a hole (zeros). Prints `UNMAPPED I
//! reason` and exits 3 otherwise, and the checker copies the file instead:
//! - a filesystem whose FIEMAP offsets are not device offsets (btrfs gives
//!   its own logical addresses) or that this code has not been checked on;
//! - an extent flagged inline, encoded, encrypted, delalloc, unknown or not
//!   block-aligned (its bytes are not plain blocks on the device);
//! - more than [`EXTENTS_MAX`] extents (the channel is a serial port).

use std::fs::File;
use std::os::fd::AsRawFd;

use record::Event;

use crate::Channel;

/// Filesystems whose FIEMAP `fe_physical` is a byte offset on the one block
/// device (statfs `f_type`): ext4, XFS, F2FS.
const DEVICE_OFFSET_FILESYSTEMS: &[(i64, &str)] = &[(0xEF53, "ext4"), (0x5846_5342, "xfs"), (0xF2F5_2010, "f2fs")];
/// More extents than this and the file is copied instead.
pub const EXTENTS_MAX: usize = 4096;
/// Extents asked for per ioctl.
const BATCH_EXTENTS: usize = 256;

const FS_IOC_FIEMAP: u64 = 0xC020_660B; // _IOWR('f', 11, struct fiemap)
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
const FIEMAP_EXTENT_MERGED: u32 = 0x1000;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Flags that leave an extent's bytes plain blocks at `fe_physical`.
const PLAIN_FLAGS: u32 = FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_MERGED | FIEMAP_EXTENT_SHARED;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; BATCH_EXTENTS],
}

/// One extent as reported on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    pub logical_bytes: u64,
    pub physical_bytes: u64,
    pub len_bytes: u64,
    pub unwritten: bool,
}

pub fn run(args: &[String]) -> u8 {
    let [index, path, channel_path] = args else {
        eprintln!("usage: crashlab-workload extents I PATH CHANNEL");
        return 2;
    };
    let Ok(index) = index.parse::<u32>() else {
        eprintln!("crashlab-workload extents: {index:?} is not a file index");
        return 2;
    };
    let mut channel = match File::options().write(true).open(channel_path) {
        Ok(f) => Channel(f),
        Err(e) => {
            eprintln!("crashlab-workload: cannot open channel {channel_path}: {e}");
            return 2;
        }
    };
    match map_file(path) {
        Ok((size_bytes, extents)) => {
            channel.emit(&Event::File {
                file: index,
                size_bytes,
            });
            for e in &extents {
                channel.emit(&Event::Extent {
                    file: index,
                    logical_bytes: e.logical_bytes,
                    physical_bytes: e.physical_bytes,
                    len_bytes: e.len_bytes,
                    unwritten: e.unwritten,
                });
            }
            channel.emit(&Event::Mapped {
                file: index,
                extents: extents.len() as u64,
            });
            0
        }
        Err(reason) => {
            channel.emit(&Event::Unmapped { file: index, reason });
            3
        }
    }
}

/// The file's size and extents, or why it cannot be read by them (one word).
fn map_file(path: &str) -> Result<(u64, Vec<FileExtent>), String> {
    let file = File::open(path).map_err(|e| format!("open-errno-{}", e.raw_os_error().unwrap_or(0)))?;
    let size_bytes = file
        .metadata()
        .map_err(|e| format!("stat-errno-{}", e.raw_os_error().unwrap_or(0)))?
        .len();
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| format!("statfs-errno-{}", e as i32))?;
    let fs_type = fs.filesystem_type().0 as i64;
    if !DEVICE_OFFSET_FILESYSTEMS.iter().any(|&(magic, _)| magic == fs_type) {
        return Err(format!("filesystem-{fs_type:x}-not-mapped"));
    }
    let block_bytes = fs.block_size() as u64;
    let mut extents = Vec::new();
    let mut start = 0u64;
    loop {
        let mut map = Box::new(Fiemap {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: BATCH_EXTENTS as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); BATCH_EXTENTS],
        });
        // SAFETY: `map` is a `struct fiemap` with room for `fm_extent_count`
        // extents, as FS_IOC_FIEMAP requires; the kernel writes within it.
        let rc = unsafe { nix::libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *map as *mut Fiemap) };
        if rc != 0 {
            return Err(format!("fiemap-errno-{}", nix::errno::Errno::last() as i32));
        }
        let got = map.fm_mapped_extents as usize;
        assert!(got <= BATCH_EXTENTS, "the kernel returned more extents than asked for");
        if got == 0 {
            return Ok((size_bytes, extents));
        }
        for e in &map.fm_extents[..got] {
            if e.fe_flags & !PLAIN_FLAGS != 0 {
                return Err(format!("extent-flags-{:x}", e.fe_flags));
            }
            let aligned = [e.fe_logical, e.fe_physical, e.fe_length]
                .iter()
                .all(|v| v % block_bytes == 0);
            if !aligned || e.fe_length == 0 {
                return Err("extent-not-block-aligned".into());
            }
            if extents.len() == EXTENTS_MAX {
                return Err("too-many-extents".into());
            }
            extents.push(FileExtent {
                logical_bytes: e.fe_logical,
                physical_bytes: e.fe_physical,
                len_bytes: e.fe_length,
                unwritten: e.fe_flags & FIEMAP_EXTENT_UNWRITTEN != 0,
            });
        }
        let last = &map.fm_extents[got - 1];
        if last.fe_flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok((size_bytes, extents));
        }
        start = last.fe_logical + last.fe_length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fiemap_struct_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<FiemapExtent>(), 56);
        assert_eq!(std::mem::size_of::<Fiemap>(), 32 + 56 * BATCH_EXTENTS);
    }

    /// On the host's own filesystem: ext4, XFS or F2FS map the file; others
    /// (tmpfs, overlayfs) refuse by name. Either way the answer is definite.
    #[test]
    fn a_written_file_maps_to_its_size_or_is_refused() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        match map_file(path.to_str().unwrap()) {
            Ok((size_bytes, extents)) => {
                assert_eq!(size_bytes, 3 * 4096);
                let mapped: u64 = extents.iter().map(|e| e.len_bytes).sum();
                assert_eq!(mapped, 3 * 4096);
                assert!(extents.iter().all(|e| !e.unwritten));
            }
            Err(reason) => assert!(reason.contains("not-mapped"), "{reason}"),
        }
    }
}
