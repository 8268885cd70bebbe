//! The evidence of a check, under either crash model: the report lines a
//! check speaks, the data files it brought out (by extents or through the
//! export disk), what the guest kernel said, and the verdict on it all.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use record::protocol::{EXPORT_DATA_OFFSET_BYTES, EXPORT_TAG_PREFIX};
use record::{Event, ProtocolLog};
use serde::Serialize;

use config::CampaignConfig;

#[derive(Clone, Debug, Serialize)]
pub struct FsckResult {
    pub tool: String,
    pub rc: i32,
}

/// The guest kernel's messages about the filesystem that `/init` put on
/// the console after a failed mount (`crashlab-kernel: ` lines): the
/// reason a mount failed, which its exit status does not carry. At most
/// the last few, without their timestamps.
pub fn kernel_said(console_log: &std::path::Path, fs: config::Filesystem) -> Vec<String> {
    const SAID_MAX_LINES: usize = 4;
    let marked = machine::console::kernel_lines_of(console_log);
    let name = fs.name().to_lowercase();
    let about: Vec<String> = marked
        .iter()
        .filter(|l| l.to_lowercase().contains(&name) || l.contains("mount") || l.contains("vda"))
        .cloned()
        .collect();
    let chosen = if about.is_empty() { marked } else { about };
    chosen[chosen.len().saturating_sub(SAID_MAX_LINES)..].to_vec()
}

/// The config option behind a piece the guest kernel lacks.
pub fn kernel_config_option(what: &str) -> &'static str {
    match what {
        "virtio_blk" => "CONFIG_VIRTIO_BLK",
        "ext4" => "CONFIG_EXT4_FS",
        "xfs" => "CONFIG_XFS_FS",
        "btrfs" => "CONFIG_BTRFS_FS",
        "f2fs" => "CONFIG_F2FS_FS",
        _ => "the option that provides it",
    }
}

/// What a check (a check boot, the long-lived checker VM, or the host path)
/// found on a recovered crash state.
pub struct CheckResult {
    /// Why recovery did not complete (a guest panic or hang while mounting
    /// or reading the state, or a failed unmount).
    pub recovery_failure: Option<String>,
    pub mount_rc: i32,
    /// Each data file of the run, in order.
    pub files: Vec<RecoveredFile>,
    pub fsck: Option<FsckResult>,
    /// How the checker VM's files reached the host.
    pub reads: FileReads,
    /// A program under test: what its checker reported (`None` when it
    /// did not run, or for crashlab's own workload).
    pub checker: Option<record::items::CheckerReport>,
    /// The check gave up waiting for the guest (the state's recovery, or
    /// a program's checker, did not finish in time).
    pub timed_out: bool,
}

/// How a check's data files reached the host, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileReads {
    /// Read by the host from the recovered disk, at the extents the guest
    /// reported.
    pub by_extents: u64,
    /// Copied out by the guest through the export disk.
    pub copied: u64,
    /// Read both ways and found equal.
    pub cross_checked: u64,
    /// Host path: read by crashlab's ext4 reader after its in-memory replay.
    pub by_ext4_reader: u64,
    /// Host path: recovered by e2fsck, read by debugfs.
    pub by_e2fsprogs: u64,
}

impl FileReads {
    pub fn add(&mut self, other: &FileReads) {
        self.by_extents += other.by_extents;
        self.copied += other.copied;
        self.cross_checked += other.cross_checked;
        self.by_ext4_reader += other.by_ext4_reader;
        self.by_e2fsprogs += other.by_e2fsprogs;
    }
}

/// Reads the recovered disk at a byte offset (the checker's NBD export, with
/// the guest's recovery writes on top).
pub type DiskReader<'a> = &'a dyn Fn(u64, &mut [u8]) -> std::io::Result<()>;

/// One extent of a recovered file, as the guest reported it (`EXTENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileExtent {
    logical_bytes: u64,
    physical_bytes: u64,
    len_bytes: u64,
    unwritten: bool,
}

