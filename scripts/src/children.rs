//! Children of a task that may start guests (crashlab, cargo test) die
//! with the task, however it ends: Ctrl-C, an error, or SIGKILL.
//!
//! Each such child runs in its own process group, so everything it starts
//! (test binaries, crashlab, which ties its QEMUs to itself) is in that
//! group. Beside it runs a guard, `sh` in a group of its own ignoring
//! INT/TERM/HUP, holding the read end of a pipe whose write end only this
//! process holds. When the task ends, by any path, the kernel closes that
//! end; the guard then sends the group SIGTERM (crashlab stops cleanly and
//! keeps its results, as on Ctrl-C; SIGINT would not do, as a shell
//! without job control starts background jobs with it ignored), and
//! SIGKILL after 10 s. (`kill -SIG -PGID`, no `--`: dash's kill has none.) A child that already
//! finished leaves an empty group, and the guard just exits. The terminal's
//! Ctrl-C reaches only the task (the children's group is not in the
//! foreground), which dies of it and so triggers the guard: the same
//! clean stop as before, in one place.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use anyhow::{Context, Result};

const GUARD_SCRIPT: &str = r#"trap '' INT TERM HUP
group=$1
cat >/dev/null
kill -TERM "-$group" 2>/dev/null || exit 0
i=0
while kill -0 "-$group" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then kill -KILL "-$group" 2>/dev/null; exit 0; fi
    sleep 0.1
done
"#;

/// The guard of one child's process group; dropping it (or this process
/// dying) makes the guard clear the group.
struct Guard {
    process: Child,
    pipe: Option<ChildStdin>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.pipe.take());
        let _ = self.process.wait();
    }
}

fn spawn_guarded(mut command: Command) -> Result<(Child, Guard)> {
    command.process_group(0);
    let child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg(GUARD_SCRIPT)
        .arg("xtask-guard")
        .arg(child.id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the guard of a child process group (sh)")?;
    let pipe = guard.stdin.take();
    // Nothing is ever written: only the pipe's end matters.
    if let Some(mut p) = pipe.as_ref() {
        let _ = p.flush();
    }
    Ok((child, Guard { process: guard, pipe }))
}

/// Runs a command to its end, guarded; its exit code (2 for a signal).
pub fn status(command: impl Into<Command>) -> Result<i32> {
    let (mut child, _guard) = spawn_guarded(command.into())?;
    Ok(child.wait()?.code().unwrap_or(2))
}

/// Runs a command to its end, guarded, with its stdout and stderr captured.
pub fn output(command: impl Into<Command>) -> Result<Output> {
    let mut command = command.into();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (child, _guard) = spawn_guarded(command)?;
    Ok(child.wait_with_output()?)
}

/// Runs a command, guarded, and returns its stdout (its stderr shows as
/// it comes); a non-zero exit is an error.
pub fn read(command: impl Into<Command>) -> Result<String> {
    let mut command = command.into();
    command.stdout(Stdio::piped());
    let what = format!("{command:?}");
    let (child, _guard) = spawn_guarded(command)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "{what} failed ({})", out.status);
    Ok(String::from_utf8(out.stdout)?.trim_end().to_string())
}
