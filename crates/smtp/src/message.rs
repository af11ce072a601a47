//! Submission fix-ups of the message content (RFC 6409 §8) and the trace header (RFC 5321
//! §4.4). Pure functions: time and the unique part of the Message-ID are arguments.

use std::net::IpAddr;

use postrider_core::Timestamp;

/// Where a message came from, for its `Received:` header.
#[derive(Debug, Clone)]
pub struct TraceInfo<'a> {
    /// The client's EHLO/HELO argument.
    pub helo: &'a str,
    /// The client's IP address.
    pub client_ip: IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// RFC 3848 protocol name (`ESMTPSA`, …).
    pub protocol: &'a str,
}

/// Which of the fields we may have to add are already in the header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderPresence {
    /// A `Date:` field is present.
    pub date: bool,
    /// A `Message-ID:` field is present.
    pub message_id: bool,
}

/// Scans the header section (up to the first empty line, or the first line that is not a
/// header field) for `Date:` and `Message-ID:`.
pub fn header_presence(body: &[u8]) -> HeaderPresence {
    let mut presence = HeaderPresence::default();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue; // folded continuation of the previous field
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            break;
        };
        let name = line[..colon].trim_ascii_end();
        if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
            break;
        }
        if name.eq_ignore_ascii_case(b"date") {
            presence.date = true;
        } else if name.eq_ignore_ascii_case(b"message-id") {
            presence.message_id = true;
        }
    }
    presence
}

/// Longest Message-ID written to the log, in characters (RFC 5322 lines stop at 998).
const MAX_LOGGED_MESSAGE_ID: usize = 255;

/// The `Message-ID:` of a message, with its angle brackets, for the log line that accepts it
/// (so that it can be joined with the sending application's logs). `None` when the header
/// section has none that parses; bounded and limited to printable ASCII, as RFC 5322 allows.
pub(crate) fn logged_message_id(content: &[u8]) -> Option<String> {
    let headers = mail_parser::MessageParser::new().parse_headers(content)?;
    let id = headers.message_id()?;
    let printable = !id.is_empty() && id.chars().all(|c| c.is_ascii_graphic());
    printable.then(|| {
        format!(
            "<{}>",
            id.chars().take(MAX_LOGGED_MESSAGE_ID).collect::<String>()
        )
    })
}

/// The content to store: a `Received:` header, then `Date:` and `Message-ID:` when the
/// submitted header section lacks them, then the submitted content unchanged.
pub fn prepare_message(
    body: &[u8],
    trace: &TraceInfo<'_>,
    now: Timestamp,
    unique: &str,
) -> Vec<u8> {
    let date = now.to_rfc5322();
    let ip = trace.client_ip.to_canonical();
    let address = match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let mut head = format!(
        "Received: from {} ({})\r\n\tby {} (Postrider) with {};\r\n\t{}\r\n",
        trace.helo, address, trace.hostname, trace.protocol, date
    );
    let presence = header_presence(body);
    if !presence.date {
        head.push_str(&format!("Date: {date}\r\n"));
    }
    if !presence.message_id {
        head.push_str(&format!("Message-ID: <{unique}@{}>\r\n", trace.hostname));
    }
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> TraceInfo<'static> {
        TraceInfo {
            helo: "client.example",
            client_ip: "::ffff:192.0.2.7".parse().unwrap(),
            hostname: "mx.example",
            protocol: "ESMTPSA",
        }
    }

    #[test]
    fn finds_fields_case_insensitively_and_stops_at_body() {
        let p = header_presence(
            b"Subject: a\r\nmessage-id : <x@y>\r\n\tfolded\r\nDATE: now\r\n\r\nDate: body\r\n",
        );
        assert_eq!(
            p,
            HeaderPresence {
                date: true,
                message_id: true
            }
        );
        let p = header_presence(b"Subject: a\r\n\r\nDate: in body\r\nMessage-ID: <x>\r\n");
        assert_eq!(p, HeaderPresence::default());
        let p = header_presence(b"no header here\r\nDate: x\r\n");
        assert_eq!(p, HeaderPresence::default());
        assert_eq!(header_presence(b""), HeaderPresence::default());
        assert!(header_presence(b" folded first\r\nDate: x\r\n").date);
    }

    #[test]
    fn logged_message_id_is_the_header_value_in_angle_brackets() {
        let content = b"Received: x\r\nMessage-ID:\r\n <abc.1@app.example>\r\n\r\nbody\r\n";
        assert_eq!(
            logged_message_id(content).as_deref(),
            Some("<abc.1@app.example>")
        );
        assert_eq!(
            logged_message_id(b"Subject: none\r\n\r\nMessage-ID: <x@y>\r\n"),
            None
        );
        let long = format!("Message-ID: <{}@h>\r\n\r\n", "a".repeat(2000));
        let logged = logged_message_id(long.as_bytes()).unwrap();
        assert!(
            logged.len() <= MAX_LOGGED_MESSAGE_ID + 2,
            "{}",
            logged.len()
        );
    }

    #[test]
    fn adds_missing_fields_after_received() {
        let now = Timestamp::from_millis(1_795_000_000_000);
        let out = prepare_message(b"Subject: hi\r\n\r\nbody\r\n", &trace(), now, "abc");
        let text = String::from_utf8(out).unwrap();
        let date = now.to_rfc5322();
        let expected = format!(
            "Received: from client.example ([192.0.2.7])\r\n\tby mx.example (Postrider) with ESMTPSA;\r\n\t{date}\r\nDate: {date}\r\nMessage-ID: <abc@mx.example>\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn keeps_existing_fields() {
        let now = Timestamp::from_millis(0);
        let body = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nx\r\n";
        let out = prepare_message(
            body,
            &TraceInfo {
                client_ip: "2001:db8::1".parse().unwrap(),
                ..trace()
            },
            now,
            "u",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Received: from client.example ([IPv6:2001:db8::1])\r\n"));
        assert_eq!(text.matches("Date:").count(), 1);
        assert_eq!(text.matches("Message-ID:").count(), 1);
        assert!(text.ends_with(std::str::from_utf8(body).unwrap()));
    }
}
