//! Nothing the controller starts outlives it, even when it is SIGKILLed
//! (no destructor runs then).
//!
//! - QEMU is started with a parent-death signal (SIGKILL). Linux sends it
//!   when the *thread* that forked the child ends, not the process, and
//!   guests are started from short-lived worker threads: so every tied
//!   child is forked by one spawner thread that lives as long as the
//!   process.
//! - Temporary directories carry an `owner` file (pid and start time of
//!   the controller that made them). Each `crashlab` invocation first
//!   removes the `crashlab-*` directories whose owner is gone
//!   ([`clean_stale`]), so a killed run leaves at most its own until the
//!   next one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex, OnceLock};

use anyhow::{Context, Result};

/// What every temporary directory's name starts with.
pub const TEMP_PREFIX: &str = "crashlab-";
const OWNER_FILE: &str = "owner";
/// Where temporary directories are made: the system's, and RAM for the
/// host checker's scratch images.
const SHM_DIR: &str = "/dev/shm";
/// A bound on the directories one cleanup looks at.
const CLEAN_SCAN_MAX: usize = 100_000;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `command` so that it is SIGKILLed when the controller dies.
pub fn spawn_tied(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("crashlab-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut command));
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

fn spawn_with_parent_death_signal(command: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl,
    // getppid, _exit) run in the child.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL)).map_err(std::io::Error::from)?;
            // The parent died before the prctl: it would never fire.
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn()
}

/// A temporary directory that [`clean_stale`] removes once its owner is
/// gone. `parent`: where (default: the system's temporary directory).
pub fn temp_dir(prefix: &str, parent: Option<&Path>) -> Result<tempfile::TempDir> {
    debug_assert!(prefix.starts_with(TEMP_PREFIX));
    use std::os::unix::fs::PermissionsExt;
    let builder = {
        let mut b = tempfile::Builder::new();
        // Private: the guest channel's and the NBD server's sockets live here.
        b.prefix(prefix).permissions(std::fs::Permissions::from_mode(0o700));
        b
    };
    let dir = match parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    }
    .with_context(|| format!("cannot create a temporary directory {prefix}* (disk full, or not writable?)"))?;
    let me = std::process::id();
    let owner = format!("{me} {}\n", start_time(me).unwrap_or(0));
    std::fs::write(dir.path().join(OWNER_FILE), owner)
        .with_context(|| format!("cannot write in {}", dir.path().display()))?;
    Ok(dir)
}

/// Removes the `crashlab-*` directories (in the system's temporary
/// directory and in `/dev/shm`) whose owner process is gone. Returns the
/// directories removed. Directories without an owner file are left alone.
pub fn clean_stale() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for parent in [std::env::temp_dir(), PathBuf::from(SHM_DIR)] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten().take(CLEAN_SCAN_MAX) {
            let path = entry.path();
            let ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX));
            if !ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
                continue;
            };
            if owner_alive(&owner) == Some(false) && std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

/// `None`: the owner file does not parse (left alone).
fn owner_alive(owner: &str) -> Option<bool> {
    let mut fields = owner.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    let started: u64 = fields.next()?.parse().ok()?;
    // A live process with another start time reused the pid.
    Some(start_time(pid).is_some_and(|now| now == started))
}

/// A process's start time (clock ticks after boot, `/proc/PID/stat` field
/// 22): with the pid, it names one process for the life of the machine.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let state = after_name.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None; // dead, not yet reaped
    }
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_alive_and_gone() {
        let me = std::process::id();
        let started = start_time(me).unwrap();
        assert_eq!(owner_alive(&format!("{me} {started}\n")), Some(true));
        // The same pid with another start time: a reused pid, so gone.
        assert_eq!(owner_alive(&format!("{me} {}\n", started + 1)), Some(false));
        assert_eq!(owner_alive("4194305 1\n"), Some(false), "no such pid");
        assert_eq!(owner_alive("garbage"), None);
    }

    /// Sockets (the guest channel, NBD) live in these: only the owner
    /// may enter.
    #[test]
    fn temporary_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("crashlab-test-mode-", None).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_dead_owners_directory_is_removed_a_live_ones_is_kept() {
        let live = temp_dir("crashlab-test-live-", None).unwrap();
        let dead = temp_dir("crashlab-test-dead-", None).unwrap();
        std::fs::write(dead.path().join(OWNER_FILE), "4194305 1\n").unwrap();
        let dead_path = dead.keep();
        let removed = clean_stale();
        assert!(removed.contains(&dead_path), "{removed:?}");
        assert!(!dead_path.exists());
        assert!(live.path().exists());
    }

    #[test]
    fn a_tied_child_outlives_the_thread_that_asked_for_it() {
        // The spawner outlives the asking thread: the child is not killed
        // when that thread ends, only with the process.
        let child = std::thread::spawn(|| {
            let mut c = Command::new("sleep");
            c.arg("30");
            spawn_tied(c).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut child = child;
        assert!(
            child.try_wait().unwrap().is_none(),
            "killed when the asking thread ended"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