/// A file's bytes from its extents: holes and unwritten extents read as
/// zeros, bytes past `size_bytes` are not part of it. `Err` says why the
/// map cannot be read (overlapping extents, a range past the disk's end):
/// the file is then unreadable, as a failed copy would make it.
fn read_by_extents(size_bytes: u64, extents: &[FileExtent], disk: DiskReader) -> Result<Vec<u8>, String> {
    let mut sorted = extents.to_vec();
    sorted.sort_by_key(|e| e.logical_bytes);
    for pair in sorted.windows(2) {
        if pair[0].logical_bytes + pair[0].len_bytes > pair[1].logical_bytes {
            return Err(format!(
                "the guest reported overlapping extents {:?} and {:?}",
                pair[0], pair[1]
            ));
        }
    }
    let mut bytes = vec![0u8; size_bytes as usize];
    for e in sorted.iter().filter(|e| !e.unwritten && e.logical_bytes < size_bytes) {
        let end = (e.logical_bytes + e.len_bytes).min(size_bytes);
        let dst = &mut bytes[e.logical_bytes as usize..end as usize];
        disk(e.physical_bytes, dst)
            .map_err(|err| format!("reading extent {e:?} from the recovered disk failed: {err}"))?;
    }
    Ok(bytes)
}

impl CheckResult {
    pub fn recovery_failed(reason: String, files: usize) -> CheckResult {
        CheckResult {
            recovery_failure: Some(reason),
            mount_rc: 0,
            files: (0..files).map(|_| RecoveredFile::Missing).collect(),
            fsck: None,
            reads: FileReads::default(),
            checker: None,
            timed_out: false,
        }
    }
}

/// A data file after recovery, owned (see `verifier::FileFound`).
pub enum RecoveredFile {
    Missing,
    Read(Vec<u8>),
    Unreadable { size_bytes: Option<u64>, reason: String },
}

impl RecoveredFile {
    pub fn size_bytes(&self) -> Option<u64> {
        match self {
            Self::Missing => None,
            Self::Read(bytes) => Some(bytes.len() as u64),
            Self::Unreadable { size_bytes, .. } => *size_bytes,
        }
    }
}

/// The second disk a check copies the data files onto: a tag sector per
/// file, then from `EXPORT_DATA_OFFSET_BYTES` on one stride per file, each
/// with room for the workload's file size + 1 MiB, so that a file that grew
/// a little still shows up (and is judged by the size rule).
pub(crate) struct ExportDisk {
    pub path: PathBuf,
    pub stride_bytes: u64,
    pub files: u32,
}

impl ExportDisk {
    pub fn create(path: PathBuf, file_size_bytes: u64, files: u32) -> Result<ExportDisk> {
        let stride_bytes = (file_size_bytes.div_ceil(1 << 20) + 1) << 20;
        let size_bytes = EXPORT_DATA_OFFSET_BYTES + u64::from(files) * stride_bytes;
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size_bytes))
            .with_context(|| format!("cannot create {} (disk full?)", path.display()))?;
        Ok(ExportDisk {
            path,
            stride_bytes,
            files,
        })
    }

    /// The guest's kernel arguments that describe this export.
    pub fn kernel_args(&self) -> Vec<String> {
        let names = &record::pattern::DATA_FILE_NAMES[..self.files as usize];
        vec![
            format!("crashlab.files={}", names.join(",")),
            format!("crashlab.export_stride_mib={}", self.stride_bytes >> 20),
        ]
    }

    /// Bytes of a file this large fit in a stride.
    fn holds(&self, file_size_bytes: u64) -> bool {
        file_size_bytes <= self.stride_bytes
    }

    /// The `size_bytes` the guest copied of file `index` for check `nonce`.
    /// The tag proves the copy is this check's and complete: without it the
    /// bytes could be an earlier state's.
    fn read_file(&self, nonce: u64, index: u32, size_bytes: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        anyhow::ensure!(
            self.holds(size_bytes),
            "a {size_bytes}-byte file does not fit the export disk"
        );
        let file = std::fs::File::open(&self.path)?;
        let mut tag = [0u8; 512];
        file.read_exact_at(&mut tag, u64::from(index) * 512)?;
        let expected = format!("{EXPORT_TAG_PREFIX} {nonce} {index} {size_bytes}\n");
        if !tag.starts_with(expected.as_bytes()) {
            let end = tag.iter().position(|&b| b == 0).unwrap_or(64).min(64);
            let found = String::from_utf8_lossy(&tag[..end]).into_owned();
            bail!(
                "the export disk {} does not carry this check's tag (expected {:?}, found {found:?}): \
                 the guest reported a complete copy that is not there",
                self.path.display(),
                expected.trim_end()
            );
        }
        let mut bytes = vec![0u8; size_bytes as usize];
        file.read_exact_at(
            &mut bytes,
            EXPORT_DATA_OFFSET_BYTES + u64::from(index) * self.stride_bytes,
        )?;
        Ok(bytes)
    }
}

