//! The bodies of crashlab's fuzz targets, as plain functions over bytes.
//!
//! Each one feeds input crashlab does not control (a guest's disk traffic
//! and channel lines, an image after a crash, a hand-edited results file,
//! a kernel command line) to the parser that reads it, and asserts what
//! must hold whatever the bytes: no panic, no hang, every output within
//! its bounds. `fuzz/` wraps each in a libFuzzer target (`cargo xtask
//! fuzz`, nightly); `tests/corpus.rs` runs them on stable, in CI, over the
//! seeds, every input that once failed (`fuzz/regressions/`) and seeded
//! mutations of both.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// A fuzz target: its name (the directory of its seeds and regressions),
/// its body, and the largest input it takes (libFuzzer's `-max_len`).
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub max_len_bytes: usize,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "blocklog",
        run: blocklog,
        max_len_bytes: 1 << 20,
    },
    Target {
        name: "protocol",
        run: protocol,
        max_len_bytes: 64 << 10,
    },
    Target {
        name: "ext4_image",
        run: ext4_image,
        max_len_bytes: 2 << 20,
    },
    Target {
        name: "campaign_json",
        run: campaign_json,
        max_len_bytes: 16 << 10,
    },
    Target {
        name: "nbd_session",
        run: nbd_session,
        max_len_bytes: 64 << 10,
    },
    Target {
        name: "kernel_cmdline",
        run: kernel_cmdline,
        max_len_bytes: 4 << 10,
    },
    Target {
        name: "results_jsonl",
        run: results_jsonl,
        max_len_bytes: 64 << 10,
    },
    Target {
        name: "msync_trace",
        run: msync_trace,
        max_len_bytes: 64 << 10,
    },
    Target {
        name: "evidence",
        run: evidence,
        max_len_bytes: 256 << 10,
    },
    Target {
        name: "compare_table",
        run: compare_table,
        max_len_bytes: 64 << 10,
    },
    Target {
        name: "elf",
        run: elf,
        max_len_bytes: 1 << 20,
    },
];

/// The block-write log as the guest's disk traffic wrote it: parse, plan
/// states, and turn each into overlay extents inside the device.
pub fn blocklog(data: &[u8]) {
    // The logged disk: 64 MiB of filesystem and the ack area, as campaigns make.
    const DEVICE_BYTES: u64 = 128 << 20;
    let Ok(log) = blocklog::parse_log(data, DEVICE_BYTES) else {
        return;
    };
    let options = blocklog::PlanOptions {
        seed: data.len() as u64,
        budget: 16,
        torn: true,
        tear_unit: blocklog::TearUnit::Sector,
        ignored_sectors: 1024..2048,
    };
    for state in blocklog::plan_states(&log, &options) {
        let position = blocklog::crash_position(&log, &state);
        assert!(position <= log.entries.len() as u64);
        for e in &blocklog::overlay_extents(&log, &state) {
            assert!(e.device_offset_bytes + e.len_bytes <= DEVICE_BYTES);
        }
    }
}

/// The guest channel's line protocol: whatever the guest sends, parsing
/// gives events or an error; and a program's and its checker's lines
/// (the workload protocol), whose parsed form prints back as itself.
pub fn protocol(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = record::Event::parse(line);
        if let Ok(parsed) = record::items::ProgramLine::parse(line) {
            assert_eq!(record::items::ProgramLine::parse(&parsed.to_string()), Ok(parsed));
        }
        if let Ok(parsed) = record::items::CheckerLine::parse(line) {
            assert_eq!(record::items::CheckerLine::parse(&parsed.to_string()), Ok(parsed));
        }
    }
    if let Ok(log) = record::protocol::parse_log(&text) {
        let _ = cuts_answer_as_rebuilds(&log, data);
    }
    let report = record::items::CheckerReport::from_output(&text, 0);
    assert!(report.items.len() <= record::items::CHECKER_ITEMS_MAX);
}

