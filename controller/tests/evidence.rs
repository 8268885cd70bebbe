//! Sealed evidence: a campaign whose kept files were changed afterwards is
//! refused by every command that reads them (exit 2, the file named), never
//! judged on other bytes; an untouched one verifies clean.
//!
//! One campaign of two power-loss trials (`barrier=0`: failing states, so
//! the captures are kept), run as two shards and merged, so that `merge`,
//! and the merged campaign's own seal, are under test too. Each damage is
//! done to a fresh copy of it.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::vm_harness;

const RUN: &[&str] = &[
    "--crash-model=power-loss",
    "--trials=2",
    "--crash-points=end",
    "--records=300",
    "--state-budget=40",
    "--checker=host",
    "--mount-opts=barrier=0",
    "--seed=5",
    "--keep-images",
];

fn crashlab(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let out = util::crashlab().args(args).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{args:?}: {text}");
    (out.status.code(), text)
}

fn copy_of(campaign: &Path, name: &str) -> PathBuf {
    let copy = campaign.parent().unwrap().join(name);
    let status = Command::new("cp").arg("-a").arg(campaign).arg(&copy).status().unwrap();
    assert!(status.success());
    copy
}

/// Flips 8 bits spread over the file's first 64 KiB (its whole length if
/// shorter), seeded.
fn flip_bits(path: &Path, seed: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let span = bytes.len().min(64 << 10) as u64;
    let mut x = seed;
    for _ in 0..8 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let at = ((x >> 16) % span) as usize;
        bytes[at] ^= 1 << ((x >> 8) % 8);
    }
    std::fs::write(path, bytes).unwrap();
}

/// The commands that read a kept trial's capture, on trial 0.
fn capture_readers(images: &Path) -> Vec<Vec<String>> {
    let images = images.display().to_string();
    let s = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        s(&[
            "replay-state",
            "--trial",
            "0",
            "--state",
            "1",
            "--checker",
            "host",
            "--campaign",
        ]),
        s(&["recheck", "--trial", "0", "--checker", "host", "--campaign"]),
        s(&[
            "minimise",
            "--trial",
            "0",
            "--state",
            "1",
            "--checker",
            "host",
            "--campaign",
        ]),
        s(&["compare", "--trial", "0", "--images-dir", &images, "--campaign"]),
    ]
}

fn refused(args: &[String], dir: &Path, file: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, text) = crashlab(&args, dir);
    assert_eq!(code, Some(2), "{args:?} on damaged {file}: {text}");
    assert!(text.contains(file), "{args:?} names {file}: {text}");
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn damaged_evidence_is_refused_by_every_command_that_reads_it() {
    let h = vm_harness("evidence");
    for shard in ["0/2", "1/2"] {
        let id = format!("shard{}", &shard[..1]);
        let out = h.run(&id, &[RUN, &[&format!("--shard={shard}")]].concat());
        assert!(out.status.code().is_some_and(|c| c <= 1), "shard {shard} ran");
    }
    let shards: Vec<PathBuf> = ["shard0", "shard1"].iter().map(|s| h.results.path().join(s)).collect();
    let campaign = h.results.path().join("merged");
    let out = util::crashlab()
        .arg("merge")
        .arg(&campaign)
        .args(&shards)
        .output()
        .unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "merged: {out:?}");

    // Untouched: everything holds, and the capture replays.
    let (code, text) = crashlab(&["verify"], &campaign);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("everything holds") && text.contains("2 trials"), "{text}");
    for args in [
        &[
            "replay-state",
            "--trial",
            "0",
            "--state",
            "1",
            "--checker",
            "host",
            "--campaign",
        ][..],
        &["recheck", "--trial", "1", "--checker", "host", "--campaign"],
    ] {
        let (code, text) = crashlab(args, &campaign);
        assert!(code.is_some_and(|c| c <= 1), "{args:?}: {text}");
    }

    // Each kept file of the capture: cut to a third, or 8 bits flipped.
    let trial0 = |dir: &Path, name: &str| dir.join("trials/0").join(name);
    for (n, name) in ["blocklog.bin", "base-disk.img", "workload.protocol.log"]
        .iter()
        .enumerate()
    {
        for (how, damage) in [("cut", 0u64), ("flipped", 1 + n as u64)] {
            let copy = copy_of(&campaign, &format!("{how}-{name}"));
            let path = trial0(&copy, name);
            match damage {
                0 => {
                    let len = std::fs::metadata(&path).unwrap().len();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(len / 3)
                        .unwrap();
                }
                seed => flip_bits(&path, seed),
            }
            let (code, text) = crashlab(&["verify"], &copy);
            assert_eq!(code, Some(1), "verify, {how} {name}: {text}");
            assert!(text.contains(&format!("trials/0/{name}: sealed as blake3:")), "{text}");
            for args in capture_readers(&h.images_dir) {
                refused(&args, &copy, name);
            }
        }
    }

    // Another trial's log or base image in trial 0's place.
    for name in ["blocklog.bin", "base-disk.img"] {
        let copy = copy_of(&campaign, &format!("swapped-{name}"));
        std::fs::copy(copy.join("trials/1").join(name), trial0(&copy, name)).unwrap();
        for args in capture_readers(&h.images_dir) {
            refused(&args, &copy, name);
        }
    }
    // A whole trial's seal and evidence from the other trial.
    let copy = copy_of(&campaign, "swapped-trial");
    std::fs::remove_dir_all(copy.join("trials/0")).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(copy.join("trials/1"))
        .arg(copy.join("trials/0"))
        .status()
        .unwrap();
    assert!(status.success());
    for args in capture_readers(&h.images_dir) {
        refused(&args, &copy, "seal.json");
    }

    // What report and resume read: the results files and the logs.
    for (name, file) in [
        ("trials.jsonl", "trials.jsonl"),
        ("console", "trials/1/workload.console.log"),
    ] {
        let copy = copy_of(&campaign, &format!("results-{name}"));
        flip_bits(&copy.join(file), 7);
        refused(&["report".into()], &copy, file);
        let (code, text) = crashlab(&["verify"], &copy);
        assert_eq!(code, Some(1), "{text}");
    }
    let copy = copy_of(&campaign, "resume");
    flip_bits(&copy.join("states.jsonl"), 9);
    refused(
        &["run".into(), "--quiet".into(), "--resume".into()],
        &copy,
        "states.jsonl",
    );

    // A shard damaged after it ran: merge refuses it.
    flip_bits(&shards[1].join("trials.jsonl"), 11);
    let out = util::crashlab()
        .arg("merge")
        .arg(h.results.path().join("merged-again"))
        .args(&shards)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("shard1/trials.jsonl"), "{text}");
}
