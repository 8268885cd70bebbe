//! The NBD server against real clients: QEMU's own NBD client (through
//! `qemu-io`, the same code a checker VM uses) and a raw socket client that
//! sends what QEMU never would (bad magic, oversize requests, old-style
//! EXPORT_NAME).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nbd::{FileView, NbdHandle, NbdLimits, NbdServer};

const DISK_BYTES: u64 = 1 << 20;

fn filled_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![byte; DISK_BYTES as usize]).unwrap();
    path
}

fn file_view(path: &Path) -> Arc<FileView> {
    Arc::new(FileView::open(path).unwrap())
}

struct QemuIo {
    success: bool,
    output: String,
}

/// Runs `qemu-io` with one `-c` per command against the server's socket.
/// `discard=unmap` because qemu-io otherwise drops discards before they
/// reach the NBD client.
fn qemu_io(socket: &Path, commands: &[&str]) -> QemuIo {
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},export=state,discard=unmap",
        socket.display()
    );
    let mut cmd = Command::new("qemu-io");
    cmd.arg("--image-opts").arg(opts);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = cmd.output().expect("run qemu-io (installed with QEMU)");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    QemuIo {
        success: out.status.success(),
        output,
    }
}

/// qemu-io can exit 0 after a failed pattern check, so the output is checked
/// too: no failure message, and one completion line per command.
fn assert_all_ok(run: &QemuIo, expected_lines: &[&str]) {
    assert!(run.success, "qemu-io failed:\n{}", run.output);
    assert!(!run.output.contains("Pattern verification failed"), "{}", run.output);
    assert!(!run.output.to_lowercase().contains("error"), "{}", run.output);
    for line in expected_lines {
        assert!(
            run.output.lines().any(|l| l == *line),
            "missing {line:?} in:\n{}",
            run.output
        );
    }
}

fn start(dir: &Path, base: &Path, limits: NbdLimits) -> (NbdServer, NbdHandle, PathBuf) {
    let socket = dir.join("nbd.sock");
    let (server, handle) = NbdServer::start(&socket, "state", file_view(base), limits).unwrap();
    (server, handle, socket)
}

#[test]
fn qemu_client_reads_writes_and_sees_view_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let base_a = filled_file(dir.path(), "a.img", 0xab);
    let base_b = filled_file(dir.path(), "b.img", 0xcd);
    let (server, handle, socket) = start(dir.path(), &base_a, NbdLimits::default());

    let run = qemu_io(
        &socket,
        &[
            "read -P 0xab 0 4096",
            "write -P 0x11 512 1024",
            "read -P 0x11 512 1024",
            "read -P 0xab 2048 1024",
            // Unaligned on both ends, straddling the earlier write's end (1536).
            "write -P 0x22 1000 333",
            "read -P 0x11 512 488",
            "read -P 0x22 1000 333",
            "read -P 0x11 1333 203",
            "read -P 0xab 1536 512",
            "write -z 8192 4096",
            "read -P 0 8192 4096",
            "write -z -u 20000 100",
            "read -P 0 20000 100",
            "read -P 0xab 20100 412",
            "flush",
            "discard 65536 65536",
            "read -P 0xab 65536 65536",
        ],
    );
    eprintln!("handshake with qemu-io: {:#?}", handle.handshake_log());
    eprintln!("first run output:\n{}", run.output);
    assert_all_ok(
        &run,
        &[
            "read 4096/4096 bytes at offset 0",
            "wrote 1024/1024 bytes at offset 512",
            "wrote 333/333 bytes at offset 1000",
            "read 333/333 bytes at offset 1000",
            "wrote 4096/4096 bytes at offset 8192",
            "read 4096/4096 bytes at offset 8192",
            "discard 65536/65536 bytes at offset 65536",
            "read 65536/65536 bytes at offset 65536",
        ],
    );
    let stats = handle.stats();
    eprintln!("stats after first run: {stats:?}");
    assert_eq!(stats.writes, 2, "{stats:?}");
    // Exact: QEMU passed the unaligned write through (we advertise minimum
    // block size 1) rather than doing its own read-modify-write.
    assert_eq!(stats.bytes_written, 1024 + 333, "{stats:?}");
    assert_eq!(stats.write_zeroes, 2, "{stats:?}");
    assert_eq!(stats.bytes_zeroed, 4096 + 100, "{stats:?}");
    assert!(stats.flushes >= 1, "{stats:?}");
    assert_eq!(stats.trims, 1, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    // 512..1536 and 1000..1333 -> sectors 1, 2; 8192..12288 -> 8 sectors;
    // 20000..20100 -> sector 39.
    assert_eq!(handle.overlay_bytes(), (2 + 8 + 1) * 512);
    assert_eq!(
        std::fs::read(&base_a).unwrap(),
        vec![0xab; DISK_BYTES as usize],
        "the base must stay untouched"
    );

    let log = handle.handshake_log();
    assert!(log.iter().any(|e| e.starts_with("GO \"state\"")), "{log:#?}");

    handle.set_view(file_view(&base_b));
    assert_eq!(handle.overlay_bytes(), 0);
    let run = qemu_io(
        &socket,
        &[
            "read -P 0xcd 0 4096",
            "read -P 0xcd 8192 4096",
            "read -P 0xcd 20000 100",
        ],
    );
    assert_all_ok(
        &run,
        &[
            "read 4096/4096 bytes at offset 0",
            "read 4096/4096 bytes at offset 8192",
        ],
    );
    assert_eq!(handle.stats().connections, 2);

    // The checks above can fail: old content is reported as a mismatch.
    let run = qemu_io(&socket, &["read -P 0x11 512 1024"]);
    assert!(run.output.contains("Pattern verification failed"), "{}", run.output);

    server.stop().unwrap();
    assert!(!socket.exists(), "stop removes the socket file");
    assert_eq!(handle.last_error(), None);
}

