//! Builds the guest images into `vm-images/cache/` (or `--out DIR`):
//! - `vmlinuz`: the kernel under test, copied (it is root-only in /boot):
//!   the distro's default kernel (the one `linux-image-amd64` depends on),
//!   or `--kernel PATH --modules DIR` for a user's own, always an explicit
//!   choice recorded in the manifest, never "the newest in /boot" (which
//!   silently switches when a second kernel is installed);
//! - `initramfs.cpio`: /init (vm-images/init), static busybox, the static
//!   workload, the kernel modules of vm-images/modules.txt with their
//!   dependencies in load order, and the fsck tools of
//!   vm-images/guest-tools.txt with their shared libraries;
//! - `manifest.json`: what the controller reads to find them.
//!
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) go in decompressed:
//! busybox's insmod reads plain ELF only. A module the kernel has neither
//! built in nor in its tree is an error naming the config option to turn
//! on.
//!
//! The archive is built in memory (deterministic bytes) and written only when
//! it differs from the cached one, so "rebuilt when an input changes" needs
//! no separate hash bookkeeping.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use cpio::CpioWriter;

const CACHE_DIR: &str = "vm-images/cache";
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
const GNU_TARGET: &str = "x86_64-unknown-linux-gnu";

pub struct Kernel {
    pub image: PathBuf,
    pub release: String,
    pub modules: Modules,
    /// How it was chosen, for the manifest.
    pub choice: String,
    /// A kernel `cargo xtask kernel` built: what it was built from
    /// (`kernel.json`), for the manifest and so for every result.
    pub build: Option<serde_json::Value>,
}

/// Where the kernel's drivers and filesystems come from.
pub enum Modules {
    /// A module tree: `<root>/lib/modules/<release>`.
    Tree(PathBuf),
    /// Built in, as its `.config` says (a kernel built from source): each
    /// option's value.
    BuiltIn(std::collections::BTreeMap<String, String>),
}

/// A kernel from `cargo xtask kernel`, everything built in.
pub struct BuiltKernelImage {
    pub image: PathBuf,
    /// Its `.config`, option by option.
    pub config: std::collections::BTreeMap<String, String>,
    pub release: String,
    pub identity: serde_json::Value,
}

/// What `cargo xtask images` is asked to build.
#[derive(Default)]
pub struct ImageRequest {
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub built: Option<BuiltKernelImage>,
}

impl ImageRequest {
    pub fn parse(args: &[String]) -> Result<ImageRequest> {
        let mut req = ImageRequest::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| -> Result<PathBuf> {
                it.next()
                    .map(PathBuf::from)
                    .with_context(|| format!("{flag} needs a path"))
            };
            match arg.as_str() {
                "--kernel" => req.kernel = Some(value("--kernel")?),
                "--modules" => req.modules = Some(value("--modules")?),
                "--out" => req.out = Some(value("--out")?),
                other => bail!("unknown flag {other:?}: cargo xtask images [--kernel PATH --modules DIR] [--out DIR]"),
            }
        }
        if req.kernel.is_some() != req.modules.is_some() {
            bail!(
                "--kernel and --modules go together: the kernel image and its module tree \
                 (DIR = <root>/lib/modules/<release>, as `make modules_install INSTALL_MOD_PATH=<root>` leaves it)"
            );
        }
        Ok(req)
    }
}

