//! The TLS protocol version a server chose, read from the ServerHello it sent (RFC 8446 §4.1.3,
//! RFC 5246 §7.4.1.3).
//!
//! lettre does not expose the negotiated version of a STARTTLS session, so Postrider watches the
//! server's side of the handshake instead: [`scan_server_hello`] is the pure parser over the bytes
//! received since the client's first handshake record, and [`HelloObserver`] feeds it as bytes
//! arrive, with bounded buffering. Only the plaintext start of the handshake is read; nothing
//! about it is trusted beyond reporting the version (the TLS library still checks everything).

use std::fmt;

/// A TLS protocol version as carried on the wire (`0x0303` is TLS 1.2, `0x0304` TLS 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TlsVersion(pub(crate) u16);

impl fmt::Display for TlsVersion {
    /// `TLSv1.2`, `TLSv1.3` (the names OpenSSL and Postfix log); unknown values in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0x0300 => f.write_str("SSLv3"),
            0x0301 => f.write_str("TLSv1"),
            0x0302 => f.write_str("TLSv1.1"),
            0x0303 => f.write_str("TLSv1.2"),
            0x0304 => f.write_str("TLSv1.3"),
            other => write!(f, "0x{other:04x}"),
        }
    }
}

/// What the bytes received so far say about the server's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HelloScan {
    /// The ServerHello is not complete yet.
    NeedMore,
    /// The server selected this version.
    Found(TlsVersion),
    /// The bytes are not the start of a TLS server handshake (an alert, garbage, plaintext).
    NotServerHello,
}

/// TLS record content types (RFC 8446 §5.1).
const CHANGE_CIPHER_SPEC: u8 = 20;
const HANDSHAKE: u8 = 22;
/// Handshake message type of ServerHello and HelloRetryRequest.
const SERVER_HELLO: u8 = 2;
/// The `supported_versions` extension (RFC 8446 §4.2.1).
const SUPPORTED_VERSIONS: u16 = 43;
/// Largest record payload a peer may send (2^14 plus the TLS 1.2 expansion allowance).
const MAX_RECORD_PAYLOAD: usize = 16_384 + 2_048;
/// A HelloRetryRequest is a ServerHello with this `random` (SHA-256 of "HelloRetryRequest").
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// Finds the version selected by the server in `received`: the bytes the server sent after the
/// client's first handshake record, from the start.
///
/// Handshake messages may span records and a record may be cut short (only the start of a large
/// record is needed). A HelloRetryRequest is skipped: the ServerHello that follows it decides.
/// TLS 1.3 servers name the version in `supported_versions`; older ones in `legacy_version`.
pub(crate) fn scan_server_hello(received: &[u8]) -> HelloScan {
    let Some(Handshake { bytes, ended }) = handshake_bytes(received) else {
        return HelloScan::NotServerHello;
    };
    let need_more = if ended {
        HelloScan::NotServerHello
    } else {
        HelloScan::NeedMore
    };
    let mut rest = bytes.as_slice();
    let mut retried = false;
    loop {
        let Some((&kind, after)) = rest.split_first() else {
            return need_more;
        };
        if kind != SERVER_HELLO {
            return HelloScan::NotServerHello;
        }
        let Some(len) = after.get(..3).map(|b| u24(b[0], b[1], b[2])) else {
            return need_more;
        };
        if len > MAX_RECORD_PAYLOAD {
            return HelloScan::NotServerHello;
        }
        let Some(body) = after.get(3..3 + len) else {
            return need_more;
        };
        match parse_server_hello(body) {
            Some(hello) if hello.retry && !retried => {
                // RFC 8446 §4.1.4: a second HelloRetryRequest is a protocol error.
                retried = true;
                rest = &after[3 + len..];
            }
            Some(hello) if !hello.retry => return HelloScan::Found(hello.version),
            _ => return HelloScan::NotServerHello,
        }
    }
}

/// The plaintext handshake messages at the start of what the server sent.
struct Handshake {
    /// Handshake records' payloads, concatenated (the last possibly partial).
    bytes: Vec<u8>,
    /// A record of another kind followed (an alert, encrypted data, or not TLS at all): no more
    /// plaintext handshake bytes will come.
    ended: bool,
}

