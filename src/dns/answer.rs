//! The answer to one DNS message: decode, look the question up in the [`Zone`] or decide to
//! forward it, encode the response (truncated to what the transport allows). Pure: bytes and
//! a zone in, a [`Decision`] out; never panics on hostile input.

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::zone::{Zone, ZoneRecord};

/// TTL of every answer, and the SOA minimum (how long resolvers cache a negative answer).
pub const TTL: u32 = 5;
/// The largest UDP response we send, whatever EDNS size a client offers (the DNS flag day
/// 2020 default, which avoids IP fragmentation).
pub const MAX_UDP_RESPONSE: usize = 1232;
/// A UDP response to a client without EDNS is at most this long (RFC 1035).
pub const CLASSIC_UDP_RESPONSE: usize = 512;
/// Largest query answered (one question and perhaps an OPT record take a few hundred bytes);
/// a longer message gets FORMERR.
pub const MAX_QUERY: usize = 4096;
/// How many CNAMEs inside the zone an answer follows.
const MAX_CNAME_CHAIN: usize = 8;

/// How the message arrived: decides the response size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with one received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// The question is outside the cluster domain and upstream servers are configured: relay
    /// the query (see [`upstream_reply_matches`]).
    Forward,
    /// Not a query we answer at all (shorter than a header, or itself a response): drop it,
    /// so two servers can never bounce messages at each other.
    Drop,
}

/// Answers `query` from `zone`. `forwarding`: whether names outside the cluster domain are
/// forwarded upstream; without it they get NXDOMAIN at once.
pub fn respond(query: &[u8], zone: &Zone, transport: Transport, forwarding: bool) -> Decision {
    let Ok(header) = Header::read(&mut BinDecoder::new(query)) else {
        return Decision::Drop;
    };
    if header.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    if query.len() > MAX_QUERY {
        return encode_error(&header, ResponseCode::FormErr);
    }
    let request = match Message::from_vec(query) {
        Ok(message) => message,
        Err(_) => return encode_error(&header, ResponseCode::FormErr),
    };
    if request.metadata.op_code != OpCode::Query {
        return encode_error(&header, ResponseCode::NotImp);
    }
    let [question] = request.queries.as_slice() else {
        return encode_error(&header, ResponseCode::FormErr);
    };
    let key = name_key(question.name());
    let inside = key.as_deref().map(|k| zone.is_inside(k));
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = forwarding;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.add_query(question.clone());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_RESPONSE as u16);
        edns.set_version(0);
        response.set_edns(edns);
    }
    match (inside, key) {
        (Some(true), Some(key)) if question.query_class() == DNSClass::IN => {
            response.metadata.authoritative = true;
            answer_inside(&mut response, question, &key, zone);
        }
        (Some(true), _) => {
            response.metadata.response_code = ResponseCode::Refused;
        }
        (None, _) if name_inside_labels(question.name(), zone) => {
            // Under the cluster domain but with a label no Service can have (a dot or
            // other odd bytes inside a label): it cannot exist.
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa_record(zone));
        }
        _ if forwarding => return Decision::Forward,
        _ => {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
    }
    encode(response, limit(&request, transport))
}

/// Fills the answer for a question inside the zone (class IN, `key` its lowercase name).
fn answer_inside(response: &mut Message, question: &Query, key: &str, zone: &Zone) {
    let qtype = question.query_type();
    let Some(records) = zone.lookup(key) else {
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_authority(soa_record(zone));
        return;
    };
    let mut owner = question.name().clone();
    let mut records = records;
    let mut chain = 0;
    // A CNAME answers every type but CNAME itself; follow it while the target is ours.
    while qtype != RecordType::CNAME && chain < MAX_CNAME_CHAIN {
        let Some(target) = records.iter().find_map(|r| match r {
            ZoneRecord::Cname(t) => Some(t.clone()),
            _ => None,
        }) else {
            break;
        };
        let Ok(target_name) = Name::from_ascii(format!("{target}.")) else {
            break;
        };
        response.add_answer(Record::from_rdata(
            owner.clone(),
            TTL,
            RData::CNAME(CNAME(target_name.clone())),
        ));
        chain += 1;
        match zone.lookup(&target) {
            Some(next) if zone.is_inside(&target) => {
                owner = target_name;
                records = next;
            }
            _ => return,
        }
    }
    if qtype == RecordType::SOA && key == zone.domain() {
        response.add_answer(soa_record(zone));
        return;
    }
    let mut additional_targets = Vec::new();
    for record in records {
        let rdata = match (record, qtype) {
            (ZoneRecord::A(ip), RecordType::A | RecordType::ANY) => RData::A(A(*ip)),
            (ZoneRecord::Cname(t), RecordType::CNAME | RecordType::ANY) => {
                match Name::from_ascii(format!("{t}.")) {
                    Ok(name) => RData::CNAME(CNAME(name)),
                    Err(_) => continue,
                }
            }
            (
                ZoneRecord::Srv {
                    weight,
                    port,
                    target,
                },
                RecordType::SRV | RecordType::ANY,
            ) => match Name::from_ascii(format!("{target}.")) {
                Ok(name) => {
                    additional_targets.push((target.clone(), name.clone()));
                    RData::SRV(SRV::new(0, *weight, *port, name))
                }
                Err(_) => continue,
            },
            _ => continue,
        };
        response.add_answer(Record::from_rdata(owner.clone(), TTL, rdata));
    }
    if response.answers.is_empty() {
        // The name exists with other types (or none): NOERROR, no data, SOA for the
        // negative-cache time.
        response.add_authority(soa_record(zone));
        return;
    }
    additional_targets.dedup();
    for (key, name) in additional_targets {
        for record in zone.lookup(&key).into_iter().flatten() {
            if let ZoneRecord::A(ip) = record {
                response.add_additional(Record::from_rdata(name.clone(), TTL, RData::A(A(*ip))));
            }
        }
    }
}

