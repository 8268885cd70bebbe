//! What building a kernel needs on the host, and installing it (as root;
//! the line is printed otherwise, as `cargo xtask deps` does).

use anyhow::{bail, Result};

/// Debian's packages for a kernel build: compiler, make, and what the
/// kernel's own build tools use (bc for timeconst, flex and bison for
/// Kconfig, libelf for objtool, openssl for the signing tools a user's
/// fragment may turn on).
pub const PACKAGES: &[&str] = &[
    "gcc",
    "make",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "perl",
    "patch",
    "tar",
    "xz-utils",
];

/// A command the build runs, and the package that has it.
const COMMANDS: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("make", "make"),
    ("bc", "bc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("perl", "perl"),
    ("patch", "patch"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
];
/// A header the build includes, and the package that has it.
const HEADERS: &[(&str, &str)] = &[("/usr/include/libelf.h", "libelf-dev")];

/// What is missing, each as "what (package)", given how to look a command
/// up and whether a file exists.
pub fn missing(has_command: impl Fn(&str) -> bool, exists: impl Fn(&str) -> bool) -> Vec<String> {
    let commands = COMMANDS
        .iter()
        .filter(|(command, _)| !has_command(command))
        .map(|(command, package)| format!("{command} ({package})"));
    let headers = HEADERS
        .iter()
        .filter(|(path, _)| !exists(path))
        .map(|(path, package)| format!("{path} ({package})"));
    commands.chain(headers).collect()
}

pub fn apt_line() -> String {
    format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
        PACKAGES.join(" ")
    )
}

fn missing_here() -> Vec<String> {
    missing(
        |c| crate::host::find_command(c).is_some(),
        |p| std::path::Path::new(p).exists(),
    )
}

/// Installs what a kernel build lacks (as root), or says what to run.
pub fn ensure() -> Result<()> {
    let missing = missing_here();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::host::is_root() {
        bail!(
            "a kernel build needs {}: install them as root with\n  {}",
            missing.join(", "),
            apt_line()
        );
    }
    eprintln!(
        "xtask kernel: missing {}: installing {}",
        missing.join(", "),
        PACKAGES.join(" ")
    );
    let status = std::process::Command::new("sh").arg("-c").arg(apt_line()).status()?;
    let still = missing_here();
    if !status.success() || !still.is_empty() {
        bail!("still missing after `{}` ({status}): {}", apt_line(), still.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named_with_their_packages() {
        let without = |gone: &'static [&'static str]| move |c: &str| !gone.contains(&c);
        let all_headers = |_: &str| true;
        assert!(missing(without(&[]), all_headers).is_empty());
        assert_eq!(
            missing(without(&["bc", "bison"]), |p: &str| !p.contains("libelf")),
            vec!["bc (bc)", "bison (bison)", "/usr/include/libelf.h (libelf-dev)"]
        );
        assert_eq!(missing(without(&["xz"]), all_headers), vec!["xz (xz-utils)"]);
        for (_, package) in COMMANDS.iter().chain(HEADERS) {
            assert!(PACKAGES.contains(package), "{package} is installed by the line");
        }
    }
}