/// The handshake-layer bytes at the start of `received`, or `None` when a record header is
/// malformed.
fn handshake_bytes(received: &[u8]) -> Option<Handshake> {
    let mut bytes = Vec::new();
    let mut rest = received;
    while let Some(&kind) = rest.first() {
        if kind != HANDSHAKE && kind != CHANGE_CIPHER_SPEC {
            // TLS 1.3 encrypts everything after the ServerHello (application_data records).
            return Some(Handshake { bytes, ended: true });
        }
        if rest.get(1).is_some_and(|&major| major != 3) {
            return None;
        }
        let Some(header) = rest.get(..5) else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_PAYLOAD {
            return None;
        }
        let payload = &rest[5..rest.len().min(5 + len)];
        // TLS 1.3 middlebox compatibility: a change_cipher_spec record may follow a
        // HelloRetryRequest; it carries no handshake bytes.
        if kind == HANDSHAKE {
            bytes.extend_from_slice(payload);
        }
        if payload.len() < len {
            break;
        }
        rest = &rest[5 + len..];
    }
    Some(Handshake {
        bytes,
        ended: false,
    })
}

/// The parts of a ServerHello body that matter here.
struct ServerHello {
    version: TlsVersion,
    retry: bool,
}

/// Parses a ServerHello body: `legacy_version`, `random`, `legacy_session_id_echo`,
/// `cipher_suite`, `legacy_compression_method` and the optional extensions. `None` when
/// malformed.
fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    if legacy_version >> 8 != 3 {
        return None;
    }
    let random = r.take(32)?;
    let session_id_len = usize::from(r.u8()?);
    if session_id_len > 32 {
        return None;
    }
    r.take(session_id_len)?;
    r.take(2 + 1)?; // cipher_suite, legacy_compression_method
    let mut selected = None;
    if !r.0.is_empty() {
        let extensions_len = usize::from(r.u16()?);
        let mut extensions = Reader(r.take(extensions_len)?);
        while !extensions.0.is_empty() {
            let kind = extensions.u16()?;
            let len = usize::from(extensions.u16()?);
            let data = extensions.take(len)?;
            if kind == SUPPORTED_VERSIONS {
                let &[hi, lo] = data else {
                    return None;
                };
                selected = Some(u16::from_be_bytes([hi, lo]));
            }
        }
    }
    Some(ServerHello {
        version: TlsVersion(selected.unwrap_or(legacy_version)),
        retry: random == HELLO_RETRY_RANDOM,
    })
}

