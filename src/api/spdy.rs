//! SPDY/3.1 framing, the multiplexing under `kubectl port-forward` (Kubernetes' `httpstream`,
//! moby's `spdystream`): frames decoded from and encoded to bytes, and the header-block codec
//! (name/value pairs, zlib-compressed with SPDY/3's fixed dictionary, one compression context
//! per direction for the whole connection, each block ended by a sync flush). Pure: bytes in,
//! frames out; every length read from the peer is checked before it is used, so a malformed
//! frame is an error, never a panic or an unbounded allocation.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The only version spoken.
pub const VERSION: u16 = 3;
/// FIN: the sender will send nothing more on this stream (SYN_STREAM, SYN_REPLY, HEADERS,
/// DATA).
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes (SPDY/3.1 §2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
}
/// GOAWAY status codes (SPDY/3.1 §2.6.6).
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Largest DATA payload one frame can carry (24-bit length).
pub const MAX_DATA_LEN: usize = (1 << 24) - 1;

/// Header names (lower case) and their values (a value with NULs is several values).
pub type Headers = BTreeMap<String, Vec<String>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// The settings are read past (flow-control windows are not enforced: spdystream, the
    /// only client, neither sends nor honours them).
    Settings {
        entries: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type SPDY/3.1 does not define: skipped, as the spec says.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("a frame of {len} bytes is larger than the {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("bad header block: {0}")]
    HeaderBlock(String),
}

/// SPDY/3's header compression dictionary (SPDY/3 §2.6.10.1): 65 length-prefixed names and
/// values, then a run of common values. Built by [`dictionary`]; its Adler-32 (what a zlib
/// stream names it by) is [`DICTIONARY_ID`].
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);
/// The Adler-32 of the SPDY/3 dictionary (zlib's DICTID in every SPDY/3 header stream).
pub const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// The SPDY/3 header compression dictionary, 1423 bytes.
pub fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// Reads frames from a connection's bytes; holds the connection's header decompression
/// context.
pub struct Decoder {
    inflate: Decompress,
    max_frame: usize,
    max_header_block: usize,
}

impl Decoder {
    /// `max_frame`: the largest frame (payload) accepted; `max_header_block`: the largest
    /// decompressed header block.
    pub fn new(max_frame: usize, max_header_block: usize) -> Self {
        Decoder {
            inflate: Decompress::new(true),
            max_frame,
            max_header_block,
        }
    }

    /// The next frame at the start of `buf` (its bytes are taken from `buf`); `None` while
    /// `buf` holds less than a whole frame. A frame longer than `max_frame` is refused from its
    /// header, before its payload is buffered. After an error the connection cannot go on
    /// (the header compression context may be out of step).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > self.max_frame {
            return Err(SpdyError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        buf.advance(8);
        let body = buf.split_to(len).freeze();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        self.control((first & 0xffff) as u16, flags, body).map(Some)
    }

    fn control(&mut self, kind: u16, flags: u8, body: Bytes) -> Result<Frame, SpdyError> {
        let word = |at: usize, what: &'static str| -> Result<u32, SpdyError> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(SpdyError::Malformed(what))
        };
        Ok(match kind {
            SYN_STREAM => {
                let stream_id = word(0, "SYN_STREAM")? & 0x7fff_ffff;
                let associated_to = word(4, "SYN_STREAM")? & 0x7fff_ffff;
                if body.len() < 10 {
                    return Err(SpdyError::Malformed("SYN_STREAM"));
                }
                let priority = body[8] >> 5;
                let headers = self.header_block(&body[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream_id = word(0, "SYN_REPLY")? & 0x7fff_ffff;
                let headers = self.header_block(&body[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            RST_STREAM => Frame::RstStream {
                stream_id: word(0, "RST_STREAM")? & 0x7fff_ffff,
                status: word(4, "RST_STREAM")?,
            },
            SETTINGS => {
                let entries = word(0, "SETTINGS")?;
                if (entries as usize).checked_mul(8) != Some(body.len() - 4) {
                    return Err(SpdyError::Malformed("SETTINGS"));
                }
                Frame::Settings { entries }
            }
            PING => Frame::Ping {
                id: word(0, "PING")?,
            },
            GOAWAY => Frame::GoAway {
                last_good_stream_id: word(0, "GOAWAY")? & 0x7fff_ffff,
                // SPDY/3 has a status; an 4-byte GOAWAY (SPDY/2 style) reads as OK.
                status: word(4, "GOAWAY").unwrap_or(goaway::OK),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream_id: word(0, "WINDOW_UPDATE")? & 0x7fff_ffff,
                delta: word(4, "WINDOW_UPDATE")? & 0x7fff_ffff,
            },
            kind => Frame::Unknown { kind },
        })
    }

    /// Decompresses one header block (in the connection's context) and parses it.
    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate_block(compressed)?;
        parse_header_block(&raw)
    }

    fn inflate_block(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(256.min(self.max_header_block));
        let mut pos = 0usize;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= self.max_header_block {
                    return Err(SpdyError::HeaderBlock(format!(
                        "more than {} bytes decompressed",
                        self.max_header_block
                    )));
                }
                out.reserve((out.len().max(256)).min(self.max_header_block - out.len()));
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result =
                self.inflate
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.inflate.total_in() - in_before) as usize;
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::HeaderBlock("the zlib stream ended".into()))
                }
                Ok(_) => {
                    let room = out.len() < out.capacity();
                    if pos >= input.len() && room {
                        return Ok(out);
                    }
                    let progressed =
                        self.inflate.total_in() != in_before || out.len() != out_before;
                    if room && !progressed {
                        return Err(SpdyError::HeaderBlock("truncated".into()));
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.inflate
                            .set_dictionary(dictionary())
                            .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
                    }
                    Some(other) => {
                        return Err(SpdyError::HeaderBlock(format!(
                            "unknown zlib dictionary {other:#x}"
                        )))
                    }
                    None => return Err(SpdyError::HeaderBlock(e.to_string())),
                },
            }
        }
    }
}