/// The kernel under test: the one asked for, or the distro's default.
pub fn find_kernel(sh: &Shell, req: &ImageRequest) -> Result<Kernel> {
    if let Some(built) = &req.built {
        return Ok(built_kernel(built));
    }
    if let (Some(image), Some(modules)) = (&req.kernel, &req.modules) {
        anyhow::ensure!(image.is_file(), "--kernel {}: no such file", image.display());
        let modules = modules
            .canonicalize()
            .with_context(|| format!("--modules {}: no such directory", modules.display()))?;
        let release = modules
            .file_name()
            .and_then(|n| n.to_str())
            .context("--modules must end in the release's directory")?
            .to_string();
        let root = modules
            .parent()
            .filter(|p| p.ends_with("lib/modules"))
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
            .with_context(|| {
                format!(
                    "--modules {} is not <root>/lib/modules/<release> (what `make modules_install \
                     INSTALL_MOD_PATH=<root>` leaves)",
                    modules.display()
                )
            })?
            .to_path_buf();
        anyhow::ensure!(
            modules.join("modules.dep").is_file(),
            "{} has no modules.dep: run `depmod -b <root> {release}`",
            modules.display()
        );
        return Ok(Kernel {
            image: image.clone(),
            release,
            modules: Modules::Tree(root),
            choice: format!("--kernel {} --modules {}", image.display(), modules.display()),
            build: None,
        });
    }
    // The distro's default: linux-image-amd64 depends on exactly one image.
    let format = "-f=${Depends}";
    let depends = cmd!(sh, "dpkg-query -W {format} linux-image-amd64")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    let release = depends
        .split([',', ' ', '|'])
        .find_map(|word| word.strip_prefix("linux-image-"))
        .filter(|r| Path::new("/lib/modules").join(r).is_dir())
        .map(String::from);
    let Some(release) = release else {
        bail!(
            "no distro kernel: install linux-image-amd64 (`cargo xtask deps`), or give a kernel with \
             --kernel PATH --modules DIR"
        );
    };
    Ok(Kernel {
        image: PathBuf::from(format!("/boot/vmlinuz-{release}")),
        release,
        modules: Modules::Tree(PathBuf::from("/")),
        choice: "the distro's default kernel (linux-image-amd64)".into(),
        build: None,
    })
}

fn built_kernel(built: &BuiltKernelImage) -> Kernel {
    Kernel {
        image: built.image.clone(),
        release: built.release.clone(),
        modules: Modules::BuiltIn(built.config.clone()),
        choice: format!(
            "built from source by `cargo xtask kernel` ({})",
            built.identity["rebuild"].as_str().unwrap_or("")
        ),
        build: Some(built.identity.clone()),
    }
}

/// The config option that provides each module crashlab needs, for the
/// error when a kernel lacks it.
fn config_option(module: &str) -> &'static str {
    match module {
        "virtio_pci" => "CONFIG_VIRTIO_PCI",
        "virtio_blk" => "CONFIG_VIRTIO_BLK",
        "virtio_console" => "CONFIG_VIRTIO_CONSOLE",
        "ext4" => "CONFIG_EXT4_FS",
        "xfs" => "CONFIG_XFS_FS",
        "btrfs" => "CONFIG_BTRFS_FS",
        "f2fs" => "CONFIG_F2FS_FS",
        "dm-log-writes" => "CONFIG_DM_LOG_WRITES",
        _ => "the option that builds it",
    }
}

/// Builds the static workload binary and returns its path.
fn build_workload(sh: &Shell) -> Result<PathBuf> {
    build_static(sh, "crashlab-workload", true)
}

/// Builds a package's binary of the same name, statically linked for the
/// guest, and returns its path: musl where the target can be added (and
/// `musl_ok`), glibc with crt-static otherwise. A package that compiles C
/// (LMDB) takes glibc: the musl target would need a musl C compiler.
fn build_static(sh: &Shell, package: &str, musl_ok: bool) -> Result<PathBuf> {
    let musl_installed = || {
        cmd!(sh, "rustup target list --installed")
            .quiet()
            .read()
            .is_ok_and(|s| s.contains(MUSL_TARGET))
    };
    let has_musl = musl_ok && (musl_installed() || cmd!(sh, "rustup target add {MUSL_TARGET}").quiet().run().is_ok());
    let target = if has_musl {
        cmd!(sh, "cargo build --quiet --release -p {package} --target {MUSL_TARGET}").run()?;
        MUSL_TARGET
    } else {
        // Fallback: glibc with crt-static also gives a static binary.
        let _flags = sh.push_env("RUSTFLAGS", "-C target-feature=+crt-static");
        cmd!(sh, "cargo build --quiet --release -p {package} --target {GNU_TARGET}").run()?;
        GNU_TARGET
    };
    let path = crate::target_dir(sh).join(format!("{target}/release/{package}"));
    let file_out = cmd!(sh, "file -L {path}").quiet().read().unwrap_or_default();
    // `file` may be missing on a minimal machine: then trust the build flags.
    let is_static = file_out.contains("statically linked") || file_out.contains("static-pie");
    if !file_out.is_empty() && !is_static {
        bail!("{} is not static ({file_out}): the guest has no libc", path.display());
    }
    Ok(path)
}