fn u24(a: u8, b: u8, c: u8) -> usize {
    (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
}

/// Big-endian reads from a byte slice; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Most bytes kept while waiting for the ServerHello. A ServerHello is well under 2 KiB (a
/// post-quantum key share included), a HelloRetryRequest before it adds a few hundred bytes.
pub(crate) const MAX_OBSERVED: usize = 8 * 1024;

/// Watches one connection's traffic for the ServerHello: [`Self::client_sent`] arms it when the
/// client starts a handshake, [`Self::server_sent`] collects what the server sends until the
/// version is known, the bytes are not a handshake, or [`MAX_OBSERVED`] bytes went by.
#[derive(Debug, Default)]
pub(crate) struct HelloObserver {
    state: ObserverState,
}

#[derive(Debug, Default)]
enum ObserverState {
    /// No client handshake yet (plaintext SMTP so far).
    #[default]
    Idle,
    /// The client sent its ClientHello; the server's bytes since then.
    Collecting(Vec<u8>),
    /// Finished: the version was found, or the bytes were not a ServerHello.
    Done,
}

impl HelloObserver {
    /// Notes bytes the client wrote. A write that starts with a TLS handshake record header
    /// (`0x16 0x03`) is the ClientHello: from then on the server's bytes are collected. SMTP
    /// commands never start with that byte.
    pub(crate) fn client_sent(&mut self, bytes: &[u8]) {
        if matches!(self.state, ObserverState::Idle) && bytes.starts_with(&[HANDSHAKE, 3]) {
            self.state = ObserverState::Collecting(Vec::new());
        }
    }

    /// Notes bytes the server sent. Returns the version once, when it becomes known.
    pub(crate) fn server_sent(&mut self, bytes: &[u8]) -> Option<TlsVersion> {
        let ObserverState::Collecting(buf) = &mut self.state else {
            return None;
        };
        let room = MAX_OBSERVED.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let found = match scan_server_hello(buf) {
            HelloScan::NeedMore if buf.len() < MAX_OBSERVED => return None,
            HelloScan::Found(version) => Some(version),
            HelloScan::NeedMore | HelloScan::NotServerHello => None,
        };
        self.state = ObserverState::Done;
        found
    }

    /// Whether there is nothing left to observe (saves the adapter the copying).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, ObserverState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS12: TlsVersion = TlsVersion(0x0303);
    const TLS13: TlsVersion = TlsVersion(0x0304);

    /// A TLS record of `kind` around `payload`.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 3, 3];
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A ServerHello handshake message (header included).
    fn server_hello(legacy: u16, random: [u8; 32], extensions: Option<&[(u16, &[u8])]>) -> Vec<u8> {
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend_from_slice(&random);
        body.push(32);
        body.extend_from_slice(&[0xAB; 32]);
        body.extend_from_slice(&[0x13, 0x01, 0x00]);
        if let Some(extensions) = extensions {
            let mut ext = Vec::new();
            for (kind, data) in extensions {
                ext.extend_from_slice(&kind.to_be_bytes());
                ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
                ext.extend_from_slice(data);
            }
            body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
            body.extend_from_slice(&ext);
        }
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut out = vec![SERVER_HELLO, len[1], len[2], len[3]];
        out.extend_from_slice(&body);
        out
    }

    const KEY_SHARE: (u16, &[u8]) = (51, &[0x00, 0x1d, 0x00, 0x04, 1, 2, 3, 4]);

    fn tls13_hello() -> Vec<u8> {
        server_hello(
            0x0303,
            [7; 32],
            Some(&[KEY_SHARE, (SUPPORTED_VERSIONS, &[0x03, 0x04])]),
        )
    }

    fn tls12_hello() -> Vec<u8> {
        // renegotiation_info and extended_master_secret; no supported_versions
        server_hello(0x0303, [7; 32], Some(&[(0xff01, &[0]), (23, &[])]))
    }

    #[test]
    fn names_versions_like_openssl() {
        assert_eq!(TLS12.to_string(), "TLSv1.2");
        assert_eq!(TLS13.to_string(), "TLSv1.3");
        assert_eq!(TlsVersion(0x0301).to_string(), "TLSv1");
        assert_eq!(TlsVersion(0x7f1c).to_string(), "0x7f1c");
    }

    #[test]
    fn tls13_is_read_from_supported_versions() {
        let mut bytes = record(HANDSHAKE, &tls13_hello());
        assert_eq!(scan_server_hello(&bytes), HelloScan::Found(TLS13));
        // the rest of the server's flight, read together with it: encrypted from here on
        bytes.extend(record(CHANGE_CIPHER_SPEC, &[1]));
        bytes.extend(record(23, &[0x42; 300]));
        assert_eq!(scan_server_hello(&bytes), HelloScan::Found(TLS13));
    }

    #[test]
    fn tls12_is_the_legacy_version() {
        let bytes = record(HANDSHAKE, &tls12_hello());
        assert_eq!(scan_server_hello(&bytes), HelloScan::Found(TLS12));
        // a ServerHello without any extensions (TLS 1.0 to 1.2 allow it)
        let bytes = record(HANDSHAKE, &server_hello(0x0302, [7; 32], None));
        assert_eq!(
            scan_server_hello(&bytes),
            HelloScan::Found(TlsVersion(0x0302))
        );
    }

    #[test]
    fn the_start_of_a_large_record_is_enough() {
        // TLS 1.2 servers often send ServerHello, Certificate, ... in one record.
        let mut payload = tls12_hello();
        payload.extend_from_slice(&[11, 0, 0x30, 0]);
        payload.resize(payload.len() + 12_000, 0x55);
        let bytes = record(HANDSHAKE, &payload);
        let hello_end = 5 + tls12_hello().len();
        assert_eq!(
            scan_server_hello(&bytes[..hello_end]),
            HelloScan::Found(TLS12)
        );
        assert_eq!(
            scan_server_hello(&bytes[..hello_end - 1]),
            HelloScan::NeedMore
        );
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let hello = tls13_hello();
        let (a, b) = hello.split_at(10);
        let mut bytes = record(HANDSHAKE, a);
        assert_eq!(scan_server_hello(&bytes), HelloScan::NeedMore);
        bytes.extend(record(HANDSHAKE, b));
        assert_eq!(scan_server_hello(&bytes), HelloScan::Found(TLS13));
    }

    #[test]
    fn every_truncation_needs_more() {
        let bytes = record(HANDSHAKE, &tls13_hello());
        for end in 0..bytes.len() {
            assert_eq!(
                scan_server_hello(&bytes[..end]),
                HelloScan::NeedMore,
                "{end}"
            );
        }
    }

    #[test]
    fn a_hello_retry_request_is_skipped() {
        let hrr = server_hello(
            0x0303,
            HELLO_RETRY_RANDOM,
            Some(&[(51, &[0x00, 0x18]), (SUPPORTED_VERSIONS, &[0x03, 0x04])]),
        );
        let mut bytes = record(HANDSHAKE, &hrr);
        assert_eq!(scan_server_hello(&bytes), HelloScan::NeedMore);
        bytes.extend(record(CHANGE_CIPHER_SPEC, &[1]));
        assert_eq!(scan_server_hello(&bytes), HelloScan::NeedMore);
        // the real ServerHello after the client's second ClientHello, split over two records
        let hello = tls13_hello();
        bytes.extend(record(HANDSHAKE, &hello[..5]));
        assert_eq!(scan_server_hello(&bytes), HelloScan::NeedMore);
        bytes.extend(record(HANDSHAKE, &hello[5..]));
        assert_eq!(scan_server_hello(&bytes), HelloScan::Found(TLS13));
        // two retries are a protocol error
        let mut twice = record(HANDSHAKE, &hrr);
        twice.extend(record(HANDSHAKE, &hrr));
        assert_eq!(scan_server_hello(&twice), HelloScan::NotServerHello);
    }

    #[test]
    fn anything_else_is_not_a_server_hello() {
        let not = |bytes: &[u8]| assert_eq!(scan_server_hello(bytes), HelloScan::NotServerHello);
        not(b"220 mx.example ESMTP\r\n");
        not(b"\x16\x01");
        not(&record(21, &[2, 40])); // handshake_failure alert
        not(&record(23, &[0; 20])); // application data
        not(&record(HANDSHAKE, &[11, 0, 0, 0])); // Certificate first
        not(&[HANDSHAKE, 3, 3, 0, 0]); // empty record
        not(&[HANDSHAKE, 3, 3, 0xff, 0xff]); // oversized record
        // malformed bodies: bad legacy version, overlong session id, bad supported_versions
        not(&record(HANDSHAKE, &server_hello(0x0203, [7; 32], None)));
        let mut long_id = tls12_hello();
        long_id[4 + 2 + 32] = 33;
        not(&record(HANDSHAKE, &long_id));
        let odd = server_hello(0x0303, [7; 32], Some(&[(SUPPORTED_VERSIONS, &[3])]));
        not(&record(HANDSHAKE, &odd));
        // extensions longer than the message
        let mut overrun = tls13_hello();
        let ext_len_at = 4 + 2 + 32 + 1 + 32 + 3;
        overrun[ext_len_at] = 0xff;
        not(&record(HANDSHAKE, &overrun));
    }

    #[test]
    fn the_observer_waits_for_the_client_hello() {
        let mut observer = HelloObserver::default();
        // plaintext SMTP before STARTTLS is ignored, however it looks
        assert_eq!(
            observer.server_sent(&record(HANDSHAKE, &tls12_hello())),
            None
        );
        observer.client_sent(b"STARTTLS\r\n");
        assert_eq!(observer.server_sent(b"220 2.0.0 go ahead\r\n"), None);
        assert!(!observer.is_done());
        observer.client_sent(&[HANDSHAKE, 3, 1, 0, 200]);
        let bytes = record(HANDSHAKE, &tls13_hello());
        for b in &bytes[..bytes.len() - 1] {
            assert_eq!(observer.server_sent(std::slice::from_ref(b)), None);
        }
        assert_eq!(observer.server_sent(&bytes[bytes.len() - 1..]), Some(TLS13));
        assert!(observer.is_done());
        assert_eq!(observer.server_sent(&bytes), None);
    }

    #[test]
    fn the_observer_gives_up_within_its_bound() {
        let mut observer = HelloObserver::default();
        observer.client_sent(&[HANDSHAKE, 3, 1, 0, 200]);
        assert_eq!(observer.server_sent(b"not tls"), None);
        assert!(observer.is_done());

        // a ServerHello that claims to be huge is never buffered beyond the bound
        let mut observer = HelloObserver::default();
        observer.client_sent(&[HANDSHAKE, 3, 1, 0, 200]);
        let mut header = vec![HANDSHAKE, 3, 3, 0x40, 0x00, SERVER_HELLO, 0, 0x3f, 0xf0];
        header.extend_from_slice(&[3, 3]);
        assert_eq!(observer.server_sent(&header), None);
        let chunk = [0u8; 1024];
        for _ in 0..(MAX_OBSERVED / chunk.len()) {
            assert_eq!(observer.server_sent(&chunk), None);
        }
        assert!(observer.is_done());
    }
}
