//! Reads files out of an ext4 image file with the in-memory replay and
//! prints the time it took: `cargo run --release -p crashlab-ext4
//! --example read_image -- IMAGE NAME...`.

use std::os::unix::fs::FileExt;
use std::time::Instant;

struct Image(std::fs::File);

impl ext4::ReadAt for Image {
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset_bytes)
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, names)) = args.split_first() else {
        eprintln!("usage: read_image IMAGE NAME...");
        std::process::exit(2);
    };
    let file = std::fs::File::open(path)?;
    let size_bytes = file.metadata()?.len();
    let image = Image(file);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    const ROUNDS: u32 = 20;
    let t = Instant::now();
    let mut outcome = None;
    for _ in 0..ROUNDS {
        outcome = Some(ext4::recover_and_read(&image, size_bytes, &names)?);
    }
    let per_read_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(ROUNDS);
    match outcome.expect("ROUNDS > 0") {
        ext4::Outcome::Read(files) => {
            for (name, file) in names.iter().zip(files) {
                match file {
                    ext4::File::Missing => println!("{name}: missing"),
                    ext4::File::Bytes(b) => println!("{name}: {} bytes, crc32c {:08x}", b.len(), crc32c::crc32c(&b)),
                }
            }
        }
        ext4::Outcome::Declined(reason) => println!("declined: {reason}"),
    }
    println!("{per_read_ms:.2} ms per read");
    Ok(())
}