/// What the kernel provides of the modules crashlab wants.
#[derive(Debug)]
struct ResolvedModules {
    /// Module files (relative to the release's module directory) in load
    /// order. A module built into the kernel needs no file.
    files: Vec<String>,
    /// Wanted modules the kernel has (built in or as a file).
    present: Vec<String>,
    /// Optional ones it lacks, each with the config option that adds it.
    missing: Vec<(String, &'static str)>,
}

/// The virtio drivers are required; a filesystem the kernel lacks only
/// rules that filesystem out (the controller says so if it is asked for).
fn resolve_modules(sh: &Shell, kernel: &Kernel, names: &[String]) -> Result<ResolvedModules> {
    let mut resolved = ResolvedModules {
        files: Vec::new(),
        present: Vec::new(),
        missing: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for name in names {
        let files = match &kernel.modules {
            Modules::Tree(root) => module_files(sh, root, &kernel.release, name)?,
            Modules::BuiltIn(config) => {
                (config.get(config_option(name)).map(String::as_str) == Some("y")).then(Vec::new)
            }
        };
        let Some(files) = files else {
            if name.starts_with("virtio") {
                bail!(
                    "kernel {} has no {name}, neither built in nor as a module: build it with {}=y (or =m \
                     with its module tree)",
                    kernel.release,
                    config_option(name)
                );
            }
            resolved.missing.push((name.clone(), config_option(name)));
            continue;
        };
        resolved.present.push(name.clone());
        for rel in files {
            if seen.insert(rel.clone()) {
                resolved.files.push(rel);
            }
        }
    }
    Ok(resolved)
}

/// The module files (relative to the release's module directory) that
/// load `name` and its dependencies, in order; `None` when the tree has
/// it neither built in nor as a module.
fn module_files(sh: &Shell, root: &Path, release: &str, name: &str) -> Result<Option<Vec<String>>> {
    let dir = root.join("lib/modules").join(release);
    let Ok(out) = cmd!(sh, "modprobe -d {root} -S {release} --show-depends {name}")
        .quiet()
        .ignore_stderr()
        .read()
    else {
        return Ok(None);
    };
    let mut files = Vec::new();
    for line in out.lines() {
        let Some(path) = line.strip_prefix("insmod ") else {
            continue; // "builtin NAME": nothing to load
        };
        let rel = Path::new(path.trim())
            .strip_prefix(&dir)
            .context("module outside the kernel's tree")?;
        files.push(rel.display().to_string());
    }
    Ok(Some(files))
}

/// A module's bytes as insmod wants them: decompressed.
fn module_bytes(sh: &Shell, path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path.display().to_string();
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some("xz"),
        Some("zst") => Some("zstd"),
        Some("gz") => Some("gzip"),
        _ => None,
    };
    match tool {
        None => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {name}"))?;
            Ok((name, bytes))
        }
        Some(tool) => {
            let plain = name
                .rsplit_once('.')
                .map(|(stem, _)| stem.to_string())
                .unwrap_or(name.clone());
            let bytes = std::process::Command::new(tool)
                .args(["-d", "-c"])
                .arg(path)
                .output()
                .with_context(|| format!("cannot run {tool} to decompress {name}: install it"))?;
            anyhow::ensure!(bytes.status.success(), "{tool} could not decompress {name}");
            let _ = sh;
            Ok((plain, bytes.stdout))
        }
    }
}

/// The shared libraries (and the loader) a dynamic binary needs, from ldd.
fn shared_libraries(sh: &Shell, binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd!(sh, "ldd {binary}").quiet().ignore_status().read()?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect())
}

