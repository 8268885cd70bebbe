//! The only file I/O in the crate: `File` as a log source and as an image
//! sink, and [`read_log_file`].
//!
//! Files are read with positioned reads (`pread`), not mmap and not
//! `std::fs::read`: parsing touches only the headers, so a log of hundreds
//! of MB never has to sit in memory, and no `unsafe` mmap of a file another
//! process could change is needed.

use crate::error::LogError;
use crate::parse::{parse_log_from, ParseOptions, ParsedLog};
use crate::source::{BlockSink, LogSource};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

impl LogSource for File {
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset_bytes)
    }
}

/// A copy of the base image opened for writing (e.g. a reflinked copy).
impl BlockSink for File {
    fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> io::Result<()> {
        self.write_all_at(data, offset_bytes)
    }
}

/// Parses the log file at `path` with default options.
pub fn read_log_file(path: impl AsRef<Path>, device_size_bytes: u64) -> Result<ParsedLog, LogError> {
    read_log_file_with(path, device_size_bytes, &ParseOptions::default())
}

pub fn read_log_file_with(
    path: impl AsRef<Path>,
    device_size_bytes: u64,
    options: &ParseOptions,
) -> Result<ParsedLog, LogError> {
    let path = path.as_ref();
    let with_path = |source: io::Error| LogError::Io {
        path: Some(path.to_path_buf()),
        source,
    };
    let file = File::open(path).map_err(with_path)?;
    parse_log_from(&file, device_size_bytes, options).map_err(|error| match error {
        LogError::Io { path: None, source } => with_path(source),
        other => other,
    })
}
