//! `cargo xtask kernel --source PATH [--patch FILE]... [--config-fragment
//! FILE]... --out DIR [--jobs N]`: a guest kernel built from source, and
//! an images directory around it that `crashlab run --images-dir` takes.
//!
//! The configuration is generated: `make tinyconfig`, then crashlab's
//! fragment (`vm-images/kernel.config`: everything the guest uses, built
//! in), then the user's fragments, then `make olddefconfig`; a fragment
//! line that did not take is an error naming it.
//!
//! The cache (`$CRASHLAB_KERNEL_CACHE`, or `~/.cache/crashlab/kernels`
//! after XDG, or `--cache DIR`; gigabytes, kept out of the checkout):
//! - `builds/<key>/`: a finished build (bzImage, config, build.log,
//!   kernel.json), keyed by a digest of every input (source, patches,
//!   fragments, compiler, this builder's version). The same inputs never
//!   build twice.
//! - `trees/<source>/`: the source unpacked once (`tree/`), the patch
//!   bookkeeping (`patches`), and one `make O=` directory per
//!   configuration inputs (`build-<digest>/`), reused by every patch set:
//!   a one-line patch recompiles one file.
//!   A lock file serialises builds of one source.

mod build;
pub mod config;
mod patches;
mod source;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use patches::{Patch, WorkTree};
use source::Source;

/// Bumped when the build procedure changes what it makes from the same
/// inputs: old cache entries are then not reused.
const BUILDER_VERSION: u32 = 1;
const CRASHLAB_FRAGMENT: &str = "vm-images/kernel.config";

/// What `cargo xtask kernel` is asked to build.
#[derive(Debug)]
pub struct KernelRequest {
    pub source: PathBuf,
    pub patches: Vec<PathBuf>,
    pub fragments: Vec<PathBuf>,
    pub out: Option<PathBuf>,
    pub jobs: usize,
    pub cache: PathBuf,
    /// Skip the boot of the result (the tests' fixtures do not boot).
    pub no_boot: bool,
}

const USAGE: &str = "cargo xtask kernel --source PATH [--patch FILE]... [--config-fragment FILE]... \
                     --out DIR [--jobs N] [--cache DIR]";

impl KernelRequest {
    pub fn parse(args: &[String]) -> Result<KernelRequest> {
        let mut req = KernelRequest {
            source: PathBuf::new(),
            patches: Vec::new(),
            fragments: Vec::new(),
            out: None,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cache: default_cache(),
            no_boot: false,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| -> Result<String> {
                it.next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value: {USAGE}"))
            };
            match arg.as_str() {
                "--source" => req.source = value("--source")?.into(),
                "--patch" => req.patches.push(value("--patch")?.into()),
                "--config-fragment" => req.fragments.push(value("--config-fragment")?.into()),
                "--out" => req.out = Some(value("--out")?.into()),
                "--cache" => req.cache = value("--cache")?.into(),
                "--no-boot" => req.no_boot = true,
                "--jobs" => {
                    let v = value("--jobs")?;
                    req.jobs = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .with_context(|| format!("--jobs {v:?}: give a number from 1 to 256"))?;
                }
                other => bail!("unknown flag {other:?}: {USAGE}"),
            }
        }
        anyhow::ensure!(!req.source.as_os_str().is_empty(), "--source is required: {USAGE}");
        Ok(req)
    }
}

/// `$CRASHLAB_KERNEL_CACHE`, else `$XDG_CACHE_HOME/crashlab/kernels`, else
/// `~/.cache/crashlab/kernels`.
fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("CRASHLAB_KERNEL_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("vm-images"));
    base.join("crashlab/kernels")
}

/// A kernel in the cache.
pub struct BuiltKernel {
    pub image: PathBuf,
    pub config: PathBuf,
    pub release: String,
    /// Where results say which kernel this is (kernel.json).
    pub identity: serde_json::Value,
    /// Found in the cache: nothing was built.
    pub cached: bool,
}

/// The inputs, read and digested.
struct Inputs {
    source: Source,
    source_digest: String,
    patches: Vec<Patch>,
    /// (name, text) of each fragment, crashlab's first.
    fragments: Vec<(String, String)>,
    toolchain: String,
}

