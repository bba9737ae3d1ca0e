//! End-to-end layer: the real `shoal` binary on a real network-namespace testnet
//! (`testnet/*.sh`), driven with the real kubectl. Needs root; prerequisites are installed by
//! `testnet/prereqs.sh` and a missing one fails the test by name.
//!
//! Run: `cargo test --release --test e2e -- --test-threads=1` (`just test` does). Each test
//! brings up its own testnet and tears it down on drop, even when it fails.

mod metrics;
mod support;

mod e2e {
    mod batch;
    mod config;
    mod dns;
    mod exec;
    mod images;
    mod network;
    mod nodes;
    mod observe;
    mod probes;
    mod rollout;
    mod security;
    mod services;
    mod state;
    mod storm;
    mod workloads;

    use std::collections::BTreeMap;
    use std::process::Command;

    use serde_json::Value;

    use crate::support::*;

    fn configmaps_via(ctx: &str) -> Result<BTreeMap<String, Value>, String> {
        let out = kubectl(ctx, &["get", "configmaps", "-o", "json"])?;
        let list: Value =
            serde_json::from_str(&out).map_err(|e| format!("bad JSON via {ctx}: {e}: {out}"))?;
        let items = list["items"]
            .as_array()
            .ok_or_else(|| format!("no items via {ctx}: {out}"))?;
        Ok(items
            .iter()
            .filter_map(|cm| {
                let name = cm["metadata"]["name"].as_str()?;
                name.starts_with("cm-")
                    .then(|| (name.to_string(), cm["data"].clone()))
            })
            .collect())
    }

    fn heads_via(ctx: &str) -> Result<Vec<String>, String> {
        let st = status(ctx)?;
        let mut heads: Vec<String> = st["heads"]
            .as_array()
            .ok_or_else(|| format!("no heads in status via {ctx}: {st}"))?
            .iter()
            .map(|h| h.to_string())
            .collect();
        heads.sort();
        Ok(heads)
    }

    fn all_views(nodes: &[String], ready: &[String], not_ready: &[String]) -> Result<(), String> {
        for ctx in nodes {
            expect_view(ctx, ready, not_ready)?;
        }
        Ok(())
    }

