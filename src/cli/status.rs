//! `shoal status`: the serving agent's view as a table people read (members and their states,
//! leader, epoch, document sizes, replication lag and state transfers per peer), or as JSON (`-o json`, the
//! `/shoal/v1/status` document unchanged, for scripts).

use std::fmt::Write;

use crate::api::AgentStatus;

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// The replication column of a peer.
fn sync_cell(status: &AgentStatus, member: &str) -> String {
    if member == status.node {
        return "(this node)".into();
    }
    let cell = match status.replication.get(member) {
        None => "-".into(),
        Some(r) if r.differing_documents == 0 => "in sync".into(),
        Some(r) => {
            let docs = match r.differing_documents {
                1 => "1 doc differs".to_string(),
                n => format!("{n} docs differ"),
            };
            match r.lag_ms {
                Some(ms) => format!("{docs} for {:.1}s", ms as f64 / 1000.0),
                None => format!("{docs}, never in sync"),
            }
        }
    };
    match status
        .replication
        .get(member)
        .and_then(|r| r.transfer.as_ref())
    {
        Some(t) => format!(
            "{cell}; {} state {} of {} ({}%)",
            t.direction,
            human_bytes(t.bytes_done),
            human_bytes(t.bytes_total),
            t.bytes_done * 100 / t.bytes_total.max(1)
        ),
        None => cell,
    }
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The readable form of `status`.
pub fn render(status: &AgentStatus) -> String {
    let mut out = String::new();
    let leader = status.leader.as_deref().unwrap_or("(none)");
    let _ = writeln!(
        out,
        "node {}  cluster {} generation {}",
        status.node, status.cluster_id, status.generation
    );
    let _ = writeln!(
        out,
        "epoch {}  view {}  leader {}{}",
        status.epoch,
        status.view,
        leader,
        if status.leader.as_deref() == Some(status.node.as_str()) {
            " (this node)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "cluster document {} on disk  heads {}  status documents {}",
        human_bytes(status.doc_bytes),
        status.heads.len(),
        status.status_docs
    );
    out.push('\n');
    let mut rows = vec![vec![
        "MEMBER".to_string(),
        "STATE".into(),
        "INCARNATION".into(),
        "ADMITTED".into(),
        "REPLICATION".into(),
    ]];
    let mut members = status.members.clone();
    if !members.iter().any(|m| m.name == status.node) {
        members.push(crate::api::MemberStatus {
            name: status.node.clone(),
            state: crate::model::MemberState::Alive,
            incarnation: 0,
            addr: String::new(),
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for m in &members {
        let me = m.name == status.node;
        let mut state = m.state.to_string();
        if status.leader.as_deref() == Some(m.name.as_str()) {
            state.push_str(" (leader)");
        }
        let admitted = if me {
            "-"
        } else if status.admitted_peers.contains(&m.name) {
            "yes"
        } else {
            "no"
        };
        rows.push(vec![
            m.name.clone(),
            state,
            if me && m.incarnation == 0 {
                "-".into()
            } else {
                m.incarnation.to_string()
            },
            admitted.into(),
            sync_cell(status, &m.name),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MemberStatus, PeerReplication};

    fn member(name: &str, state: &str) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            state: state.parse().unwrap(),
            incarnation: 2,
            addr: format!("/ip4/10.77.0.1/udp/7946/quic-v1/p2p/{name}"),
        }
    }

    #[test]
    fn renders_members_leader_sizes_and_lag() {
        let status = AgentStatus {
            node: "n1".into(),
            cluster_id: "c0ffee".into(),
            generation: 1,
            epoch: 7,
            view: "00000000deadbeef".into(),
            leader: Some("n2".into()),
            members: vec![member("n3", "suspect"), member("n2", "alive")],
            heads: vec!["aa".into()],
            doc_bytes: 43_110,
            admitted_peers: vec!["n2".into(), "n3".into()],
            status_docs: 3,
            replication: [
                (
                    "n2".to_string(),
                    PeerReplication {
                        differing_documents: 0,
                        lag_ms: Some(0),
                        transfer: None,
                    },
                ),
                (
                    "n3".to_string(),
                    PeerReplication {
                        differing_documents: 2,
                        lag_ms: Some(4200),
                        transfer: Some(crate::api::StateTransfer {
                            direction: "sending".into(),
                            bytes_done: 12 << 20,
                            bytes_total: 40 << 20,
                        }),
                    },
                ),
            ]
            .into(),
        };
        let text = render(&status);
        let expected = "\
node n1  cluster c0ffee generation 1
epoch 7  view 00000000deadbeef  leader n2
cluster document 42.1 KiB on disk  heads 1  status documents 3

MEMBER  STATE           INCARNATION  ADMITTED  REPLICATION
n1      alive           -            -         (this node)
n2      alive (leader)  2            yes       in sync
n3      suspect         2            yes       2 docs differ for 4.2s; sending state 12.0 MiB of 40.0 MiB (30%)
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
