//! `crashlab-lmdb`: LMDB as a program under crashlab's workload protocol
//! (docs/workload-protocol.md), the first third-party client.
//!
//! - `crashlab-lmdb workload [--nosync] [--ack-before-commit]`: opens an
//!   environment in `$CRASHLAB_DATA_DIR/lmdb` with `MDB_WRITEMAP` (LMDB
//!   writes through a shared mapping and commits with `msync`), then
//!   commits `$CRASHLAB_ITEMS` transactions. Transaction `id` puts 1 to 8
//!   keys `item/<id>/<j>` with seeded values and a marker `commit/<id>`
//!   holding its digest; `BEGIN id digest` before it, `ACK id` after
//!   `mdb_txn_commit` returned 0. `--nosync` (`MDB_NOSYNC`: commits do not
//!   sync) and `--ack-before-commit` (a program that lies) are negative
//!   controls: both must be caught. `--exit-after N` and `--hang-after N`
//!   are faults of the program itself, which crashlab must report as such.
//! - `crashlab-lmdb check`: opens the recovered environment with LMDB
//!   itself, read-only, and reports every transaction it finds whole
//!   (`ITEM id digest`, the digest recomputed from the keys found), damage
//!   (`CORRUPT`: keys without their marker, a marker that does not match
//!   its keys), then `END n`. No environment yet: `END 0`. An environment
//!   LMDB cannot open or read: exit 1.
//!
//! Every key and value comes from `$CRASHLAB_SEED`, so a trial replays.

use std::ffi::{CStr, CString};
use std::process::ExitCode;

use crashlab_client::{Checker, Program};
use lmdb_master_sys as ffi;

/// The environment's map: the most the database may grow to. The
/// workload's items are small; this leaves room on a 64 MiB disk.
const MAP_SIZE_BYTES: usize = 32 << 20;
const KEYS_PER_ITEM_MAX: u64 = 8;
const VALUE_MAX_BYTES: u64 = 2000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("workload") => workload(&args[1..]),
        Some("check") => check(&args[1..]),
        _ => Err(Failure::usage(
            "usage: crashlab-lmdb workload [--nosync] [--ack-before-commit] | check",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some((op, errno)) = &f.protocol_err {
                let _ = Program::from_env().err(op, *errno);
            }
            eprintln!("crashlab-lmdb: {}", f.message);
            ExitCode::from(1)
        }
    }
}

struct Failure {
    message: String,
    /// The workload's `ERR op errno` line, when it is the workload failing.
    protocol_err: Option<(String, i32)>,
}

impl Failure {
    fn usage(message: &str) -> Failure {
        Failure {
            message: message.into(),
            protocol_err: None,
        }
    }
}

/// An LMDB call that returned `rc`.
fn lmdb(op: &str, rc: libc::c_int) -> Result<(), Failure> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: mdb_strerror returns a static C string for any code.
    let text = unsafe { CStr::from_ptr(ffi::mdb_strerror(rc)) }
        .to_string_lossy()
        .into_owned();
    Err(Failure {
        message: format!("{op}: {text} ({rc})"),
        protocol_err: Some((op.to_string(), rc)),
    })
}

/// A protocol line that could not be written or answered: the relay is
/// gone or the line is malformed; said as `ERR relay-reply errno`.
fn relay_failure(e: std::io::Error) -> Failure {
    Failure {
        message: format!("the protocol with the relay failed: {e}"),
        protocol_err: Some((
            "relay-reply".into(),
            match e.kind() {
                std::io::ErrorKind::UnexpectedEof => 32,
                _ => e.raw_os_error().unwrap_or(5),
            },
        )),
    }
}

fn env_number(name: &str) -> Result<u64, Failure> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Failure::usage(&format!("${name} is not set to a number: run under crashlab")))
}

