//! A minimal writer of the `newc` cpio format the kernel unpacks as an
//! initramfs. Timestamps are 0 and entries are written in the caller's order,
//! so the same inputs give the same bytes (the image cache relies on it).

pub struct CpioWriter {
    out: Vec<u8>,
    next_inode: u32,
    /// Directories written so far (for `parents`).
    dirs: std::collections::BTreeSet<String>,
}

impl Default for CpioWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CpioWriter {
    pub fn new() -> Self {
        CpioWriter {
            out: Vec::new(),
            next_inode: 1,
            dirs: std::collections::BTreeSet::new(),
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040755, &[]);
    }

    /// Writes every directory above `path` not written yet: the kernel's
    /// unpacker creates a file only in a directory that exists (one an
    /// earlier archive made is left as it is).
    pub fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push('/');
            prefix.push_str(part);
            if !self.dirs.contains(&prefix) {
                self.dir(&prefix);
            }
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, 0o100000 | mode, data);
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        let name = path.trim_start_matches('/');
        assert!(!name.is_empty() || path == "TRAILER!!!");
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.next_inode,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0, // mtime
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0,
        );
        self.next_inode += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::CpioWriter;

    #[test]
    fn parents_writes_each_missing_directory_once() {
        let mut with_parents = CpioWriter::new();
        with_parents.dir("/lib");
        with_parents.parents("/lib/x86_64-linux-gnu/libc.so.6");
        with_parents.parents("/lib/x86_64-linux-gnu/libm.so.6");
        with_parents.parents("/top");
        let mut by_hand = CpioWriter::new();
        by_hand.dir("/lib");
        by_hand.dir("/lib/x86_64-linux-gnu");
        assert_eq!(with_parents.finish(), by_hand.finish());
    }

    #[test]
    fn layout() {
        let mut w = super::CpioWriter::new();
        w.file("/init", 0o755, b"#!");
        let bytes = w.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        // header 110 bytes + "init\0" (5) padded to 116, data 2 padded to 4.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..118], b"#!");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
