//! Unit and property tests of the DNS core: every name form, search-list expansions,
//! headless Services, SRV, ExternalName, negative answers, truncation, hostile bytes.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;

use super::*;

fn port(name: &str, protocol: &str, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        protocol: protocol.into(),
        port,
    }
}

fn zone() -> Zone {
    Zone::build(
        "cluster.local",
        7,
        &[
            ServiceEntry {
                namespace: "shop".into(),
                name: "web".into(),
                target: ServiceTarget::ClusterIp(Ipv4Addr::new(10, 96, 0, 10)),
                ports: vec![port("http", "TCP", 80), port("", "TCP", 8080)],
            },
            ServiceEntry {
                namespace: "shop".into(),
                name: "db".into(),
                target: ServiceTarget::Headless(vec![
                    HeadlessEndpoint {
                        hostname: None,
                        ip: Ipv4Addr::new(10, 244, 1, 5),
                        ports: vec![port("pg", "TCP", 5432)],
                    },
                    HeadlessEndpoint {
                        hostname: None,
                        ip: Ipv4Addr::new(10, 244, 2, 7),
                        ports: vec![port("pg", "TCP", 5432)],
                    },
                ]),
                ports: vec![port("pg", "TCP", 5432)],
            },
            ServiceEntry {
                namespace: "shop".into(),
                name: "empty".into(),
                target: ServiceTarget::Headless(Vec::new()),
                ports: Vec::new(),
            },
            ServiceEntry {
                namespace: "shop".into(),
                name: "ext".into(),
                target: ServiceTarget::ExternalName("example.com".into()),
                ports: Vec::new(),
            },
            ServiceEntry {
                namespace: "shop".into(),
                name: "alias".into(),
                target: ServiceTarget::ExternalName("web.shop.svc.cluster.local.".into()),
                ports: Vec::new(),
            },
            ServiceEntry {
                namespace: "default".into(),
                name: "web".into(),
                target: ServiceTarget::ClusterIp(Ipv4Addr::new(10, 96, 0, 20)),
                ports: Vec::new(),
            },
            ServiceEntry {
                namespace: "Bad_NS".into(),
                name: "x".into(),
                target: ServiceTarget::ClusterIp(Ipv4Addr::new(10, 96, 0, 30)),
                ports: Vec::new(),
            },
        ],
    )
}

fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

fn ask_with(name: &str, qtype: RecordType, forwarding: bool) -> Message {
    match respond(
        &query_bytes(name, qtype, false),
        &zone(),
        Transport::Udp,
        forwarding,
    ) {
        Decision::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
        other => panic!("{name} {qtype}: {other:?}"),
    }
}

