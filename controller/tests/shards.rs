//! A campaign run as shards (`run --jobs 3`: three `--shard i/3` runs side
//! by side, merged) against the same campaign unsharded: the same trials,
//! crash points and verdicts per state. Also on a real one-node Slurm
//! cluster (`crashlab slurm --submit`), where its packages can be installed.

mod util;

use std::path::Path;

use util::vm_harness;

/// Kernel crash through Slurm (one state a trial, quicker): the cluster is
/// what is under test there.
const SLURM_FLAGS: [&str; 4] = ["--crash-model=kernel-crash", "--trials=3", "--records=200", "--seed=9"];

const FLAGS: [&str; 6] = [
    "--crash-model=power-loss",
    "--trials=3",
    "--records=80",
    "--state-budget=6",
    "--crash-points=acks",
    "--seed=9",
];

/// Per trial: seed, crash point, verdict; per state: its key and verdict.
fn facts(dir: &Path) -> (Vec<String>, Vec<String>) {
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let trials = lines("trials.jsonl")
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {}",
                t["trial"], t["workload_seed"], t["crash_point"], t["passed"]
            )
        })
        .collect();
    let states = lines("states.jsonl")
        .iter()
        .map(|s| format!("{} {} {}", s["trial"], s["state"], s["passed"]))
        .collect();
    (trials, states)
}

#[test]
#[ignore = "boots QEMU guests: `cargo xtask test` runs it"]
fn three_shards_merged_give_the_unsharded_campaigns_verdicts() {
    let h = vm_harness("shards");
    let whole = h.run("whole", &FLAGS);
    assert_eq!(whole.status.code(), Some(0));
    let sharded = h.run("sharded", &[&FLAGS[..], &["--jobs=3"]].concat());
    assert_eq!(
        sharded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sharded.stderr)
    );
    let (whole_trials, whole_states) = facts(&h.results.path().join("whole"));
    let (merged_trials, merged_states) = facts(&h.results.path().join("sharded"));
    assert_eq!(whole_trials.len(), 3);
    assert_eq!(merged_trials, whole_trials);
    assert_eq!(merged_states, whole_states);
    // Each shard ran its share only.
    for i in 0..3 {
        let shard = h.results.path().join(format!("sharded.shards/shard-{i}"));
        let n = std::fs::read_to_string(shard.join("trials.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(n, 1, "shard {i} ran {n} trials");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.results.path().join("sharded/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["trials_run"], 3);
    assert_eq!(summary["states_checked"], whole_states.len());
}

/// A one-node Slurm cluster on this machine, as ../shared/FACTS.md found to
/// work (root, munge, slurmctld and slurmd with the node's two CPUs); its
/// daemons are stopped on drop.
struct OneNodeSlurm {
    pids: Vec<String>,
}

fn sh(script: &str) -> std::process::Output {
    std::process::Command::new("sh").arg("-c").arg(script).output().unwrap()
}

impl OneNodeSlurm {
    /// `Err(reason)` only where the packages cannot be installed.
    fn start() -> Result<OneNodeSlurm, String> {
        let have = |c: &str| sh(&format!("command -v {c}")).status.success();
        if !(have("slurmctld") && have("slurmd") && have("sbatch") && have("munged")) {
            let install = sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge");
            if !install.status.success() {
                return Err(format!(
                    "slurm-wlm and munge cannot be installed here: {}",
                    String::from_utf8_lossy(&install.stderr).lines().last().unwrap_or("")
                ));
            }
        }
        let host = String::from_utf8_lossy(&sh("hostname -s").stdout).trim().to_string();
        let conf = format!(
            "ClusterName=crashlab\nSlurmctldHost={host}\nAuthType=auth/munge\nProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nSlurmUser=root\n\
             SlurmctldPidFile=/run/crashlab-slurmctld.pid\nSlurmdPidFile=/run/crashlab-slurmd.pid\n\
             StateSaveLocation=/var/spool/crashlab-slurmctld\nSlurmdSpoolDir=/var/spool/crashlab-slurmd\n\
             ReturnToService=2\nNodeName={host} CPUs=2 State=UNKNOWN\n\
             PartitionName=crashlab Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
        );
        std::fs::create_dir_all("/etc/slurm").unwrap();
        std::fs::write("/etc/slurm/slurm.conf", conf).unwrap();
        let started = sh("set -e
             mkdir -p /run/munge /var/spool/crashlab-slurmctld /var/spool/crashlab-slurmd /var/log/munge
             chown munge:munge /run/munge /var/log/munge
             [ -s /etc/munge/munge.key ] || mungekey --create
             chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
             pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
             slurmctld
             slurmd");
        if !started.status.success() {
            return Err(format!(
                "the daemons did not start: {}",
                String::from_utf8_lossy(&started.stderr)
            ));
        }
        let cluster = OneNodeSlurm {
            pids: vec!["/run/crashlab-slurmd.pid".into(), "/run/crashlab-slurmctld.pid".into()],
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let state = String::from_utf8_lossy(&sh("sinfo -h -o %t").stdout).trim().to_string();
            if state == "idle" {
                return Ok(cluster);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node is {state:?}, not idle, after 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

impl Drop for OneNodeSlurm {
    fn drop(&mut self) {
        let _ = sh("scancel --user=root 2>/dev/null");
        for pid in &self.pids {
            let _ = sh(&format!("[ -f {pid} ] && kill $(cat {pid})"));
        }
    }
}

#[test]
#[ignore = "boots QEMU guests and a Slurm cluster: `cargo xtask test` runs it"]
fn a_slurm_job_array_of_three_shards_and_its_merge_give_the_unsharded_verdicts() {
    let h = vm_harness("slurm");
    let cluster = match OneNodeSlurm::start() {
        Ok(cluster) => cluster,
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
    let out = util::crashlab()
        .args(["slurm", "--shards=3", "--submit", "--campaign-id=c"])
        .args(SLURM_FLAGS)
        .arg(format!("--images-dir={}", h.images_dir.display()))
        .arg(format!("--results-dir={}", h.results.path().display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("submitted: array job"), "{text}");
    let campaign = h.results.path().join("c/campaign");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    while !String::from_utf8_lossy(&sh("squeue -h").stdout).trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the jobs did not end within 15 minutes"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    assert!(
        campaign.join("report.html").is_file(),
        "the merge job wrote no report: {}",
        std::fs::read_to_string(h.results.path().join("c/slurm/merge.out")).unwrap_or_default()
    );
    let whole = h.run("whole", &SLURM_FLAGS);
    assert_eq!(whole.status.code(), Some(0));
    assert_eq!(facts(&campaign).0, facts(&h.results.path().join("whole")).0);
    // A rerun resubmits nothing: every shard finished.
    let again = util::crashlab()
        .args(["slurm", "--resume"])
        .arg(h.results.path().join("c"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("every shard"),
        "{again:?}"
    );
    drop(cluster);
}