fn list_file(sh: &Shell, path: &str) -> Result<Vec<String>> {
    Ok(sh
        .read_file(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

pub fn build(sh: &Shell, req: &ImageRequest) -> Result<PathBuf> {
    let kernel = find_kernel(sh, req)?;
    let workload = build_workload(sh)?;
    let resolved = resolve_modules(sh, &kernel, &list_file(sh, "vm-images/modules.txt")?)?;
    for (name, option) in &resolved.missing {
        eprintln!(
            "xtask images: kernel {} has no {name} ({option}): campaigns that need it will say so",
            kernel.release
        );
    }
    let archive = initramfs(sh, &kernel, &resolved, &workload)?;

    let cache = match &req.out {
        Some(out) => sh.current_dir().join(out),
        None => sh.current_dir().join(CACHE_DIR),
    };
    sh.create_dir(&cache)?;
    let kernel_bytes =
        std::fs::read(&kernel.image).with_context(|| format!("cannot read {}", kernel.image.display()))?;
    let changed = write_if_changed(&cache.join("initramfs.cpio"), &archive)?
        | write_if_changed(&cache.join("vmlinuz"), &kernel_bytes)?;
    // LMDB, the first program under the workload protocol, beside the
    // images (`crashlab run --workload <cache>/crashlab-lmdb ...`): not part
    // of the initramfs, which a campaign extends with it when asked.
    let lmdb = build_static(sh, "crashlab-lmdb", false)?;
    write_if_changed(&cache.join("crashlab-lmdb"), &std::fs::read(&lmdb)?)?;
    std::fs::set_permissions(
        cache.join("crashlab-lmdb"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let manifest = serde_json::json!({
        "kernel": "vmlinuz",
        "initramfs": "initramfs.cpio",
        "kernel_release": kernel.release,
        "kernel_choice": kernel.choice,
        "kernel_digest": format!("blake3:{}", blake3::hash(&kernel_bytes).to_hex()),
        "kernel_build": kernel.build,
        "modules_present": resolved.present,
        "modules_missing": resolved.missing.iter().map(|(name, option)| format!("{name} ({option})")).collect::<Vec<_>>(),
        "modules": resolved.files.len(),
        "initramfs_bytes": archive.len(),
    });
    write_if_changed(
        &cache.join("manifest.json"),
        (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes(),
    )?;
    eprintln!(
        "xtask: guest images {} at {} ({} modules, initramfs {} KiB, kernel {})",
        if changed { "rebuilt" } else { "up to date" },
        cache.display(),
        resolved.files.len(),
        archive.len() / 1024,
        kernel.release
    );
    if req.out.is_none() {
        link_user_cache(&cache)?;
    }
    Ok(cache)
}

/// Points the per-user images cache (`$XDG_CACHE_HOME/crashlab/images`,
/// else `~/.cache/crashlab/images`: the rule of
/// `machine::images::user_images_dir`) at `cache`, so that an installed
/// `crashlab` finds these images from any directory. A real directory
/// there (images put by hand) is left alone, and said so.
fn link_user_cache(cache: &Path) -> Result<()> {
    let Some(base) = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    else {
        return Ok(());
    };
    let link = base.join("crashlab/images");
    let target = std::fs::canonicalize(cache)?;
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if !meta.file_type().is_symlink() => {
            eprintln!(
                "xtask images: {} is a directory of its own, left as it is (crashlab uses it by default)",
                link.display()
            );
            return Ok(());
        }
        Ok(_) if std::fs::read_link(&link)? == target => return Ok(()),
        Ok(_) => std::fs::remove_file(&link)?,
        Err(_) => std::fs::create_dir_all(base.join("crashlab"))?,
    }
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))?;
    eprintln!(
        "xtask images: {} -> {} (crashlab's default images)",
        link.display(),
        target.display()
    );
    Ok(())
}

/// The guest's initramfs, in memory: /init, busybox, the workload, the
/// modules to load (none for a kernel with everything built in), the fsck
/// tools with their libraries.
fn initramfs(sh: &Shell, kernel: &Kernel, resolved: &ResolvedModules, workload: &Path) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new();
    for d in [
        "/bin",
        "/sbin",
        "/etc",
        "/etc/crashlab",
        "/proc",
        "/sys",
        "/dev",
        "/mnt",
        "/tmp",
        "/lib",
        "/lib/modules",
    ] {
        w.dir(d);
    }
    w.file("/init", 0o755, &std::fs::read("vm-images/init")?);
    w.file(
        "/bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").context("install busybox-static")?,
    );
    w.file("/bin/crashlab-workload", 0o755, &std::fs::read(workload)?);
    let loaded = add_modules(sh, &mut w, kernel, &resolved.files)?;
    w.file("/etc/crashlab/modules", 0o644, loaded.as_bytes());

    let mut libs = BTreeSet::new();
    for tool in list_file(sh, "vm-images/guest-tools.txt")? {
        let path = crate::host::find_command(&tool)
            .with_context(|| format!("{tool} not installed: run `cargo xtask deps`"))?;
        w.file(&format!("/sbin/{tool}"), 0o755, &std::fs::read(&path)?);
        libs.extend(shared_libraries(sh, &path)?);
    }
    for lib in &libs {
        let dest = lib.display().to_string();
        w.parents(&dest);
        w.file(&dest, 0o755, &std::fs::read(lib)?);
    }
    Ok(w.finish())
}

/// The module files, decompressed, under /lib/modules; returns the load
/// list /init reads (empty for a kernel with everything built in).
fn add_modules(sh: &Shell, w: &mut CpioWriter, kernel: &Kernel, files: &[String]) -> Result<String> {
    let Modules::Tree(root) = &kernel.modules else {
        assert!(
            files.is_empty(),
            "a kernel with everything built in loads no module file"
        );
        return Ok(String::new());
    };
    let module_dir = root.join("lib/modules").join(&kernel.release);
    let mut loaded = String::new();
    for rel in files {
        let (plain, bytes) = module_bytes(sh, &module_dir.join(rel))?;
        let plain_rel = Path::new(&plain)
            .strip_prefix(&module_dir)
            .context("module outside the kernel's tree")?
            .display()
            .to_string();
        let dest = format!("/lib/modules/{plain_rel}");
        w.parents(&dest);
        w.file(&dest, 0o644, &bytes);
        loaded += &plain_rel;
        loaded.push('\n');
    }
    Ok(loaded)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).map(|old| old == bytes).unwrap_or(false) {
        return Ok(false);
    }
    // Whole or not at all: a guest starting meanwhile reads the old file
    // or the new one, never a part.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {} (disk full?)", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module tree as `make modules_install` + depmod leave it, with the
    /// virtio drivers built in (or not) and ext4 as an xz module.
    fn fake_tree(root: &Path, release: &str, builtin: &[&str]) -> Kernel {
        let dir = root.join("lib/modules").join(release);
        std::fs::create_dir_all(dir.join("kernel/fs/ext4")).unwrap();
        let builtins: String = builtin
            .iter()
            .map(|m| format!("kernel/drivers/virtio/{m}.ko\n"))
            .collect();
        std::fs::write(dir.join("modules.builtin"), builtins).unwrap();
        std::fs::write(dir.join("modules.dep"), "kernel/fs/ext4/ext4.ko.xz:\n").unwrap();
        let xz = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'not an elf' | xz > {}/kernel/fs/ext4/ext4.ko.xz",
                dir.display()
            ))
            .status()
            .unwrap();
        assert!(xz.success());
        // depmod builds the binary indexes modprobe reads; it warns about
        // the fake module, which is fine.
        let depmod = std::process::Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(release)
            .output()
            .unwrap();
        assert!(dir.join("modules.dep.bin").is_file(), "{depmod:?}");
        Kernel {
            image: root.join("vmlinuz"),
            release: release.into(),
            modules: Modules::Tree(root.to_path_buf()),
            choice: "test".into(),
            build: None,
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_users_kernel_tree_built_in_modules_compressed_ones_and_missing_filesystems() {
        let sh = Shell::new().unwrap();
        let root = tempfile::tempdir().unwrap();
        let kernel = fake_tree(root.path(), "9.9.9-test", &["virtio_pci", "virtio_blk"]);
        let resolved = resolve_modules(&sh, &kernel, &names(&["virtio_pci", "virtio_blk", "ext4", "xfs"])).unwrap();
        assert_eq!(
            resolved.files,
            vec!["kernel/fs/ext4/ext4.ko.xz"],
            "built-in modules need no file"
        );
        assert_eq!(resolved.present, names(&["virtio_pci", "virtio_blk", "ext4"]));
        assert_eq!(resolved.missing, vec![("xfs".to_string(), "CONFIG_XFS_FS")]);
        let dir = root.path().join("lib/modules/9.9.9-test");
        let (plain, bytes) = module_bytes(&sh, &dir.join("kernel/fs/ext4/ext4.ko.xz")).unwrap();
        assert!(plain.ends_with("kernel/fs/ext4/ext4.ko"), "{plain}");
        assert_eq!(bytes, b"not an elf");
        // Without virtio_blk the guest has no disk: an error naming the option.
        let err = resolve_modules(&sh, &kernel, &names(&["virtio_console"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("CONFIG_VIRTIO_CONSOLE"), "{err}");
    }

    #[test]
    fn kernel_and_modules_go_together_and_the_tree_must_look_installed() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = ImageRequest::parse(&args(&["--kernel", "/boot/vmlinuz-x"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("go together"), "{err}");
        assert!(ImageRequest::parse(&args(&["--bogus"])).is_err());
        let sh = Shell::new().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let req = ImageRequest {
            kernel: Some("/etc/hostname".into()),
            modules: Some(elsewhere.path().to_path_buf()),
            out: None,
            built: None,
        };
        let err = find_kernel(&sh, &req).err().unwrap();
        assert!(err.to_string().contains("lib/modules/<release>"), "{err}");
    }
}
