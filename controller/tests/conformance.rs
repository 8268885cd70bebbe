//! The msync conformance table against what the distro kernel (Debian
//! 12's Linux 6.1) gives, on a real ext4 in a real guest. A row that
//! changes is either a kernel that behaves differently (a finding for the
//! table) or a broken suite.

mod util;

use util::vm_harness;

/// What Linux 6.1 answers, per case: (result, effect). Two of them differ
/// from POSIX (flags without MS_SYNC or MS_ASYNC are accepted), which the
/// table reports as findings.
const LINUX_6_1: &[(&str, &str, &str)] = &[
    ("unaligned-addr", "EINVAL", "-"),
    ("sync-and-async", "EINVAL", "-"),
    ("unknown-flag", "EINVAL", "-"),
    ("no-flags", "0", "-"),
    ("invalidate-only", "0", "-"),
    ("zero-length", "0", "page-written=no"),
    ("length-not-page-multiple", "0", "tail-page-written=yes"),
    ("ms-async", "0", "page-written=no"),
    ("ms-sync", "0", "page-written=yes"),
    ("mtime-ctime-updated", "0", "mtime=yes,ctime=yes"),
    ("invalidate-locked", "EBUSY", "mlock=yes"),
    ("private-mapping", "0", "file-changed=no"),
    ("unmapped", "ENOMEM", "-"),
    ("partly-unmapped", "ENOMEM", "mapped-part-written=yes"),
    ("anonymous-mapping", "0", "-"),
];

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn the_conformance_table_matches_the_distro_kernel() {
    let h = vm_harness("conformance");
    let out = util::crashlab()
        .args(["conformance", "--fs=ext4", "--id=conf", "--images-dir"])
        .arg(&h.images_dir)
        .arg("--results-dir")
        .arg(h.results.path())
        .output()
        .unwrap();
    let stdout = util::expect_exit(&out, 0);
    assert!(stdout.contains("ext4: observed / vs POSIX"), "{stdout}");
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.results.path().join("conf/conformance.json")).unwrap())
            .unwrap();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), LINUX_6_1.len());
    for (row, (case, result, effect)) in rows.iter().zip(LINUX_6_1) {
        assert_eq!(row["case"], *case);
        let seen = &row["observed"]["ext4"][0];
        let errno = seen["errno"].as_i64().unwrap() as i32;
        let name = models::conformance::errno_name(errno);
        let got = if seen["rc"] == 0 { "0".to_string() } else { name };
        assert_eq!(
            (got.as_str(), seen["detail"].as_str().unwrap()),
            (*result, *effect),
            "{case}: {row}"
        );
    }
    // Where Linux differs from POSIX, the table says so.
    let differs: Vec<&str> = rows
        .iter()
        .filter(|r| r["observed"]["ext4"][1] == "DIFFERS")
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(differs, vec!["no-flags", "invalidate-only"]);
}
