//! Evidence sealed by digests (blake3): what a campaign judged, so that a
//! later command (replay-state, recheck, minimise, compare, merge, report,
//! resume, verify) judges the same bytes or refuses, naming the file.
//!
//! - `trials/<n>/seal.json` (`TrialSeal`): every file of the trial's
//!   evidence as it was when its line went into `trials.jsonl` (the
//!   block-write log and its entry count, the base image, the protocol,
//!   console and trace logs, a crashed disk); the line carries the digest
//!   of this file (`seal`), so a trial directory swapped for another's is
//!   caught too.
//! - `seal.json` (`CampaignSeal`): campaign.json, campaign.toml, the
//!   program's initramfs layer and binaries, the guest images used (the
//!   kernel's and initramfs's digests); at the end (and on an interrupt)
//!   the results files too (trials.jsonl, states.jsonl, summary.*).
//! - each power-loss state's line carries its `identity`: the digest of its
//!   plan entry (`blocklog::CrashState`). With the log sealed, it fixes the
//!   state's bytes; a state rebuilt from verified evidence must match it.
//!
//! Files written after a seal (a replayed state's image, minimise's
//! output, report.html, compare/) are not part of it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const SEAL_FILE: &str = "seal.json";
/// Bumped when a seal's meaning changes.
pub const SEAL_FORMAT: u32 = 1;
/// The results files sealed at a campaign's end, when they exist.
pub const RESULTS_FILES: &[&str] = &["trials.jsonl", "states.jsonl", "summary.json", "summary.txt"];

/// One file: its name (relative to the sealed directory), size and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSeal {
    pub name: String,
    pub bytes: u64,
    pub digest: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialSeal {
    pub seal_format: u32,
    pub trial: u64,
    pub files: Vec<FileSeal>,
    /// Power loss: entries of the block-write log, as the campaign parsed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_entries: Option<u64>,
}

/// The guest images a campaign ran, by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesSeal {
    pub dir: PathBuf,
    pub kernel: FileSeal,
    pub initramfs: FileSeal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignSeal {
    pub seal_format: u32,
    pub files: Vec<FileSeal>,
    pub images: Option<ImagesSeal>,
    /// A program under test: its binaries as the campaign read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub program: Vec<FileSeal>,
}

/// "blake3:<hex>" and the size of a file's bytes, read in 1 MiB blocks.
pub fn digest_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((bytes, format!("blake3:{}", hasher.finalize().to_hex())))
}

pub fn digest_bytes(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

/// The seal of `dir/name`.
pub fn seal_file(dir: &Path, name: &str) -> Result<FileSeal> {
    let path = dir.join(name);
    let (bytes, digest) = digest_file(&path).with_context(|| format!("cannot read {} to seal it", path.display()))?;
    Ok(FileSeal {
        name: name.to_string(),
        bytes,
        digest,
    })
}

/// A sealed file that is not as sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub path: PathBuf,
    pub expected: String,
    /// What is there now: a digest and size, or why it cannot be read.
    pub found: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: sealed as {}, found {}",
            self.path.display(),
            self.expected,
            self.found
        )
    }
}

fn describe(bytes: u64, digest: &str) -> String {
    format!("{digest} ({bytes} bytes)")
}

/// Checks one sealed file under `dir`.
pub fn check_file(dir: &Path, seal: &FileSeal) -> Option<Mismatch> {
    let path = dir.join(&seal.name);
    let found = match digest_file(&path) {
        Ok((bytes, digest)) if bytes == seal.bytes && digest == seal.digest => return None,
        Ok((bytes, digest)) => describe(bytes, &digest),
        Err(e) => format!("no readable file ({e})"),
    };
    Some(Mismatch {
        path,
        expected: describe(seal.bytes, &seal.digest),
        found,
    })
}

/// The error a command gives for evidence that is not as sealed: every
/// mismatch named, and what to do.
pub fn refusal(what: &str, mismatches: &[Mismatch]) -> anyhow::Error {
    let lines: Vec<String> = mismatches.iter().map(|m| format!("  {m}")).collect();
    anyhow::anyhow!(
        "{what}: the evidence is not what the campaign sealed, so it would be judged on other bytes:\n{}\n\
         restore the files from a copy of the campaign, or rerun the trial (its `rerun` command in trials.jsonl); \
         `crashlab verify` lists every problem",
        lines.join("\n")
    )
}