#[test]
fn writes_beyond_the_overlay_limit_fail_with_enospc() {
    let dir = tempfile::tempdir().unwrap();
    let base = filled_file(dir.path(), "a.img", 0xab);
    let limits = NbdLimits {
        overlay_max_bytes: 8192,
        request_max_bytes: 32 << 20,
    };
    let (server, handle, socket) = start(dir.path(), &base, limits);
    let run = qemu_io(
        &socket,
        &[
            "write -P 0x11 0 8192",
            "write -P 0x22 8192 512",
            "read -P 0x11 0 8192",
            "read -P 0xab 8192 512",
        ],
    );
    eprintln!("{}", run.output);
    assert!(run.output.contains("No space left on device"), "{}", run.output);
    assert!(
        run.output.lines().any(|l| l == "read 8192/8192 bytes at offset 0"),
        "{}",
        run.output
    );
    assert!(
        run.output.lines().any(|l| l == "read 512/512 bytes at offset 8192"),
        "{}",
        run.output
    );
    assert!(!run.output.contains("Pattern verification failed"), "{}", run.output);
    let stats = handle.stats();
    assert_eq!((stats.enospc_errors, handle.overlay_bytes()), (1, 8192), "{stats:?}");
    server.stop().unwrap();
}

// ---------------------------------------------------------------------------
// A raw client, for what QEMU never sends.

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

struct Raw(UnixStream);

impl Raw {
    /// Connects and does the greeting with NO_ZEROES.
    fn connect(socket: &Path) -> Raw {
        let mut raw = Raw(UnixStream::connect(socket).unwrap());
        raw.0
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let greeting = raw.read_n(18);
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(u64::from_be_bytes(greeting[8..16].try_into().unwrap()), IHAVEOPT);
        assert_eq!(u16::from_be_bytes([greeting[16], greeting[17]]), 3);
        raw.0.write_all(&3u32.to_be_bytes()).unwrap();
        raw
    }

    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.0.read_exact(&mut buf).unwrap();
        buf
    }

    fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut msg = IHAVEOPT.to_be_bytes().to_vec();
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.0.write_all(&msg).unwrap();
    }

    /// (option, reply type, data)
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let header = self.read_n(20);
        assert_eq!(u64::from_be_bytes(header[..8].try_into().unwrap()), OPTION_REPLY_MAGIC);
        let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
        let data = self.read_n(be32(16) as usize);
        (be32(8), be32(12), data)
    }

    fn send_request(&mut self, kind: u16, cookie: u64, offset_bytes: u64, len_bytes: u32, payload: &[u8]) {
        let mut msg = 0x2560_9513u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&0u16.to_be_bytes());
        msg.extend_from_slice(&kind.to_be_bytes());
        msg.extend_from_slice(&cookie.to_be_bytes());
        msg.extend_from_slice(&offset_bytes.to_be_bytes());
        msg.extend_from_slice(&len_bytes.to_be_bytes());
        msg.extend_from_slice(payload);
        self.0.write_all(&msg).unwrap();
    }

    /// (errno, cookie)
    fn simple_reply(&mut self) -> (u32, u64) {
        let reply = self.read_n(16);
        assert_eq!(u32::from_be_bytes(reply[..4].try_into().unwrap()), 0x6744_6698);
        (
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            u64::from_be_bytes(reply[8..].try_into().unwrap()),
        )
    }

    /// True once the server has closed its end.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.0.read(&mut byte), Ok(0))
    }
}

