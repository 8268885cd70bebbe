//! A `cargo xtask` task that starts guests leaves nothing running when it
//! is SIGKILLed: not its cargo, not the test binary or crashlab under it,
//! not a QEMU (`scripts/src/children.rs` says how).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A process: pid, start time (clock ticks since boot, so a reused pid is
/// not taken for the same process), and command.
#[derive(Debug, PartialEq)]
struct Process {
    pid: u32,
    start_ticks: u64,
    command: String,
}

/// (pid, ppid, start ticks) from /proc/PID/stat; the command name is in
/// parentheses and may hold spaces, so fields are counted after the last ')'.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split(' ').collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn descendants(root: u32) -> Vec<Process> {
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat(pid).map(|(ppid, start)| (pid, ppid, start)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            all.iter()
                .filter(|(_, ppid, _)| *ppid == parent)
                .map(|(pid, _, _)| *pid),
        );
        i += 1;
    }
    all.iter()
        .filter(|(pid, _, _)| *pid != root && found.contains(pid))
        .map(|&(pid, _, start_ticks)| Process {
            pid,
            start_ticks,
            command: std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default(),
        })
        .collect()
}

fn alive(p: &Process) -> bool {
    stat(p.pid).is_some_and(|(_, start)| start == p.start_ticks)
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_sigkilled_xtask_task_leaves_no_child_running() {
    // `xtask test` of one VM test: a task that starts cargo, test binaries,
    // crashlab and QEMU, all built already by the run this test is in.
    let mut task = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["test", "ext4_ms_sync_three_trials_have_no_violation"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let before = loop {
        let below = descendants(task.id());
        if below.iter().any(|p| p.command.starts_with("qemu-system")) {
            break below;
        }
        if task.try_wait().unwrap().is_some() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut task.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("the task ended before its guest started:\n{stderr}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no guest under the task in 300 s: {below:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(before.iter().any(|p| p.command.contains("crashlab run")), "{before:#?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(task.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    task.wait().unwrap();
    // The guard gives the group 10 s after SIGTERM before SIGKILL.
    let killed = Instant::now();
    while before.iter().any(alive) && killed.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<&Process> = before.iter().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "left running 20 s after the task's SIGKILL: {left:#?}");
}
