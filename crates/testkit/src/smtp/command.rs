//! Pure parsing of SMTP command lines and of the DATA stream (no I/O).

/// One parsed SMTP command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Helo(String),
    Ehlo(String),
    /// `MAIL FROM:<path> params...`; `path` is empty for the null sender.
    Mail {
        path: String,
        params: Vec<String>,
    },
    /// `RCPT TO:<path> params...`.
    Rcpt {
        path: String,
        params: Vec<String>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    Vrfy,
    Help,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// A known verb with bad arguments; the text says what is wrong.
    Syntax(&'static str),
    /// A verb the sink does not know.
    Unknown(String),
}

/// Parses one command line (CRLF or LF already removed).
pub(crate) fn parse_command(line: &[u8]) -> Command {
    let Ok(line) = std::str::from_utf8(line) else {
        return Command::Syntax("command is not valid UTF-8");
    };
    let (verb, rest) = match line.find(' ') {
        Some(index) => (&line[..index], &line[index + 1..]),
        None => (line, ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "HELO" | "EHLO" => {
            let domain = rest.trim();
            if domain.is_empty() {
                return Command::Syntax("domain expected");
            }
            if verb.eq_ignore_ascii_case("EHLO") {
                Command::Ehlo(domain.to_owned())
            } else {
                Command::Helo(domain.to_owned())
            }
        }
        "MAIL" => match parse_path_argument(rest, "FROM:") {
            Some((path, params)) => Command::Mail { path, params },
            None => Command::Syntax("expected MAIL FROM:<reverse-path>"),
        },
        "RCPT" => match parse_path_argument(rest, "TO:") {
            Some((path, _)) if path.is_empty() => Command::Syntax("empty forward-path"),
            Some((path, params)) => Command::Rcpt { path, params },
            None => Command::Syntax("expected RCPT TO:<forward-path>"),
        },
        "DATA" if rest.trim().is_empty() => Command::Data,
        "RSET" if rest.trim().is_empty() => Command::Rset,
        "QUIT" if rest.trim().is_empty() => Command::Quit,
        "STARTTLS" if rest.trim().is_empty() => Command::StartTls,
        "DATA" | "RSET" | "QUIT" | "STARTTLS" => Command::Syntax("no parameters allowed"),
        "NOOP" => Command::Noop,
        "VRFY" => Command::Vrfy,
        "HELP" => Command::Help,
        "AUTH" => {
            let mut words = rest.split_whitespace();
            match words.next() {
                Some(mechanism) => Command::Auth {
                    mechanism: mechanism.to_ascii_uppercase(),
                    initial: words.next().map(str::to_owned),
                },
                None => Command::Syntax("mechanism expected"),
            }
        }
        _ => Command::Unknown(verb.to_owned()),
    }
}

/// Parses `FROM:<path> p1 p2` (keyword case-insensitive, optional space
/// after the colon). Returns the path without brackets and the raw params.
fn parse_path_argument(rest: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = rest[keyword.len()..].trim_start();
    let inner = after.strip_prefix('<')?;
    let end = closing_bracket(inner)?;
    let mut path = &inner[..end];
    // Drop an obsolete source route (`@a,@b:user@host`).
    if path.starts_with('@') {
        path = path.split_once(':').map(|(_, p)| p).unwrap_or(path);
    }
    let params = inner[end + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((path.to_owned(), params))
}

/// Index of the `>` that closes a path, skipping quoted local parts.
fn closing_bracket(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, ch) in inner.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(index),
            _ => {}
        }
    }
    None
}

/// Incremental receiver of a DATA stream: ends at `CRLF.CRLF`, undoes dot
/// stuffing (only at the start of a line that follows CRLF) and bounds the
/// stored size (the rest is counted, not stored).
#[derive(Debug)]
pub(crate) struct DataReceiver {
    body: Vec<u8>,
    max_bytes: usize,
    overflow: bool,
    /// The last two raw bytes seen (to know whether a line starts).
    tail: [u8; 2],
}

impl DataReceiver {
    /// A receiver that stores at most `max_bytes` of unstuffed content.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            body: Vec::new(),
            max_bytes,
            overflow: false,
            tail: *b"\r\n",
        }
    }

    /// Feeds one segment: a whole line including its LF, or a piece of a
    /// long line. Returns true when the segment was the end-of-data marker.
    pub(crate) fn feed(&mut self, segment: &[u8]) -> bool {
        let at_line_start = &self.tail == b"\r\n";
        match segment {
            [] => {}
            [only] => self.tail = [self.tail[1], *only],
            [.., a, b] => self.tail = [*a, *b],
        }
        let mut content = segment;
        if at_line_start {
            if segment == b".\r\n" {
                return true;
            }
            if let Some(rest) = segment.strip_prefix(b".") {
                content = rest;
            }
        }
        if self.body.len() + content.len() > self.max_bytes {
            self.overflow = true;
        } else {
            self.body.extend_from_slice(content);
        }
        false
    }

    /// True when the message was larger than the bound.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The unstuffed message content.
    pub(crate) fn into_body(self) -> Vec<u8> {
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mail_and_rcpt_with_params() {
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME"),
            Command::Mail {
                path: "a@b.test".into(),
                params: vec!["SIZE=10".into(), "BODY=8BITMIME".into()]
            }
        );
        assert_eq!(
            parse_command(b"mail from: <>"),
            Command::Mail {
                path: String::new(),
                params: vec![]
            }
        );
        assert_eq!(
            parse_command(b"RCPT TO:<\"a>b\"@x.test> NOTIFY=FAILURE"),
            Command::Rcpt {
                path: "\"a>b\"@x.test".into(),
                params: vec!["NOTIFY=FAILURE".into()]
            }
        );
        assert!(matches!(parse_command(b"RCPT TO:<>"), Command::Syntax(_)));
        assert!(matches!(
            parse_command(b"MAIL TO:<a@b>"),
            Command::Syntax(_)
        ));
        assert_eq!(
            parse_command(b"ehlo relay.test"),
            Command::Ehlo("relay.test".into())
        );
        assert_eq!(parse_command(b"XYZZY"), Command::Unknown("XYZZY".into()));
        assert_eq!(
            parse_command(b"AUTH plain AGEAYg=="),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            }
        );
    }

    #[test]
    fn data_receiver_unstuffs_and_ends_only_at_crlf_dot_crlf() {
        let mut receiver = DataReceiver::new(1024);
        for segment in [
            &b"Subject: x\r\n"[..],
            b"\r\n",
            b"..leading dot\r\n",
            b"bare\n",
            b".\n",
            b".\r\n",
        ] {
            assert!(!receiver.feed(segment));
        }
        // the previous `.\r\n` followed a bare LF, so it was content
        assert!(receiver.feed(b".\r\n"));
        assert_eq!(
            receiver.into_body(),
            b"Subject: x\r\n\r\n.leading dot\r\nbare\n.\n.\r\n".to_vec()
        );
    }

    #[test]
    fn data_receiver_bounds_size() {
        let mut receiver = DataReceiver::new(4);
        assert!(!receiver.feed(b"123456\r\n"));
        assert!(receiver.feed(b".\r\n"));
        assert!(receiver.overflowed());
    }
}
