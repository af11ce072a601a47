//! Parsing of one SMTP command line (RFC 5321 §4.1, with the ESMTP parameters of RFC 1870,
//! RFC 6152, RFC 6531, RFC 3461, RFC 3030 and RFC 4954). No I/O: input is one line without its
//! CRLF.

use postrider_core::{DsnRet, NotifyFlags};

/// Longest ENVID value after decoding (RFC 3461 §4.4).
const MAX_ENVID: usize = 100;
/// Longest ORCPT value after decoding (RFC 3461 §4.2).
const MAX_ORCPT: usize = 500;
/// Longest EHLO/HELO argument we keep.
const MAX_HELO: usize = 255;

/// `BODY=` of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// The parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the size the client announces.
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<DsnRet>,
    /// `ENVID=`, xtext-decoded (RFC 3461).
    pub envid: Option<String>,
}

/// The parameters of RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461).
    pub notify: Option<NotifyFlags>,
    /// `ORCPT=addr-type;xtext`, stored as `addr-type;decoded` (RFC 3461).
    pub orcpt: Option<String>,
}

/// SASL mechanisms of AUTH (RFC 4954).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism.
    Login,
    /// Anything else (refused with 504).
    Other,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<path> params`; the path is raw (`""` for the null path).
    Mail {
        /// The reverse-path without brackets or source route.
        path: String,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> params`.
    Rcpt {
        /// The forward-path without brackets or source route.
        path: String,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets of the chunk that follows the command line.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy,
    /// `HELP [string]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The mechanism.
        mechanism: AuthMechanism,
        /// The initial response (base64, or `=` for empty), when given.
        initial: Option<String>,
    },
    /// A known command that this server does not implement (EXPN, ETRN, TURN, …).
    NotImplemented,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The verb is unknown.
    Unknown,
    /// The arguments are malformed.
    Syntax(&'static str),
    /// A MAIL/RCPT parameter keyword this server does not support.
    UnsupportedParameter,
    /// A parameter given twice or with a bad value.
    BadParameter(&'static str),
}

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..verb_end];
    if verb.len() > 8 || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Err(CommandError::Unknown);
    }
    let mut upper = [0u8; 8];
    upper[..verb.len()].copy_from_slice(verb);
    upper.make_ascii_uppercase();
    let verb = &upper[..verb.len()];
    let rest = &line[verb_end..];
    let rest = std::str::from_utf8(rest).map_err(|_| CommandError::Syntax("invalid UTF-8"))?;
    if rest.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CommandError::Syntax("control characters in command"));
    }
    let args = rest.trim_matches(|c| c == ' ' || c == '\t');
    let no_args = |cmd: Command| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::Syntax("no arguments allowed"))
        }
    };
    match verb {
        b"EHLO" => Ok(Command::Ehlo(parse_helo(args)?)),
        b"HELO" => Ok(Command::Helo(parse_helo(args)?)),
        b"MAIL" => {
            let (path, params) = parse_path_command(rest, "FROM:")?;
            Ok(Command::Mail {
                path,
                params: parse_mail_params(&params)?,
            })
        }
        b"RCPT" => {
            let (path, params) = parse_path_command(rest, "TO:")?;
            Ok(Command::Rcpt {
                path,
                params: parse_rcpt_params(&params)?,
            })
        }
        b"DATA" => no_args(Command::Data),
        b"BDAT" => parse_bdat(args),
        b"RSET" => no_args(Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(Command::Quit),
        b"VRFY" => {
            if args.is_empty() {
                Err(CommandError::Syntax("VRFY needs an argument"))
            } else {
                Ok(Command::Vrfy)
            }
        }
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_args(Command::StartTls),
        b"AUTH" => parse_auth(args),
        b"EXPN" | b"ETRN" | b"TURN" | b"ATRN" | b"BURL" | b"SEND" | b"SOML" | b"SAML" | b"LHLO" => {
            Ok(Command::NotImplemented)
        }
        _ => Err(CommandError::Unknown),
    }
}

fn parse_helo(args: &str) -> Result<String, CommandError> {
    if args.is_empty() {
        return Err(CommandError::Syntax(
            "a domain or address literal is required",
        ));
    }
    if args.len() > MAX_HELO
        || !args
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
    {
        return Err(CommandError::Syntax("invalid domain name"));
    }
    Ok(args.to_owned())
}

fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .ok_or(CommandError::Syntax("BDAT needs a chunk size"))?;
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("invalid chunk size"));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| CommandError::Syntax("invalid chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected LAST")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("too many arguments"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("AUTH needs a mechanism"))?;
    let mechanism = if mechanism.eq_ignore_ascii_case("PLAIN") {
        AuthMechanism::Plain
    } else if mechanism.eq_ignore_ascii_case("LOGIN") {
        AuthMechanism::Login
    } else {
        AuthMechanism::Other
    };
    let initial = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(CommandError::Syntax("too many arguments"));
    }
    Ok(Command::Auth { mechanism, initial })
}

/// Splits `FROM:<path> params` / `TO:<path> params` into the bare path and the parameter words.
fn parse_path_command(rest: &str, keyword: &str) -> Result<(String, Vec<String>), CommandError> {
    let rest = rest
        .strip_prefix(' ')
        .ok_or(CommandError::Syntax("missing argument"))?;
    if rest.len() < keyword.len()
        || !rest.is_char_boundary(keyword.len())
        || !rest[..keyword.len()].eq_ignore_ascii_case(keyword)
    {
        return Err(CommandError::Syntax(if keyword == "FROM:" {
            "expected MAIL FROM:<address>"
        } else {
            "expected RCPT TO:<address>"
        }));
    }
    // Tolerate `FROM: <a@b>`, as most servers do.
    let rest = rest[keyword.len()..].trim_start_matches(' ');
    let (path, after) = if let Some(inner) = rest.strip_prefix('<') {
        let close = closing_bracket(inner).ok_or(CommandError::Syntax("unterminated path"))?;
        (&inner[..close], &inner[close + 1..])
    } else {
        // Without brackets (RFC 821 style): the path runs to the first space.
        let end = rest.find(' ').unwrap_or(rest.len());
        if rest[..end].is_empty() {
            return Err(CommandError::Syntax("missing path"));
        }
        (&rest[..end], &rest[end..])
    };
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(CommandError::Syntax("garbage after path"));
    }
    let path = strip_source_route(path)?;
    let params = after
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((path.to_owned(), params))
}

/// Index of the `>` that closes a path, skipping quoted strings and escapes.
fn closing_bracket(inner: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// Drops an RFC 5321 source route (`@a,@b:user@c` → `user@c`), which must be accepted and ignored.
fn strip_source_route(path: &str) -> Result<&str, CommandError> {
    if path.starts_with('@') {
        let colon = path
            .find(':')
            .ok_or(CommandError::Syntax("bad source route"))?;
        Ok(&path[colon + 1..])
    } else {
        Ok(path)
    }
}

fn split_param(word: &str) -> Result<(String, Option<&str>), CommandError> {
    let (key, value) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    };
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(CommandError::Syntax("malformed parameter"));
    }
    if value.is_some_and(str::is_empty) {
        return Err(CommandError::BadParameter("empty parameter value"));
    }
    Ok((key.to_ascii_uppercase(), value))
}

fn parse_mail_params(words: &[String]) -> Result<MailParams, CommandError> {
    let mut params = MailParams::default();
    let mut seen_auth = false;
    for word in words {
        let (key, value) = split_param(word)?;
        match (key.as_str(), value) {
            ("SIZE", Some(v)) if params.size.is_none() => {
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CommandError::BadParameter("invalid SIZE"));
                }
                // Saturate absurd values: they are over any limit anyway.
                params.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) if params.body.is_none() => {
                params.body = Some(if v.eq_ignore_ascii_case("7BIT") {
                    BodyType::SevenBit
                } else if v.eq_ignore_ascii_case("8BITMIME") {
                    BodyType::EightBitMime
                } else {
                    return Err(CommandError::BadParameter("unsupported BODY type"));
                });
            }
            ("SMTPUTF8", None) if !params.smtputf8 => params.smtputf8 = true,
            ("RET", Some(v)) if params.ret.is_none() => {
                params.ret = Some(if v.eq_ignore_ascii_case("FULL") {
                    DsnRet::Full
                } else if v.eq_ignore_ascii_case("HDRS") {
                    DsnRet::Hdrs
                } else {
                    return Err(CommandError::BadParameter("RET must be FULL or HDRS"));
                });
            }
            ("ENVID", Some(v)) if params.envid.is_none() => {
                let decoded =
                    xtext_decode(v).ok_or(CommandError::BadParameter("invalid xtext in ENVID"))?;
                if decoded.len() > MAX_ENVID {
                    return Err(CommandError::BadParameter("ENVID too long"));
                }
                params.envid = Some(decoded);
            }
            // RFC 4954 §5: the AUTH parameter is accepted; we do not relay its identity.
            ("AUTH", Some(_)) if !seen_auth => seen_auth = true,
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => {
                return Err(CommandError::BadParameter(
                    "duplicate or malformed parameter",
                ));
            }
            _ => return Err(CommandError::UnsupportedParameter),
        }
    }
    Ok(params)
}

