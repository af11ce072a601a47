//! SMTP replies as the sink sends them.

use std::fmt;

/// One SMTP reply: a three-digit code and one or more text lines.
///
/// The enhanced status code, when wanted, is simply the first word of the
/// text (`Reply::new(550, "5.1.1 no such user")`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code (`250`, `450`, `550`, ...).
    pub code: u16,
    /// Text lines, without CRLF; never empty when built through [`Reply::new`].
    pub lines: Vec<String>,
}

impl Reply {
    /// Builds a reply; `text` is split into lines at `\n` (a multi-line reply).
    pub fn new(code: u16, text: impl AsRef<str>) -> Self {
        let lines: Vec<String> = text
            .as_ref()
            .split('\n')
            .map(|line| line.trim_end_matches('\r').to_owned())
            .collect();
        Self { code, lines }
    }

    /// `250 2.0.0 OK`, the generic positive reply.
    pub fn ok() -> Self {
        Self::new(250, "2.0.0 OK")
    }

    /// True for 2xx and 3xx replies (the command was accepted).
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// True for 4xx replies.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx replies.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The first text line (empty when there is none).
    pub fn first_line(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// The reply as written on the wire, every line ending in CRLF.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        if self.lines.is_empty() {
            out.push_str(&format!("{}\r\n", self.code));
        }
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            out.push_str(&format!("{}{}{}\r\n", self.code, separator, line));
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_wire_format() {
        assert_eq!(
            Reply::new(550, "5.1.1 no such user").to_wire(),
            "550 5.1.1 no such user\r\n"
        );
        assert_eq!(
            Reply::new(250, "sink.test\nPIPELINING\nSIZE 10").to_wire(),
            "250-sink.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        assert!(Reply::new(354, "go").is_positive());
        assert!(Reply::new(451, "x").is_transient());
        assert!(Reply::new(554, "x").is_permanent());
    }
}