/// A protocol log the whole-run timeline accepts: every cut of it (a few,
/// drawn from the input's bytes) answers as the history rebuilt from the
/// events the cut keeps, which must be accepted too (a cut keeps each
/// `ACK`'s `BEGIN`, so it cannot break a rule the whole log keeps).
/// Returns the cuts checked (none when the timeline refused the log).
pub fn cuts_answer_as_rebuilds(log: &record::ProtocolLog, data: &[u8]) -> usize {
    const SLOTS_MAX: u64 = 1 << 12;
    const RECORDS_MAX: u64 = 1 << 12;
    let writers = u32::from(data.first().copied().unwrap_or(0) % 3) + 1;
    // The log's own READY and seqs, within bounds, so that the seeds'
    // runs are accepted and cut.
    let slots = log.events.iter().find_map(|e| match e {
        record::Event::Ready { slots } => Some(*slots),
        _ => None,
    });
    let geometry = record::Geometry {
        files: 1,
        slots_per_file: slots.filter(|s| (1..=SLOTS_MAX).contains(s)).unwrap_or(8),
        writers,
        log_slots: 0,
        initial_size_bytes: 4096,
        growth_step_bytes: 0,
    };
    let records_max = log
        .events
        .iter()
        .filter_map(|e| match e {
            record::Event::Begin { seq, .. } => Some(seq.saturating_add(1)),
            _ => None,
        })
        .max()
        .unwrap_or(1)
        .min(RECORDS_MAX);
    let Ok(whole) = verifier::Timeline::build(log, None, &geometry, records_max) else {
        return 0;
    };
    let events = log.events.len();
    let mut checked = 0;
    for (k, chunk) in data.chunks(4).take(8).enumerate() {
        checked += 1;
        let pick = |i: usize| chunk.get(i).map(|&b| usize::from(b) * events / 255);
        let cut = verifier::Cut {
            ready_given: k % 2 == 0,
            first_ack_not_given: (0..writers as usize).map(|w| pick(w).filter(|&i| i < events)).collect(),
        };
        let mask = cut.mask(log);
        let rebuilt = verifier::Timeline::build(log, Some(&mask), &geometry, records_max)
            .expect("a cut of an accepted log is accepted");
        let (at_cut, all) = (whole.at(&cut), rebuilt.at(&verifier::Cut::everything(writers)));
        assert_eq!(
            (at_cut.ready, at_cut.begun, at_cut.ack_count),
            (all.ready, all.begun, all.ack_count)
        );
        assert_eq!(at_cut.msyncs, all.msyncs);
        for slot in 0..geometry.total_slots() {
            assert_eq!(at_cut.versions_in(slot), all.versions_in(slot));
        }
        for seq in 0..records_max {
            assert_eq!(at_cut.is_acked(seq), all.is_acked(seq));
            assert_eq!(at_cut.slot_of(seq), all.slot_of(seq));
        }
    }
    checked
}

/// crashlab-ext4 over an untrusted image: the input is a 2 MiB image
/// (zero-padded), so seeds made by mke2fs are whole filesystems.
pub fn ext4_image(data: &[u8]) {
    const IMAGE_BYTES: usize = 2 << 20;
    struct Image(Vec<u8>);
    impl ext4::ReadAt for Image {
        fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let start = usize::try_from(offset_bytes).map_err(|_| std::io::ErrorKind::InvalidInput)?;
            let end = start.checked_add(buf.len()).ok_or(std::io::ErrorKind::InvalidInput)?;
            let src = self.0.get(start..end).ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }
    let mut bytes = data.to_vec();
    bytes.resize(IMAGE_BYTES, 0);
    let image = Image(bytes);
    let _ = ext4::recover_and_read(&image, IMAGE_BYTES as u64, &["crashlab.dat", "crashlab-1.dat"]);
}

/// A campaign's configuration read back from `campaign.json` (hand-edited
/// or corrupt): a configuration that validates yields workload parameters
/// that validate too.
pub fn campaign_json(data: &[u8]) {
    let Ok(config) = serde_json::from_slice::<config::CampaignConfig>(data) else {
        return;
    };
    if config.validate().is_ok() {
        let params = config.workload_params(0, None, Some(config.ack_area_offset_bytes()));
        assert!(
            params.validate().is_ok(),
            "a valid configuration gave invalid workload parameters"
        );
    }
}

/// crashlab-nbd serving one client whose bytes are the input (the guest is
/// untrusted): handshake, options, requests, in any order or garbage. The
/// server answers or hangs up.
pub fn nbd_session(data: &[u8]) {
    const DISK_BYTES: u64 = 1 << 20;
    struct Zeros;
    impl nbd::DiskView for Zeros {
        fn size_bytes(&self) -> u64 {
            DISK_BYTES
        }
        fn read_at(&self, _offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
    }
    let dir = tempfile::tempdir().expect("a temp dir for the socket");
    let socket = dir.path().join("nbd.sock");
    let limits = nbd::NbdLimits {
        overlay_max_bytes: 1 << 20,
        request_max_bytes: 1 << 16,
    };
    let (server, _handle) =
        nbd::NbdServer::start(&socket, "crashlab", Arc::new(Zeros), limits).expect("the NBD server starts");
    let mut client = UnixStream::connect(&socket).expect("the NBD server accepts");
    // A server that neither answers nor hangs up within this is a hang.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    // The server may hang up mid-input: a write error then is expected.
    let _ = client.write_all(data);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    if let Err(e) = client.read_to_end(&mut sink) {
        assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the NBD server neither answered nor hung up within 5 s"
        );
    }
    server.stop().expect("the NBD server stops");
}