impl Inputs {
    fn read(req: &KernelRequest, crashlab_fragment: &Path) -> Result<Inputs> {
        let source = Source::of(&req.source)?;
        let t = Instant::now();
        let source_digest = source.digest()?;
        eprintln!(
            "xtask kernel: source {} is blake3:{} ({} ms)",
            source.path().display(),
            &source_digest[..16],
            t.elapsed().as_millis()
        );
        let mut patches = Vec::new();
        for path in &req.patches {
            let bytes = std::fs::read(path).with_context(|| format!("--patch {}: cannot read it", path.display()))?;
            patches.push(Patch {
                path: std::path::absolute(path)?,
                name: path.display().to_string(),
                digest: source::bytes_digest(&bytes),
            });
        }
        let mut fragments = Vec::new();
        for path in std::iter::once(crashlab_fragment).chain(req.fragments.iter().map(PathBuf::as_path)) {
            fragments.push((path.display().to_string(), read_fragment(path)?));
        }
        Ok(Inputs {
            source,
            source_digest,
            patches,
            fragments,
            toolchain: toolchain(),
        })
    }

    /// The configuration's inputs: which `make O=` directory to reuse.
    fn config_key(&self) -> String {
        let mut text = format!("base {}\ntoolchain {}\n", config::BASE_TARGET, self.toolchain);
        for (name, fragment) in &self.fragments {
            text += &format!("fragment {name} {}\n", source::bytes_digest(fragment.as_bytes()));
        }
        source::bytes_digest(text.as_bytes())
    }

    /// Every input: the cache key of a finished build.
    fn build_key(&self) -> String {
        let mut text = format!(
            "crashlab kernel builder {BUILDER_VERSION}\narch x86_64\nsource {}\nconfig {}\n",
            self.source_digest,
            self.config_key()
        );
        for patch in &self.patches {
            text += &format!("patch {}\n", patch.digest);
        }
        source::bytes_digest(text.as_bytes())
    }
}

fn read_fragment(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config-fragment {}: cannot read it", path.display()))?;
    if let Some((line, content)) = config::malformed_lines(&text).into_iter().next() {
        bail!(
            "{}:{line}: {content:?} is not a configuration line (CONFIG_X=y, CONFIG_X=\"text\" or \
             \"# CONFIG_X is not set\")",
            path.display()
        );
    }
    Ok(text)
}

/// The compiler and linker, as they name themselves: part of the key.
fn toolchain() -> String {
    let first_line = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!("{}; {}", first_line("gcc"), first_line("ld"))
}

/// Where a build's pieces live in the cache.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn trees(&self, inputs: &Inputs) -> PathBuf {
        self.root.join("trees").join(&inputs.source_digest[..16])
    }
    fn finished(&self, key: &str) -> PathBuf {
        self.root.join("builds").join(&key[..16])
    }
}

/// Builds the kernel, or finds it in the cache.
pub fn build_kernel(req: &KernelRequest, crashlab_fragment: &Path) -> Result<BuiltKernel> {
    let inputs = Inputs::read(req, crashlab_fragment)?;
    let layout = Layout {
        root: std::path::absolute(&req.cache)?,
    };
    let key = inputs.build_key();
    let finished = layout.finished(&key);
    if let Some(built) = read_finished(&finished)? {
        return Ok(built);
    }
    let trees = layout.trees(&inputs);
    std::fs::create_dir_all(&trees).with_context(|| format!("cannot create {} (disk full?)", trees.display()))?;
    let _lock = lock(&trees.join("lock"))?;
    // Another process may have finished it while we waited for the lock.
    if let Some(built) = read_finished(&finished)? {
        return Ok(built);
    }
    let t = Instant::now();
    let (log, image_config) = build_in_tree(req, &inputs, &trees)?;
    let identity = identity(
        req,
        &inputs,
        &key,
        &image_config.release,
        t.elapsed().as_secs_f64(),
        &image_config.config,
    );
    publish(&finished, &image_config, &log, &identity)?;
    let mut built = read_finished(&finished)?.context("the build just published is unreadable")?;
    built.cached = false;
    Ok(built)
}

