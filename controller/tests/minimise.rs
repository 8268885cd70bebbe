//! Minimisation of a violating power-loss state, on a real `barrier=0`
//! campaign: the minimised state still violates, and keeping any one of its
//! lost writes makes it pass, each checked independently by replaying the
//! state file through `replay-state`.

mod util;

use std::path::Path;

use util::vm_harness;

fn replay(h: &util::Harness, campaign: &Path, state_file: &Path) -> (Option<i32>, serde_json::Value) {
    let out = util::crashlab()
        .args(["replay-state", "--trial=0", "--checker=kernel", "--campaign"])
        .arg(campaign)
        .arg("--state-file")
        .arg(state_file)
        .arg("--images-dir")
        .arg(&h.images_dir)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("replay-state printed no JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), json)
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn a_barrier0_state_minimises_to_the_writes_whose_loss_breaks_the_promise() {
    let h = vm_harness("minimise");
    let out = h.run(
        "b0",
        &[
            "--crash-model=power-loss",
            "--mount-opts=barrier=0",
            "--crash-points=end",
            "--records=120",
            "--trials=1",
            "--state-budget=12",
            "--seed=2",
            "--minimise",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "barrier=0 must lose acked records");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("minimised, the first failing state") && stdout.contains("that matter"),
        "{stdout}"
    );
    let campaign = h.results.path().join("b0");
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(campaign.join("minimised.json")).unwrap()).unwrap();
    let lost: Vec<u64> = outcome["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["log_index"].as_u64().unwrap())
        .collect();
    assert!(
        !lost.is_empty() && lost.len() < outcome["lost_before"].as_u64().unwrap() as usize,
        "{outcome}"
    );
    assert_eq!(outcome["one_minimal"], true, "{outcome}");
    assert!(
        outcome["lost"][0]["holds"].as_str().unwrap().starts_with("ext4 block"),
        "{outcome}"
    );

    // The minimised state replays, and still violates the same rule.
    let state_file = Path::new(outcome["state_file"].as_str().unwrap()).to_path_buf();
    let (code, json) = replay(&h, &campaign, &state_file);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(
        json["verdicts"][0][1]["violations"][0]["rule"], outcome["rule"],
        "{json}"
    );

    // Keeping any one lost write (adding it to the state) makes it pass.
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    for w in &lost {
        let mut kept: Vec<u64> = state["extra_writes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        kept.push(*w);
        kept.sort_unstable();
        let mut one_kept = state.clone();
        one_kept["extra_writes"] = serde_json::json!(kept);
        let file = h.results.path().join(format!("keep-{w}.json"));
        std::fs::write(&file, one_kept.to_string()).unwrap();
        let (code, json) = replay(&h, &campaign, &file);
        assert_eq!(code, Some(0), "keeping write {w} should pass: {json}");
    }
}
