//! The status page rendered by a real browser: headless Chromium loads the leader's page
//! of a live 3-replica cluster; the rendered DOM must name the leader, list the three
//! members, show the health banner and some notable events. The screenshot is saved to
//! `target/status-page.png`.
//!
//! Without a `chromium` binary the test prints `SKIPPED: status page test (no chromium)`
//! and passes, unless `KVS_REQUIRE_CHROMIUM=1` (as in CI), where it fails.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::*;
use common::*;
use tests::cluster::{wait_for, Cluster, ClusterOptions};

/// Bound on one run of Chromium.
const CHROMIUM_BOUND: Duration = Duration::from_secs(90);
/// Bound on the page reporting the cluster healthy.
const HEALTH_BOUND: Duration = Duration::from_secs(20);

/// The `chromium` executable on `PATH`, if any.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Runs Chromium headless with `args` then `url`, bounded by [`CHROMIUM_BOUND`]; returns
/// its standard output.
fn run_chromium(cluster: &Cluster, bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out_path = profile.join("stdout.txt");
    let out = std::fs::File::create(&out_path).or_fail(cluster, "chromium output file");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .or_fail(cluster, "starting chromium");
    let started = Instant::now();
    let status = loop {
        match child.try_wait().or_fail(cluster, "waiting for chromium") {
            Some(status) => break status,
            None if started.elapsed() > CHROMIUM_BOUND => {
                let _ = child.kill();
                let _ = child.wait();
                fail(
                    cluster,
                    format!("chromium {args:?} took over {CHROMIUM_BOUND:?}"),
                );
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    check!(
        cluster,
        status.success(),
        "chromium {args:?} failed: {status}"
    );
    std::fs::read_to_string(&out_path).or_fail(cluster, "chromium output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var("KVS_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("KVS_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)");
        }
        println!("SKIPPED: status page test (no chromium)");
        return;
    };
    let cluster = common::start(ClusterOptions {
        nodes: 3,
        extra_args: stable_admin_args(),
        ..ClusterOptions::default()
    });
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let client = client(&cluster, CHECK_TIMEOUT);
    for i in 0..50 {
        client
            .put(format!("key-{i}"), format!("value-{i}"))
            .await
            .or_fail(&cluster, "put");
    }
    // A follower goes away and comes back: the page shows the link lost and restored.
    let follower = ids.iter().copied().find(|&id| id != leader).unwrap_or(1);
    cluster.kill(follower).or_fail(&cluster, "kill");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(follower).or_fail(&cluster, "restart");
    let leader = wait_leader(&cluster, &ids).await;
    wait_converged(&cluster, &ids, CONVERGE_BOUND).await;
    let addr = admin_addr(&cluster, leader).await;
    wait_for(
        &format!("node {leader} to report healthy"),
        HEALTH_BOUND,
        POLL,
        || async move {
            let answer = http_get(addr, "/health").await.ok()?;
            (answer.status == 200).then_some(())
        },
    )
    .await
    .or_fail(&cluster, "health");

    let url = format!("http://{addr}/");
    let scratch = tempfile::tempdir().or_fail(&cluster, "temp dir");
    let dom = run_chromium(&cluster, &bin, scratch.path(), &["--dump-dom"], &url);
    check!(
        &cluster,
        dom.contains(&format!("<b id=\"leader\">{leader}</b>")),
        "the rendered page does not name leader {leader}:\n{dom}"
    );
    check!(
        &cluster,
        dom.contains("id=\"banner\">HEALTHY</div>"),
        "no HEALTHY banner in the rendered page:\n{dom}"
    );
    let members = dom.matches("<tr class=\"member\"").count();
    check!(&cluster, members == 3, "{members} members listed:\n{dom}");
    for id in &ids {
        check!(
            &cluster,
            dom.contains(&format!("data-id=\"{id}\"")),
            "member {id} missing:\n{dom}"
        );
    }
    check!(
        &cluster,
        dom.matches("<li class=\"event\"").count() >= 3
            && dom.contains(&format!("link to peer {follower}")),
        "the events list is empty or misses the follower's link:\n{dom}"
    );

    let png = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let screenshot = format!("--screenshot={}", png.display());
    run_chromium(
        &cluster,
        &bin,
        scratch.path(),
        &[&screenshot, "--window-size=1600,1000"],
        &url,
    );
    let bytes = std::fs::read(&png).or_fail(&cluster, "reading the screenshot");
    check!(
        &cluster,
        bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a screenshot ({} bytes)",
        png.display(),
        bytes.len()
    );
    eprintln!("  status page screenshot: {}", png.display());
}
