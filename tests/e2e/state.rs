//! Replicated state at size (issue 15): a cluster holding more live state than one message may
//! carry still admits a brand-new node, which receives it as a chunked snapshot and then the
//! changes since; a node whose state file was corrupted while it was down heals by itself.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// ConfigMaps written, and the bytes of data in each (under the API's 3 MiB body limit).
const MAPS: usize = 60;
const MAP_BYTES: usize = 900 * 1024;

/// Pseudo-random printable data (64 symbols: little for automerge's compression to take).
fn payload(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x >> 58) as usize])
        })
        .collect()
}

fn fingerprint(data: &str) -> String {
    format!("{}:{}", data.len(), &data[..32.min(data.len())])
}

fn heads(ctx: &str) -> Result<Vec<String>, String> {
    let st = status(ctx)?;
    let mut heads: Vec<String> = st["heads"]
        .as_array()
        .ok_or_else(|| format!("no heads via {ctx}: {st}"))?
        .iter()
        .map(|h| h.to_string())
        .collect();
    heads.sort();
    Ok(heads)
}

#[test]
fn a_new_node_receives_more_state_than_one_message_holds() {
    let tn = Testnet::up(3);
    let dir = std::env::temp_dir().join(format!("shoal-e2e-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut expected = BTreeMap::new();
    for i in 0..MAPS {
        let data = payload(i as u64 + 1, MAP_BYTES);
        let file = dir.join("data");
        std::fs::write(&file, &data).expect("write data");
        let ctx = &tn.nodes[i % tn.nodes.len()];
        let name = format!("big-{i}");
        kubectl_ok(
            ctx,
            &[
                "create",
                "configmap",
                &name,
                &format!("--from-file=data={}", file.display()),
            ],
        );
        expected.insert(name, fingerprint(&data));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let live: usize = MAPS * MAP_BYTES;
    assert!(live > 40 << 20, "live state {live} bytes");
    eventually(
        "n1, n2, n3 hold the same state",
        REACT,
        || -> Result<(), String> {
            let h = heads("n1")?;
            for n in ["n2", "n3"] {
                if heads(n)? != h {
                    return Err(format!("{n} differs from n1"));
                }
            }
            Ok(())
        },
    );
    let st = status("n1").expect("status");
    let doc_bytes = st["doc_bytes"].as_u64().unwrap_or(0);
    eprintln!("cluster document on n1: {doc_bytes} bytes for {live} bytes of ConfigMap data");
    assert!(
        doc_bytes > 32 << 20,
        "the state must exceed one message (32 MiB) for this test to mean anything: {doc_bytes}"
    );

    // A brand-new node joins.
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$0/lib.sh\" && write_kubeconfig n1 n2 n3 n4")
        .arg(repo().join("testnet"))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    script("start.sh", &["n4"]);
    eventually(
        "n4 serves the state (heads equal to n1's)",
        Duration::from_secs(300),
        || {
            let mine = heads("n4")?;
            let theirs = heads("n1")?;
            if !mine.is_empty() && mine == theirs {
                Ok(())
            } else {
                Err(format!("n4 heads {mine:?}, n1 {theirs:?}"))
            }
        },
    );
    // Every object, with its data, served by n4.
    let list = kubectl_ok("n4", &["get", "configmaps", "-o", "json"]);
    let list: Value = serde_json::from_str(&list).expect("list JSON");
    let got: BTreeMap<String, String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|cm| {
            let name = cm["metadata"]["name"].as_str()?;
            let data = cm["data"]["data"].as_str()?;
            name.starts_with("big-")
                .then(|| (name.to_string(), fingerprint(data)))
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "n4 lists {} maps", got.len());
    assert!(got == expected, "n4 serves other data than was written");

    // It came as a chunked snapshot, with progress in the logs; no message went over the limit.
    let log4 = agent_log("n4");
    assert!(
        log4.contains("receiving the cluster state in chunks"),
        "no transfer progress in n4's log:\n{}",
        tail(&log4)
    );
    assert!(
        log4.contains("received the cluster state snapshot"),
        "no snapshot received in n4's log:\n{}",
        tail(&log4)
    );
    assert!(
        !log4.contains("refused state transfer input"),
        "n4 refused transfer input:\n{}",
        tail(&log4)
    );
    let offered = tn
        .nodes
        .iter()
        .any(|n| agent_log(n).contains("offering the cluster state as a chunked snapshot"));
    assert!(offered, "no member logged an offer");

    // Self-healing storage: n2's state file is corrupted while it is down; started again the
    // usual way, it sets the file aside, resyncs (by chunks: it is empty) and is Ready with
    // every object, with no hand work.
    script("kill.sh", &["n2"]);
    let state_file = run_dir().join("n2").join("data").join("state.automerge");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&state_file)
            .expect("open n2's state file");
        let len = f.metadata().expect("metadata").len();
        f.write_all_at(&[0xA5; 64], len / 2).expect("corrupt");
        f.sync_all().expect("sync");
    }
    let before = agent_log("n2").len();
    script("start.sh", &["n2"]);
    let all: Vec<String> = ["n1", "n2", "n3", "n4"].map(String::from).to_vec();
    eventually(
        "n2 back with n1's state and every node Ready everywhere",
        Duration::from_secs(300),
        || {
            let mine = heads("n2")?;
            let theirs = heads("n1")?;
            if mine != theirs {
                return Err(format!("n2 heads {mine:?}, n1 {theirs:?}"));
            }
            for ctx in &all {
                expect_view(ctx, &all, &[])?;
            }
            Ok(())
        },
    );
    let log2 = agent_log("n2");
    let log2 = &log2[before.min(log2.len())..];
    assert!(
        log2.contains("the state file is damaged"),
        "n2 did not report the damage:\n{}",
        tail(log2)
    );
    let aside = std::fs::read_dir(run_dir().join("n2").join("data"))
        .expect("n2 data dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.automerge.corrupt-")
        });
    assert!(aside, "no state.automerge.corrupt-* kept for inspection");
    let names = kubectl_ok("n2", &["get", "configmaps", "-o", "name"]);
    let served = names.lines().filter(|l| l.contains("/big-")).count();
    assert_eq!(served, MAPS, "n2 serves {served} of {MAPS} maps");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
