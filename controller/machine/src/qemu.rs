//! Everything that knows QEMU: its command line, its process, and the
//! accelerator check. Nothing outside this module and `vm` spawns it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::images::GuestImages;

pub const QEMU_BINARY: &str = "qemu-system-x86_64";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccelUsed {
    Kvm,
    Tcg,
}

/// A guest disk and what stands behind it on the host.
#[derive(Clone, Debug)]
pub enum Drive {
    /// A raw image file.
    Raw(PathBuf),
    /// A raw image behind QEMU's `blklogwrites` driver: every write and
    /// flush the guest issues is appended to `log` (dm-log-writes format).
    Logged { disk: PathBuf, log: PathBuf },
    /// An NBD export on a Unix socket (the controller's crash-state server).
    Nbd { socket: PathBuf, export: String },
}

/// One guest boot, as plain data.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub images: GuestImages,
    pub accel: AccelUsed,
    pub memory_mib: u32,
    pub kernel_args: Vec<String>,
    /// Virtio disks in order: /dev/vda, /dev/vdb, ...
    pub drives: Vec<Drive>,
    pub console_log: PathBuf,
    /// Unix socket the controller listens on; the guest's ttyS1 connects to it.
    pub channel_socket: PathBuf,
    /// QEMU's monitor (QMP) socket, which QEMU listens on: asked, when a
    /// guest falls silent, whether QEMU paused it on a host I/O error.
    /// Empty: no monitor. Set by `VmSession::start`, like the channel.
    pub qmp_socket: PathBuf,
    /// Where the guest's ttyS2 goes: the kernel's msync trace (tracefs), or
    /// nowhere.
    pub trace_log: Option<PathBuf>,
}

pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let mut append = vec![
        "console=ttyS0".to_string(),
        // A guest panic reboots at once, and -no-reboot turns that into an exit.
        "panic=-1".into(),
        "loglevel=4".into(),
    ];
    append.extend(spec.kernel_args.iter().cloned());
    let mut args: Vec<String> = vec!["-machine".into(), "pc".into()];
    match spec.accel {
        AccelUsed::Kvm => args.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
        AccelUsed::Tcg => args.extend(["-accel", "tcg"].map(String::from)),
    }
    args.extend([
        "-m".into(),
        spec.memory_mib.to_string(),
        "-kernel".into(),
        spec.images.kernel.display().to_string(),
        "-initrd".into(),
        spec.images.initramfs.display().to_string(),
        "-append".into(),
        append.join(" "),
        "-display".into(),
        "none".into(),
        "-nic".into(),
        "none".into(),
        "-no-reboot".into(),
        "-nodefaults".into(),
        "-serial".into(),
        format!("file:{}", spec.console_log.display()),
        "-chardev".into(),
        format!("socket,id=channel,path={}", spec.channel_socket.display()),
        "-serial".into(),
        "chardev:channel".into(),
    ]);
    if let Some(trace) = &spec.trace_log {
        args.extend(["-serial".into(), format!("file:{}", trace.display())]);
    }
    if !spec.qmp_socket.as_os_str().is_empty() {
        args.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", spec.qmp_socket.display()),
        ]);
    }
    for (i, drive) in spec.drives.iter().enumerate() {
        args.extend(drive_args(i, drive));
    }
    args
}

/// `-blockdev`/`-device` pairs; explicit devices keep the guest's disk
/// order equal to `spec.drives`' order.
fn drive_args(index: usize, drive: &Drive) -> Vec<String> {
    let node = format!("disk{index}");
    // cache.no-flush: the host never loses power in our models, so host-side
    // flushes buy nothing; the guest's flushes still reach blklogwrites,
    // which logs them before passing them down.
    let file_node = |name: &str, path: &Path| {
        format!(
            "driver=file,filename={},node-name={name},cache.no-flush=on",
            path.display()
        )
    };
    let mut args = Vec::new();
    match drive {
        Drive::Raw(path) => {
            args.push("-blockdev".to_string());
            args.push(format!(
                "driver=raw,node-name={node},file.driver=file,file.filename={},file.cache.no-flush=on",
                path.display()
            ));
        }
        Drive::Logged { disk, log } => {
            args.extend(["-blockdev".to_string(), file_node(&format!("{node}-data"), disk)]);
            args.extend(["-blockdev".to_string(), file_node(&format!("{node}-log"), log)]);
            // discard=unmap: without it QEMU drops the guest's discards
            // before the driver sees them, and the log would never show one.
            args.push("-blockdev".to_string());
            args.push(format!(
                "driver=blklogwrites,file={node}-data,log={node}-log,node-name={node},log-sector-size=512,\
                 log-append=off,discard=unmap"
            ));
        }
        Drive::Nbd { socket, export } => {
            args.push("-blockdev".to_string());
            args.push(format!(
                "driver=nbd,server.type=unix,server.path={},export={export},node-name={node}",
                socket.display()
            ));
        }
    }
    args.push("-device".to_string());
    args.push(match drive {
        // Errors from crashlab's NBD server (an injected write error, the
        // overlay's limit) go to the guest: QEMU's default for ENOSPC is to
        // pause the VM, which would look like a hung guest.
        Drive::Nbd { .. } => format!("virtio-blk-pci,drive={node},werror=report,rerror=report"),
        // A host file that cannot be written (a full disk under the results)
        // must never reach the guest as a disk error, which a verdict would
        // blame on the filesystem: QEMU pauses the guest instead, and the
        // controller asks QMP why a guest fell silent (`vm::host_io_error`).
        _ => format!("virtio-blk-pci,drive={node},werror=stop,rerror=stop"),
    });
    args
}

