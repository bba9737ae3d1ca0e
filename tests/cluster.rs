//! Multi-agent tests over real libp2p/QUIC on loopback (testing layer 3): real `shoal`
//! processes, no root needed. Each test builds its own cluster in temp dirs on free ports.

mod loopback;
mod metrics;

use std::time::Duration;

use loopback::{poll, poll_explained, Cluster};
use metrics::{promtool_check, sample};

#[test]
fn five_agents_converge_and_agree_on_one_leader() {
    let c = Cluster::start(5);
    for (i, node) in c.nodes.iter().enumerate() {
        c.create_configmap(node, &format!("from-{i}"), &format!("v{i}"));
    }
    poll(
        "every node lists all 5 configmaps with equal heads",
        Duration::from_secs(60),
        || {
            let names: Vec<Vec<String>> = c.nodes.iter().map(|n| c.configmap_names(n)).collect();
            let heads: Vec<serde_json::Value> = c
                .nodes
                .iter()
                .map(|n| c.status(n)["heads"].clone())
                .collect();
            (names.iter().all(|l| l.len() == 5 && *l == names[0])
                && heads.iter().all(|h| *h == heads[0]))
            .then_some(())
        },
    );
    let leader = c.agreed_leader(&c.nodes.iter().collect::<Vec<_>>(), Duration::from_secs(30));
    assert!(c.nodes.iter().any(|n| n.name == leader));
    // Every node's status document is replicated to (and persisted by) every node.
    poll(
        "every node holds every node's status document",
        Duration::from_secs(30),
        || {
            c.nodes
                .iter()
                .all(|holder| {
                    c.nodes.iter().all(|owner| {
                        holder
                            .dir
                            .join("status")
                            .join(format!("{}.cbor", owner.name))
                            .exists()
                    })
                })
                .then_some(())
        },
    );
    // Every node reads the same data for one object.
    let values: Vec<String> = c
        .nodes
        .iter()
        .map(|n| c.configmap_value(n, "from-3").unwrap_or_default())
        .collect();
    assert!(values.iter().all(|v| v == "v3"), "{values:?}");
}

