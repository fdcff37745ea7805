//! The `device-apply` binary: JSON on stdout, DiffID checks, exit codes.

use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn reports_counters_and_checks_diff_ids() {
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    let l0 = tar_of(&[("a", &[1u8; 5000]), ("b", &[2u8; 700])]);
    std::fs::write(p("l0.tar"), &l0).unwrap();
    // COPY(512, 5000) (all of a), then LITERAL "hi".
    let mut delta = bru_rsync::DELTA_MAGIC.to_vec();
    delta.extend_from_slice(&[0x4a, 2, 0, 0x13, 0x88, 2, b'h', b'i', 0]);
    std::fs::write(p("d.rdiff"), &delta).unwrap();
    let mut want = vec![1u8; 5000];
    want.extend_from_slice(b"hi");
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&want)));

    let out = Command::new(env!("CARGO_BIN_EXE_device-apply"))
        .args(["--layers"])
        .arg(p("l0.tar"))
        .arg("--delta")
        .arg(p("d.rdiff"))
        .args(["--diff-id", &diff_id, "--repeat", "3", "--workdir"])
        .arg(p("work"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["read_model"], "go-buffer");
    // The pipe whose hand-off costs what Go's io.Pipe does is the default.
    assert_eq!(v["pipe_model"], "goroutine");
    assert_eq!(v["basis"]["files"], 2);
    let d = &v["deltas"][0];
    assert_eq!(d["kind"], "raw");
    assert_eq!(d["diff_id_ok"], true);
    assert_eq!(d["runs_apply_seconds"].as_array().unwrap().len(), 3);
    let c = &d["counters"];
    assert_eq!(c["copy_commands"], 1);
    assert_eq!(c["literal_commands"], 1);
    assert_eq!(c["output_bytes"], 5002);
    assert_eq!(v["totals"]["all_diff_ids_ok"], true);

    // A wrong DiffID: the report is still printed, the exit code is 1.
    let out = Command::new(env!("CARGO_BIN_EXE_device-apply"))
        .arg("--layers")
        .arg(p("l0.tar"))
        .arg("--delta")
        .arg(p("d.rdiff"))
        .args(["--diff-id", "sha256:00", "--read-model", "direct"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["deltas"][0]["diff_id_ok"], false);

    // A broken delta: exit code 2 and the reason on stderr.
    std::fs::write(p("bad.rdiff"), b"rs\x026\x55").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_device-apply"))
        .arg("--layers")
        .arg(p("l0.tar"))
        .arg("--delta")
        .arg(p("bad.rdiff"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved opcode 0x55"));
}