/// Seals every file of a trial's directory; returns the seal's own digest
/// (what the trial's line carries).
pub fn seal_trial(trial_dir: &Path, trial: u64, log_entries: Option<u64>) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(trial_dir)
        .with_context(|| format!("cannot read {}", trial_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != SEAL_FILE)
        .collect();
    names.sort();
    let files = names
        .iter()
        .map(|name| seal_file(trial_dir, name))
        .collect::<Result<Vec<_>>>()?;
    let seal = TrialSeal {
        seal_format: SEAL_FORMAT,
        trial,
        files,
        log_entries,
    };
    let text = serde_json::to_string_pretty(&seal)? + "\n";
    crate::durable::write_atomically(&trial_dir.join(SEAL_FILE), text.as_bytes())?;
    Ok(digest_bytes(text.as_bytes()))
}

/// A trial's seal, read and checked against the digest its line carries
/// (`expected_digest`, when known).
pub fn read_trial_seal(trial_dir: &Path, expected_digest: Option<&str>) -> Result<TrialSeal, Mismatch> {
    let path = trial_dir.join(SEAL_FILE);
    let text = std::fs::read(&path).map_err(|e| Mismatch {
        path: path.clone(),
        expected: expected_digest.unwrap_or("a trial seal").to_string(),
        found: format!("no readable file ({e})"),
    })?;
    let digest = digest_bytes(&text);
    if let Some(expected) = expected_digest.filter(|e| *e != digest) {
        return Err(Mismatch {
            path,
            expected: expected.to_string(),
            found: format!("{digest}: another trial's seal, or an edited one"),
        });
    }
    serde_json::from_slice(&text).map_err(|e| Mismatch {
        path,
        expected: "a trial seal".into(),
        found: format!("unreadable JSON ({e})"),
    })
}

/// The files of `seal` named in `only` (all when `None`) that are not as
/// sealed; a name asked for that the seal lacks is one too.
pub fn check_trial(trial_dir: &Path, seal: &TrialSeal, only: Option<&[&str]>) -> Vec<Mismatch> {
    let mut found: Vec<Mismatch> = seal
        .files
        .iter()
        .filter(|f| only.is_none_or(|names| names.contains(&f.name.as_str())))
        .filter_map(|f| check_file(trial_dir, f))
        .collect();
    for name in only.unwrap_or_default() {
        if !seal.files.iter().any(|f| f.name == *name) {
            found.push(Mismatch {
                path: trial_dir.join(name),
                expected: "not sealed (the campaign did not keep it)".into(),
                found: "a file the command would read".into(),
            });
        }
    }
    found
}

