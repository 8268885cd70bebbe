/// Hex dump of up to `max_bytes` of `bytes` from `offset`, grouped by 4 bytes.
pub fn excerpt(bytes: &[u8], offset: usize, max_bytes: usize) -> String {
    let end = bytes.len().min(offset + max_bytes);
    let start = offset.min(end);
    let mut out = format!("@{start:#x}:");
    for (i, b) in bytes[start..end].iter().enumerate() {
        if i % 4 == 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn excerpt_format() {
        assert_eq!(super::excerpt(&[1, 2, 3, 4, 5, 0xff, 7], 2, 8), "@0x2: 030405ff 07");
        assert_eq!(super::excerpt(&[1, 2], 5, 8), "@0x2:");
    }
}
