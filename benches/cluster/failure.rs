//! Failure detection after kill -9, and false deaths in an idle cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cluster::{self, Cluster};
use crate::stats::{self, row};

const POLL: Duration = Duration::from_millis(20);
const GIVE_UP: Duration = Duration::from_secs(30);

/// Per survivor: when it first reported the victim suspect, and dead.
#[derive(Default, Clone, Copy)]
struct Seen {
    suspect: Option<Duration>,
    dead: Option<Duration>,
}

/// Kill -9 node `1 + r % (n - 1)` in round `r` (node 0 is never killed), poll every survivor's
/// status every 20 ms until all report it dead, restart it, wait until all see it alive again.
pub async fn detection(c: &mut dyn Cluster, label: &str, kills: usize) -> Result<String> {
    let n = c.len();
    let mut detect = Vec::new();
    let mut first_suspect = Vec::new();
    let mut rejoin = Vec::new();
    let mut undetected = 0;
    // Non-victims that a survivor reported in a state other than alive: (round, observer, member, state).
    let mut false_states: std::collections::BTreeSet<(usize, String, String, String)> =
        Default::default();
    let offsets: Vec<u64> = (0..n).map(|i| cluster::file_len(&c.log_path(i))).collect();
    for r in 0..kills {
        let victim = 1 + r % (n - 1);
        let vname = c.name(victim);
        let survivors: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
        let mut seen = vec![Seen::default(); n];
        let t0 = c.kill(victim)?;
        loop {
            let polls = survivors.iter().map(|&i| {
                let api = c.api().clone();
                let url = c.api_url(i);
                async move { (i, api.status(&url).await) }
            });
            let results = futures::future::join_all(polls).await;
            let now = t0.elapsed();
            for (i, st) in results {
                let Ok(st) = st else { continue };
                match st.state_of(&vname) {
                    Some("suspect") => {
                        seen[i].suspect.get_or_insert(now);
                    }
                    Some("dead") | Some("left") | None => {
                        seen[i].suspect.get_or_insert(now);
                        seen[i].dead.get_or_insert(now);
                    }
                    _ => {}
                }
                for m in st
                    .members
                    .iter()
                    .filter(|m| m.name != vname && m.state != "alive")
                {
                    false_states.insert((r, c.name(i), m.name.clone(), m.state.clone()));
                }
            }
            if survivors.iter().all(|&i| seen[i].dead.is_some()) || now > GIVE_UP {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let dead: Vec<Duration> = survivors.iter().filter_map(|&i| seen[i].dead).collect();
        if dead.len() == survivors.len() {
            detect.push(*dead.iter().max().unwrap_or(&Duration::ZERO));
        } else {
            undetected += 1;
        }
        if let Some(s) = survivors.iter().filter_map(|&i| seen[i].suspect).min() {
            first_suspect.push(s);
        }
        eprintln!(
            "round {r}: killed {vname}; all survivors report it dead after {:?}",
            dead.iter().max().filter(|_| dead.len() == survivors.len())
        );
        let t1 = Instant::now();
        c.start(victim)?;
        cluster::wait_all_alive(c, &cluster::all(c), Duration::from_secs(60)).await?;
        rejoin.push(t1.elapsed());
        // Let incarnations and suspicion timers settle before the next kill.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let s = stats::summarize(&detect);
    let mut out = format!("### Failure detection after kill -9, {label}: {n} nodes, {kills} kills, status polled every 20 ms\n\n{}\n", stats::HEADER);
    out += &format!(
        "{}\n",
        row(
            "first survivor reports the victim suspect",
            stats::summarize(&first_suspect)
        )
    );
    out += &format!("{}\n", row("**every survivor reports it dead**", s));
    out += &format!(
        "{}\n",
        row(
            "restart → every node sees all alive",
            stats::summarize(&rejoin)
        )
    );
    out += &format!("\nundetected within {GIVE_UP:?}: {undetected}\n");
    let false_dead = false_states.iter().filter(|f| f.3 == "dead").count();
    out += &format!(
        "\nnon-victims reported not alive while waiting (distinct round × observer × member × state): {} ({false_dead} dead)\n",
        false_states.len()
    );
    // Every survivor logs the victim's suspicion and death once per round (the killed node does
    // not log its own): anything beyond kills × (n - 1) concerns a member that was not killed.
    let (mut log_suspect, mut log_down) = (0, 0);
    for (i, offset) in offsets.iter().enumerate().take(n) {
        log_suspect += cluster::log_lines_since(&c.log_path(i), *offset, "member suspect").len();
        log_down += cluster::log_lines_since(&c.log_path(i), *offset, "member down").len();
    }
    let expected = kills * (n - 1);
    out += &format!(
        "\nagent logs over all rounds (restarts included): {log_suspect} `member suspect` and {log_down} `member down` lines, \
         {expected} of each expected for the victims alone → at least {} suspect and {} down lines about members that were not killed \
         (each node logs what it hears, so one false suspicion shows up on several nodes)\n",
        log_suspect.saturating_sub(expected),
        log_down.saturating_sub(expected)
    );
    for (r, obs, m, st) in false_states.iter().take(12) {
        out += &format!("- round {r}: {obs} reported {m} {st}\n");
    }
    if let Some(s) = s {
        out += &format!(
            "\nRESULT detection {label} n={n} p50_ms={:.0} p99_ms={:.0} goal_p99_ms=3000 met={}\n",
            s.p50,
            s.p99,
            s.p99 <= 3000.0 && undetected == 0
        );
    }
    Ok(out)
}

/// Watch an idle cluster for `secs`: poll every node's status every 250 ms and count each
/// member's transitions away from alive; count `member suspect`/`member down` log lines too.
pub async fn false_deaths(c: &dyn Cluster, label: &str, secs: u64) -> Result<String> {
    let n = c.len();
    let offsets: Vec<u64> = (0..n).map(|i| cluster::file_len(&c.log_path(i))).collect();
    let mut last: BTreeMap<(usize, String), String> = BTreeMap::new();
    let mut to_suspect = 0;
    let mut to_dead = 0;
    let mut unreachable = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        for i in 0..n {
            match c.api().status(&c.api_url(i)).await {
                Ok(st) => {
                    for m in st.members {
                        let prev = last.insert((i, m.name.clone()), m.state.clone());
                        if prev.as_deref() != Some(m.state.as_str()) && prev.is_some() {
                            eprintln!(
                                "{:?}: {} sees {} {}",
                                t0.elapsed(),
                                c.name(i),
                                m.name,
                                m.state
                            );
                            match m.state.as_str() {
                                "suspect" => to_suspect += 1,
                                "dead" | "left" => to_dead += 1,
                                _ => {}
                            }
                        }
                    }
                }
                Err(_) => unreachable += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut log_suspect = 0;
    let mut log_down = 0;
    for (i, offset) in offsets.iter().enumerate().take(n) {
        log_suspect += cluster::log_lines_since(&c.log_path(i), *offset, "member suspect").len();
        log_down += cluster::log_lines_since(&c.log_path(i), *offset, "member down").len();
    }
    let mut out =
        format!("### False deaths, {label}: idle {n}-node cluster for {secs} s, nobody killed\n\n");
    out += "| measure | count |\n|---|---|\n";
    out += &format!("| status transitions alive → suspect (observer × member) | {to_suspect} |\n");
    out += &format!("| status transitions → dead | {to_dead} |\n");
    out += &format!("| `member suspect` log lines | {log_suspect} |\n");
    out += &format!("| `member down` log lines | {log_down} |\n");
    out += &format!("| status requests that failed | {unreachable} |\n");
    out += &format!("\nRESULT false_deaths {label} n={n} secs={secs} dead={to_dead} down_logs={log_down} suspect_logs={log_suspect} met={}\n", to_dead == 0 && log_down == 0);
    Ok(out)
}