/// The zone's SOA record (authority section of negative answers).
fn soa_record(zone: &Zone) -> Record {
    let domain = Name::from_ascii(format!("{}.", zone.domain())).unwrap_or_else(|_| Name::root());
    let under = |label: &str| {
        Name::from_ascii(format!("{label}.{}.", zone.domain())).unwrap_or_else(|_| Name::root())
    };
    let soa = SOA::new(
        under("ns.dns"),
        under("hostmaster"),
        zone.serial(),
        7200,
        1800,
        86400,
        TTL,
    );
    Record::from_rdata(domain, TTL, RData::SOA(soa))
}

/// The lowercase dotted key of a name, without the trailing dot; `None` if a label holds a
/// dot or a byte outside printable ASCII (no zone name can match it).
fn name_key(name: &Name) -> Option<String> {
    let mut key = String::new();
    for label in name.iter() {
        if label.is_empty() || label.iter().any(|b| *b == b'.' || !b.is_ascii_graphic()) {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    Some(key)
}

/// Whether the last labels of `name` are the zone's domain (used when the name has no key).
fn name_inside_labels(name: &Name, zone: &Zone) -> bool {
    let domain: Vec<&str> = zone.domain().split('.').collect();
    let labels: Vec<&[u8]> = name.iter().collect();
    labels.len() > domain.len()
        && labels[labels.len() - domain.len()..]
            .iter()
            .zip(&domain)
            .all(|(l, d)| l.eq_ignore_ascii_case(d.as_bytes()))
}

/// The response size limit for `request` over `transport`.
fn limit(request: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => match &request.edns {
            Some(edns) => {
                (edns.max_payload() as usize).clamp(CLASSIC_UDP_RESPONSE, MAX_UDP_RESPONSE)
            }
            None => CLASSIC_UDP_RESPONSE,
        },
    }
}

/// Encodes `response`; one that does not fit `limit` goes as header + question with TC set
/// (the client retries over TCP).
fn encode(response: Message, limit: usize) -> Decision {
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Decision::Reply(bytes),
        Ok(_) => match response.truncate().to_vec() {
            Ok(bytes) if bytes.len() <= limit => Decision::Reply(bytes),
            _ => Decision::Drop,
        },
        Err(_) => {
            let header = Header {
                metadata: response.metadata,
                counts: Default::default(),
            };
            encode_error(&header, ResponseCode::ServFail)
        }
    }
}

/// A bare error response (no question) to a message with `header`.
fn encode_error(header: &Header, code: ResponseCode) -> Decision {
    let mut response = Message::error_msg(header.metadata.id, header.metadata.op_code, code);
    response.metadata.recursion_desired = header.metadata.recursion_desired;
    match response.to_vec() {
        Ok(bytes) => Decision::Reply(bytes),
        Err(_) => Decision::Drop,
    }
}

/// SERVFAIL to `query` (when forwarding it failed), with its question if it has one.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    let mut response = Message::error_msg(
        header.metadata.id,
        header.metadata.op_code,
        ResponseCode::ServFail,
    );
    response.metadata.recursion_desired = header.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    if let Ok(request) = Message::from_vec(query) {
        response.add_queries(request.queries);
    }
    response.to_vec().ok()
}

/// Whether `reply` from an upstream server answers `query`: a response with the same id and
/// the same question (names compared case-sensitively, so 0x20-randomised queries must come
/// back as sent).
pub fn upstream_reply_matches(query: &[u8], reply: &[u8]) -> bool {
    let questions = |bytes: &[u8]| -> Option<(Header, Vec<Query>)> {
        let mut decoder = BinDecoder::new(bytes);
        let header = Header::read(&mut decoder).ok()?;
        let queries = Message::read_queries(&mut decoder, header.counts.queries as usize).ok()?;
        Some((header, queries))
    };
    let (Some((qh, qq)), Some((rh, rq))) = (questions(query), questions(reply)) else {
        return false;
    };
    rh.metadata.message_type == MessageType::Response
        && rh.metadata.id == qh.metadata.id
        && qq.len() == rq.len()
        && qq.iter().zip(&rq).all(|(a, b)| {
            a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
                && a.name().eq_case(b.name())
        })
}

/// `message` with its id replaced (`None` if shorter than a header).
pub fn with_id(message: &[u8], id: u16) -> Option<Vec<u8>> {
    if message.len() < 12 {
        return None;
    }
    let mut out = message.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    Some(out)
}