/// Parses a decompressed header block: a count, then length-prefixed names and values.
pub fn parse_header_block(raw: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |m: &str| SpdyError::HeaderBlock(m.to_string());
    let mut rest = raw;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        if rest.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = word(take(4)?);
    let mut headers = Headers::new();
    for _ in 0..count {
        let n = word(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = word(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        if name.is_empty() {
            return Err(bad("empty header name"));
        }
        headers
            .entry(name)
            .or_default()
            .extend(value.split('\0').map(str::to_string));
    }
    Ok(headers)
}

/// The uncompressed form of a header block.
pub fn header_block(headers: &Headers) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, values) in headers {
        let value = values.join("\0");
        raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
        raw.extend_from_slice(value.as_bytes());
    }
    raw
}

/// Writes frames; holds the connection's header compression context.
pub struct Encoder {
    deflate: Compress,
    dictionary_set: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            deflate: Compress::new(Compression::default(), true),
            dictionary_set: false,
        }
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_DATA_LEN {
                    return Err(SpdyError::TooLarge {
                        len: data.len(),
                        max: MAX_DATA_LEN,
                    });
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                push_flags_len(out, *flags, data.len());
                out.extend_from_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated_to & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x7) << 5);
                body.push(0);
                self.deflate_block(&header_block(headers), &mut body)?;
                control(out, SYN_STREAM, *flags, &body)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                self.deflate_block(&header_block(headers), &mut body)?;
                control(out, kind, *flags, &body)
            }
            Frame::RstStream { stream_id, status } => control(
                out,
                RST_STREAM,
                0,
                &words(&[stream_id & 0x7fff_ffff, *status]),
            ),
            Frame::Settings { .. } => control(out, SETTINGS, 0, &0u32.to_be_bytes()),
            Frame::Ping { id } => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => control(
                out,
                GOAWAY,
                0,
                &words(&[last_good_stream_id & 0x7fff_ffff, *status]),
            ),
            Frame::WindowUpdate { stream_id, delta } => control(
                out,
                WINDOW_UPDATE,
                0,
                &words(&[stream_id & 0x7fff_ffff, delta & 0x7fff_ffff]),
            ),
            Frame::Unknown { kind } => control(out, *kind, 0, &[]),
        }
    }

    /// Compresses `raw` in the connection's context, ending with a sync flush so the peer
    /// can decompress the block on its own.
    fn deflate_block(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        if !self.dictionary_set {
            self.deflate
                .set_dictionary(dictionary())
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            self.dictionary_set = true;
        }
        let mut pos = 0usize;
        loop {
            out.reserve(raw.len() - pos + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[pos..], out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            pos += (self.deflate.total_in() - before) as usize;
            // Done once all input is in and the flush left room unused in `out`.
            if pos >= raw.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn push_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) {
    out.push(flags);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]) -> Result<(), SpdyError> {
    if body.len() > MAX_DATA_LEN {
        return Err(SpdyError::TooLarge {
            len: body.len(),
            max: MAX_DATA_LEN,
        });
    }
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    push_flags_len(out, flags, body.len());
    out.extend_from_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect()
    }

    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        frames
    }

    #[test]
    fn dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(adler32(d), DICTIONARY_ID);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    /// Two SYN_STREAMs as kubectl opens them for one forwarded connection (error, then data),
    /// compressed by C zlib in one context with the SPDY/3 dictionary: the second block only
    /// decompresses if the first one's context is kept.
    #[test]
    fn reads_a_clients_stream_pair_across_one_compression_context() {
        let bytes = hex(concat!(
            "800300010000003c0000000100000000000078f9e3c6a7c202253a48f95b044aab4c16064092b3",
            "08125b99a054cc68004e872545a989b9d0a2863515141100000000ffff",
            "800300010000001600000003000000000000224b2ba8944a04000000ffff"
        ));
        let frames = decode_all(&mut Decoder::new(1 << 20, 1 << 16), &bytes);
        let expect = |id, kind| Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: headers(&[("port", "80"), ("requestid", "0"), ("streamtype", kind)]),
        };
        assert_eq!(frames, vec![expect(1, "error"), expect(3, "data")]);
    }

    /// A SYN_STREAM and a SYN_REPLY from another implementation (node's spdy-transport tests).
    #[test]
    fn reads_other_implementations_frames() {
        let syn = hex("800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006b32a4804974d8cfa00000000ffff");
        let frames = decode_all(&mut Decoder::new(1 << 20, 1 << 16), &syn);
        assert_eq!(
            frames,
            vec![Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: headers(&[(":method", "GET"), (":path", "/")]),
            }]
        );
        let reply = hex("80030002000000140000000178f9e3c6a7c202a6230600000000ffff");
        let frames = decode_all(&mut Decoder::new(1 << 20, 1 << 16), &reply);
        assert_eq!(
            frames,
            vec![Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            }]
        );
    }

    #[test]
    fn frames_round_trip_through_one_context() {
        let mut multi = headers(&[("port", "8080"), ("streamtype", "data")]);
        multi.insert("x".into(), vec!["a".into(), "b".into()]);
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                flags: 0,
                headers: multi.clone(),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            },
            Frame::Headers {
                stream_id: 1,
                flags: FLAG_FIN,
                headers: multi,
            },
            Frame::SynReply {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: headers(&[("status", "200")]),
            },
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings { entries: 0 },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: goaway::OK,
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 65536,
            },
        ];
        let mut enc = Encoder::new();
        let mut bytes = Vec::new();
        for f in &frames {
            enc.encode(f, &mut bytes).unwrap();
        }
        let mut dec = Decoder::new(1 << 20, 1 << 16);
        assert_eq!(decode_all(&mut dec, &bytes), frames);
        // Byte by byte: nothing decodes before a frame is whole.
        let mut dec = Decoder::new(1 << 20, 1 << 16);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &bytes {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn known_encodings_of_fixed_frames() {
        let mut out = Vec::new();
        let mut enc = Encoder::new();
        enc.encode(
            &Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hi"),
            },
            &mut out,
        )
        .unwrap();
        enc.encode(
            &Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            &mut out,
        )
        .unwrap();
        enc.encode(&Frame::Ping { id: 1 }, &mut out).unwrap();
        assert_eq!(
            out,
            hex(concat!(
                "00000003010000026869",
                "80030003000000080000000300000005",
                "800300060000000400000001"
            ))
        );
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        let mut dec = Decoder::new(1024, 1 << 16);
        let mut buf = BytesMut::from(&hex("0000000100ffffff")[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(SpdyError::TooLarge {
                len: 0xffffff,
                max: 1024
            })
        );
        let mut buf = BytesMut::from(&hex("8002000100000000")[..]);
        assert_eq!(dec.decode(&mut buf), Err(SpdyError::Version(2)));
    }

    #[test]
    fn header_block_bombs_and_lies_are_errors() {
        // A count and lengths larger than the block.
        for raw in [
            hex("00000001"),
            hex("0000000100000010"),
            hex("00000001000000016100000009"),
            hex("ffffffff"),
        ] {
            assert!(parse_header_block(&raw).is_err(), "{raw:?}");
        }
        // A block that decompresses to more than allowed.
        let big: Headers = [("x".to_string(), vec!["y".repeat(100_000)])].into();
        let mut enc = Encoder::new();
        let mut bytes = Vec::new();
        enc.encode(
            &Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: big,
            },
            &mut bytes,
        )
        .unwrap();
        let mut dec = Decoder::new(1 << 20, 4096);
        assert!(matches!(
            dec.decode(&mut BytesMut::from(&bytes[..])),
            Err(SpdyError::HeaderBlock(_))
        ));
        // Not zlib at all.
        let mut dec = Decoder::new(1 << 20, 4096);
        let garbage = hex("8003000200000008000000012a2a2a2a");
        assert!(dec.decode(&mut BytesMut::from(&garbage[..])).is_err());
    }

    /// Arbitrary bytes never panic the decoder (a deterministic xorshift stream of inputs,
    /// some starting with valid control frame headers).
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && bytes.len() >= 8 {
                let kind = (next() % 10) as u8;
                bytes[..4].copy_from_slice(&[0x80, 0x03, 0x00, kind]);
                let body = (bytes.len() - 8) as u32;
                bytes[5..8].copy_from_slice(&body.to_be_bytes()[1..]);
            }
            let mut dec = Decoder::new(1 << 16, 1 << 12);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}
