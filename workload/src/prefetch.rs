//! `crashlab-workload prefetch DEVICE BLOCK_BYTES RUNS`: reads byte ranges
//! of the checker's disk into the guest's page cache before the mount, in
//! large requests, so the recovery's many small reads hit the cache. Under
//! TCG a request costs far more than its bytes; the host picks the ranges
//! from what the previous state's recovery read (`RUNS`: `offset+len,...`).
//!
//! This helps filesystems that read metadata through the device's page
//! cache (ext4's buffer heads), not those with caches of their own (XFS,
//! F2FS, Btrfs). The device's block size is set to the filesystem's first
//! (`BLOCK_BYTES`): the mount would otherwise change it and so drop the
//! cache. Readahead is off so that exactly the runs are read.
//!
//! Only a prefetch: the cache starts empty for every state (init holds the
//! device open from before this read to after the unmount; the last close
//! then drops the device's page cache), so nothing read here can be stale.
//! Errors are reported on stderr and leave the mount to read for itself.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};

/// Bytes per read request.
const CHUNK_BYTES: u64 = 1 << 20;
/// Bytes a prefetch reads at most, whatever `RUNS` says.
pub const PREFETCH_BYTES_MAX: u64 = 64 << 20;

pub fn run(args: &[String]) -> u8 {
    let [device, block_bytes, runs] = args else {
        eprintln!("usage: crashlab-workload prefetch DEVICE BLOCK_BYTES OFFSET+LEN[,OFFSET+LEN...]");
        return 2;
    };
    let block_bytes = match block_bytes.parse::<i32>() {
        Ok(b) if (512..=65536).contains(&b) && (b as u32).is_power_of_two() => b,
        _ => {
            eprintln!("crashlab-workload prefetch: block size {block_bytes:?} is not a power of two in 512..=65536");
            return 2;
        }
    };
    let runs = match parse_runs(runs) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("crashlab-workload prefetch: {e}");
            return 2;
        }
    };
    let file = match File::open(device) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crashlab-workload prefetch: cannot open {device}: {e}");
            return 1;
        }
    };
    // BLKBSZSET = _IOW(0x12, 113, size_t). Not a regular file in tests: skip.
    const BLKBSZSET: u64 = 0x4008_1271;
    if file.metadata().is_ok_and(|m| m.file_type().is_block_device()) {
        // SAFETY: BLKBSZSET reads an int through the pointer.
        let rc = unsafe { nix::libc::ioctl(file.as_raw_fd(), BLKBSZSET as _, &block_bytes as *const i32) };
        if rc != 0 {
            eprintln!(
                "crashlab-workload prefetch: BLKBSZSET {block_bytes} on {device}: {}",
                nix::errno::Errno::last()
            );
            return 1;
        }
    }
    let _ = nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    );
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    let mut budget = PREFETCH_BYTES_MAX;
    for (offset, len) in runs {
        let mut at = offset;
        let end = offset + len.min(budget);
        budget -= end - offset;
        while at < end {
            let n = (end - at).min(CHUNK_BYTES) as usize;
            match file.read_at(&mut buf[..n], at) {
                Ok(0) => break, // past the device's end
                Ok(got) => at += got as u64,
                Err(e) => {
                    eprintln!("crashlab-workload prefetch: reading {device} at {at}: {e}");
                    return 1;
                }
            }
        }
    }
    0
}

fn parse_runs(text: &str) -> Result<Vec<(u64, u64)>, String> {
    text.split(',')
        .filter(|r| !r.is_empty())
        .map(|run| {
            let (offset, len) = run
                .split_once('+')
                .ok_or_else(|| format!("{run:?} is not OFFSET+LEN"))?;
            let number = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| format!("{s:?} in {run:?} is not a number"))
            };
            let (offset, len) = (number(offset)?, number(len)?);
            offset.checked_add(len).ok_or_else(|| format!("{run:?} overflows"))?;
            Ok((offset, len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_parse_or_say_why_not() {
        assert_eq!(
            parse_runs("0+4096,1048576+512").unwrap(),
            vec![(0, 4096), (1 << 20, 512)]
        );
        assert_eq!(parse_runs("").unwrap(), vec![]);
        assert!(parse_runs("12").unwrap_err().contains("OFFSET+LEN"));
        assert!(parse_runs("1+x").unwrap_err().contains("not a number"));
        assert!(parse_runs(&format!("{}+2", u64::MAX))
            .unwrap_err()
            .contains("overflows"));
    }

    #[test]
    fn a_prefetch_reads_its_runs_and_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        std::fs::write(&path, vec![1u8; 3 << 20]).unwrap();
        let device = path.display().to_string();
        assert_eq!(
            run(&[device.clone(), "1024".into(), "0+4096,2097152+4194304".into()]),
            0
        );
        assert_eq!(run(&[device.clone(), "1024".into(), "x".into()]), 2);
        assert_eq!(run(&[device, "1000".into(), "0+1".into()]), 2);
        assert_eq!(run(&["/nonexistent".into(), "4096".into(), "0+1".into()]), 1);
    }
}