#[test]
fn killed_agent_is_notready_everywhere_then_resumes_from_disk() {
    let mut c = Cluster::start(3);
    c.create_configmap(&c.nodes[2], "before-crash", "x");
    poll("n3's configmap reaches n1", Duration::from_secs(30), || {
        c.configmap_value(&c.nodes[0], "before-crash")
    });
    let all: Vec<_> = c.nodes.iter().collect();
    let first_leader = c.agreed_leader(&all, Duration::from_secs(30));
    c.kill(2);
    let survivors = [&c.nodes[0], &c.nodes[1]];
    poll(
        "n3 NotReady on both survivors",
        Duration::from_secs(30),
        || {
            survivors
                .iter()
                .all(|s| c.node_ready(s, "n3") == Some(false))
                .then_some(())
        },
    );
    let leader = c.agreed_leader(&survivors, Duration::from_secs(30));
    assert_ne!(leader, "n3", "a dead node cannot stay leader");
    if first_leader != "n3" {
        assert_eq!(
            leader, first_leader,
            "losing a non-leader must not move the leader"
        );
    }
    // The survivors' leader takes office (records itself in the document) once its view has
    // settled; only then is leadership sticky against n3's return.
    let leader_node = c.nodes.iter().find(|n| n.name == leader).unwrap();
    poll(
        "the survivors' leader takes office",
        Duration::from_secs(30),
        || {
            c.log(leader_node)
                .contains("acting as the scheduler leader")
                .then_some(())
        },
    );
    c.restart(2);
    // The restarted agent serves what it had on disk, before or while it rejoins.
    poll(
        "restarted n3 serves its old state",
        Duration::from_secs(30),
        || c.configmap_value(&c.nodes[2], "before-crash"),
    );
    poll("n3 Ready again everywhere", Duration::from_secs(30), || {
        c.nodes
            .iter()
            .all(|s| c.node_ready(s, "n3") == Some(true))
            .then_some(())
    });
    let all: Vec<_> = c.nodes.iter().collect();
    let again = c.agreed_leader(&all, Duration::from_secs(30));
    let history: Vec<String> = c
        .nodes
        .iter()
        .flat_map(|n| {
            c.log(n)
                .lines()
                .filter(|l| l.contains("scheduler leader") || l.contains("member "))
                .map(|l| format!("{}: {l}", n.name))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        again,
        leader,
        "the leader in office keeps office while it lives: a returning node does not take it back\n{}",
        history.join("\n")
    );
}

#[test]
fn peers_without_valid_admission_get_nothing() {
    let c = Cluster::start(2);
    c.create_configmap(&c.nodes[0], "secret-ish", "member-data");
    // A token of another cluster, a forged secret for this cluster, and a valid token used to
    // impersonate an existing node name with a different key.
    let other = Cluster::init_only("other");
    let forged = {
        let t = c.token.clone();
        let (head, _) = t.rsplit_once('.').unwrap();
        format!("{head}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    };
    let mut intruders = vec![
        c.spawn_joiner("intruder-a", &other.token),
        c.spawn_joiner("intruder-b", &forged),
        c.spawn_joiner("n2", &c.token),
    ];
    poll("members log every refusal", Duration::from_secs(30), || {
        let log = c.log(&c.nodes[0]) + &c.log(&c.nodes[1]);
        (log.contains("another cluster")
            && log.contains("invalid admission proof")
            && log.contains("is registered to peer"))
        .then_some(())
    });
    // Observe for a while: nobody was admitted, no intruder received the state.
    std::thread::sleep(Duration::from_secs(3));
    for n in &c.nodes {
        let status = c.status(n);
        let admitted: Vec<String> =
            serde_json::from_value(status["admitted_peers"].clone()).unwrap();
        assert!(
            admitted.iter().all(|p| p.starts_with('n')) && admitted.len() == 1,
            "{admitted:?}"
        );
        let members: Vec<String> = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        assert!(
            !members.iter().any(|m| m.starts_with("intruder")),
            "{members:?}"
        );
        assert_eq!(
            c.node_ready(n, "n2"),
            Some(true),
            "the real n2 stays healthy"
        );
    }
    for intruder in &mut intruders {
        let state = intruder.dir.join("state.automerge");
        let held = std::fs::read(&state).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&held).contains("member-data"),
            "intruder {} received state",
            intruder.name
        );
        assert!(
            intruder.log().contains("refused to admit us"),
            "intruder {} was not told: {}",
            intruder.name,
            intruder.log()
        );
    }
}

#[test]
fn backup_then_restore_starts_a_new_generation_that_refuses_the_old_one() {
    let mut c = Cluster::start(2);
    c.create_configmap(&c.nodes[1], "keep-me", "42");
    poll("configmap on n1", Duration::from_secs(30), || {
        c.configmap_value(&c.nodes[0], "keep-me")
    });
    let backup = c.tmp.path().join("backup.cbor");
    c.shoal_ok(&[
        "backup",
        "--output",
        backup.to_str().unwrap(),
        "--kubeconfig",
        c.nodes[1].kubeconfig.to_str().unwrap(),
    ]);
    c.kill(0);
    c.kill(1);
    let mut restored = Cluster::restore_from(&backup, &c.token, "r1");
    poll(
        "restored cluster serves the backed-up configmap",
        Duration::from_secs(30),
        || {
            c.configmap_value(&restored.nodes[0], "keep-me")
                .filter(|v| v == "42")
        },
    );
    assert_eq!(restored.status(&restored.nodes[0])["generation"], 2);
    // An agent of the old generation, pointed at the restored cluster, is refused.
    c.nodes[1].join = vec![restored.nodes[0].p2p];
    c.restart_with_join(1, restored.nodes[0].p2p);
    poll(
        "old-generation agent refused",
        Duration::from_secs(30),
        || {
            restored
                .log(&restored.nodes[0])
                .contains("old-generation agents are refused")
                .then_some(())
        },
    );
    let admitted = restored.status(&restored.nodes[0])["admitted_peers"].clone();
    assert_eq!(admitted, serde_json::json!([]));
    restored.stop_all();
}

#[test]
fn bad_configuration_exits_64_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = loopback::shoal_bin();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = tmp.path().join("d");
    let d = dir.to_str().unwrap();
    // Not a data dir, no token.
    let (code, err) = run(&["agent", "--data-dir", d]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("not a shoal data dir"), "{err}");
    // A malformed token.
    let (code, err) = run(&[
        "agent",
        "--data-dir",
        d,
        "--join",
        "127.0.0.1:1",
        "--token",
        "shoal1.nope",
    ]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("malformed join token"), "{err}");
    // A joiner whose p2p port is taken stops at once (not after the resync deadline of
    // waiting for a state its network actor can never receive), saying why.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let p2p = taken.local_addr().unwrap().to_string();
    let joiner = tmp.path().join("j");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(&bin)
        .args([
            "agent",
            "--data-dir",
            joiner.to_str().unwrap(),
            "--name",
            "j",
        ])
        .args(["--join", "127.0.0.1:9", "--listen-p2p", &p2p])
        .args(["--listen-api", "127.0.0.1:0", "--token"])
        .arg("shoal1.58886ccac0b58673.1.dJE8OGOQINRNm5QtlJ9n6ZiOBxF9io7XfpLBLSqw9yE")
        .env("SHOAL_POD_NETWORK", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("network actor failed") && err.contains("Address already in use"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "stopped after {:?} (the resync deadline is 120 s)",
        started.elapsed()
    );
    drop(taken);
    // A bad node name.
    let (code, err) = run(&["init", "--data-dir", d, "--name", "Bad_Name"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("DNS-1123"), "{err}");
    // init twice refuses to overwrite.
    let (code, err) = run(&[
        "init",
        "--data-dir",
        d,
        "--name",
        "ok",
        "--listen-p2p",
        "127.0.0.1:0",
        "--listen-api",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(&["init", "--data-dir", d, "--name", "ok"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");
    // A damaged state and no member to resync from: set aside, and a refusal saying what to do.
    std::fs::write(dir.join("state.automerge"), b"garbage").unwrap();
    let (code, err) = run(&["agent", "--data-dir", d]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("knows no member") && err.contains("--join"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("state.automerge.corrupt-")),
        "the damaged file is kept aside"
    );
    // A corrupt identity file is reported, not used.
    std::fs::write(dir.join("cluster.cbor"), b"garbage").unwrap();
    let (code, err) = run(&["agent", "--data-dir", d]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn corrupt_state_file_is_set_aside_and_the_node_resyncs_by_itself() {
    // n1, the init node: it has no join address, so it finds its peer through the members'
    // addresses it remembered (known-peers.json), not through its lost node records.
    let mut c = Cluster::start(2);
    c.create_configmap(&c.nodes[1], "before", "1");
    let known = c.nodes[0].dir.join("known-peers.json");
    poll(
        "n1 has the ConfigMap and remembers n2",
        Duration::from_secs(30),
        || {
            c.configmap_value(&c.nodes[0], "before")?;
            known.exists().then_some(())
        },
    );
    c.kill(0);
    let state = c.nodes[0].dir.join("state.automerge");
    let mut bytes = std::fs::read(&state).unwrap();
    let (mid, end) = (bytes.len() / 2, (bytes.len() / 2 + 64).min(bytes.len()));
    for b in &mut bytes[mid..end] {
        *b ^= 0x5a;
    }
    std::fs::write(&state, &bytes).unwrap();
    c.create_configmap(&c.nodes[1], "after", "2");
    c.restart(0);
    poll(
        "the healed node serves the state from before and after",
        Duration::from_secs(60),
        || {
            let before = c.configmap_value(&c.nodes[0], "before")?;
            let after = c.configmap_value(&c.nodes[0], "after")?;
            Some((before, after))
        },
    );
    let aside: Vec<String> = std::fs::read_dir(&c.nodes[0].dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.automerge.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside: {aside:?}");
    assert_eq!(
        std::fs::read(c.nodes[0].dir.join(&aside[0])).unwrap(),
        bytes,
        "unchanged"
    );
    let log = c.log(&c.nodes[0]);
    assert!(log.contains("moved it aside"), "{log}");
    // Same name and key (another key would be refused the name n1), Ready on both sides.
    poll("n1 Ready everywhere", Duration::from_secs(30), || {
        (c.node_ready(&c.nodes[0], "n1") == Some(true)
            && c.node_ready(&c.nodes[1], "n1") == Some(true))
        .then_some(())
    });
}

/// Unmounts a test's tmpfs when dropped (also when the test fails).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_state_disk_refuses_writes_with_507_and_the_nodes_converge_once_space_returns() {
    let mut c = Cluster::start(1);
    // n2 keeps its replicated state on a small tmpfs of its own (`--state-dir`).
    let mount = c.tmp.path().join("n2-state");
    std::fs::create_dir_all(&mount).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mount)
        .output()
        .expect("running mount (util-linux)");
    assert!(
        out.status.success(),
        "mounting a tmpfs for n2's state needs root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _mounted = Mounted(mount.clone());
    let n2 = c.add_node(vec!["--state-dir".into(), mount.display().to_string()]);
    c.create_configmap(&c.nodes[n2], "before", "1");
    poll("n1 has n2's write", Duration::from_secs(60), || {
        c.configmap_value(&c.nodes[0], "before")
    });
    assert!(
        mount.join("state.wal").exists() || mount.join("state.automerge").exists(),
        "n2 keeps no state on its --state-dir: {:?}",
        std::fs::read_dir(&mount).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );

    // The disk fills up (another tenant of the same filesystem).
    let filler = mount.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5a_u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let small = vec![0x5a_u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
    }
    let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "refused"}, "data": {"k": "x".repeat(64 << 10)}});
    let (code, reply) = c
        .request(
            &c.nodes[n2],
            reqwest::Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(body),
        )
        .expect("n2's API answers");
    assert_eq!(code, 507, "a write on a full disk: {reply}");
    assert_eq!(reply["reason"], "InsufficientStorage", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("write-ahead log") && message.contains("space"),
        "the message names the log and the cause: {message}"
    );
    // Others still write, and n2 still follows (in memory) meanwhile.
    c.create_configmap(&c.nodes[0], "during", "2");
    poll("n2 serves n1's write", Duration::from_secs(60), || {
        c.configmap_value(&c.nodes[n2], "during")
    });

    // Space returns: n2 saves what it holds and takes writes again; nothing of the refused write
    // exists anywhere, and both hold the same state.
    std::fs::remove_file(&filler).unwrap();
    c.create_configmap(&c.nodes[n2], "after", "3");
    let want = ["after", "before", "during"].map(String::from).to_vec();
    poll(
        "both nodes hold the same three maps",
        Duration::from_secs(60),
        || {
            (c.configmap_names(&c.nodes[0]) == want && c.configmap_names(&c.nodes[n2]) == want)
                .then_some(())
        },
    );
    poll(
        "both nodes hold the same document",
        Duration::from_secs(60),
        || (c.status(&c.nodes[0])["heads"] == c.status(&c.nodes[n2])["heads"]).then_some(()),
    );
    // Once n2 has saved a snapshot again (received changes are saved every few seconds; its
    // own writes are in its log at once), what it saved is complete: alone, after a kill -9,
    // it serves all three.
    let space_back = std::time::SystemTime::now();
    poll(
        "n2 saves a snapshot once space is back",
        Duration::from_secs(60),
        || {
            let saved = std::fs::metadata(mount.join("state.automerge")).ok()?;
            (saved.modified().ok()? > space_back).then_some(())
        },
    );
    c.kill(0);
    c.restart(n2);
    poll_explained(
        "n2 alone serves all three after a restart",
        Duration::from_secs(60),
        || (c.configmap_names(&c.nodes[n2]) == want).then_some(()),
        || {
            format!(
                "it serves {:?}; its log:\n{}",
                c.configmap_names(&c.nodes[n2]),
                c.log(&c.nodes[n2])
            )
        },
    );
}

/// Plain HTTP `GET path` on `addr`: the body of a 200, else None.
fn plain_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[test]
fn metrics_pass_promtool_and_count_suspicions_deaths_and_requests() {
    let mut c = Cluster::start(3);
    let n1 = &c.nodes[0];
    c.create_configmap(n1, "metered", "x");
    // Same auth as every route.
    let (code, _, _) = c.get_text(n1, "/metrics", None);
    assert_eq!(code, 401, "/metrics without a token");
    let text = poll(
        "probe round trips and replication on n1's /metrics",
        Duration::from_secs(30),
        || {
            let (code, ctype, text) = c.get_text(n1, "/metrics", Some(&c.admin_token));
            assert_eq!(code, 200, "{text}");
            assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
            let probes = sample(&text, "shoal_membership_probe_rtt_seconds_count")?;
            let sent = sample(
                &text,
                "shoal_replication_bytes_total{direction=\"sent\",path=\"push\"}",
            )?;
            (probes > 0.0 && sent > 0.0).then_some(text)
        },
    );
    promtool_check("a loopback agent's /metrics", &text);
    assert_eq!(
        sample(&text, "shoal_membership_members{state=\"alive\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "shoal_api_requests_total{verb=\"create\",resource=\"configmaps\",code=\"201\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("shoal_api_request_duration_seconds_bucket{verb=\"create\",resource=\"configmaps\",le=\"0.005\"}"),
        "{text}"
    );
    assert!(sample(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
    assert_eq!(
        sample(
            &text,
            "shoal_replication_peer_differing_documents{peer=\"n2\"}"
        )
        .map(|v| v >= 0.0),
        Some(true),
        "{text}"
    );
    // Prometheus' own scraper asks for OpenMetrics and gets it.
    let open = c.rt_get_openmetrics(n1);
    assert!(open.ends_with("# EOF\n"), "{open}");

    // `shoal status`: a table by default, the JSON document with -o json.
    let kc = n1.kubeconfig.display().to_string();
    let table = c.shoal_ok(&["status", "--kubeconfig", &kc]);
    assert!(
        table.contains("MEMBER") && table.contains("REPLICATION"),
        "{table}"
    );
    for name in ["n2", "n3"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"));
        assert!(row.contains("alive") && row.contains("yes"), "{table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&c.shoal_ok(&["status", "-o", "json", "--kubeconfig", &kc])).unwrap();
    assert_eq!(json["node"], "n1");
    assert!(
        json["replication"]["n2"]["differing_documents"].is_u64(),
        "{json}"
    );

    // A killed member: n1's view counts a suspicion and a death.
    c.kill(2);
    let n1 = &c.nodes[0];
    poll(
        "n1 counts n3 suspect and dead",
        Duration::from_secs(30),
        || {
            let (_, _, text) = c.get_text(n1, "/metrics", Some(&c.admin_token));
            let suspicions = sample(&text, "shoal_membership_suspicions_total")?;
            let deaths = sample(&text, "shoal_membership_deaths_total")?;
            let dead = sample(&text, "shoal_membership_members{state=\"dead\"}")?;
            (suspicions >= 1.0 && deaths >= 1.0 && dead == 1.0).then_some(())
        },
    );

    // The plain listener (--metrics-addr) serves the same exposition without TLS or a token.
    let port = loopback::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    c.nodes[1].extra_args = [
        "--metrics-addr",
        &addr.to_string(),
        "--log-format",
        "json",
        "--log",
        "info,shoal::net=debug",
    ]
    .map(String::from)
    .to_vec();
    c.restart(1);
    let plain = poll("n2's plain /metrics", Duration::from_secs(30), || {
        plain_get(addr, "/metrics")
    });
    assert!(
        plain.contains("# TYPE shoal_membership_suspicions_total counter"),
        "{plain}"
    );
    promtool_check("the plain --metrics-addr listener", &plain);

    // --log-format json: every line one JSON object; --log: debug for shoal::net only.
    let run_log = c.nodes[1].log_path().with_extension("run.log");
    let lines = poll(
        "a debug line of shoal::net from n2",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&run_log).ok()?;
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                .collect();
            lines
                .iter()
                .any(|v| {
                    v["level"] == "DEBUG"
                        && v["target"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("shoal::net"))
                })
                .then_some(lines)
        },
    );
    assert!(lines.iter().all(|v| v["level"] != "DEBUG"
        || v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("shoal::net"))));
    assert!(lines
        .iter()
        .any(|v| v["message"] == "agent starting" && v["node"] == "n2"));
}
