//! The relay on the host, with real processes: a program that follows the
//! workload protocol (a shell script here), ones that break it, and
//! crashlab's own record workload. The channel is a plain file; so is the
//! ack device when the capture (ack sectors) is on.

use std::path::Path;
use std::process::Command;

/// Runs the relay over `script` (a shell program) with `hold` acks as the
/// crash point; returns the channel's lines and the relay's exit code.
fn relay(script: &str, hold: Option<u64>) -> (Vec<String>, i32) {
    relay_with(script, hold, false)
}

/// With `capture`, the ack sectors go to a plain file (O_DIRECT works on
/// ext4 and xfs, where the tests' temporary directory lies).
fn relay_with(script: &str, hold: Option<u64>, capture: bool) -> (Vec<String>, i32) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (lines, code) = relay_in(dir.path(), &[], 3, script, hold, capture);
    (lines, code)
}

/// The relay in `dir` (flags `relay_flags`), `records` items asked for.
fn relay_in(
    dir: &Path,
    relay_flags: &[&str],
    records: u64,
    script: &str,
    hold: Option<u64>,
    capture: bool,
) -> (Vec<String>, i32) {
    let mut params = format!(
        "crashlab.mode=ms-sync crashlab.record_size=4096 crashlab.file_size=4194304 \
         crashlab.records={records} crashlab.seed=77 crashlab.pattern=records"
    );
    let ack_device = dir.join("ack-device");
    if capture {
        params += " crashlab.ack_offset=0";
        std::fs::write(&ack_device, vec![0u8; 1 << 20]).unwrap();
    }
    if let Some(n) = hold {
        params += &format!(" crashlab.hold_after_acks={n}");
    }
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, params).unwrap();
    let program = dir.join("program.sh");
    // The script notes its pid (its process group's): a held program is
    // stopped, and is killed here once the test is done with it.
    let pidfile = dir.join("pid");
    std::fs::write(
        &program,
        format!("#!/bin/sh\necho $$ > {}\n{script}", pidfile.display()),
    )
    .unwrap();
    Command::new("chmod").arg("755").arg(&program).status().unwrap();
    let channel = dir.join("channel");
    std::fs::write(&channel, "").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crashlab-workload"))
        .arg("relay")
        .args(relay_flags)
        .arg(dir)
        .arg(&channel)
        .arg(&program)
        .env("CRASHLAB_CMDLINE_PATH", &cmdline)
        .env("CRASHLAB_ACK_DEVICE", &ack_device)
        .spawn()
        .unwrap();
    // A held relay waits for the kill: give it time to say HOLD, then kill.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if read(&channel).last().is_some_and(|l| l.starts_with("HOLD")) {
            child.kill().unwrap();
            child.wait().unwrap();
            break -9;
        }
        assert!(std::time::Instant::now() < deadline, "the relay neither ended nor held");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // The whole group, stopped or not; a no-op if it is gone.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
    }
    (read(&channel), code)
}

fn read(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_program_that_keeps_the_protocol_is_relayed_with_its_environment() {
    let (lines, code) = relay(
        r#"[ "$CRASHLAB_PROTOCOL" = 1 ] && [ "$CRASHLAB_SEED" = 77 ] && [ "$CRASHLAB_ITEMS" = 3 ] || exit 9
[ "$(pwd)" = "$CRASHLAB_DATA_DIR" ] || exit 8
echo READY
echo "BEGIN 10 aa"
echo "NOTE writing"
echo "ACK 10"
echo "BEGIN 11 bb"
echo "ACK 11"
echo DONE
"#,
        None,
    );
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        lines,
        [
            "READY 0",
            "ITEM 0 10 aa",
            "NOTE writing",
            "ACK 0 0",
            "ITEM 1 11 bb",
            "ACK 1 1",
            "DONE 2"
        ]
    );
}

#[test]
fn the_crash_point_stops_the_program_and_passes_on_what_it_began_meanwhile() {
    // One write: every line is in the pipe before the relay reads the
    // first, as when the program runs ahead of the relay. Item 2 was begun
    // (and perhaps written) before the stop: it reaches the host as an
    // item in flight; its ACK and DONE came after the crash point.
    let (lines, code) = relay(
        "printf 'READY\\nBEGIN 1 aa\\nACK 1\\nBEGIN 2 bb\\nACK 2\\nDONE\\n'\nsleep 30\n",
        Some(1),
    );
    assert_eq!(code, -9);
    assert_eq!(lines, ["READY 0", "ITEM 0 1 aa", "ACK 0 0", "ITEM 1 2 bb", "HOLD 1"]);
}