/// A running QEMU that is killed and reaped when dropped, whatever path the
/// controller leaves by (error, panic, Ctrl-C).
pub struct QemuProcess {
    child: Child,
    reaped: bool,
    /// The signal that ended QEMU, when one did that the controller did not send.
    exit_signal: Option<i32>,
}

impl QemuProcess {
    pub fn spawn(spec: &VmSpec, stderr_log: &Path) -> Result<QemuProcess> {
        let stderr = File::create(stderr_log).with_context(|| format!("cannot create {}", stderr_log.display()))?;
        let mut command = Command::new(QEMU_BINARY);
        command
            .args(qemu_args(spec))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: the terminal's Ctrl-C reaches only the
            // controller, which then kills QEMU itself and keeps the results.
            .process_group(0);
        // And it dies with the controller, even a SIGKILLed one.
        let child = crate::lifetime::spawn_tied(command)
            .with_context(|| format!("cannot start {QEMU_BINARY}: install it with `cargo xtask deps`"))?;
        Ok(QemuProcess {
            child,
            reaped: false,
            exit_signal: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if QEMU has exited (the guest powered off or panicked;
    /// -1 for a signal, which [`QemuProcess::exit_signal`] names).
    pub fn try_exit_code(&mut self) -> Result<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait()?;
        if let Some(status) = status {
            self.reaped = true;
            self.exit_signal = status.signal();
        }
        Ok(status.map(|s| s.code().unwrap_or(-1)))
    }

    pub fn has_exited(&self) -> bool {
        self.reaped
    }

    /// The signal QEMU died of, if it exited by one (never the controller's
    /// own SIGKILL: that path does not go through `try_exit_code`).
    pub fn exit_signal(&self) -> Option<i32> {
        self.exit_signal
    }

    /// SIGKILL, the crash: no chance for QEMU to flush or to tell the guest.
    pub fn kill_now(&mut self) {
        if !self.reaped {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// QEMU's run state by QMP (`query-status`): "running", "paused",
/// "io-error", ... Bounded: 2 s per read, 64 lines.
pub fn query_status(qmp_socket: &Path) -> Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::os::unix::net::UnixStream::connect(qmp_socket)
        .with_context(|| format!("cannot connect to QEMU's monitor {}", qmp_socket.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(std::time::Duration::from_secs(2)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.take(1 << 20));
    // The greeting, then one answer per command; events may come between.
    let mut answer = |command: &str| -> Result<serde_json::Value> {
        if !command.is_empty() {
            writer.write_all(command.as_bytes())?;
        }
        for _ in 0..64 {
            let mut line = String::new();
            anyhow::ensure!(reader.read_line(&mut line)? > 0, "QEMU's monitor closed");
            let value: serde_json::Value =
                serde_json::from_str(&line).context("QEMU's monitor sent a line that is not JSON")?;
            if value.get("QMP").is_some() || value.get("return").is_some() || value.get("error").is_some() {
                return Ok(value);
            }
        }
        anyhow::bail!("QEMU's monitor did not answer")
    };
    answer("")?;
    answer("{\"execute\":\"qmp_capabilities\"}\n")?;
    let status = answer("{\"execute\":\"query-status\"}\n")?;
    status["return"]["status"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("QEMU's monitor answered query-status with {status}"))
}

pub fn qemu_version() -> String {
    Command::new(QEMU_BINARY)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_no_network_no_display_and_both_serials() {
        let spec = VmSpec {
            images: GuestImages {
                kernel: "/k".into(),
                initramfs: "/i".into(),
                identity: Default::default(),
                modules_missing: vec![],
            },
            accel: AccelUsed::Tcg,
            memory_mib: 512,
            kernel_args: vec!["crashlab.role=check".into()],
            drives: vec![
                Drive::Raw("/d0".into()),
                Drive::Logged {
                    disk: "/d1".into(),
                    log: "/l1".into(),
                },
                Drive::Nbd {
                    socket: "/s".into(),
                    export: "state".into(),
                },
            ],
            console_log: "/c.log".into(),
            channel_socket: "/s.sock".into(),
            qmp_socket: "/q".into(),
            trace_log: Some("/t.log".into()),
        };
        let args = qemu_args(&spec);
        let joined = args.join(" ");
        assert!(joined.contains("-nic none"));
        assert!(joined.contains("-display none"));
        assert!(joined.contains("-serial file:/c.log"));
        assert!(joined.contains("-serial chardev:channel"));
        assert!(joined.contains("-serial file:/t.log"), "the trace goes to ttyS2");
        assert!(joined.contains("crashlab.role=check"));
        assert_eq!(args.iter().filter(|a| a.starts_with("virtio-blk-pci")).count(), 3);
        assert!(
            joined.find("/d0").unwrap() < joined.find("/d1").unwrap(),
            "drive order is vda, vdb"
        );
        assert!(joined.contains("driver=blklogwrites,file=disk1-data,log=disk1-log"));
        assert!(joined.contains("-qmp unix:/q,server=on,wait=off"));
        // Host files pause the guest on an error; the NBD disk reports them.
        assert!(joined.contains("drive=disk0,werror=stop,rerror=stop"), "{joined}");
        assert!(joined.contains("driver=nbd,server.type=unix,server.path=/s,export=state"));
    }
}
