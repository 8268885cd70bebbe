//! Facts about the host the tasks run on: where a command is, whether we
//! are root. Read from PATH and /proc, to keep xtask free of a libc binding.

pub fn find_command(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

pub fn is_root() -> bool {
    effective_uid() == 0
}

/// From /proc, to keep xtask free of a libc binding.
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}