#[test]
fn items_begun_while_an_ack_sector_was_written_are_passed_on_before_that_ack() {
    // All lines in the pipe at once: the program ran ahead of the relay, so
    // items 2 and 3 may be on the disk before ack sector 0 is. A state
    // without that sector cuts the host's log at ACK 0: their ITEMs must
    // come before it, or their data would be taken for foreign.
    let (lines, code) = relay_with(
        "printf 'READY\nBEGIN 1 aa\nACK 1\nBEGIN 2 bb\nACK 2\nBEGIN 3 cc\nACK 3\nDONE\n'\n",
        None,
        true,
    );
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        lines,
        [
            "READY 0",
            "ITEM 0 1 aa",
            "ITEM 1 2 bb",
            "ITEM 2 3 cc",
            "ACK 0 0",
            "ACK 1 1",
            "ACK 2 2",
            "DONE 3"
        ]
    );
}

#[test]
fn a_broken_line_a_crash_or_a_missing_done_ends_the_run_with_err() {
    let (lines, code) = relay("echo READY\necho 'ACK 4'\nsleep 30\n", None);
    assert_eq!(code, 1);
    assert_eq!(lines.last().unwrap(), "ERR program-protocol-line-2 71");
    let (lines, _) = relay("echo READY\nexit 3\n", None);
    assert_eq!(lines.last().unwrap(), "ERR program-exit-status 3");
    let (lines, _) = relay("echo READY\nkill -SEGV $$\n", None);
    assert_eq!(lines.last().unwrap(), "ERR program-killed-by-signal 11");
    let (lines, _) = relay("echo READY\n", None);
    assert_eq!(lines.last().unwrap(), "ERR program-exited-without-done 0");
    let (lines, code) = relay("", None);
    assert_eq!(
        (lines.last().unwrap().as_str(), code),
        ("ERR program-exited-without-done 0", 1)
    );
}

/// crashlab's record workload, run by the relay as in the guest (`/init`):
/// a record per item, its slot as the key, its msync calls as `EVENT`s.
fn record_workload(dir: &Path, records: u64, hold: Option<u64>) -> (Vec<String>, i32) {
    let script = format!(
        "exec {} records {} {}\n",
        env!("CARGO_BIN_EXE_crashlab-workload"),
        dir.display(),
        dir.join("cmdline").display()
    );
    relay_in(dir, &["--record-events"], records, &script, hold, true)
}

#[test]
fn the_record_workload_is_one_more_program_under_the_relay() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (lines, code) = record_workload(dir.path(), 20, None);
    assert_eq!(code, 0, "{lines:?}");
    let log = record::protocol::parse_log(&(lines.join("\n") + "\n")).unwrap();
    let acks: Vec<(u64, u64)> = log
        .events
        .iter()
        .filter_map(|e| match e {
            record::Event::Ack { seq, slot } => Some((*seq, *slot)),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 20, "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("MSYNC ")), "{lines:?}");
    assert_eq!(lines.last().unwrap(), "DONE 20");
    // Every ack is in the ack area, where the host's capture looks for it.
    let area = std::fs::read(dir.path().join("ack-device")).unwrap();
    let sector = |index: u64| {
        let at = record::layout::ack::sector_offset_bytes(index) as usize;
        record::layout::ack::decode(&area[at..at + record::layout::ack::ACK_SIZE_BYTES])
    };
    for (seq, slot) in acks {
        let found = sector(seq).unwrap_or_else(|| panic!("no ack sector for record {seq}"));
        assert_eq!((found.seq, found.slot, found.seed), (seq, slot, 77));
    }
    let ready = sector(record::layout::ack::READY_MARKER_INDEX).expect("the ready marker");
    assert_eq!(ready.seed, 77);
}

#[test]
fn the_record_workload_waits_for_the_reply_so_the_crash_point_is_exact() {
    // The workload waits after each ACK until the relay has placed it: at
    // the crash point it never gets the reply, so no record is begun after
    // the held ack.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (lines, code) = record_workload(dir.path(), 50, Some(7));
    assert_eq!(code, -9, "{lines:?}");
    assert_eq!(lines.last().unwrap(), "HOLD 7");
    let last_ack = lines.iter().rposition(|l| l.starts_with("ACK ")).unwrap();
    assert_eq!(lines[last_ack], "ACK 6 6");
    assert_eq!(lines.iter().filter(|l| l.starts_with("BEGIN ")).count(), 7, "{lines:?}");
}
