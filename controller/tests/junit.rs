//! JUnit output from campaign results: fixtures that real campaigns wrote
//! (trimmed), read back into test cases, and the XML held to
//! `docs/junit.xsd` with xmllint.

use std::path::{Path, PathBuf};

use tools::junit::{self, Outcome};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/results")
        .join(name)
}

const FIXTURES: [&str; 4] = [
    "power-loss-barrier0",
    "kernel-crash-ack-before-sync",
    "kernel-crash-clean",
    "unfinished",
];

#[test]
fn each_campaign_becomes_a_case_with_its_verdict_and_replay_command() {
    let case = |name| junit::case_from_campaign(&fixture(name)).unwrap();

    let pl = case("power-loss-barrier0");
    assert_eq!(pl.name, "ext4 records -o barrier=0 ms-sync");
    assert_eq!(pl.classname, "crashlab.power-loss");
    let Outcome::Failed { message, rule, detail } = &pl.outcome else {
        panic!("{pl:?}")
    };
    assert_eq!(rule, "file-present");
    assert!(
        message.starts_with("950 violation(s); first: file-present"),
        "{message}"
    );
    assert!(
        detail.contains("crashlab replay-state --campaign ") && detail.contains(" --trial 0 --state 1"),
        "{detail}"
    );

    let kc = case("kernel-crash-ack-before-sync");
    let Outcome::Failed { rule, detail, .. } = &kc.outcome else {
        panic!("{kc:?}")
    };
    assert_eq!(rule, "acked-record-lost");
    assert!(
        detail.contains("--planted-bug=ack-before-sync") && detail.contains("--only-trial=0"),
        "{detail}"
    );
    assert!(detail.contains("found: @0x0: 00000000"), "{detail}");

    let clean = case("kernel-crash-clean");
    assert_eq!(clean.outcome, Outcome::Passed);
    assert!(
        clean.system_out.contains("trials: 20 run, 20 passed"),
        "{}",
        clean.system_out
    );

    let Outcome::Error { message } = case("unfinished").outcome else {
        panic!("an unfinished campaign is not a pass")
    };
    assert!(message.contains("--resume"), "{message}");
}

#[test]
fn a_directory_that_is_not_a_campaign_is_named() {
    let err = junit::case_from_campaign(Path::new("/nonexistent/campaign")).unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/campaign/campaign.json"),
        "{err:#}"
    );
}

#[test]
#[ignore = "needs xmllint (libxml2-utils): `cargo xtask test` installs and runs it"]
fn the_junit_file_is_valid_against_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("junit.xml");
    let dirs: Vec<PathBuf> = FIXTURES.iter().map(|f| fixture(f)).collect();
    junit::write(&out, "fixtures", &dirs).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/junit.xsd");
    let check = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&schema)
        .arg(&out)
        .output()
        .expect("xmllint runs (apt install libxml2-utils)");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let xml = std::fs::read_to_string(&out).unwrap();
    assert!(xml.contains("tests=\"4\" failures=\"2\" errors=\"1\""), "{xml}");
    // The schema itself rejects what it should: a case without a name.
    let broken = dir.path().join("broken.xml");
    std::fs::write(&broken, xml.replacen("<testcase name=", "<testcase nam=", 1)).unwrap();
    let check = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&schema)
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!check.status.success(), "the schema accepted a testcase without a name");
}
