//! The guest kernel's own words from a console log: the lines /init marks
//! `crashlab-kernel: ` (the kernel's messages about the filesystem, after
//! a mount or a recovery). Shown to users (an error's hint, the report);
//! nothing crashlab decides is read from the console.

/// /init's mark on a kernel message it passes to the console.
const MARK: &str = "crashlab-kernel: ";

/// The marked lines of `text`, each without the mark and the kernel's
/// `[ seconds.micros] ` timestamp, trimmed.
pub fn kernel_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| l.strip_prefix(MARK)).map(|l| {
        let message = match l.starts_with('[') {
            true => l.split_once("] ").map_or(l, |(_, rest)| rest),
            false => l,
        };
        message.trim()
    })
}

/// `kernel_lines` of a console log file (none if it cannot be read).
pub fn kernel_lines_of(path: &std::path::Path) -> Vec<String> {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    kernel_lines(&text).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_and_the_timestamp_go_and_the_message_stays_whole() {
        let console = "[    1.0] virtio_blk virtio1: [vda] 131072 512-byte logical blocks\n\
                       crashlab-kernel: [    2.345678] EXT4-fs (vda): mounted filesystem\n\
                       crashlab-kernel: JBD2: corrupted journal superblock\n\
                       crashlab-kernel: [    3.1] EXT4-fs error (device vda): ext4_find_entry:1 inode #2: comm mount: reading directory lblock 0 [checksum] bad\n\
                       crashlab-kernel: EXT4-fs (vda): error count since last fsck: 1 [x] y\n";
        let lines: Vec<&str> = kernel_lines(console).collect();
        assert_eq!(
            lines,
            [
                "EXT4-fs (vda): mounted filesystem",
                "JBD2: corrupted journal superblock",
                "EXT4-fs error (device vda): ext4_find_entry:1 inode #2: comm mount: reading directory lblock 0 [checksum] bad",
                // No timestamp: a "] " inside the message is the message's.
                "EXT4-fs (vda): error count since last fsck: 1 [x] y",
            ]
        );
    }
}
