//! Where log bytes and image writes go: two tiny traits so the parser and the
//! state builder work the same on in-memory buffers (tests, mmap) and on
//! files (see `file.rs`), without loading a 100s-of-MB log into RAM.

use std::io;

/// Random-access, read-only bytes of a log.
pub trait LogSource {
    fn size_bytes(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset_bytes`; fails if that runs past the end.
    fn read_exact_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl LogSource for [u8] {
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = usize::try_from(offset_bytes)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .filter(|range| range.end <= self.len())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at offset {offset_bytes} is past the end of a {}-byte log",
                        buf.len(),
                        self.len()
                    ),
                )
            })?;
        buf.copy_from_slice(&self[range]);
        Ok(())
    }
}

impl LogSource for Vec<u8> {
    fn size_bytes(&self) -> io::Result<u64> {
        self.as_slice().size_bytes()
    }

    fn read_exact_at(&self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_exact_at(offset_bytes, buf)
    }
}

/// Destination of a crash state: the copy of the base image being built.
pub trait BlockSink {
    fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> io::Result<()>;
}

/// An in-memory image of fixed size; writes past its end are an error, not
/// growth, because a write there means the log and the image disagree on the
/// device size.
impl BlockSink for Vec<u8> {
    fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> io::Result<()> {
        self.as_mut_slice().write_at(offset_bytes, data)
    }
}

impl BlockSink for [u8] {
    fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> io::Result<()> {
        let image_size_bytes = self.len();
        let range = usize::try_from(offset_bytes)
            .ok()
            .and_then(|start| Some(start..start.checked_add(data.len())?))
            .filter(|range| range.end <= image_size_bytes)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "write of {} bytes at offset {offset_bytes} is past the end of a \
                         {image_size_bytes}-byte image: the image is smaller than the logged device",
                        data.len()
                    ),
                )
            })?;
        self[range].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_are_bounds_checked() {
        let bytes: &[u8] = &[1, 2, 3, 4];
        let mut buf = [0u8; 2];
        bytes.read_exact_at(2, &mut buf).unwrap();
        assert_eq!(buf, [3, 4]);
        assert_eq!(
            bytes.read_exact_at(3, &mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(bytes.read_exact_at(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn vec_sink_does_not_grow() {
        let mut image = vec![0u8; 4];
        image.write_at(1, &[9, 9]).unwrap();
        assert_eq!(image, [0, 9, 9, 0]);
        assert!(image.write_at(3, &[1, 1]).is_err());
        assert_eq!(image.len(), 4);
    }
}