/// What a build left in its `O=` directory.
struct Made {
    image: PathBuf,
    config: String,
    release: String,
}

fn build_in_tree(req: &KernelRequest, inputs: &Inputs, trees: &Path) -> Result<(PathBuf, Made)> {
    let work = WorkTree {
        tree: trees.join("tree"),
        orig: trees.join("orig"),
        state: trees.join("patches.json"),
    };
    if !work.tree.is_dir() {
        eprintln!(
            "xtask kernel: unpacking {} (once per source)",
            inputs.source.path().display()
        );
        inputs.source.copy_to(&work.tree)?;
    }
    patches::set_patches(&work, &inputs.patches)?;
    let build_dir = trees.join(format!("build-{}", &inputs.config_key()[..16]));
    forget_if_moved(&build_dir, &work.tree)?;
    let log = trees.join(format!("build-{}.log", &inputs.build_key()[..16]));
    let _ = std::fs::remove_file(&log);
    let make = build::Make {
        tree: &work.tree,
        build: &build_dir,
        log: &log,
        jobs: req.jobs,
    };
    if work.tree.join(".config").exists() || work.tree.join("include/config").exists() {
        make.clean_source_tree()?;
    }
    eprintln!(
        "xtask kernel: building {} ({} patch(es), -j{}); log: {}",
        source::version(&work.tree),
        inputs.patches.len(),
        req.jobs,
        log.display()
    );
    make.configure(&inputs.fragments)?;
    make.run("make bzImage", &["bzImage"])?;
    let made = Made {
        image: make.image(),
        config: std::fs::read_to_string(build_dir.join(".config"))?,
        release: make.release()?,
    };
    Ok((log, made))
}

/// A `make O=` directory names its source tree by absolute path (in its
/// Makefile and every dependency file): after the cache moved, it is
/// cleared rather than trusted.
fn forget_if_moved(build_dir: &Path, tree: &Path) -> Result<()> {
    let marker = build_dir.join("crashlab-source-tree");
    let recorded = std::fs::read_to_string(&marker).ok();
    let here = tree.display().to_string();
    if build_dir.exists() && recorded.as_deref() != Some(&here) {
        eprintln!(
            "xtask kernel: {} was made for another tree path: starting it afresh",
            build_dir.display()
        );
        std::fs::remove_dir_all(build_dir).with_context(|| format!("cannot clear {}", build_dir.display()))?;
    }
    std::fs::create_dir_all(build_dir)?;
    std::fs::write(&marker, here).with_context(|| format!("cannot write {} (disk full?)", marker.display()))
}

/// What results record of a built kernel.
fn identity(
    req: &KernelRequest,
    inputs: &Inputs,
    key: &str,
    release: &str,
    build_s: f64,
    config: &str,
) -> serde_json::Value {
    let named = |name: &str, digest: &str| json!({ "name": name, "digest": format!("blake3:{digest}") });
    let mut rebuild = format!("cargo xtask kernel --source {}", inputs.source.path().display());
    for patch in &inputs.patches {
        rebuild += &format!(" --patch {}", patch.path.display());
    }
    for path in &req.fragments {
        rebuild += &format!(
            " --config-fragment {}",
            std::path::absolute(path).unwrap_or(path.clone()).display()
        );
    }
    if let Some(out) = &req.out {
        rebuild += &format!(" --out {}", std::path::absolute(out).unwrap_or(out.clone()).display());
    }
    json!({
        "release": release,
        "build_key": format!("blake3:{key}"),
        "source": named(&inputs.source.path().display().to_string(), &inputs.source_digest),
        "patches": inputs.patches.iter().map(|p| named(&p.name, &p.digest)).collect::<Vec<_>>(),
        "config_base": config::BASE_TARGET,
        "config_fragments": inputs.fragments.iter()
            .map(|(name, text)| named(name, &source::bytes_digest(text.as_bytes())))
            .collect::<Vec<_>>(),
        "config_digest": format!("blake3:{}", source::bytes_digest(config.as_bytes())),
        "toolchain": inputs.toolchain,
        "build_seconds": (build_s * 10.0).round() / 10.0,
        "rebuild": rebuild,
    })
}