fn parse_rcpt_params(words: &[String]) -> Result<RcptParams, CommandError> {
    let mut params = RcptParams::default();
    for word in words {
        let (key, value) = split_param(word)?;
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) if params.notify.is_none() => {
                params.notify = Some(parse_notify(v)?)
            }
            ("ORCPT", Some(v)) if params.orcpt.is_none() => {
                let (addr_type, addr) = v
                    .split_once(';')
                    .ok_or(CommandError::BadParameter("ORCPT needs addr-type;address"))?;
                if addr_type.is_empty()
                    || !addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(CommandError::BadParameter("invalid ORCPT address type"));
                }
                let decoded = xtext_decode(addr)
                    .ok_or(CommandError::BadParameter("invalid xtext in ORCPT"))?;
                if decoded.is_empty() || decoded.len() > MAX_ORCPT {
                    return Err(CommandError::BadParameter("invalid ORCPT length"));
                }
                params.orcpt = Some(format!("{};{}", addr_type.to_ascii_lowercase(), decoded));
            }
            ("NOTIFY" | "ORCPT", _) => {
                return Err(CommandError::BadParameter(
                    "duplicate or malformed parameter",
                ));
            }
            _ => return Err(CommandError::UnsupportedParameter),
        }
    }
    Ok(params)
}

fn parse_notify(value: &str) -> Result<NotifyFlags, CommandError> {
    let mut flags = NotifyFlags::default();
    for item in value.split(',') {
        let slot = if item.eq_ignore_ascii_case("NEVER") {
            &mut flags.never
        } else if item.eq_ignore_ascii_case("SUCCESS") {
            &mut flags.success
        } else if item.eq_ignore_ascii_case("FAILURE") {
            &mut flags.failure
        } else if item.eq_ignore_ascii_case("DELAY") {
            &mut flags.delay
        } else {
            return Err(CommandError::BadParameter(
                "NOTIFY takes NEVER or SUCCESS,FAILURE,DELAY",
            ));
        };
        if *slot {
            return Err(CommandError::BadParameter("NOTIFY value repeated"));
        }
        *slot = true;
    }
    if flags.never && (flags.success || flags.failure || flags.delay) {
        return Err(CommandError::BadParameter(
            "NOTIFY=NEVER cannot be combined",
        ));
    }
    Ok(flags)
}