/// The campaign's seal, or `None` for results written before sealing.
pub fn read_campaign_seal(dir: &Path) -> Result<Option<CampaignSeal>> {
    let path = dir.join(SEAL_FILE);
    match std::fs::read(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn write_campaign_seal(dir: &Path, seal: &CampaignSeal) -> Result<()> {
    let text = serde_json::to_string_pretty(seal)? + "\n";
    crate::durable::write_atomically(&dir.join(SEAL_FILE), text.as_bytes())
}

impl CampaignSeal {
    /// At a campaign's start: its configuration files, the program's
    /// initramfs layer and binaries, the guest images.
    pub fn at_start(dir: &Path, images: &crate::images::GuestImages, program: &[PathBuf]) -> Result<CampaignSeal> {
        let mut files = Vec::new();
        for name in ["campaign.json", "campaign.toml", crate::program::CAMPAIGN_INITRD] {
            if dir.join(name).is_file() {
                files.push(seal_file(dir, name)?);
            }
        }
        let program = program
            .iter()
            .map(|p| {
                let mut seal = seal_file(p.parent().unwrap_or(Path::new("/")), &file_name(p))?;
                seal.name = p.display().to_string();
                Ok(seal)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CampaignSeal {
            seal_format: SEAL_FORMAT,
            files,
            images: Some(seal_images(images)?),
            program,
        })
    }

    /// The results files, sealed as they are now (end of the campaign).
    pub fn with_results(mut self, dir: &Path) -> Result<CampaignSeal> {
        self.files.retain(|f| !RESULTS_FILES.contains(&f.name.as_str()));
        for name in RESULTS_FILES {
            if dir.join(name).is_file() {
                self.files.push(seal_file(dir, name)?);
            }
        }
        Ok(self)
    }

    /// The sealed files of the campaign directory that are not as sealed
    /// (`only`: just these names, when sealed).
    pub fn check(&self, dir: &Path, only: Option<&[&str]>) -> Vec<Mismatch> {
        self.files
            .iter()
            .filter(|f| only.is_none_or(|names| names.contains(&f.name.as_str())))
            .filter_map(|f| check_file(dir, f))
            .collect()
    }

    /// The guest images in `images` against the sealed ones.
    pub fn check_images(&self, images: &crate::images::GuestImages) -> Vec<Mismatch> {
        let Some(sealed) = &self.images else {
            return Vec::new();
        };
        [(&images.kernel, &sealed.kernel), (&images.initramfs, &sealed.initramfs)]
            .into_iter()
            .filter_map(|(path, seal)| {
                let dir = path.parent().unwrap_or(Path::new("/"));
                check_file(
                    dir,
                    &FileSeal {
                        name: file_name(path),
                        ..seal.clone()
                    },
                )
            })
            .collect()
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn seal_images(images: &crate::images::GuestImages) -> Result<ImagesSeal> {
    let seal = |path: &Path| seal_file(path.parent().unwrap_or(Path::new("/")), &file_name(path));
    Ok(ImagesSeal {
        dir: images.kernel.parent().map(Path::to_path_buf).unwrap_or_default(),
        kernel: seal(&images.kernel)?,
        initramfs: seal(&images.initramfs)?,
    })
}

/// A power-loss state's identity: the digest of its plan entry.
pub fn state_identity(state: &blocklog::CrashState) -> String {
    digest_bytes(serde_json::to_string(state).expect("a state serialises").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blocklog.bin"), vec![7u8; 3000]).unwrap();
        std::fs::write(dir.path().join("workload.protocol.log"), "READY\nBEGIN 0 1 0\nACK 0\n").unwrap();
        dir
    }

    #[test]
    fn a_trial_sealed_checks_clean_and_every_change_is_named() {
        let dir = trial_dir();
        let digest = seal_trial(dir.path(), 3, Some(12)).unwrap();
        let seal = read_trial_seal(dir.path(), Some(&digest)).unwrap();
        assert_eq!(seal.files.len(), 2);
        assert_eq!(seal.log_entries, Some(12));
        assert!(check_trial(dir.path(), &seal, None).is_empty());

        // A bit flipped: same size, other digest.
        let mut log = std::fs::read(dir.path().join("blocklog.bin")).unwrap();
        log[100] ^= 0x10;
        std::fs::write(dir.path().join("blocklog.bin"), &log).unwrap();
        let found = check_trial(dir.path(), &seal, Some(&["blocklog.bin"]));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].to_string().contains("blocklog.bin: sealed as blake3:"),
            "{}",
            found[0]
        );
        assert!(found[0].found.contains("(3000 bytes)"), "{}", found[0]);
        // Only what is asked for is read.
        assert!(check_trial(dir.path(), &seal, Some(&["workload.protocol.log"])).is_empty());

        // Truncated, or gone.
        std::fs::write(dir.path().join("blocklog.bin"), &log[..1000]).unwrap();
        assert!(check_trial(dir.path(), &seal, None)[0].found.contains("(1000 bytes)"));
        std::fs::remove_file(dir.path().join("blocklog.bin")).unwrap();
        assert!(check_trial(dir.path(), &seal, None)[0]
            .found
            .contains("no readable file"));
        // A file the command needs that was never kept.
        let found = check_trial(dir.path(), &seal, Some(&["base-disk.img"]));
        assert!(found[0].expected.contains("not sealed"), "{:?}", found);

        let err = refusal("replay-state", &check_trial(dir.path(), &seal, None)).to_string();
        assert!(err.contains("blocklog.bin") && err.contains("crashlab verify"), "{err}");
    }

    #[test]
    fn another_trials_seal_is_caught_by_the_digest_its_line_carries() {
        let (a, b) = (trial_dir(), trial_dir());
        std::fs::write(b.path().join("workload.protocol.log"), "READY\n").unwrap();
        let digest_a = seal_trial(a.path(), 0, None).unwrap();
        let digest_b = seal_trial(b.path(), 1, None).unwrap();
        assert_ne!(digest_a, digest_b);
        let err = read_trial_seal(b.path(), Some(&digest_a)).unwrap_err();
        assert!(err.found.contains("another trial's seal"), "{err}");
        std::fs::write(a.path().join(SEAL_FILE), "{").unwrap();
        assert!(read_trial_seal(a.path(), None)
            .unwrap_err()
            .found
            .contains("unreadable JSON"));
    }

    #[test]
    fn a_states_identity_follows_its_plan_entry() {
        let state = blocklog::CrashState {
            kind: blocklog::StateKind::Subset,
            prefix_entries: 10,
            extra_writes: vec![11, 13],
            torn: None,
        };
        let same = state.clone();
        let other = blocklog::CrashState {
            extra_writes: vec![11],
            ..state.clone()
        };
        assert_eq!(state_identity(&state), state_identity(&same));
        assert_ne!(state_identity(&state), state_identity(&other));
        assert!(state_identity(&state).starts_with("blake3:"));
    }
}
