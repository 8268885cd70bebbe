//! The shared objects a dynamic program needs, found as the host's glibc
//! loader finds them, and where each goes in the guest so that the guest's
//! loader (the host's own, packed at the program's `PT_INTERP` path) finds
//! the very same file.
//!
//! The loader's search for a name without a slash (ld.so(8)): the asking
//! object's `DT_RPATH` and then the executable's (only when the asking
//! object has no `DT_RUNPATH`), `LD_LIBRARY_PATH`, the object's own
//! `DT_RUNPATH`, `/etc/ld.so.cache` (built from `/etc/ld.so.conf`), then
//! the system directories. Here `LD_LIBRARY_PATH` is not read (the guest
//! has none: a library found only through it on the host would be another
//! file than the guest's), and the cache is read as the directories of
//! `ld.so.conf` it is built from. The guest has no cache, so a library
//! found through `ld.so.conf` goes into a system directory of the guest;
//! one found through an rpath or runpath goes to that directory as the
//! guest's loader expands it (`$ORIGIN`: the asking object's directory in
//! the guest). Libraries opened with `dlopen` are not named in the file
//! and are not packed.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::elf::{self, ElfDeps};

/// The loader's system directories (x86-64 Debian, `ld.so --help`), in
/// its order.
pub const SYSTEM_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"];
/// Where a library the host found through `ld.so.conf` goes in the guest.
const GUEST_LIBRARY_DIR: &str = "/lib/x86_64-linux-gnu";
/// Shared objects one program may need, at most (RocksDB needs about 15).
pub const LIBRARIES_MAX: usize = 512;
/// One shared object larger than this is refused (it is copied into every
/// guest's memory).
pub const LIBRARY_MAX_BYTES: u64 = 256 << 20;
/// `include` lines of `ld.so.conf` followed, at most (a loop stops here).
const CONF_INCLUDES_MAX: usize = 64;

/// One file the program's layer carries so that a dynamic binary runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeFile {
    /// Its absolute path in the guest.
    pub guest_path: String,
    /// The host file whose bytes go there (symbolic links followed).
    pub host_path: PathBuf,
    /// Why it is needed: `interpreter of X` or `needed by X`.
    pub why: String,
}

/// Where the host's loader looks: the directories of `ld.so.conf` (read
/// from `root`, `/` but for tests) and the system directories.
#[derive(Clone, Debug)]
pub struct SearchPath {
    pub conf_dirs: Vec<PathBuf>,
    /// Prefix of every host path looked at (`/`; a fixture tree in tests).
    pub root: PathBuf,
}

impl SearchPath {
    /// The host's: `/etc/ld.so.conf` and what it includes.
    pub fn host() -> SearchPath {
        SearchPath::under(Path::new("/"))
    }

    /// The search path of a root file system at `root`.
    pub fn under(root: &Path) -> SearchPath {
        let mut conf_dirs = Vec::new();
        let mut includes = 0;
        read_conf(root, &root.join("etc/ld.so.conf"), &mut includes, &mut conf_dirs);
        SearchPath {
            conf_dirs,
            root: root.to_path_buf(),
        }
    }