/// The workload's parameters from the guest kernel's command line: parsing
/// gives parameters or an error; parameters that validate survive a round
/// trip through `to_kernel_args`.
pub fn kernel_cmdline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(params) = record::WorkloadParams::from_kernel_cmdline(&text) else {
        return;
    };
    if params.validate().is_ok() {
        let again = record::WorkloadParams::from_kernel_cmdline(&params.to_kernel_args().join(" "))
            .expect("parameters that validate give a command line that parses");
        assert_eq!(again, params);
    }
}

/// A campaign's results files as a killed run, a reboot or a hand edit
/// left them, read back by `crashlab run --resume`. The input: one byte
/// (bit 0: power loss; the rest: the campaign's trial count), then
/// `trials.jsonl`, a NUL, `states.jsonl`. A resume point that is accepted
/// names each trial once, inside the campaign, keeps only their state
/// lines, and reads back as itself (resuming twice changes nothing).
pub fn results_jsonl(data: &[u8]) {
    use campaign::resume_point;
    use config::CrashModel;
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let model = match head & 1 {
        1 => CrashModel::PowerLoss,
        _ => CrashModel::KernelCrash,
    };
    let trials_count = u64::from(head >> 1);
    let (trials, states) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[..0]),
    };
    let states = (model == CrashModel::PowerLoss).then_some(states);
    let Ok(point) = resume_point(trials, states, model, trials_count) else {
        return;
    };
    let ids: Vec<u64> = point.finished.iter().map(|(t, _)| *t).collect();
    for (i, t) in ids.iter().enumerate() {
        assert!(*t < trials_count, "trial {t} outside {trials_count}");
        assert!(!ids[..i].contains(t), "trial {t} kept twice");
    }
    if let Some(kept) = &point.states_jsonl {
        for line in kept.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a kept state line parses");
            assert!(v["trial"].as_u64().is_some_and(|t| ids.contains(&t)), "{line}");
        }
    }
    let again = resume_point(
        point.trials_jsonl.as_bytes(),
        point.states_jsonl.as_deref().map(str::as_bytes),
        model,
        trials_count,
    )
    .expect("a resume point reads back");
    assert_eq!(again.trials_jsonl, point.trials_jsonl);
    assert_eq!(again.states_jsonl, point.states_jsonl);
}

/// The guest kernel's msync trace (tracefs, ttyS2), which a guest could
/// fill with anything: parsing and summarising never fail, and the summary
/// is bounded.
pub fn msync_trace(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let calls = models::trace::parse(&text);
    assert!(calls.len() <= text.lines().count());
    let summary = models::trace::summarize(&calls);
    assert!(summary.last_calls.len() <= models::trace::LAST_CALLS_KEPT);
    assert!(summary.failed_calls + summary.unreturned_calls <= summary.calls);
}

/// A results directory's seals and lines as a damaged or edited copy may
/// hold them (parts split at NUL: the campaign's seal.json, trials.jsonl,
/// states.jsonl, trial 0's seal.json), under a real campaign.json:
/// `crashlab verify` names problems and never panics, and an untouched
/// input is one it can read.
pub fn evidence(data: &[u8]) {
    const CAMPAIGN_JSON: &str =
        include_str!("../../../controller/tests/fixtures/results/power-loss-barrier0/campaign.json");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut parts = data.splitn(4, |&b| b == 0);
    let mut write = |name: &str| {
        let bytes = parts.next().unwrap_or_default();
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("under the directory")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    };
    for name in ["seal.json", "trials.jsonl", "states.jsonl", "trials/0/seal.json"] {
        write(name);
    }
    std::fs::write(dir.path().join("campaign.json"), CAMPAIGN_JSON).expect("write");
    let verification = tools::verify::verify(dir.path()).expect("a campaign directory verifies or names problems");
    assert!(verification.campaigns.len() == 1);
    let _ = tools::verify::check_for_reading(dir.path());
    let _ = verification.render();
}

/// `crashlab compare`'s comparison.json, edited or damaged: read back, its
/// table renders whatever it holds.
pub fn compare_table(data: &[u8]) {
    let Ok(comparison) = serde_json::from_slice::<tools::compare::Comparison>(data) else {
        return;
    };
    let table = tools::compare::render(&comparison, std::path::Path::new("/results"));
    assert!(table.lines().count() >= comparison.differences.len().min(tools::compare::DIFFERENCES_KEPT_MAX));
}

/// A user's program or checker, or a library it names, as the ELF reader
/// of dynamic programs reads it: facts or a reason, within bounds.
pub fn elf(data: &[u8]) {
    let Ok(deps) = machine::elf::read(data) else {
        return;
    };
    let names = deps.needed.len() + deps.rpath.len() + deps.runpath.len();
    assert!(names <= machine::elf::DYNAMIC_ENTRIES_MAX * 64, "{names} names");
    assert!(deps.needed.iter().all(|n| n.len() < 4096 && !n.contains('\0')));
    assert!(
        !deps.needed.is_empty() <= deps.dynamic,
        "libraries named outside a dynamic section"
    );
}