fn info_data(name: &str, info_types: &[u16]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(info_types.len() as u16).to_be_bytes());
    for t in info_types {
        data.extend_from_slice(&t.to_be_bytes());
    }
    data
}

#[test]
fn raw_client_options_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let base = filled_file(dir.path(), "a.img", 0xab);
    let limits = NbdLimits {
        overlay_max_bytes: 1 << 20,
        request_max_bytes: 64 << 10,
    };
    let (server, handle, socket) = start(dir.path(), &base, limits);

    let mut raw = Raw::connect(&socket);
    raw.send_option(8, &[]); // STRUCTURED_REPLY
    assert_eq!(raw.option_reply(), (8, (1 << 31) + 1, vec![]));
    raw.send_option(3, &[]); // LIST
    assert_eq!(raw.option_reply(), (3, 2, [&5u32.to_be_bytes()[..], b"state"].concat()));
    assert_eq!(raw.option_reply(), (3, 1, vec![]));
    raw.send_option(6, &info_data("other", &[])); // INFO, unknown export
    assert_eq!(raw.option_reply(), (6, (1 << 31) + 6, vec![]));
    raw.send_option(6, &info_data("state", &[3])); // INFO
    let (_, reply_type, export) = raw.option_reply();
    assert_eq!(reply_type, 3);
    assert_eq!(
        &export[..10],
        &[&0u16.to_be_bytes()[..], &DISK_BYTES.to_be_bytes()].concat()[..]
    );
    let (_, reply_type, block_size) = raw.option_reply();
    assert_eq!(reply_type, 3);
    assert_eq!(
        block_size,
        [
            &3u16.to_be_bytes()[..],
            &1u32.to_be_bytes(),
            &4096u32.to_be_bytes(),
            &(64u32 << 10).to_be_bytes()
        ]
        .concat()
    );
    assert_eq!(raw.option_reply(), (6, 1, vec![]));
    raw.send_option(1, b"state"); // EXPORT_NAME: size, flags, no zeroes
    let reply = raw.read_n(10);
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), DISK_BYTES);

    raw.send_request(0, 1, DISK_BYTES - 512, 1024, &[]); // READ past the end
    assert_eq!(raw.simple_reply(), (22, 1));
    raw.send_request(1, 2, 0, 128 << 10, &vec![0x11; 128 << 10]); // WRITE over request_max_bytes
    assert_eq!(raw.simple_reply(), (22, 2));
    raw.send_request(1, 3, DISK_BYTES - 1, 2, &[0x11; 2]); // WRITE past the end
    assert_eq!(raw.simple_reply(), (22, 3));
    raw.send_request(9, 4, 0, 0, &[]); // unknown command
    assert_eq!(raw.simple_reply(), (22, 4));
    // The stream stayed in sync through all of that.
    raw.send_request(1, 5, 3, 2, &[0x11; 2]);
    assert_eq!(raw.simple_reply(), (0, 5));
    raw.send_request(0, 6, 0, 8, &[]);
    assert_eq!(raw.simple_reply(), (0, 6));
    assert_eq!(raw.read_n(8), [0xab, 0xab, 0xab, 0x11, 0x11, 0xab, 0xab, 0xab]);
    // Bad request magic: the server hangs up.
    raw.0.write_all(&[0u8; 28]).unwrap();
    assert!(raw.closed());
    assert!(
        handle.last_error().unwrap().contains("bad request magic"),
        "{:?}",
        handle.last_error()
    );

    // It keeps listening; an oversize option also ends that connection.
    let mut raw = Raw::connect(&socket);
    let mut msg = IHAVEOPT.to_be_bytes().to_vec();
    msg.extend_from_slice(&7u32.to_be_bytes());
    msg.extend_from_slice(&(1u32 << 20).to_be_bytes());
    raw.0.write_all(&msg).unwrap();
    assert!(raw.closed());

    // Unknown EXPORT_NAME: closed. ABORT: ACK then closed.
    let mut raw = Raw::connect(&socket);
    raw.send_option(1, b"nope");
    assert!(raw.closed());
    let mut raw = Raw::connect(&socket);
    raw.send_option(2, &[]);
    assert_eq!(raw.option_reply(), (2, 1, vec![]));
    assert!(raw.closed());

    // A GO then NBD_CMD_DISC, and stop() while a client sits idle in the
    // handshake: stop must not hang.
    let mut raw = Raw::connect(&socket);
    raw.send_option(7, &info_data("state", &[]));
    for _ in 0..3 {
        raw.option_reply();
    }
    raw.send_request(2, 7, 0, 0, &[]);
    assert!(raw.closed());
    let _idle = Raw::connect(&socket);
    std::thread::sleep(std::time::Duration::from_millis(50));
    server.stop().unwrap();
    assert_eq!(handle.stats().disconnects, 1);
}