/// A program's checker output kept per state, at most (a checker that
/// prints more is cut, and its report then lacks its END line).
const CHECKER_STDOUT_MAX_BYTES: usize = 64 << 20;

/// A check's report lines (`MOUNT`, per file `FILE`/`NOFILE` and `COPY`,
/// `UMOUNT`, `FSCK`, `CHECKED nonce`), gathered; the one-shot check boot
/// and the long-lived checker VM both speak it.
#[derive(Default)]
pub(crate) struct CheckReport {
    mount_rc: Option<i32>,
    file_size_bytes: std::collections::BTreeMap<u32, u64>,
    copy_rc: std::collections::BTreeMap<u32, i32>,
    extents: std::collections::BTreeMap<u32, Vec<FileExtent>>,
    /// `MAPPED i count`: file i's extents are complete.
    mapped: std::collections::BTreeMap<u32, u64>,
    umount_rc: Option<i32>,
    fsck: Option<FsckResult>,
    /// A program's checker: its stdout lines (`CHECKER`), then its exit
    /// status (`CHECKEXIT`).
    checker_stdout: String,
    checker_exit: Option<i32>,
    /// The nonce `CHECKED` echoed.
    pub checked: Option<u64>,
}

impl CheckReport {
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Mount { rc } => self.mount_rc = Some(*rc),
            Event::File { file, size_bytes } => {
                self.file_size_bytes.insert(*file, *size_bytes);
            }
            Event::Copy { file, rc } => {
                self.copy_rc.insert(*file, *rc);
            }
            Event::Extent {
                file,
                logical_bytes,
                physical_bytes,
                len_bytes,
                unwritten,
            } => self.extents.entry(*file).or_default().push(FileExtent {
                logical_bytes: *logical_bytes,
                physical_bytes: *physical_bytes,
                len_bytes: *len_bytes,
                unwritten: *unwritten,
            }),
            Event::Mapped { file, extents } => {
                self.mapped.insert(*file, *extents);
            }
            Event::Umount { rc } => self.umount_rc = Some(*rc),
            Event::Fsck { tool, rc } if tool != "none" => {
                self.fsck = Some(FsckResult {
                    tool: tool.clone(),
                    rc: *rc,
                })
            }
            Event::Checked { nonce } => self.checked = Some(*nonce),
            // Bounded: a checker may print at most this much per state.
            Event::CheckerOutput { line } if self.checker_stdout.len() < CHECKER_STDOUT_MAX_BYTES => {
                self.checker_stdout.push_str(line);
                self.checker_stdout.push('\n');
            }
            Event::CheckerExit { rc } => self.checker_exit = Some(*rc),
            _ => {}
        }
    }

    /// The recovered filesystem could not be unmounted: the guest still has
    /// it mounted, so that guest must not check another state.
    pub fn left_mounted(&self) -> bool {
        self.mount_rc == Some(0) && self.umount_rc != Some(0)
    }

    /// The result of check `nonce`, with the files' bytes read from
    /// `export` or, for a file the guest mapped, from `disk` (the recovered
    /// disk) at its extents; both, and compared, when the guest did both.
    /// `None` when the report is incomplete (no `MOUNT`, or no `CHECKED`).
    /// An answer for another nonce, or a copy that differs from the mapped
    /// bytes, is an error.
    pub fn finish(self, export: &ExportDisk, nonce: u64, disk: Option<DiskReader>) -> Result<Option<CheckResult>> {
        let (Some(mount_rc), Some(checked)) = (self.mount_rc, self.checked) else {
            return Ok(None);
        };
        anyhow::ensure!(
            checked == nonce,
            "the guest answered check {checked} when check {nonce} was asked: its reports are out of step"
        );
        let fsck = self.fsck.clone();
        let checker = self
            .checker_exit
            .map(|rc| record::items::CheckerReport::from_output(&self.checker_stdout, rc));
        if self.left_mounted() {
            let rc = self.umount_rc.map_or("none".to_string(), |rc| rc.to_string());
            return Ok(Some(CheckResult {
                fsck,
                ..CheckResult::recovery_failed(
                    format!("unmounting the recovered filesystem failed (umount exit status {rc})"),
                    export.files as usize,
                )
            }));
        }
        let mut reads = FileReads::default();
        let files = (0..export.files)
            .map(|index| self.file(export, nonce, index, disk, &mut reads))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(CheckResult {
            recovery_failure: None,
            mount_rc,
            files,
            fsck,
            reads,
            checker,
            timed_out: false,
        }))
    }

    /// File `index`'s extents, when the guest mapped it completely.
    fn mapped_extents(&self, index: u32) -> Result<Option<&[FileExtent]>> {
        let Some(&count) = self.mapped.get(&index) else {
            return Ok(None);
        };
        let extents = self.extents.get(&index).map(Vec::as_slice).unwrap_or(&[]);
        anyhow::ensure!(
            extents.len() as u64 == count,
            "the guest reported {} extents for data file {index} but said MAPPED {count}: its reports are out of step",
            extents.len()
        );
        Ok(Some(extents))
    }

    fn file(
        &self,
        export: &ExportDisk,
        nonce: u64,
        index: u32,
        disk: Option<DiskReader>,
        reads: &mut FileReads,
    ) -> Result<RecoveredFile> {
        let size = self.file_size_bytes.get(&index).copied();
        let rc = self.copy_rc.get(&index).copied();
        if let (Some(size_bytes), Some(extents), Some(disk)) = (size, self.mapped_extents(index)?, disk) {
            if export.holds(size_bytes) {
                let bytes = match read_by_extents(size_bytes, extents, disk) {
                    Ok(bytes) => bytes,
                    Err(reason) => {
                        return Ok(RecoveredFile::Unreadable {
                            size_bytes: Some(size_bytes),
                            reason,
                        })
                    }
                };
                reads.by_extents += 1;
                if rc == Some(0) {
                    let copy = export.read_file(nonce, index, size_bytes)?;
                    if let Some(at) = copy.iter().zip(&bytes).position(|(a, b)| a != b) {
                        bail!(
                            "data file {index}: the bytes read at the extents the guest reported differ from the \
                             guest's own copy (first at byte {at} of {size_bytes}): the extents path cannot be \
                             trusted here; rerun with --read-files=copy and report this"
                        );
                    }
                    reads.cross_checked += 1;
                }
                return Ok(RecoveredFile::Read(bytes));
            }
        }
        if rc == Some(0) {
            reads.copied += 1;
        }
        Ok(match (size, rc) {
            (None, None) => RecoveredFile::Missing,
            (None, Some(rc)) => RecoveredFile::Unreadable {
                size_bytes: None,
                reason: format!("the guest could not stat it (status {rc})"),
            },
            (Some(size_bytes), _) if !export.holds(size_bytes) => RecoveredFile::Unreadable {
                size_bytes: Some(size_bytes),
                reason: format!(
                    "it grew to {size_bytes} bytes, past the {} the export holds",
                    export.stride_bytes
                ),
            },
            (Some(size_bytes), Some(0)) => RecoveredFile::Read(export.read_file(nonce, index, size_bytes)?),
            (Some(size_bytes), rc) => RecoveredFile::Unreadable {
                size_bytes: Some(size_bytes),
                reason: format!(
                    "copying it out in the guest failed (dd exit status {}): an I/O error reading the recovered file",
                    rc.map_or("none".to_string(), |rc| rc.to_string())
                ),
            },
        })
    }
}

