//! The reader against e2fsprogs on real images: mke2fs makes them, debugfs
//! writes files and journal transactions (`jo -c`, `jw`, `jc`: checksum v3
//! like the kernel's), and `e2fsck -E journal_only` + `debugfs cat` on a
//! copy give the bytes the reader must equal.

use std::fs::File as StdFile;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ext4::{recover_and_read, File, Outcome, ReadAt};

const NAME: &str = "crashlab.dat";
const IMAGE_BYTES: u64 = 64 << 20;
const FILE_BYTES: usize = 300_000;

struct Image(StdFile);

impl ReadAt for Image {
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset_bytes)
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (cargo xtask deps installs e2fsprogs)"));
    assert!(
        out.status.code().unwrap_or(9) <= 1,
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Deterministic bytes, different per `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] ^ seed)
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Fixture {
    /// A 64 MiB ext4 image, 1 KiB blocks (as the campaigns make), with one file.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        run(Command::new("mkfs.ext4")
            .args(["-F", "-q", "-b", "1024"])
            .arg(&image)
            .arg("64M"));
        let src = dir.path().join("src");
        std::fs::write(&src, pattern(FILE_BYTES, 0)).unwrap();
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} {NAME}", src.display()))
            .arg(&image));
        Fixture { dir, image }
    }

    fn debugfs(&self, commands: &str) -> Vec<u8> {
        let cmds = self.dir.path().join("cmds");
        std::fs::write(&cmds, commands).unwrap();
        run(Command::new("debugfs").arg("-w").arg("-f").arg(&cmds).arg(&self.image))
    }

    /// The file's first `count` physical blocks.
    fn file_blocks(&self, count: usize) -> Vec<u64> {
        let out = run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("blocks {NAME}"))
            .arg(&self.image));
        let blocks: Vec<u64> = String::from_utf8_lossy(&out)
            .split_whitespace()
            .map(|b| b.parse().unwrap())
            .collect();
        blocks[..count].to_vec()
    }

    /// Commits one transaction writing `data` over `blocks` (and revoking `revoke`).
    fn commit(&self, blocks: &[u64], data: &[u8], revoke: &[u64]) {
        let src = self.dir.path().join("jdata");
        std::fs::write(&src, data).unwrap();
        let list = |b: &[u64]| b.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        let mut jw = String::from("jw");
        if !blocks.is_empty() {
            jw += &format!(" -b {}", list(blocks));
        }
        if !revoke.is_empty() {
            jw += &format!(" -r {}", list(revoke));
        }
        if !blocks.is_empty() {
            jw += &format!(" {}", src.display());
        }
        self.debugfs(&format!("jo -c\n{jw}\njc\n"));
    }

    fn native(&self, names: &[&str]) -> Outcome {
        let image = Image(StdFile::open(&self.image).unwrap());
        recover_and_read(&image, IMAGE_BYTES, names).unwrap()
    }

    /// e2fsprogs on a copy: replay, then read.
    fn tools(&self, name: &str) -> File {
        let copy = self.dir.path().join("copy.img");
        std::fs::copy(&self.image, &copy).unwrap();
        tools_read(&copy, name)
    }

    fn assert_equals_tools(&self) -> Vec<u8> {
        let Outcome::Read(files) = self.native(&[NAME, "absent.dat"]) else {
            panic!("declined: {:?}", self.native(&[NAME]));
        };
        assert_eq!(files[1], File::Missing);
        assert_eq!(files[0], self.tools(NAME), "the reader and e2fsprogs disagree");
        match &files[0] {
            File::Bytes(b) => b.clone(),
            File::Missing => panic!("{NAME} missing"),
        }
    }

    fn journal_block_physical(&self, logical: u64) -> u64 {
        let out = run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("bmap <8> {logical}"))
            .arg(&self.image));
        String::from_utf8_lossy(&out).trim().parse().unwrap()
    }
}

fn tools_present() -> bool {
    Path::new("/sbin/debugfs").exists() || Path::new("/usr/sbin/debugfs").exists()
}

#[test]
fn clean_filesystem_reads_the_file() {
    assert!(tools_present(), "e2fsprogs missing: cargo xtask deps installs it");
    let fx = Fixture::new();
    assert_eq!(fx.assert_equals_tools(), pattern(FILE_BYTES, 0));
}

#[test]
fn committed_transactions_are_replayed_and_revoked_blocks_are_not() {
    let fx = Fixture::new();
    let blocks = fx.file_blocks(3);
    let mut new = pattern(3 * 1024, 7);
    // The second block starts with the journal magic: jbd2 escapes it.
    new[1024..1028].copy_from_slice(&0xC03B_3998u32.to_be_bytes());
    fx.commit(&blocks, &new, &[]);
    let read = fx.assert_equals_tools();
    assert_eq!(&read[..3 * 1024], &new[..], "the transaction was not replayed");

    // A later transaction revokes the middle block: the first copy of it
    // is not replayed, the others are.
    let fx = Fixture::new();
    fx.commit(&blocks, &new, &[]);
    fx.commit(&[], &[], &blocks[1..2]);
    let read = fx.assert_equals_tools();
    assert_eq!(&read[..1024], &new[..1024]);
    assert_eq!(
        &read[1024..2048],
        &pattern(FILE_BYTES, 0)[1024..2048],
        "a revoked block was replayed"
    );
    assert_eq!(&read[2048..3072], &new[2048..3072]);
}

#[test]
fn a_torn_journal_block_is_declined_not_guessed() {
    let fx = Fixture::new();
    let blocks = fx.file_blocks(2);
    fx.commit(&blocks, &pattern(2048, 3), &[]);
    // Journal block 1 is the descriptor, 2 the first data copy.
    let physical = fx.journal_block_physical(2);
    let image = std::fs::OpenOptions::new().write(true).open(&fx.image).unwrap();
    image.write_all_at(&[0x5A; 100], physical * 1024 + 512).unwrap();
    match fx.native(&[NAME]) {
        Outcome::Declined(reason) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("a torn journal copy was read: {other:?}"),
    }
}

#[test]
fn a_fragmented_file_is_read_through_its_extent_tree() {
    let fx = Fixture::new();
    // Punching every other block leaves ~150 extents: more than the inode's
    // four, so the tree grows an index level with checksummed leaf blocks.
    let blocks = FILE_BYTES / 1024;
    let punches: String = (0..blocks)
        .step_by(2)
        .map(|b| format!("punch {NAME} {b} {b}\n"))
        .collect();
    fx.debugfs(&punches);
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {NAME}"))
        .arg(&fx.image));
    let stat = String::from_utf8_lossy(&out);
    assert!(stat.contains("(ETB0)"), "no extent tree block: {stat}");
    let read = fx.assert_equals_tools();
    let original = pattern(FILE_BYTES, 0);
    assert!(read[..1024].iter().all(|&b| b == 0), "a punched block reads as zeros");
    assert_eq!(&read[1024..2048], &original[1024..2048]);
}

/// An image with bytes flipped (XOR) at chosen offsets, and a log of what
/// was read.
struct Mutated<'a> {
    image: &'a StdFile,
    flips: Vec<(u64, u8)>,
    reads: std::cell::RefCell<Vec<(u64, usize)>>,
}

impl ReadAt for Mutated<'_> {
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.image.read_exact_at(buf, offset_bytes)?;
        self.reads.borrow_mut().push((offset_bytes, buf.len()));
        for &(at, xor) in &self.flips {
            if (offset_bytes..offset_bytes + buf.len() as u64).contains(&at) {
                buf[(at - offset_bytes) as usize] ^= xor;
            }
        }
        Ok(())
    }
}

/// Corruption anywhere the reader looks (superblock, descriptors, inodes,
/// extent and directory blocks, the journal, the file): it never panics,
/// and whenever it reads rather than declines, e2fsprogs on the same
/// corrupted image reads the same bytes.
#[test]
fn corrupted_images_are_declined_or_read_as_e2fsprogs_reads_them() {
    use rand::{Rng, SeedableRng};
    const ROUNDS: usize = 1500;
    const COMPARED_WITH_TOOLS_MAX: usize = 100;
    let fx = Fixture::new();
    let blocks = fx.file_blocks(2);
    fx.commit(&blocks, &pattern(2048, 5), &[]);
    let image = StdFile::open(&fx.image).unwrap();
    let clean = Mutated {
        image: &image,
        flips: Vec::new(),
        reads: Default::default(),
    };
    assert!(matches!(
        recover_and_read(&clean, IMAGE_BYTES, &[NAME]).unwrap(),
        Outcome::Read(_)
    ));
    let reads = clean.reads.into_inner();
    let total: u64 = reads.iter().map(|r| r.1 as u64).sum();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let (mut declined, mut read, mut compared) = (0, 0, 0);
    for _ in 0..ROUNDS {
        // 1 to 3 flips, at bytes the clean read looked at: half of them in
        // a random read (metadata reads are many and small), half at a
        // random byte read (mostly the file's).
        let flips: Vec<(u64, u8)> = (0..rng.random_range(1..=3))
            .map(|_| {
                let at = match rng.random_bool(0.5) {
                    true => {
                        let (offset, len) = reads[rng.random_range(0..reads.len())];
                        offset + rng.random_range(0..len as u64)
                    }
                    false => {
                        let mut k = rng.random_range(0..total);
                        let &(offset, _) = reads
                            .iter()
                            .find(|r| match k < r.1 as u64 {
                                true => true,
                                false => {
                                    k -= r.1 as u64;
                                    false
                                }
                            })
                            .expect("k < total");
                        offset + k
                    }
                };
                (at, rng.random_range(1..=255u8))
            })
            .collect();
        let mutated = Mutated {
            image: &image,
            flips: flips.clone(),
            reads: Default::default(),
        };
        match recover_and_read(&mutated, IMAGE_BYTES, &[NAME]).unwrap() {
            Outcome::Declined(_) => declined += 1,
            Outcome::Read(files) => {
                read += 1;
                if compared < COMPARED_WITH_TOOLS_MAX {
                    compared += 1;
                    let copy = fx.dir.path().join("mutated.img");
                    std::fs::copy(&fx.image, &copy).unwrap();
                    let f = std::fs::OpenOptions::new().read(true).write(true).open(&copy).unwrap();
                    for &(at, xor) in &flips {
                        let mut b = [0u8];
                        f.read_exact_at(&mut b, at).unwrap();
                        f.write_all_at(&[b[0] ^ xor], at).unwrap();
                    }
                    drop(f);
                    let tools = tools_read(&copy, NAME);
                    assert_eq!(files[0], tools, "flips {flips:?}: the reader and e2fsprogs disagree");
                }
            }
        }
    }
    eprintln!("{ROUNDS} corrupted images: {declined} declined, {read} read, {compared} compared with e2fsprogs");
    // Not vacuous: both outcomes happen (checksums catch metadata, file
    // bytes carry no checksum and are read as they are).
    assert!(
        declined > ROUNDS / 10 && read > ROUNDS / 10,
        "declined {declined}, read {read}"
    );
    assert!(compared > 10);
}

/// e2fsprogs on an image file, in place: replay, then read.
fn tools_read(image: &Path, name: &str) -> File {
    run(Command::new("e2fsck").args(["-y", "-E", "journal_only"]).arg(image));
    let out = Command::new("debugfs")
        .arg("-c")
        .arg("-R")
        .arg(format!("cat /{name}"))
        .arg(image)
        .output()
        .unwrap();
    match String::from_utf8_lossy(&out.stderr).contains("not found") {
        true => File::Missing,
        false => File::Bytes(out.stdout),
    }
}