fn env_dir() -> Result<String, Failure> {
    let data = std::env::var("CRASHLAB_DATA_DIR").map_err(|_| Failure::usage("$CRASHLAB_DATA_DIR is not set"))?;
    Ok(format!("{data}/lmdb"))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key and its value.
type Pair = (Vec<u8>, Vec<u8>);

/// Item `id`'s keys and values, from the seed.
fn item_pairs(seed: u64, id: u64) -> Vec<Pair> {
    let base = splitmix(seed ^ splitmix(id));
    let keys = 1 + base % KEYS_PER_ITEM_MAX;
    (0..keys)
        .map(|j| {
            let mut state = splitmix(base ^ (j + 1));
            let len = 16 + state % (VALUE_MAX_BYTES - 16);
            let value: Vec<u8> = (0..len)
                .map(|_| {
                    state = splitmix(state);
                    state as u8
                })
                .collect();
            (item_key(id, j), value)
        })
        .collect()
}

fn item_key(id: u64, j: u64) -> Vec<u8> {
    format!("item/{id:016}/{j}").into_bytes()
}

fn marker_key(id: u64) -> Vec<u8> {
    format!("commit/{id:016}").into_bytes()
}

/// FNV-1a over the item's keys and values, in key order, each with its
/// length: 16 hex digits.
fn digest(pairs: &[Pair]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (k, v) in pairs {
        eat(k);
        eat(v);
    }
    format!("{h:016x}")
}

fn val(bytes: &[u8]) -> ffi::MDB_val {
    ffi::MDB_val {
        mv_size: bytes.len(),
        mv_data: bytes.as_ptr() as *mut libc::c_void,
    }
}

/// An open environment, closed on drop.
struct Env(*mut ffi::MDB_env);

impl Env {
    fn open(dir: &str, flags: libc::c_uint) -> Result<Env, Failure> {
        let mut env = std::ptr::null_mut();
        // SAFETY: the out pointer is valid; the handle is closed by Drop.
        lmdb("mdb_env_create", unsafe { ffi::mdb_env_create(&mut env) })?;
        let env = Env(env);
        lmdb("mdb_env_set_mapsize", unsafe {
            ffi::mdb_env_set_mapsize(env.0, MAP_SIZE_BYTES)
        })?;
        let path = CString::new(dir).map_err(|_| Failure::usage("a NUL in the data directory"))?;
        lmdb("mdb_env_open", unsafe {
            ffi::mdb_env_open(env.0, path.as_ptr(), flags, 0o644)
        })?;
        Ok(env)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // SAFETY: created by mdb_env_create; no transaction outlives it.
        unsafe { ffi::mdb_env_close(self.0) }
    }
}

fn fsync_dir(dir: &str) -> Result<(), Failure> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Failure {
            message: format!("fsync of {dir}: {e}"),
            protocol_err: Some(("fsync-dir".into(), e.raw_os_error().unwrap_or(5))),
        })
}

/// The workload's flags: `--nosync`, `--ack-before-commit`, `--exit-after
/// N`, `--hang-after N`.
struct WorkloadArgs {
    /// `MDB_NOSYNC`: commits do not sync (a negative control).
    nosync: bool,
    /// `--ack-before-commit`: each `ACK` comes before its commit (a
    /// negative control: a program that lies).
    lie: bool,
    /// Exit (status 3) after N commits: a fault of the program itself, for
    /// testing that crashlab tells it from the filesystem's.
    exit_after: Option<u64>,
    /// Hang after N commits: the same, as a program that never ends.
    hang_after: Option<u64>,
}

impl WorkloadArgs {
    fn parse(args: &[String]) -> Result<WorkloadArgs, Failure> {
        let mut parsed = WorkloadArgs {
            nosync: false,
            lie: false,
            exit_after: None,
            hang_after: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut count = |flag: &str| {
                it.next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| Failure::usage(&format!("{flag} takes a number")))
            };
            match arg.as_str() {
                "--nosync" => parsed.nosync = true,
                "--ack-before-commit" => parsed.lie = true,
                "--exit-after" => parsed.exit_after = Some(count("--exit-after")?),
                "--hang-after" => parsed.hang_after = Some(count("--hang-after")?),
                other => return Err(Failure::usage(&format!("unknown flag {other:?}"))),
            }
        }
        Ok(parsed)
    }
}