fn ask(name: &str, qtype: RecordType) -> Message {
    ask_with(name, qtype, false)
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn service_names_resolve_to_the_cluster_ip() {
    let ip = Ipv4Addr::new(10, 96, 0, 10);
    for name in [
        "web.shop.svc.cluster.local.",
        "WEB.Shop.SVC.cluster.LOCAL.",
        "web.shop.svc.cluster.local",
    ] {
        let reply = ask(name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert!(reply.metadata.authoritative);
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert!(reply.metadata.recursion_desired, "RD is copied");
        assert!(!reply.metadata.recursion_available, "no upstream");
        assert_eq!(addresses(&reply), vec![ip], "{name}");
        let record = &reply.answers[0];
        assert_eq!(record.ttl, TTL);
        assert_eq!(record.dns_class, DNSClass::IN);
        // The answer's owner is the question's name as asked (case kept for 0x20 clients).
        assert!(record.name.eq_case(reply.queries[0].name()), "{name}");
        assert_eq!(reply.queries.len(), 1);
    }
    assert_eq!(
        addresses(&ask("web.default.svc.cluster.local.", RecordType::A)),
        vec![Ipv4Addr::new(10, 96, 0, 20)],
        "same name, other namespace"
    );
}

#[test]
fn search_list_expansions_of_every_short_form() {
    // A pod in `shop` has `search shop.svc.cluster.local svc.cluster.local cluster.local` and
    // ndots:5, so every form below is tried with each suffix in turn until one answers.
    let search = [
        "shop.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ];
    let resolve = |short: &str| -> Vec<Ipv4Addr> {
        for suffix in search {
            let reply = ask(&format!("{short}.{suffix}."), RecordType::A);
            match reply.metadata.response_code {
                ResponseCode::NoError if !reply.answers.is_empty() => return addresses(&reply),
                ResponseCode::NXDomain => {}
                other => panic!("{short}.{suffix}: {other:?} {reply:?}"),
            }
        }
        addresses(&ask(&format!("{short}."), RecordType::A))
    };
    let ip = vec![Ipv4Addr::new(10, 96, 0, 10)];
    assert_eq!(resolve("web"), ip);
    assert_eq!(resolve("web.shop"), ip);
    assert_eq!(resolve("web.shop.svc"), ip);
    assert_eq!(resolve("web.shop.svc.cluster.local"), ip);
    assert!(resolve("nothing").is_empty());
    // The expansions of a full name are plain NXDOMAIN, with the SOA for negative caching.
    for name in [
        "web.shop.svc.cluster.local.shop.svc.cluster.local.",
        "web.shop.svc.cluster.local.svc.cluster.local.",
        "web.shop.svc.cluster.local.cluster.local.",
        "web.shop.shop.svc.cluster.local.",
        "web.cluster.local.",
        "web.shop.svc.cluster.local.cluster.local.cluster.local.",
    ] {
        let reply = ask(name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(reply.metadata.authoritative);
        assert!(reply.answers.is_empty());
        match reply.authorities.first().map(|r| &r.data) {
            Some(RData::SOA(soa)) => {
                assert_eq!(soa.minimum, TTL);
                assert_eq!(soa.serial, 7);
            }
            other => panic!("{name}: expected SOA, got {other:?}"),
        }
    }
}

#[test]
fn existing_names_of_other_types_have_no_data() {
    for (name, qtype) in [
        ("web.shop.svc.cluster.local.", RecordType::AAAA),
        ("web.shop.svc.cluster.local.", RecordType::MX),
        ("web.shop.svc.cluster.local.", RecordType::SRV),
        ("shop.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::A),
        ("empty.shop.svc.cluster.local.", RecordType::A),
        ("_http._tcp.web.shop.svc.cluster.local.", RecordType::A),
        ("_tcp.web.shop.svc.cluster.local.", RecordType::SRV),
    ] {
        let reply = ask(name, qtype);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(reply.answers.is_empty(), "{name} {qtype}");
        assert!(
            matches!(
                reply.authorities.first().map(|r| &r.data),
                Some(RData::SOA(_))
            ),
            "{name} {qtype}"
        );
    }
    let soa = ask("cluster.local.", RecordType::SOA);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    // A namespace without Services does not exist.
    let reply = ask("kube-system.svc.cluster.local.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    // Invalid names were left out.
    let reply = ask("x.bad_ns.svc.cluster.local.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn headless_services_answer_their_ready_endpoints() {
    let reply = ask("db.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(
        addresses(&reply),
        vec![Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7)]
    );
    let one = ask("10-244-2-7.db.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(addresses(&one), vec![Ipv4Addr::new(10, 244, 2, 7)]);
    let srv = ask("_pg._tcp.db.shop.svc.cluster.local.", RecordType::SRV);
    let mut targets: Vec<(u16, String)> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (5432, "10-244-1-5.db.shop.svc.cluster.local.".to_string()),
            (5432, "10-244-2-7.db.shop.svc.cluster.local.".to_string()),
        ]
    );
    assert_eq!(
        srv.additionals.len(),
        2,
        "the targets' addresses come along"
    );
}

#[test]
fn named_ports_have_srv_records() {
    let reply = ask("_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV);
    assert_eq!(reply.answers.len(), 1);
    match &reply.answers[0].data {
        RData::SRV(srv) => {
            assert_eq!(srv.port, 80);
            assert_eq!(srv.priority, 0);
            assert_eq!(srv.target.to_ascii(), "web.shop.svc.cluster.local.");
        }
        other => panic!("{other:?}"),
    }
    let mut additional = reply.clone();
    additional.answers = reply.additionals.clone();
    assert_eq!(addresses(&additional), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    // Wrong protocol, unnamed port.
    for name in [
        "_http._udp.web.shop.svc.cluster.local.",
        "_._tcp.web.shop.svc.cluster.local.",
    ] {
        assert_eq!(
            ask(name, RecordType::SRV).metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
}

#[test]
fn external_names_are_cnames() {
    let reply = ask("ext.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
    match &reply.answers[0].data {
        RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "example.com."),
        other => panic!("{other:?}"),
    }
    // A CNAME to a name of the zone is followed.
    let reply = ask("alias.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(reply.answers.len(), 2, "{reply:?}");
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 96, 0, 10)]);
}

#[test]
fn names_outside_the_cluster_domain() {
    // Without upstream servers: NXDOMAIN at once, not authoritative.
    let reply = ask("example.com.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(!reply.metadata.authoritative);
    let reply = ask("notcluster.local.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(!reply.metadata.authoritative);
    // With upstream servers: forwarded; names inside are still answered here.
    assert_eq!(
        respond(
            &query_bytes("example.com.", RecordType::A, false),
            &zone(),
            Transport::Udp,
            true
        ),
        Decision::Forward
    );
    let reply = ask_with("web.shop.svc.cluster.local.", RecordType::A, true);
    assert!(reply.metadata.recursion_available);
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    let reply = ask_with("nope.shop.svc.cluster.local.", RecordType::A, true);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn other_classes_and_opcodes_are_refused() {
    let mut message = Message::new(9, MessageType::Query, OpCode::Query);
    let mut q = Query::query(
        Name::from_ascii("web.shop.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    q.set_query_class(DNSClass::CH);
    message.add_query(q);
    let Decision::Reply(bytes) =
        respond(&message.to_vec().unwrap(), &zone(), Transport::Udp, false)
    else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    let mut update = Message::new(9, MessageType::Query, OpCode::Update);
    update.add_query(Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        RecordType::SOA,
    ));
    let Decision::Reply(bytes) = respond(&update.to_vec().unwrap(), &zone(), Transport::Udp, false)
    else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::NotImp
    );
    let none = Message::new(9, MessageType::Query, OpCode::Query);
    let Decision::Reply(bytes) = respond(&none.to_vec().unwrap(), &zone(), Transport::Udp, false)
    else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn garbage_gets_formerr_or_is_dropped() {
    assert_eq!(respond(&[], &zone(), Transport::Udp, false), Decision::Drop);
    assert_eq!(
        respond(&[1, 2, 3], &zone(), Transport::Udp, false),
        Decision::Drop
    );
    // A header claiming one question that is not there.
    let mut bytes = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&[5, b'a']);
    match respond(&bytes, &zone(), Transport::Udp, false) {
        Decision::Reply(reply) => {
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
            assert_eq!(reply.metadata.id, 0xabcd);
        }
        other => panic!("{other:?}"),
    }
    // A response is never answered (no ping-pong between servers).
    let mut response = query_bytes("web.shop.svc.cluster.local.", RecordType::A, false);
    response[2] |= 0x80;
    assert_eq!(
        respond(&response, &zone(), Transport::Udp, false),
        Decision::Drop
    );
}

#[test]
fn large_answers_are_truncated_over_udp_only() {
    let endpoints: Vec<HeadlessEndpoint> = (0..200u8)
        .map(|i| HeadlessEndpoint {
            hostname: None,
            ip: Ipv4Addr::new(10, 244, 0, i),
            ports: Vec::new(),
        })
        .collect();
    let zone = Zone::build(
        "cluster.local",
        1,
        &[ServiceEntry {
            namespace: "big".into(),
            name: "many".into(),
            target: ServiceTarget::Headless(endpoints),
            ports: Vec::new(),
        }],
    );
    for (edns, limit) in [(false, 512), (true, 1232)] {
        let query = query_bytes("many.big.svc.cluster.local.", RecordType::A, edns);
        let Decision::Reply(bytes) = respond(&query, &zone, Transport::Udp, false) else {
            panic!()
        };
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        let reply = Message::from_vec(&bytes).unwrap();
        assert!(reply.metadata.truncation, "TC set");
        assert!(reply.answers.is_empty());
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.edns.is_some(), edns);
        let Decision::Reply(bytes) = respond(&query, &zone, Transport::Tcp, false) else {
            panic!()
        };
        let reply = Message::from_vec(&bytes).unwrap();
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 200);
    }
}

#[test]
fn upstream_replies_must_match_the_query() {
    let query = query_bytes("Example.COM.", RecordType::A, false);
    let mut reply = Message::from_vec(&query).unwrap();
    reply.metadata.message_type = MessageType::Response;
    let good = reply.to_vec().unwrap();
    assert!(upstream_reply_matches(&query, &good));
    assert!(!upstream_reply_matches(&query, &query), "not a response");
    assert!(
        !upstream_reply_matches(&query, &with_id(&good, 1).unwrap()),
        "other id"
    );
    let lower = {
        let mut m = reply.clone();
        m.queries = vec![Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        )];
        m.to_vec().unwrap()
    };
    assert!(
        !upstream_reply_matches(&query, &lower),
        "case must come back as sent"
    );
    assert!(!upstream_reply_matches(&query, &good[..11]));
    let fail = Message::from_vec(&servfail(&query).unwrap()).unwrap();
    assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(fail.metadata.id, 0x1234);
    assert_eq!(fail.queries.len(), 1);
    assert_eq!(servfail(&[0; 4]), None);
    assert_eq!(with_id(&[0; 4], 1), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never panic, and whatever is answered is a well-formed response.
    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), forwarding: bool) {
        let zone = zone();
        for transport in [Transport::Udp, Transport::Tcp] {
            if let Decision::Reply(reply) = respond(&bytes, &zone, transport, forwarding) {
                let reply = Message::from_vec(&reply).expect("our reply decodes");
                prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
                prop_assert_eq!(reply.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
            }
        }
        let _ = servfail(&bytes);
        let _ = upstream_reply_matches(&bytes, &bytes);
    }

    /// Valid queries with mutated bytes (closer to the parser's edge cases than pure noise).
    #[test]
    fn mutated_queries_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        truncate in any::<usize>(),
    ) {
        let mut bytes = query_bytes("_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV, true);
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        bytes.truncate(truncate % (bytes.len() + 1));
        let _ = respond(&bytes, &zone(), Transport::Udp, false);
    }
}

/// A headless Service's endpoints with a hostname (a StatefulSet's pods, whose subdomain is
/// the Service) are also `<hostname>.<service>.<ns>.svc.<domain>`; the Service's name answers
/// every ready endpoint.
#[test]
fn headless_endpoints_with_hostnames_have_their_own_names() {
    let ep = |h: Option<&str>, last: u8| HeadlessEndpoint {
        hostname: h.map(str::to_string),
        ip: Ipv4Addr::new(10, 244, 1, last),
        ports: vec![port("http", "TCP", 80)],
    };
    let zone = Zone::build(
        "cluster.local",
        1,
        &[ServiceEntry {
            namespace: "default".into(),
            name: "web".into(),
            target: ServiceTarget::Headless(vec![
                ep(Some("web-0"), 5),
                ep(Some("web-1"), 6),
                ep(None, 7),
                ep(Some("Not_A_Label"), 8),
            ]),
            ports: vec![port("http", "TCP", 80)],
        }],
    );
    let a = |name: &str| {
        zone.lookup(name)
            .cloned()
            .map(|s| s.into_iter().collect::<Vec<_>>())
    };
    assert_eq!(
        a("web-0.web.default.svc.cluster.local"),
        Some(vec![ZoneRecord::A(Ipv4Addr::new(10, 244, 1, 5))])
    );
    assert_eq!(
        a("web-1.web.default.svc.cluster.local"),
        Some(vec![ZoneRecord::A(Ipv4Addr::new(10, 244, 1, 6))])
    );
    // Without a (valid) hostname: the dashed address.
    assert!(a("10-244-1-7.web.default.svc.cluster.local").is_some());
    assert!(a("10-244-1-8.web.default.svc.cluster.local").is_some());
    assert_eq!(a("web-0.default.svc.cluster.local"), None);
    assert_eq!(a("web.default.svc.cluster.local").map(|v| v.len()), Some(4));
    // The SRV target of a named endpoint is its own name.
    let srv = a("_http._tcp.web.default.svc.cluster.local").unwrap();
    assert!(srv.contains(&ZoneRecord::Srv {
        weight: 25,
        port: 80,
        target: "web-0.web.default.svc.cluster.local".into()
    }));
}
