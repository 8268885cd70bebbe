//! `crashlab report`: on fixtures real campaigns wrote (results schema 1.0,
//! as older runs left them), and on a fresh `barrier=0` campaign in a real
//! guest, opened in headless Chromium: the screenshot must show each plot
//! drawing its data.

mod util;

use std::path::{Path, PathBuf};

use util::vm_harness;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
}

fn report(dir: &Path) -> (Option<i32>, String) {
    let out = util::crashlab().arg("report").arg(dir).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn older_results_are_reported_and_a_newer_major_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), dir.path());
    // A directory of campaigns: each is a row.
    let (code, text) = report(dir.path());
    assert_eq!(code, Some(0), "{text}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    for want in [
        "power-loss: ext4 -o barrier=0",
        "records ms-sync + planted ack-before-sync",
        "crashlab replay-state --campaign ",
        "acked record 24 was lost: the slot holds zeros",
        "<svg",
        // Schema 1.0 results carry no times: said, not drawn empty.
        "No plot: fewer than two states carry their time",
    ] {
        assert!(html.contains(want), "the report lacks {want:?}");
    }
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "the page loads nothing"
    );

    let campaign = dir.path().join("kernel-crash-clean");
    let meta_path = campaign.join("campaign.json");
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["results_schema"] = "2.0".into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let (code, text) = report(&campaign);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("results schema 2.0") && text.contains("reads 1.x"),
        "{text}"
    );

    let (code, text) = report(&dir.path().join("no-such-dir"));
    assert_eq!(code, Some(2));
    assert!(text.contains("no-such-dir"), "{text}");
}

/// Pixels of exactly this colour in an RGB(A) PNG.
fn pixels_of(png_path: &Path, (r, g, b): (u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3, "not an RGB screenshot: {:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| p[0] == r && p[1] == g && p[2] == b)
        .count()
}

#[test]
#[ignore = "boots QEMU guests and runs Chromium: `cargo xtask test` runs it"]
fn a_barrier0_report_draws_every_plot_in_chromium() {
    let h = vm_harness("report");
    let out = h.run(
        "b0",
        &[
            "--crash-model=power-loss",
            "--mount-opts=barrier=0",
            "--crash-points=end",
            "--records=150",
            "--trials=1",
            "--state-budget=40",
            "--seed=1",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "barrier=0 must lose acked records");
    let campaign = h.results.path().join("b0");
    let (code, text) = report(&campaign);
    assert_eq!(code, Some(0), "{text}");
    let page = campaign.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("expected ") && html.contains("<b class=\"d\">"),
        "no byte diff in the report"
    );
    assert_eq!(html.matches("<svg").count(), 4, "four plots");
    // The coverage plot's table: barrier=0 leaves one epoch of all the
    // run's writes, sampled (its share of a model past 10^19 draws no bar).
    assert!(
        html.contains("Coverage of the power-loss model by epoch size"),
        "no coverage section"
    );
    assert!(html.contains("<th>optional writes</th>"), "no coverage table");

    let shot = h.results.path().join("report.png");
    let mut chromium = std::process::Command::new("chromium")
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg("--window-size=1280,4400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium runs (apt-get install chromium; `cargo xtask deps` installs it)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while chromium.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = chromium.kill();
            panic!("chromium did not finish the screenshot in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(shot.is_file(), "no screenshot");
    for (name, colour) in [
        ("lost records", tools::report::LOST_COLOUR),
        ("loss window", tools::report::WINDOW_COLOUR),
        ("states per second", tools::report::RATE_COLOUR),
    ] {
        let n = pixels_of(&shot, colour);
        assert!(
            n >= 30,
            "the {name} plot drew {n} pixels of its data colour in the screenshot"
        );
    }
}
