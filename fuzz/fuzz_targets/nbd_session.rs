//! crashlab-nbd serving one client whose bytes are the input (the guest is
//! untrusted): handshake, options, requests, in any order or garbage. The
//! server must answer or hang up, never panic or hang.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let limits = nbd::NbdLimits {
        overlay_max_bytes: 1 << 20,
        request_max_bytes: 1 << 16,
    };
    let (server, _handle) = nbd::NbdServer::start(&socket, "crashlab", Arc::new(Zeros), limits).unwrap();
    let mut client = UnixStream::connect(&socket).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may hang up mid-input: a write error then is expected.
    let _ = client.write_all(data);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = client.read_to_end(&mut sink);
    server.stop().unwrap();
});