pub fn judge(
    config: &CampaignConfig,
    params: &record::WorkloadParams,
    protocol: &ProtocolLog,
    seen: verifier::Seen,
    check: &CheckResult,
) -> verifier::Verdict {
    if config.program.is_some() {
        let mask = seen.mask(protocol);
        return verifier::items::verify_items(&verifier::items::ItemEvidence {
            protocol,
            kept_events: mask.as_deref(),
            items_max: params.records,
            recovery_failure: check.recovery_failure.clone(),
            mount_rc: check.mount_rc,
            fsck: check.fsck.as_ref().map(|f| (f.tool.clone(), f.rc)),
            checker: check.checker.as_ref(),
        });
    }
    let evidence = verifier::Evidence {
        params,
        protocol,
        seen,
        recovered: verifier::Recovered {
            recovery_failure: check.recovery_failure.clone(),
            mount_rc: check.mount_rc,
            files: check
                .files
                .iter()
                .map(|file| match file {
                    RecoveredFile::Missing => verifier::FileFound::Missing,
                    RecoveredFile::Read(bytes) => verifier::FileFound::Read(bytes),
                    RecoveredFile::Unreadable { size_bytes, reason } => verifier::FileFound::Unreadable {
                        size_bytes: *size_bytes,
                        reason: reason.clone(),
                    },
                })
                .collect(),
            fsck: check.fsck.as_ref().map(|f| (f.tool.clone(), f.rc)),
        },
    };
    verifier::verify(&evidence, config.profile)
}