    fn host_path(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// The directories an `ld.so.conf` names, its includes read in place, in
/// order (ldconfig's order).
fn read_conf(root: &Path, conf: &Path, includes: &mut usize, dirs: &mut Vec<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(conf) else {
        return;
    };
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
        if let Some(pattern) = line.strip_prefix("include").map(str::trim) {
            *includes += 1;
            if *includes <= CONF_INCLUDES_MAX {
                for included in glob_conf(root, pattern) {
                    read_conf(root, &included, includes, dirs);
                }
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

/// `include /etc/ld.so.conf.d/*.conf`: the files matching a pattern whose
/// last component may hold one `*`, sorted as glob(3) sorts them.
fn glob_conf(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let pattern = Path::new(pattern);
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let dir = root.join(dir.strip_prefix("/").unwrap_or(dir));
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            match name.contains('*') {
                true => n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len(),
                false => n == name,
            }
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// An object whose needs are still to be resolved.
struct Pending {
    /// Its file on the host, and its directory in the guest (`$ORIGIN`).
    host_path: PathBuf,
    guest_dir: String,
    deps: ElfDeps,
    name: String,
}

/// The files a binary needs in the guest besides itself: its interpreter
/// and every shared object it needs, transitively. Empty for a static
/// binary. `guest_path` is where the binary itself goes in the guest;
/// `flag` names it in errors (`--workload`).
pub fn runtime_files(binary: &Path, guest_path: &str, flag: &str, search: &SearchPath) -> Result<Vec<RuntimeFile>> {
    let bytes = std::fs::read(binary).with_context(|| format!("{flag} {}: cannot read it", binary.display()))?;
    let exe = elf::read(&bytes).map_err(|why| anyhow::anyhow!("{flag} {}: {why}", binary.display()))?;
    let Some(interpreter) = interpreter_file(binary, &exe, flag, search)? else {
        return Ok(Vec::new());
    };
    let mut files = vec![interpreter];
    let guest_dir = parent_of(guest_path);
    let exe_rpath: Vec<(String, String)> = exe
        .rpath
        .iter()
        .map(|d| {
            (
                expand_origin(d, &host_dir_of(binary, &search.root)),
                expand_origin(d, &guest_dir),
            )
        })
        .collect();
    let mut loaded: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut queue = VecDeque::from([Pending {
        host_path: binary.to_path_buf(),
        guest_dir,
        deps: exe,
        name: binary.display().to_string(),
    }]);
    while let Some(object) = queue.pop_front() {
        for needed in &object.deps.needed {
            if loaded.contains_key(needed) {
                continue;
            }
            let (host_path, guest_dir) = find(needed, &object, &exe_rpath, search).with_context(|| {
                format!(
                    "{flag} {}: {} needs {needed}, which is not on this host's library path \
                     (rpath, runpath, /etc/ld.so.conf, {}): install the package that provides it",
                    binary.display(),
                    object.name,
                    SYSTEM_DIRS.join(", ")
                )
            })?;
            let deps = read_library(&host_path, flag)?;
            loaded.insert(needed.clone(), host_path.clone());
            anyhow::ensure!(
                loaded.len() <= LIBRARIES_MAX,
                "{flag} {}: needs more than {LIBRARIES_MAX} shared libraries",
                binary.display()
            );
            files.push(RuntimeFile {
                guest_path: format!("{}/{needed}", guest_dir.trim_end_matches('/')),
                host_path: host_path.clone(),
                why: format!("needed by {}", object.name),
            });
            queue.push_back(Pending {
                host_path,
                guest_dir,
                deps,
                name: needed.clone(),
            });
        }
    }
    Ok(files)
}

/// The loader a dynamic binary asks for, on the host; `None` for a static
/// binary.
fn interpreter_file(binary: &Path, exe: &ElfDeps, flag: &str, search: &SearchPath) -> Result<Option<RuntimeFile>> {
    let Some(interpreter) = exe.interpreter.clone() else {
        if exe.needed.is_empty() {
            return Ok(None);
        }
        bail!(
            "{flag} {}: it needs shared libraries ({}) but names no loader (PT_INTERP)",
            binary.display(),
            exe.needed.join(", ")
        );
    };
    let host_path = search.host_path(Path::new(&interpreter));
    if !host_path.is_file() {
        bail!(
            "{flag} {}: it asks for the loader {interpreter}, which this host does not have: \
             build it on this machine, or link it statically",
            binary.display()
        );
    }
    Ok(Some(RuntimeFile {
        guest_path: interpreter,
        host_path,
        why: format!("interpreter of {}", binary.display()),
    }))
}

/// A library's own loader view; one that is not a readable x86-64 ELF
/// shared object is an error naming it.
fn read_library(host_path: &Path, flag: &str) -> Result<ElfDeps> {
    let size = std::fs::metadata(host_path)?.len();
    anyhow::ensure!(
        size <= LIBRARY_MAX_BYTES,
        "{flag}: {} is larger than {} MiB",
        host_path.display(),
        LIBRARY_MAX_BYTES >> 20
    );
    let bytes = std::fs::read(host_path).with_context(|| format!("{flag}: cannot read {}", host_path.display()))?;
    elf::read(&bytes).map_err(|why| anyhow::anyhow!("{flag}: {}: {why}", host_path.display()))
}

/// Where the loader finds `needed` for `object`: the host file and the
/// guest directory it goes to.
fn find(
    needed: &str,
    object: &Pending,
    exe_rpath: &[(String, String)],
    search: &SearchPath,
) -> Option<(PathBuf, String)> {
    if needed.contains('/') {
        // A path: the loader opens it as it is (relative ones from the
        // working directory, which the guest does not share: refused).
        let host = search.host_path(Path::new(needed));
        return (needed.starts_with('/') && usable(&host)).then(|| (host, parent_of(needed)));
    }
    let host_dir = host_dir_of(&object.host_path, &search.root);
    let expand = |d: &String| (expand_origin(d, &host_dir), expand_origin(d, &object.guest_dir));
    let mut candidates: Vec<(String, String)> = Vec::new();
    if object.deps.runpath.is_empty() {
        candidates.extend(object.deps.rpath.iter().map(expand));
        candidates.extend(exe_rpath.iter().cloned());
    }
    candidates.extend(object.deps.runpath.iter().map(expand));
    let conf = search.conf_dirs.iter().map(|d| {
        let d = d.display().to_string();
        let guest = match SYSTEM_DIRS.contains(&d.as_str()) {
            true => d.clone(),
            false => GUEST_LIBRARY_DIR.to_string(),
        };
        (d, guest)
    });
    candidates.extend(conf);
    candidates.extend(SYSTEM_DIRS.iter().map(|d| (d.to_string(), d.to_string())));
    candidates.into_iter().find_map(|(host, guest)| {
        let path = search.host_path(&Path::new(&host).join(needed));
        usable(&path).then_some((path, guest))
    })
}

/// The loader skips a candidate that is not an x86-64 ELF file (a 32-bit
/// library of the same name in a multilib directory).
fn usable(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 20];
    use std::io::Read;
    (&file).read_exact(&mut head).is_ok() && head[..4] == *b"\x7fELF" && head[4] == 2 && head[18] == 62
}

/// `$ORIGIN` and `${ORIGIN}` in an rpath or runpath entry, as `origin`,
/// then `..` and `.` folded (the loader does not need the directory to
/// exist to search it).
fn expand_origin(dir: &str, origin: &str) -> String {
    let expanded = dir.replace("${ORIGIN}", origin).replace("$ORIGIN", origin);
    let mut parts: Vec<&str> = Vec::new();
    for part in expanded.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent_of(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
    }
}

/// The directory of a host file as seen from `root` (`$ORIGIN`: the
/// directory of the file the loader opened), symbolic links resolved.
fn host_dir_of(path: &Path, root: &Path) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let dir = real.parent().unwrap_or(Path::new("/"));
    match dir.strip_prefix(&root) {
        Ok(inside) => format!("/{}", inside.display()),
        Err(_) => dir.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ldd's resolved paths for `binary` (the loader itself, run in its
    /// listing mode), canonical.
    fn ldd(binary: &str) -> Vec<PathBuf> {
        let out = std::process::Command::new("ldd").arg(binary).output().unwrap();
        let mut paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
            .map(|p| std::fs::canonicalize(p).unwrap())
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    #[test]
    fn host_binaries_resolve_to_the_files_ldd_names() {
        let search = SearchPath::host();
        let me = std::env::current_exe().unwrap();
        for binary in ["/bin/sh", "/usr/bin/git", "/sbin/e2fsck", me.to_str().unwrap()] {
            if !Path::new(binary).exists() {
                continue;
            }
            let files = runtime_files(Path::new(binary), "/crashlab/program/workload", "--workload", &search).unwrap();
            let mut ours: Vec<PathBuf> = files
                .iter()
                .map(|f| std::fs::canonicalize(&f.host_path).unwrap())
                .collect();
            ours.sort();
            ours.dedup();
            assert_eq!(ours, ldd(binary), "{binary}: {files:#?}");
            for f in &files {
                let dir = parent_of(&f.guest_path);
                assert!(
                    SYSTEM_DIRS.contains(&dir.as_str()) || f.why.starts_with("interpreter"),
                    "a system library goes to a system directory of the guest: {f:?}"
                );
            }
        }
    }

    #[test]
    fn origin_runpaths_follow_the_binary_into_the_guest_and_a_missing_library_is_named() {
        let root = tempfile::tempdir().unwrap();
        let put = |path: &str, bytes: &[u8]| {
            let p = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        };
        let lib = crate::elf::tests::synthetic(&["libc.so.6"], None, None);
        put(
            "/opt/app/bin/app",
            &crate::elf::tests::synthetic(&["libapp.so.1"], Some("$ORIGIN/../lib"), Some("/lib64/ld.so")),
        );
        put(
            "/opt/app/lib/libapp.so.1",
            &crate::elf::tests::synthetic(&["libz.so.1"], None, None),
        );
        put("/lib64/ld.so", &lib);
        put("/usr/local/lib/libz.so.1", &lib);
        put(
            "/lib/x86_64-linux-gnu/libc.so.6",
            &crate::elf::tests::synthetic(&[], None, None),
        );
        put("/etc/ld.so.conf", b"include /etc/ld.so.conf.d/*.conf\n");
        put("/etc/ld.so.conf.d/local.conf", b"# local\n/usr/local/lib\n");
        let search = SearchPath::under(root.path());
        let app = root.path().join("opt/app/bin/app");
        let files = runtime_files(&app, "/crashlab/program/workload", "--workload", &search).unwrap();
        let guest: Vec<&str> = files.iter().map(|f| f.guest_path.as_str()).collect();
        assert_eq!(
            guest,
            [
                "/lib64/ld.so",
                "/crashlab/lib/libapp.so.1",
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6"
            ]
        );
        assert!(files[2].host_path.ends_with("usr/local/lib/libz.so.1"), "{files:?}");
        std::fs::remove_file(root.path().join("usr/local/lib/libz.so.1")).unwrap();
        let err = format!(
            "{:#}",
            runtime_files(&app, "/crashlab/program/workload", "--workload", &search).unwrap_err()
        );
        assert!(
            err.contains("libapp.so.1 needs libz.so.1") && err.contains("install the package"),
            "{err}"
        );
    }

    #[test]
    fn a_static_binary_needs_nothing_and_a_script_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let search = SearchPath::under(root.path());
        let exe = root.path().join("static");
        let mut elf = crate::elf::tests::synthetic(&[], None, None);
        elf.truncate(64); // no program headers at all
        elf[56] = 0;
        std::fs::write(&exe, &elf).unwrap();
        assert!(runtime_files(&exe, "/w", "--workload", &search).unwrap().is_empty());
        let script = root.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\nexec ./db\n").unwrap();
        let err = format!("{:#}", runtime_files(&script, "/w", "--workload", &search).unwrap_err());
        assert!(err.contains("script"), "{err}");
    }

    #[test]
    fn origin_is_expanded_and_folded() {
        assert_eq!(expand_origin("$ORIGIN/../lib", "/crashlab/program"), "/crashlab/lib");
        assert_eq!(expand_origin("${ORIGIN}/./x/", "/a"), "/a/x");
        assert_eq!(expand_origin("/opt/lib", "/a"), "/opt/lib");
        assert_eq!(parent_of("/lib64/ld.so"), "/lib64");
        assert_eq!(parent_of("/w"), "/");
    }
}