    #[test]
    fn five_agents_converge() {
        let tn = Testnet::up(5);
        for node in &tn.nodes {
            create_configmap_ok(
                node,
                &format!("cm-{node}"),
                &[("origin", node.as_str()), ("shared", "value")],
            );
        }
        let reference = eventually(
            "every node lists all 5 configmaps with the same data",
            REACT,
            || {
                let first = configmaps_via("n1")?;
                if first.len() != 5 {
                    return Err(format!("n1 lists {:?}", first.keys().collect::<Vec<_>>()));
                }
                for ctx in &tn.nodes[1..] {
                    let other = configmaps_via(ctx)?;
                    if other != first {
                        return Err(format!("{ctx} lists {other:?}, n1 lists {first:?}"));
                    }
                }
                Ok(first)
            },
        );
        for node in &tn.nodes {
            let data = &reference[&format!("cm-{node}")];
            assert_eq!(data["origin"], node.as_str(), "data of cm-{node}: {data}");
            assert_eq!(data["shared"], "value", "data of cm-{node}: {data}");
        }
        eventually("`shoal status` heads equal on all nodes", REACT, || {
            let first = heads_via("n1")?;
            for ctx in &tn.nodes[1..] {
                let other = heads_via(ctx)?;
                if other != first {
                    return Err(format!("heads differ: n1 {first:?}, {ctx} {other:?}"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn killed_node_is_notready_everywhere_then_ready_after_start() {
        let tn = Testnet::up(3);
        script("kill.sh", &["n3"]);
        let survivors = tn.others(&["n3"]);
        eventually("n3 NotReady on every survivor", REACT, || {
            all_views(&survivors, &survivors, &["n3".to_string()])
        });
        script("start.sh", &["n3"]);
        eventually("all 3 Ready on every node after start", REACT, || {
            all_views(&tn.nodes, &tn.nodes, &[])
        });
    }

    #[test]
    fn stopped_node_is_notready_then_ready_after_cont() {
        let tn = Testnet::up(3);
        script("stop.sh", &["n3"]);
        let survivors = tn.others(&["n3"]);
        eventually("SIGSTOPped n3 NotReady on every survivor", REACT, || {
            all_views(&survivors, &survivors, &["n3".to_string()])
        });
        script("cont.sh", &["n3"]);
        eventually("all 3 Ready on every node after SIGCONT", REACT, || {
            all_views(&tn.nodes, &tn.nodes, &[])
        });
    }

    #[test]
    fn leader_agreement_failover_partition() {
        let tn = Testnet::up(5);
        let leader = eventually("all 5 nodes name the same leader", REACT, || {
            agreed_leader(&tn.nodes)
        });

        script("kill.sh", &[&leader]);
        let survivors = tn.others(&[&leader]);
        let next = eventually("survivors agree on a new leader", REACT, || {
            all_views(&survivors, &survivors, std::slice::from_ref(&leader))?;
            agreed_leader(&survivors)
        });
        assert_ne!(next, leader, "the dead node cannot stay leader");

        script("start.sh", &[&leader]);
        eventually(
            "all 5 Ready and one leader again after restart",
            REACT,
            || {
                all_views(&tn.nodes, &tn.nodes, &[])?;
                agreed_leader(&tn.nodes)
            },
        );

        let side_a: Vec<String> = vec!["n1".into(), "n2".into()];
        let side_b: Vec<String> = vec!["n3".into(), "n4".into(), "n5".into()];
        script("partition.sh", &["n1 n2", "n3 n4 n5"]);
        let (la, lb) = eventually(
            "each side of the partition agrees on a leader of its own",
            REACT,
            || {
                all_views(&side_a, &side_a, &side_b)?;
                all_views(&side_b, &side_b, &side_a)?;
                Ok((agreed_leader(&side_a)?, agreed_leader(&side_b)?))
            },
        );
        assert!(
            side_a.contains(&la) && side_b.contains(&lb),
            "leaders {la} / {lb}"
        );

        script("heal.sh", &[]);
        eventually("one leader again after heal", REACT, || {
            all_views(&tn.nodes, &tn.nodes, &[])?;
            agreed_leader(&tn.nodes)
        });
    }

    #[test]
    fn restart_resumes_state() {
        let tn = Testnet::up(3);
        create_configmap_ok("n3", "cm-durable", &[("k", "written-on-n3")]);
        create_configmap_ok("n1", "cm-later", &[("k", "written-on-n1")]);

        // The host n3 dies; it comes back cut off from its peers, so whatever it serves comes
        // from its own disk.
        script("kill.sh", &["n3"]);
        script("partition.sh", &["n3", "n1 n2"]);
        script("start.sh", &["n3"]);
        eventually("n3's API answers after start", REACT, || {
            kubectl("n3", &["get", "--raw", "/version"])
        });
        let out = kubectl(
            "n3",
            &["get", "configmap", "cm-durable", "-o", "jsonpath={.data.k}"],
        )
        .unwrap_or_else(|e| {
            panic!(
                "n3 lost an acknowledged write across kill -9: {e}\n{}",
                log_tails(40)
            )
        });
        assert_eq!(out, "written-on-n3");

        script("heal.sh", &[]);
        eventually("n3 rejoins: all Ready everywhere", REACT, || {
            all_views(&tn.nodes, &tn.nodes, &[])
        });
        eventually("n3 has the other nodes' writes again", REACT, || {
            let cms = configmaps_via("n3")?;
            if cms.contains_key("cm-durable") && cms.contains_key("cm-later") {
                Ok(())
            } else {
                Err(format!("n3 lists {:?}", cms.keys().collect::<Vec<_>>()))
            }
        });
    }

    /// Lines that log a refused peer, in the part of a member's log written after `offset`.
    fn rejection_lines(node: &str, offset: usize) -> Vec<String> {
        let log = agent_log(node);
        log.get(offset..)
            .unwrap_or("")
            .lines()
            .filter(|l| {
                let l = l.to_lowercase();
                [
                    "reject",
                    "refus",
                    "denied",
                    "not admitted",
                    "admission fail",
                    "unauthori",
                    "invalid token",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .map(str::to_string)
            .collect()
    }

    /// The foreign agent `node` must stay outside: never listed, no admitted peers, no state.
    fn assert_stays_outside(tn: &Testnet, node: &str, secret: &str) {
        let members = tn.nodes.clone();
        always(
            &format!("{node} never appears in any member's node list"),
            OBSERVE,
            || {
                for ctx in &members {
                    let rows = nodes_via(ctx)?;
                    if rows.contains_key(node) {
                        return Err(format!("{ctx} lists {node}: {rows:?}"));
                    }
                }
                Ok(())
            },
        );
        // Its own API, if it serves one, must show no admitted peer and no cluster state.
        let (code, body) = curl_api(node, "GET", "/shoal/v1/status", Some(&admin_token()), None);
        if code == 200 {
            let st: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let admitted = st["admitted_peers"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0);
            assert_eq!(admitted, 0, "{node} was admitted by someone: {body}");
        }
        let data = run_dir().join(node).join("data");
        let grep = Command::new("grep")
            .args(["-rqa", secret])
            .arg(&data)
            .status()
            .expect("run grep");
        assert!(
            !grep.success(),
            "{node}'s data dir holds the cluster's configmap {secret}"
        );
    }

    #[test]
    fn bad_token_is_refused() {
        let tn = Testnet::up(3);
        let secret = "cm-only-for-members-7f3a9c";
        create_configmap_ok("n1", secret, &[("k", "members-only-value")]);

        // A token of another cluster, made by a separate `shoal init`.
        let other = tempfile::tempdir().expect("tempdir");
        let other_dir = other.path().join("data");
        let out = Command::new(shoal_bin())
            .arg("init")
            .arg("--data-dir")
            .arg(&other_dir)
            .args([
                "--name",
                "other",
                "--listen-p2p",
                "127.0.0.1:0",
                "--listen-api",
                "127.0.0.1:0",
            ])
            .output()
            .expect("run shoal init");
        assert!(
            out.status.success(),
            "shoal init of another cluster failed: {out:?}"
        );
        let foreign_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!foreign_token.is_empty(), "shoal init printed no token");

        // The real token with one character of its secret part changed.
        let real = join_token();
        let mut forged: Vec<char> = real.chars().collect();
        let i = forged.len() * 3 / 4;
        forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
        let forged: String = forged.into_iter().collect();
        assert_ne!(forged, real);

        // n8 carries a forged token, n9 a well-formed token of another cluster.
        for (node, token, forged) in [
            ("n8", forged.as_str(), true),
            ("n9", foreign_token.as_str(), false),
        ] {
            let offsets: Vec<(String, usize)> = tn
                .nodes
                .iter()
                .map(|n| (n.clone(), agent_log(n).len()))
                .collect();
            let started = try_script("start.sh", &[node], &[("JOIN_TOKEN", token)]);
            eventually(&format!("the rejection of {node} is logged"), REACT, || {
                let lines: Vec<String> = offsets
                    .iter()
                    .flat_map(|(n, off)| rejection_lines(n, *off))
                    .collect();
                if !lines.is_empty() {
                    return Ok(lines);
                }
                // A forged token may already fail its own integrity check: then the agent must
                // refuse to start and say why.
                let own = agent_log(node).to_lowercase();
                if forged && !agent_alive(node) && own.contains("token") {
                    return Ok(vec![own]);
                }
                Err(format!(
                    "no rejection logged by any member yet (start.sh: {started:?})"
                ))
            });
            assert_stays_outside(&tn, node, secret);
            script("kill.sh", &[node]);
        }
        eventually(
            "the cluster is unaffected: 3 Ready everywhere",
            REACT,
            || all_views(&tn.nodes, &tn.nodes, &[]),
        );
    }

    #[test]
    fn backup_and_restore_new_generation() {
        let mut tn = Testnet::up(3);
        create_configmap_ok("n1", "cm-backup-a", &[("k", "a")]);
        create_configmap_ok("n3", "cm-backup-b", &[("k", "b")]);
        eventually("n2 has both configmaps", REACT, || {
            let cms = configmaps_via("n2")?;
            if cms.contains_key("cm-backup-a") && cms.contains_key("cm-backup-b") {
                Ok(())
            } else {
                Err(format!("n2 lists {:?}", cms.keys().collect::<Vec<_>>()))
            }
        });
        let old_generation = status("n2").expect("status of n2")["generation"].clone();

        let keep = tempfile::tempdir().expect("tempdir");
        let backup = keep.path().join("backup.bin");
        let out = Command::new(shoal_bin())
            .arg("backup")
            .arg("--output")
            .arg(&backup)
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["--context", "n2"])
            .output()
            .expect("run shoal backup");
        assert!(out.status.success(), "shoal backup failed: {out:?}");
        assert!(
            std::fs::metadata(&backup)
                .map(|m| m.len() > 0)
                .unwrap_or(false),
            "empty backup"
        );

        // Keep an old-generation node's data dir, then lose every host.
        let old_token = join_token();
        script("kill.sh", &["n2"]);
        let old_n2 = keep.path().join("old-n2-data");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(run_dir().join("n2/data"))
            .arg(&old_n2)
            .status();
        assert!(
            cp.map(|s| s.success()).unwrap_or(false),
            "copy n2's data dir"
        );
        tn.down();

        // Disaster recovery: a new 1-node cluster seeded from the backup.
        tn.relaunch(
            1,
            &[
                ("RESTORE_FILE", backup.to_str().unwrap()),
                ("RESTORE_TOKEN", old_token.as_str()),
            ],
        );
        let cms = configmaps_via("n1").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            cms.contains_key("cm-backup-a") && cms.contains_key("cm-backup-b"),
            "restored cluster lists {:?}",
            cms.keys().collect::<Vec<_>>()
        );
        let new_generation = status("n1").expect("status of n1")["generation"].clone();
        assert_ne!(
            new_generation, old_generation,
            "restore must start a new generation"
        );

        // An agent of the old generation comes back and is refused.
        let offset = agent_log("n1").len();
        std::fs::create_dir_all(run_dir().join("n2")).expect("mkdir n2");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(&old_n2)
            .arg(run_dir().join("n2/data"))
            .status();
        assert!(
            cp.map(|s| s.success()).unwrap_or(false),
            "restore n2's old data dir"
        );
        script("start.sh", &["n2"]);
        eventually(
            "the old-generation agent is refused (n1's or n2's log says so)",
            REACT,
            || {
                let mut lines = rejection_lines("n1", offset);
                lines.extend(rejection_lines("n2", 0));
                let generation: Vec<String> = lines
                    .into_iter()
                    .filter(|l| l.to_lowercase().contains("generation"))
                    .collect();
                if generation.is_empty() {
                    Err("no generation rejection logged yet".into())
                } else {
                    Ok(generation)
                }
            },
        );
        always("n2 never joins the new generation", OBSERVE, || {
            expect_view("n1", &["n1".into()], &[])
        });
    }

    #[test]
    fn api_rejects_bad_input() {
        let tn = Testnet::up(1);
        let token = admin_token();
        let dir = tempfile::tempdir().expect("tempdir");
        let cms = "/api/v1/namespaces/default/configmaps";

        let is_status = |body: &str, code: u16| -> Result<(), String> {
            let v: Value =
                serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
            if v["kind"] == "Status"
                && v["apiVersion"] == "v1"
                && v["status"] == "Failure"
                && v["code"] == code
            {
                Ok(())
            } else {
                Err(format!("not a Failure Status with code {code}: {body}"))
            }
        };

        // No token: 401, and nothing learned.
        let (code, body) = curl_api("n1", "GET", cms, None, None);
        assert_eq!(code, 401, "GET without a token: {body}");
        is_status(&body, 401).unwrap();
        let (code, body) = curl_api("n1", "GET", "/api/v1/nodes", Some("not-the-token"), None);
        assert_eq!(code, 401, "GET with a wrong token: {body}");
        is_status(&body, 401).unwrap();

        // Malformed JSON: 400.
        let bad = dir.path().join("bad.json");
        std::fs::write(
            &bad,
            br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "#,
        )
        .unwrap();
        let (code, body) = curl_api("n1", "POST", cms, Some(&token), Some(&bad));
        assert_eq!(code, 400, "malformed JSON: {body}");
        is_status(&body, 400).unwrap();

        // Oversized body (16 MiB): 413.
        let big = dir.path().join("big.json");
        let filler = "x".repeat(16 << 20);
        std::fs::write(
            &big,
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-too-big"}},"data":{{"x":"{filler}"}}}}"#),
        )
        .unwrap();
        for http in ["--http1.1", "--http2"] {
            let (code, body) = curl_api_with(&[http], "n1", "POST", cms, Some(&token), Some(&big));
            assert_eq!(code, 413, "oversized body over {http}: {body}");
            is_status(&body, 413).unwrap();
        }

        // Garbage datagrams at the p2p (QUIC) port.
        let sock = std::net::UdpSocket::bind("10.77.0.1:0").expect("bind on the testnet bridge");
        for i in 0..200u32 {
            let junk: Vec<u8> = (0..1200u32)
                .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
                .collect();
            sock.send_to(&junk, (node_ip("n1").as_str(), 7946))
                .expect("send junk");
        }

        // The agent is still up, serving, and its state is unchanged.
        assert!(
            agent_alive("n1"),
            "agent n1 died on bad input\n{}",
            log_tails(40)
        );
        eventually("n1 still serves and is Ready", REACT, || {
            expect_view("n1", &tn.nodes, &[])
        });
        let listed = configmaps_via("n1").unwrap();
        assert!(
            !listed.contains_key("cm-too-big"),
            "a rejected request changed state: {listed:?}"
        );
        let (code, body) = curl_api("n1", "GET", cms, Some(&token), None);
        assert_eq!(code, 200, "valid request after bad ones: {body}");
    }
}