#[cfg(test)]
mod tests {
    //! A check is judged only on bytes it produced: the report lines and
    //! the export disk's tag, without a VM.

    use super::*;

    #[test]
    fn the_kernels_reason_for_a_failed_mount_is_read_from_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(
            &log,
            "boot noise\ncrashlab-kernel: [    1.5] virtio_blk virtio1: [vda] 131072 512-byte blocks\n\
             crashlab-kernel: [    2.1] random: crng init done\n\
             crashlab-kernel: [    2.2] EXT4-fs (vda): Unrecognized mount option \"data=bogus\" or missing value\n\
             mount: mounting /dev/vda on /mnt failed: Invalid argument\n",
        )
        .unwrap();
        let said = super::kernel_said(&log, config::Filesystem::Ext4);
        assert_eq!(
            said,
            [
                "virtio_blk virtio1: [vda] 131072 512-byte blocks",
                "EXT4-fs (vda): Unrecognized mount option \"data=bogus\" or missing value"
            ]
        );
        assert!(super::kernel_said(&dir.path().join("none"), config::Filesystem::Xfs).is_empty());
    }

    fn export_with(dir: &std::path::Path, tag: &str, data: &[u8]) -> ExportDisk {
        use std::os::unix::fs::FileExt;
        let export = ExportDisk::create(dir.join("export.img"), 8192, 1).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&export.path).unwrap();
        file.write_all_at(tag.as_bytes(), 0).unwrap();
        file.write_all_at(data, EXPORT_DATA_OFFSET_BYTES).unwrap();
        export
    }

    fn report(lines: &[&str]) -> CheckReport {
        let mut report = CheckReport::default();
        for line in lines {
            report.observe(&Event::parse(line).unwrap());
        }
        report
    }

    const COMPLETE: &[&str] = &[
        "MOUNT 0",
        "FILE 0 4096",
        "COPY 0 0",
        "UMOUNT 0",
        "FSCK e2fsck 0",
        "CHECKED 7",
    ];

    #[test]
    fn a_complete_copy_with_this_checks_tag_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let export = export_with(dir.path(), "CRASHLAB-EXPORT 7 0 4096\n", &[0xab; 4096]);
        let result = report(COMPLETE).finish(&export, 7, None).unwrap().unwrap();
        assert!(matches!(&result.files[0], RecoveredFile::Read(bytes) if bytes == &vec![0xab; 4096]));
        assert_eq!(result.fsck.unwrap().rc, 0);
        assert!(result.recovery_failure.is_none());
    }

    #[test]
    fn an_earlier_checks_bytes_are_never_judged() {
        let dir = tempfile::tempdir().unwrap();
        // The export still holds check 6's copy: the guest claims a copy
        // for check 7 that is not there.
        let export = export_with(dir.path(), "CRASHLAB-EXPORT 6 0 4096\n", &[0xab; 4096]);
        let err = report(COMPLETE).finish(&export, 7, None).err().unwrap();
        assert!(err.to_string().contains("does not carry this check's tag"), "{err}");
        // An answer for another check is out of step.
        let err = report(COMPLETE).finish(&export, 8, None).err().unwrap();
        assert!(err.to_string().contains("answered check 7"), "{err}");
    }

    #[test]
    fn a_failed_copy_is_an_unreadable_file_not_stale_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let export = export_with(dir.path(), "CRASHLAB-EXPORT 6 0 4096\n", &[0xab; 4096]);
        let lines = ["MOUNT 0", "FILE 0 4096", "COPY 0 1", "UMOUNT 0", "CHECKED 7"];
        let result = report(&lines).finish(&export, 7, None).unwrap().unwrap();
        match result.files.into_iter().next().unwrap() {
            RecoveredFile::Unreadable { size_bytes, reason } => {
                assert_eq!(size_bytes, Some(4096));
                assert!(reason.contains("dd exit status 1"), "{reason}");
            }
            _ => panic!("a failed copy must not be read"),
        }
    }

    #[test]
    fn a_file_that_grew_past_the_export_is_unreadable_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let export = export_with(dir.path(), "", &[]);
        let huge = 64 << 20;
        let lines = [
            "MOUNT 0".to_string(),
            format!("FILE 0 {huge}"),
            "COPY 0 27".into(),
            "UMOUNT 0".into(),
            "CHECKED 1".into(),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let result = report(&lines).finish(&export, 1, None).unwrap().unwrap();
        assert!(matches!(result.files[0], RecoveredFile::Unreadable { size_bytes: Some(n), .. } if n == huge));
    }

    #[test]
    fn each_data_file_has_its_own_tag_and_stride() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let export = ExportDisk::create(dir.path().join("export.img"), 8192, 2).unwrap();
        assert_eq!(export.kernel_args()[0], "crashlab.files=crashlab.dat,crashlab-1.dat");
        let file = std::fs::OpenOptions::new().write(true).open(&export.path).unwrap();
        file.write_all_at(b"CRASHLAB-EXPORT 3 1 512\n", 512).unwrap();
        file.write_all_at(&[0x5a; 512], EXPORT_DATA_OFFSET_BYTES + export.stride_bytes)
            .unwrap();
        let lines = ["MOUNT 0", "NOFILE 0", "FILE 1 512", "COPY 1 0", "UMOUNT 0", "CHECKED 3"];
        let result = report(&lines).finish(&export, 3, None).unwrap().unwrap();
        assert!(matches!(result.files[0], RecoveredFile::Missing));
        assert!(matches!(&result.files[1], RecoveredFile::Read(bytes) if bytes == &vec![0x5a; 512]));
    }

    /// A recovered disk of 64 KiB whose byte at offset `o` is `o % 251`.
    fn disk(offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset_bytes + buf.len() as u64 > 65536 {
            return Err(std::io::Error::other("past the end"));
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((offset_bytes + i as u64) % 251) as u8;
        }
        Ok(())
    }

    fn disk_bytes(offset_bytes: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        disk(offset_bytes, &mut buf).unwrap();
        buf
    }

    #[test]
    fn a_mapped_file_is_read_at_its_extents_with_holes_and_unwritten_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let export = export_with(dir.path(), "", &[]);
        // 0..4096 data at 8192; 4096..8192 a hole; 8192..12288 unwritten;
        // 12288.. data at 32768, cut at the file's size (14000).
        let lines = [
            "MOUNT 0",
            "FILE 0 14000",
            "EXTENT 0 12288 32768 4096 data",
            "EXTENT 0 0 8192 4096 data",
            "EXTENT 0 8192 16384 4096 unwritten",
            "MAPPED 0 3",
            "UMOUNT 0",
            "CHECKED 7",
        ];
        let result = report(&lines).finish(&export, 7, Some(&disk)).unwrap().unwrap();
        let mut expected = vec![0u8; 14000];
        expected[..4096].copy_from_slice(&disk_bytes(8192, 4096));
        expected[12288..].copy_from_slice(&disk_bytes(32768, 14000 - 12288));
        assert!(matches!(&result.files[0], RecoveredFile::Read(bytes) if bytes == &expected));
        assert_eq!(
            result.reads,
            FileReads {
                by_extents: 1,
                ..FileReads::default()
            }
        );
        // Without a disk to read (the one-shot check boot) the map is not
        // used: no copy means no bytes.
        let result = report(&lines).finish(&export, 7, None).unwrap().unwrap();
        assert!(matches!(result.files[0], RecoveredFile::Unreadable { .. }));
    }

    #[test]
    fn extents_and_copy_are_compared_and_a_difference_stops_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            "MOUNT 0",
            "FILE 0 4096",
            "EXTENT 0 0 4096 4096 data",
            "MAPPED 0 1",
            "COPY 0 0",
            "UMOUNT 0",
            "CHECKED 7",
        ];
        let export = export_with(dir.path(), "CRASHLAB-EXPORT 7 0 4096\n", &disk_bytes(4096, 4096));
        let result = report(&lines).finish(&export, 7, Some(&disk)).unwrap().unwrap();
        assert!(matches!(&result.files[0], RecoveredFile::Read(bytes) if bytes == &disk_bytes(4096, 4096)));
        assert_eq!(result.reads.cross_checked, 1);
        let mut other = disk_bytes(4096, 4096);
        other[100] ^= 1;
        let export = export_with(dir.path(), "CRASHLAB-EXPORT 7 0 4096\n", &other);
        let err = report(&lines).finish(&export, 7, Some(&disk)).err().unwrap();
        assert!(err.to_string().contains("first at byte 100"), "{err}");
        assert!(err.to_string().contains("--read-files=copy"), "{err}");
    }

    #[test]
    fn a_map_that_cannot_be_read_is_an_unreadable_file_or_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let export = export_with(dir.path(), "", &[]);
        let past_end = [
            "MOUNT 0",
            "FILE 0 4096",
            "EXTENT 0 0 65536 4096 data",
            "MAPPED 0 1",
            "UMOUNT 0",
            "CHECKED 7",
        ];
        let result = report(&past_end).finish(&export, 7, Some(&disk)).unwrap().unwrap();
        assert!(
            matches!(&result.files[0], RecoveredFile::Unreadable { reason, .. } if reason.contains("past the end"))
        );
        let overlapping = [
            "MOUNT 0",
            "FILE 0 8192",
            "EXTENT 0 0 0 8192 data",
            "EXTENT 0 4096 8192 4096 data",
            "MAPPED 0 2",
            "UMOUNT 0",
            "CHECKED 7",
        ];
        let result = report(&overlapping).finish(&export, 7, Some(&disk)).unwrap().unwrap();
        assert!(matches!(&result.files[0], RecoveredFile::Unreadable { reason, .. } if reason.contains("overlapping")));
        // A count that does not match the lines: the reports are out of step.
        let short = [
            "MOUNT 0",
            "FILE 0 4096",
            "EXTENT 0 0 0 4096 data",
            "MAPPED 0 2",
            "UMOUNT 0",
            "CHECKED 7",
        ];
        let err = report(&short).finish(&export, 7, Some(&disk)).err().unwrap();
        assert!(err.to_string().contains("out of step"), "{err}");
    }

    #[test]
    fn a_failed_unmount_retires_the_guest_and_is_a_recovery_failure() {
        let dir = tempfile::tempdir().unwrap();
        let export = export_with(dir.path(), "CRASHLAB-EXPORT 7 0 4096\n", &[0xab; 4096]);
        let lines = ["MOUNT 0", "FILE 0 4096", "COPY 0 0", "UMOUNT 16", "CHECKED 7"];
        let report = report(&lines);
        assert!(report.left_mounted());
        let result = report.finish(&export, 7, None).unwrap().unwrap();
        assert!(result.recovery_failure.unwrap().contains("umount exit status 16"));
        // A mount that failed leaves nothing mounted.
        assert!(!super::tests::report(&["MOUNT 32", "CHECKED 7"]).left_mounted());
    }
}