/// Moves a finished build into the cache whole: a directory renamed into
/// place, so a reader sees all of it or none.
fn publish(finished: &Path, made: &Made, log: &Path, identity: &serde_json::Value) -> Result<()> {
    let staging = finished.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let write = || -> std::io::Result<()> {
        std::fs::copy(&made.image, staging.join("bzImage"))?;
        std::fs::write(staging.join("config"), &made.config)?;
        std::fs::copy(log, staging.join("build.log"))?;
        std::fs::write(
            staging.join("kernel.json"),
            serde_json::to_string_pretty(identity).expect("json") + "\n",
        )?;
        let _ = std::fs::remove_dir_all(finished);
        std::fs::rename(&staging, finished)
    };
    write().with_context(|| format!("cannot write {} (disk full?)", finished.display()))
}

fn read_finished(dir: &Path) -> Result<Option<BuiltKernel>> {
    let Ok(text) = std::fs::read_to_string(dir.join("kernel.json")) else {
        return Ok(None);
    };
    let identity: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is corrupt: remove {}",
            dir.join("kernel.json").display(),
            dir.display()
        )
    })?;
    let image = dir.join("bzImage");
    if !image.is_file() {
        return Ok(None);
    }
    Ok(Some(BuiltKernel {
        release: identity["release"].as_str().unwrap_or_default().to_string(),
        image,
        config: dir.join("config"),
        identity,
        cached: true,
    }))
}

/// An exclusive lock on `path`, held until dropped: one build per source
/// tree at a time. Says so when it has to wait.
fn lock(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!(
            "xtask kernel: another build of this source holds {}: waiting for it",
            path.display()
        );
        file.lock()?;
    }
    Ok(file)
}

/// `cargo xtask kernel`: build (or find), then the images directory, then
/// a boot of it.
pub fn run(sh: &xshell::Shell, args: &[String]) -> Result<i32> {
    let req = KernelRequest::parse(args)?;
    let out = req
        .out
        .clone()
        .with_context(|| format!("--out DIR is required: the images directory to write ({USAGE})"))?;
    crate::deps::ensure(sh)?;
    tools::ensure()?;
    let t = Instant::now();
    let built = build_kernel(&req, Path::new(CRASHLAB_FRAGMENT))?;
    eprintln!(
        "xtask kernel: {} {} in {:.1} s ({})",
        built.release,
        if built.cached { "found in the cache" } else { "built" },
        t.elapsed().as_secs_f64(),
        built.image.display()
    );
    let images = crate::images::build(
        sh,
        &crate::images::ImageRequest {
            built: Some(crate::images::BuiltKernelImage {
                image: built.image.clone(),
                config: config::parse(
                    &std::fs::read_to_string(&built.config)
                        .with_context(|| format!("cannot read {}", built.config.display()))?,
                ),
                release: built.release.clone(),
                identity: built.identity.clone(),
            }),
            out: Some(out),
            ..Default::default()
        },
    )?;
    if req.no_boot {
        return Ok(0);
    }
    boot_check(sh, &images)
}

/// The images must boot: `crashlab doctor` on them (a boot, the guest
/// kernel's filesystems), its words when they do not.
fn boot_check(sh: &xshell::Shell, images: &Path) -> Result<i32> {
    let images_arg = images.display().to_string();
    let command = xshell::cmd!(
        sh,
        "cargo run --quiet --release -p crashlab-controller --bin crashlab -- doctor --images-dir {images_arg}"
    );
    let out = crate::children::output(command)?;
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "the kernel built, but the guest it makes is not usable (crashlab doctor --images-dir {}):\n{}",
            images.display(),
            said.trim_end()
        );
    }
    eprintln!(
        "xtask kernel: images at {} boot (crashlab doctor passed)",
        images.display()
    );
    Ok(0)
}

pub mod tools;

#[cfg(test)]
mod tests;