fn workload(args: &[String]) -> Result<(), Failure> {
    let WorkloadArgs {
        nosync,
        lie,
        exit_after,
        hang_after,
    } = WorkloadArgs::parse(args)?;
    let seed = env_number("CRASHLAB_SEED")?;
    let items = env_number("CRASHLAB_ITEMS")?;
    let dir = env_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| Failure {
        message: format!("cannot create {dir}: {e}"),
        protocol_err: Some(("mkdir".into(), e.raw_os_error().unwrap_or(5))),
    })?;
    let flags = ffi::MDB_WRITEMAP | if nosync { ffi::MDB_NOSYNC } else { 0 };
    let env = Env::open(&dir, flags)?;
    // The environment's files exist, sized, synced, and named in their
    // directory before READY: its initial state is durable.
    lmdb("mdb_env_sync", unsafe { ffi::mdb_env_sync(env.0, 1) })?;
    fsync_dir(&dir)?;
    if let Some(data) = std::env::var_os("CRASHLAB_DATA_DIR") {
        fsync_dir(&data.to_string_lossy())?;
    }
    let mut program = Program::from_env();
    program.ready().map_err(relay_failure)?;
    for id in 1..=items {
        let pairs = item_pairs(seed, id);
        let sum = digest(&pairs);
        program.begin(id, &sum).map_err(relay_failure)?;
        let txn = put_item(&env, id, &pairs, &sum)?;
        if lie {
            program.ack(id).map_err(relay_failure)?;
            // The lie's window made wide: the commit comes a while after.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        lmdb("mdb_txn_commit", unsafe { ffi::mdb_txn_commit(txn) })?;
        if !lie {
            program.ack(id).map_err(relay_failure)?;
        }
        if exit_after == Some(id) {
            std::process::exit(3);
        }
        if hang_after == Some(id) {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
    program.done().map_err(relay_failure)?;
    Ok(())
}

/// Begins item `id`'s transaction and puts its keys and its marker (the
/// digest `sum`); the caller commits it, which frees it.
fn put_item(env: &Env, id: u64, pairs: &[Pair], sum: &str) -> Result<*mut ffi::MDB_txn, Failure> {
    let mut txn = std::ptr::null_mut();
    // SAFETY: env is open; txn is committed (which frees it) or the
    // process ends.
    lmdb("mdb_txn_begin", unsafe {
        ffi::mdb_txn_begin(env.0, std::ptr::null_mut(), 0, &mut txn)
    })?;
    let mut dbi = 0;
    lmdb("mdb_dbi_open", unsafe {
        ffi::mdb_dbi_open(txn, std::ptr::null(), 0, &mut dbi)
    })?;
    let marker = marker_key(id);
    for (k, v) in pairs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .chain([(marker.as_slice(), sum.as_bytes())])
    {
        let (mut key, mut value) = (val(k), val(v));
        lmdb("mdb_put", unsafe { ffi::mdb_put(txn, dbi, &mut key, &mut value, 0) })?;
    }
    Ok(txn)
}

fn check(args: &[String]) -> Result<(), Failure> {
    // `--delay-ms N`: a slow checker, for testing that crashlab tells a
    // slow check from a hung recovery.
    match args {
        [] => {}
        [flag, ms] if flag == "--delay-ms" => {
            let ms: u64 = ms.parse().map_err(|_| Failure::usage("--delay-ms takes a number"))?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        _ => return Err(Failure::usage("usage: crashlab-lmdb check [--delay-ms N]")),
    }
    let dir = env_dir()?;
    let mut checker = Checker;
    if !std::path::Path::new(&dir).join("data.mdb").exists() {
        checker.note("no environment yet").map_err(relay_failure)?;
        checker.end(0).map_err(relay_failure)?;
        return Ok(());
    }
    let env = Env::open(&dir, ffi::MDB_RDONLY).map_err(|f| Failure {
        protocol_err: None,
        ..f
    })?;
    let Keys {
        markers,
        mut items,
        mut corrupt,
    } = read_keys(&env)?;
    let mut found = 0u64;
    for (id, marker) in &markers {
        let pairs = items.remove(id).unwrap_or_default();
        let sum = digest(&pairs);
        if marker.as_slice() != sum.as_bytes() {
            corrupt.push(format!(
                "transaction {id}: its keys give digest {sum}, its marker says {}",
                String::from_utf8_lossy(marker)
            ));
            continue;
        }
        checker.item(*id, &sum).map_err(relay_failure)?;
        found += 1;
    }
    for id in items.keys() {
        corrupt.push(format!(
            "transaction {id}: keys without their commit marker (half a transaction)"
        ));
    }
    for what in corrupt {
        checker.corrupt(&what).map_err(relay_failure)?;
    }
    checker.end(found).map_err(relay_failure)?;
    Ok(())
}

/// Every key of a recovered environment, by what it is.
struct Keys {
    /// Transaction id → its marker's value (the digest it committed).
    markers: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Transaction id → its item keys and values, in key order.
    items: std::collections::BTreeMap<u64, Vec<Pair>>,
    /// Damage found so far: keys crashlab-lmdb never writes.
    corrupt: Vec<String>,
}

/// An LMDB call of the checker: a failure is the checker's (exit 1), not
/// the workload's `ERR` line.
fn reading(op: &str, rc: libc::c_int) -> Result<(), Failure> {
    lmdb(op, rc).map_err(|f| Failure {
        protocol_err: None,
        ..f
    })
}

/// Reads every key of `env` in one read-only transaction.
fn read_keys(env: &Env) -> Result<Keys, Failure> {
    let mut txn = std::ptr::null_mut();
    reading("mdb_txn_begin", unsafe {
        ffi::mdb_txn_begin(env.0, std::ptr::null_mut(), ffi::MDB_RDONLY, &mut txn)
    })?;
    let mut dbi = 0;
    reading("mdb_dbi_open", unsafe {
        ffi::mdb_dbi_open(txn, std::ptr::null(), 0, &mut dbi)
    })?;
    let mut cursor = std::ptr::null_mut();
    reading("mdb_cursor_open", unsafe {
        ffi::mdb_cursor_open(txn, dbi, &mut cursor)
    })?;
    // Every key, in order: markers ("commit/...") sort before items.
    let mut markers: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    let mut items: std::collections::BTreeMap<u64, Vec<Pair>> = Default::default();
    let mut corrupt = Vec::new();
    loop {
        let mut key = val(&[]);
        let mut data = val(&[]);
        let rc = unsafe { ffi::mdb_cursor_get(cursor, &mut key, &mut data, ffi::MDB_NEXT) };
        if rc == ffi::MDB_NOTFOUND {
            break;
        }
        reading("mdb_cursor_get", rc)?;
        // SAFETY: LMDB returns pointers into the map, valid in this txn.
        let k = unsafe { std::slice::from_raw_parts(key.mv_data as *const u8, key.mv_size) }.to_vec();
        let v = unsafe { std::slice::from_raw_parts(data.mv_data as *const u8, data.mv_size) }.to_vec();
        let text = String::from_utf8_lossy(&k).into_owned();
        let id = |rest: &str| rest.split('/').next().and_then(|n| n.parse::<u64>().ok());
        match (text.strip_prefix("commit/"), text.strip_prefix("item/")) {
            (Some(rest), _) if id(rest).is_some() => {
                markers.insert(id(rest).unwrap(), v);
            }
            (_, Some(rest)) if id(rest).is_some() => items.entry(id(rest).unwrap()).or_default().push((k, v)),
            _ => corrupt.push(format!("a key crashlab-lmdb never writes: {text:?}")),
        }
    }
    unsafe { ffi::mdb_cursor_close(cursor) };
    unsafe { ffi::mdb_txn_abort(txn) };
    Ok(Keys {
        markers,
        items,
        corrupt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_seeded_and_their_digests_differ() {
        assert_eq!(item_pairs(7, 3), item_pairs(7, 3));
        assert_ne!(digest(&item_pairs(7, 3)), digest(&item_pairs(8, 3)));
        assert_ne!(digest(&item_pairs(7, 3)), digest(&item_pairs(7, 4)));
        for id in 1..50 {
            let pairs = item_pairs(1, id);
            assert!((1..=KEYS_PER_ITEM_MAX as usize).contains(&pairs.len()));
            assert!(pairs
                .iter()
                .all(|(_, v)| (16..VALUE_MAX_BYTES as usize).contains(&v.len())));
            // Keys sort as the checker meets them.
            assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }
}
