//! libp2p's own daemon interop suite, `@libp2p/interop`, with `hyphae daemon` as its "go" node and go's
//! p2pd as its "js" node (`interop/js-interop/runner.mjs`). Its own test binary, so it runs alone: the
//! suite starts two daemons per test and its hooks dial with go's timeouts, which a loaded machine can
//! miss.

#[path = "../../hyphae/tests/common/mod.rs"]
mod common;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hyphae");

/// One run of the suite: its summary line and its FAIL lines.
async fn run_suite(p2pd: &std::path::Path) -> (String, Vec<String>) {
    let dir = common::repo_root().join("interop/js-interop");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new("node")
            .arg("--import")
            .arg(common::repo_root().join("interop/js/polyfill.mjs"))
            .arg("runner.mjs")
            .current_dir(&dir)
            .env("HYPHAE_BIN", BIN)
            .env("P2PD_BIN", p2pd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the suite finishes")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text.lines().find(|l| l.starts_with("interop: ")).unwrap_or_else(|| panic!("no summary:\n{text}")).to_string();
    let fails = text.lines().filter(|l| l.starts_with("FAIL ")).map(str::to_string).collect();
    (summary, fails)
}

/// Every test passes except the plaintext ones (neither daemon offers plaintext) and the relay ones
/// (hyphae has no relay yet). A run with any other failure is run once more (printed as FLAKE): a
/// hook's dial timing out on a loaded machine is not what this test is about.
#[tokio::test]
async fn libp2p_interop_suite_with_hyphae_as_a_node() {
    let (Some(p2pd), Some(_)) =
        (common::peer_path("interop/.peers/p2pd"), common::peer_path("interop/js-interop/node_modules/@libp2p/interop"))
    else {
        eprintln!("skipped: run interop/setup.sh");
        return;
    };
    let expected = |f: &String| f.contains("plaintext") || f.contains("relay");
    let (mut summary, mut fails) = run_suite(&p2pd).await;
    if !fails.iter().all(expected) {
        eprintln!("FLAKE {summary}: {:?}; running the suite once more", fails.iter().filter(|f| !expected(f)).collect::<Vec<_>>());
        (summary, fails) = run_suite(&p2pd).await;
    }
    eprintln!("{summary}");
    for f in &fails {
        assert!(expected(f), "unexpected failure: {f}");
    }
    let passing: u32 = summary.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(passing >= 57, "{summary}");
}