/// Decodes RFC 3461 xtext (`+HH` escapes); `None` if malformed or not UTF-8.
pub fn xtext_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let text = std::str::from_utf8(hex).ok()?;
                if !text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return None;
                }
                out.push(u8::from_str_radix(text, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b if b < 0x21 || b == 0x7f => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    if decoded.chars().any(char::is_control) {
        return None;
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(line: &str) -> Result<(String, MailParams), CommandError> {
        match parse_command(line.as_bytes())? {
            Command::Mail { path, params } => Ok((path, params)),
            other => panic!("not MAIL: {other:?}"),
        }
    }

    #[test]
    fn parses_verbs_case_insensitively() {
        assert_eq!(
            parse_command(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse_command(b"HeLo [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(parse_command(b"data"), Ok(Command::Data));
        assert_eq!(parse_command(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse_command(b"NOOP whatever"), Ok(Command::Noop));
        assert_eq!(parse_command(b"STARTTLS"), Ok(Command::StartTls));
        assert_eq!(parse_command(b"EXPN list"), Ok(Command::NotImplemented));
        assert_eq!(parse_command(b"FOO"), Err(CommandError::Unknown));
        assert_eq!(parse_command(b"\x00\xff\x10"), Err(CommandError::Unknown));
        assert_eq!(parse_command(b""), Err(CommandError::Unknown));
        assert!(matches!(
            parse_command(b"DATA x"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"EHLO"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"EHLO a b"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"VRFY"),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(parse_command(b"VRFY bob"), Ok(Command::Vrfy));
    }

    #[test]
    fn parses_mail_paths() {
        assert_eq!(mail("MAIL FROM:<a@b.c>").unwrap().0, "a@b.c");
        assert_eq!(mail("mail from: <a@b.c>").unwrap().0, "a@b.c");
        assert_eq!(mail("MAIL FROM:<>").unwrap().0, "");
        assert_eq!(mail("MAIL FROM:a@b.c").unwrap().0, "a@b.c");
        assert_eq!(mail("MAIL FROM:<@relay.example:a@b.c>").unwrap().0, "a@b.c");
        assert_eq!(
            mail("MAIL FROM:<\"odd > quoted\"@b.c>").unwrap().0,
            "\"odd > quoted\"@b.c"
        );
        assert!(matches!(
            mail("MAIL FROM:<a@b.c"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a@b.c>x"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            mail("MAIL TO:<a@b.c>"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(mail("MAIL"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn parses_mail_parameters() {
        let (_, p) = mail(
            "MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>",
        )
        .unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(DsnRet::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+1"));
        assert_eq!(
            mail("MAIL FROM:<a@b.c> ret=full").unwrap().1.ret,
            Some(DsnRet::Full)
        );
        assert_eq!(
            mail("MAIL FROM:<a@b.c> SIZE=99999999999999999999")
                .unwrap()
                .1
                .size,
            Some(u64::MAX)
        );
        assert_eq!(
            mail("MAIL FROM:<a@b.c> FOO=1"),
            Err(CommandError::UnsupportedParameter)
        );
        assert!(matches!(
            mail("MAIL FROM:<a@b.c> SIZE=1 SIZE=2"),
            Err(CommandError::BadParameter(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a@b.c> SIZE=x"),
            Err(CommandError::BadParameter(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a@b.c> BODY=BINARYMIME"),
            Err(CommandError::BadParameter(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a@b.c> RET=ALL"),
            Err(CommandError::BadParameter(_))
        ));
        assert!(matches!(
            mail("MAIL FROM:<a@b.c> ENVID=a+zz"),
            Err(CommandError::BadParameter(_))
        ));
        assert!(matches!(
            mail(&format!("MAIL FROM:<a@b.c> ENVID={}", "x".repeat(101))),
            Err(CommandError::BadParameter(_))
        ));
    }

    #[test]
    fn parses_rcpt_parameters() {
        let Ok(Command::Rcpt { path, params }) =
            parse_command(b"RCPT TO:<x@y.z> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By@y.z")
        else {
            panic!("not parsed")
        };
        assert_eq!(path, "x@y.z");
        assert_eq!(
            params.notify,
            Some(NotifyFlags {
                success: true,
                delay: true,
                ..Default::default()
            })
        );
        assert_eq!(params.orcpt.as_deref(), Some("rfc822;x+y@y.z"));
        let Ok(Command::Rcpt { params, .. }) = parse_command(b"RCPT TO:<x@y.z> NOTIFY=never")
        else {
            panic!()
        };
        assert_eq!(
            params.notify,
            Some(NotifyFlags {
                never: true,
                ..Default::default()
            })
        );
        for bad in [
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SOMETIMES",
            "NOTIFY=SUCCESS,SUCCESS",
            "ORCPT=x@y.z",
            "ORCPT=;x@y.z",
        ] {
            let line = format!("RCPT TO:<x@y.z> {bad}");
            assert!(
                matches!(
                    parse_command(line.as_bytes()),
                    Err(CommandError::BadParameter(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_command(b"RCPT TO:<x@y.z> SIZE=1"),
            Err(CommandError::UnsupportedParameter)
        );
    }

    #[test]
    fn parses_bdat_and_auth() {
        assert_eq!(
            parse_command(b"BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse_command(b"bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        for bad in [
            "BDAT",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 99999999999999999999",
        ] {
            assert!(
                matches!(parse_command(bad.as_bytes()), Err(CommandError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_command(b"AUTH plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Plain,
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            parse_command(b"AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Login,
                initial: None
            })
        );
        assert_eq!(
            parse_command(b"AUTH CRAM-MD5"),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Other,
                initial: None
            })
        );
    }

    #[test]
    fn rejects_control_characters_and_bad_utf8() {
        assert!(matches!(
            parse_command(b"MAIL FROM:<a\x00@b.c>"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a\xff@b.c>"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"NOOP \r"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn xtext_round_trips() {
        assert_eq!(xtext_decode("abc+2B+3D").as_deref(), Some("abc+="));
        assert_eq!(xtext_decode("a+2b"), None);
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("a+0Ab"), None);
    }
}
