//! crashlab-ext4 over an untrusted image: the input is a 2 MiB image
//! (zero-padded), so seeds made by mke2fs are whole filesystems.
#![no_main]

use libfuzzer_sys::fuzz_target;

const IMAGE_BYTES: usize = 2 << 20;

struct Image(Vec<u8>);

impl ext4::ReadAt for Image {
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset_bytes).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(buf.len()).ok_or(std::io::ErrorKind::InvalidInput)?;
        let src = self.0.get(start..end).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    bytes.resize(IMAGE_BYTES, 0);
    let image = Image(bytes);
    let _ = ext4::recover_and_read(&image, IMAGE_BYTES as u64, &["crashlab.dat", "crashlab-1.dat"]);
});
