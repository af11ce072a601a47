//! Message content receivers for DATA (dot-terminated, RFC 5321 §4.1.1.4, §4.5.2) and BDAT
//! chunks (RFC 3030), with the end-of-data rules that defeat SMTP smuggling.
//!
//! DATA ends **only** at `<CRLF>.<CRLF>`, where the first CRLF is a real CR LF pair. A bare LF
//! or a bare CR (one not part of CR LF) is never a line end for that purpose, so none of
//! `<LF>.<LF>`, `<LF>.<CRLF>`, `<CRLF>.<LF>`, `<CR>.<CR>` or `<CRLF>.<CR>` ends the data. Bare
//! line ends are either recorded (and the message refused once the real end is found) or
//! turned into CRLF, per [`BareNewlinePolicy`].

use crate::settings::BareNewlinePolicy;

/// Longest text line in octets, without its CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 998;

/// Why received content is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// More octets than the size limit.
    TooBig,
    /// A bare CR or LF under [`BareNewlinePolicy::Reject`].
    BareNewline,
    /// A text line over [`MAX_TEXT_LINE`] octets.
    LineTooLong,
    /// A NUL octet in the content (RFC 5321 §4.5.3.1.6 text lines exclude it; next hops
    /// handle it inconsistently).
    Nul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `after_crlf` when the previous line ended with a real CRLF
    /// (or this is the first line), which is the only place a terminating dot may appear.
    LineStart { after_crlf: bool },
    /// A `.` at the start of a line that followed a real CRLF.
    Dot,
    /// `.` CR at the start of such a line: a following LF ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// A CR inside a line: a following LF ends the line.
    Cr,
}

/// Receives message content for DATA or across the chunks of one BDAT transaction.
#[derive(Debug)]
pub struct BodyReceiver {
    dot_terminated: bool,
    policy: BareNewlinePolicy,
    max_size: usize,
    body: Vec<u8>,
    state: State,
    line_len: usize,
    too_big: bool,
    bare_newline: bool,
    long_line: bool,
    nul: bool,
}

impl BodyReceiver {
    /// A receiver for DATA content: dot-unstuffing and `<CRLF>.<CRLF>` termination.
    pub fn dot_terminated(policy: BareNewlinePolicy, max_size: usize) -> Self {
        Self::new(true, policy, max_size)
    }

    /// A receiver for BDAT chunks: content is taken as is, only line ends are checked.
    pub fn chunked(policy: BareNewlinePolicy, max_size: usize) -> Self {
        Self::new(false, policy, max_size)
    }

    fn new(dot_terminated: bool, policy: BareNewlinePolicy, max_size: usize) -> Self {
        BodyReceiver {
            dot_terminated,
            policy,
            max_size,
            body: Vec::new(),
            state: State::LineStart { after_crlf: true },
            line_len: 0,
            too_big: false,
            bare_newline: false,
            long_line: false,
            nul: false,
        }
    }

    /// Octets kept so far (after unstuffing and normalisation).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether nothing has been kept yet.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Whether the content is already known to be refused (so the rest can be skipped cheaply).
    pub fn is_doomed(&self) -> bool {
        self.too_big || (self.bare_newline && self.policy == BareNewlinePolicy::Reject)
    }

    /// Marks the content as over the size limit (BDAT: the chunk sizes already say so).
    pub fn mark_too_big(&mut self) {
        self.too_big = true;
        self.body = Vec::new();
    }

    /// Consumes `input`. Returns how many octets were used and whether the end of data was
    /// reached (DATA only; the octets after the terminator are not consumed). BDAT receivers
    /// always consume everything.
    pub fn ingest(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            match self.state {
                State::Text => {
                    let rest = &input[i..];
                    let run = rest
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(rest.len());
                    if run > 0 {
                        self.text(&rest[..run]);
                        i += run;
                        continue;
                    }
                    i += 1;
                    if byte == b'\r' {
                        self.state = State::Cr;
                    } else {
                        self.bare_line_end();
                    }
                }
                State::Cr => {
                    if byte == b'\n' {
                        i += 1;
                        self.crlf();
                        self.state = State::LineStart { after_crlf: true };
                    } else {
                        // The CR was bare; look at this octet again at the start of a line.
                        self.bare_line_end();
                    }
                }
                State::LineStart { after_crlf } => {
                    if self.dot_terminated && byte == b'.' {
                        i += 1;
                        // A leading dot is removed (unstuffed) and, being there for
                        // transparency only, does not count toward the line's length
                        // (RFC 5321 §4.5.3.1.6); after a real CRLF it may also start the
                        // terminator.
                        self.state = if after_crlf { State::Dot } else { State::Text };
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if byte == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if byte == b'\n' {
                        return (i + 1, true);
                    }
                    // `<CRLF>.<CR>` followed by something else: a bare CR, not the end.
                    self.bare_line_end();
                }
            }
        }
        (i, false)
    }

    /// The received content, or why it is refused. Call after the end of data (DATA) or after
    /// the last chunk (BDAT). A final CR without LF in BDAT content counts as a bare CR.
    pub fn finish(mut self) -> Result<Vec<u8>, BodyError> {
        if self.state == State::Cr {
            self.bare_line_end();
        }
        if self.too_big {
            Err(BodyError::TooBig)
        } else if self.bare_newline && self.policy == BareNewlinePolicy::Reject {
            Err(BodyError::BareNewline)
        } else if self.long_line {
            Err(BodyError::LineTooLong)
        } else if self.nul {
            Err(BodyError::Nul)
        } else {
            Ok(self.body)
        }
    }

    fn count_line_octets(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_TEXT_LINE {
            self.long_line = true;
        }
    }

    fn text(&mut self, octets: &[u8]) {
        self.count_line_octets(octets.len());
        if octets.contains(&0) {
            self.nul = true;
        }
        self.keep(octets);
    }

    fn crlf(&mut self) {
        self.line_len = 0;
        self.keep(b"\r\n");
    }

    fn bare_line_end(&mut self) {
        self.bare_newline = true;
        self.line_len = 0;
        match self.policy {
            BareNewlinePolicy::Normalize => self.keep(b"\r\n"),
            // The message will be refused: stop keeping its content.
            BareNewlinePolicy::Reject => self.body = Vec::new(),
        }
        self.state = State::LineStart { after_crlf: false };
    }

    fn keep(&mut self, octets: &[u8]) {
        if self.is_doomed() {
            return;
        }
        if self.body.len() + octets.len() > self.max_size {
            self.mark_too_big();
            return;
        }
        self.body.extend_from_slice(octets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    /// Feeds `input` split at `split` and returns (octets consumed, ended, result).
    fn run_split(
        input: &[u8],
        split: usize,
        policy: BareNewlinePolicy,
    ) -> (usize, bool, Result<Vec<u8>, BodyError>) {
        let mut rx = BodyReceiver::dot_terminated(policy, BIG);
        let (a, ended) = rx.ingest(&input[..split]);
        if ended {
            return (a, true, rx.finish());
        }
        assert_eq!(
            a, split,
            "a receiver that has not ended consumes everything"
        );
        let (b, ended) = rx.ingest(&input[split..]);
        (a + b, ended, rx.finish())
    }

    fn run(input: &[u8], policy: BareNewlinePolicy) -> (usize, bool, Result<Vec<u8>, BodyError>) {
        let mut last = None;
        for split in 0..=input.len() {
            let outcome = run_split(input, split, policy);
            if let Some(previous) = &last {
                assert_eq!(
                    previous,
                    &outcome,
                    "split at {split} of {:?}",
                    String::from_utf8_lossy(input)
                );
            }
            last = Some(outcome);
        }
        last.unwrap_or_else(|| run_split(input, 0, policy))
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_unstuffs() {
        let input = b"Subject: x\r\n\r\nline\r\n..dot\r\n.\r\nMAIL FROM:<next>\r\n";
        let (used, ended, body) = run(input, BareNewlinePolicy::Reject);
        assert!(ended);
        assert_eq!(&input[used..], b"MAIL FROM:<next>\r\n");
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nline\r\n.dot\r\n");
        let (used, ended, body) = run(b".\r\n", BareNewlinePolicy::Reject);
        assert!(ended && used == 3);
        assert_eq!(body.unwrap(), b"");
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for policy in [BareNewlinePolicy::Reject, BareNewlinePolicy::Normalize] {
            for fake in [
                &b"a\n.\nMAIL FROM:<x@y.z>\r\n"[..],
                b"a\n.\r\nMAIL FROM:<x@y.z>\r\n",
                b"a\r\n.\nMAIL FROM:<x@y.z>\r\n",
                b"a\r.\rMAIL FROM:<x@y.z>\r\n",
                b"a\r\n.\rMAIL FROM:<x@y.z>\r\n",
                b"a\r.\r\nMAIL FROM:<x@y.z>\r\n",
                b"a\n.\rMAIL FROM:<x@y.z>\r\n",
                b"a\r\r\n.\n\r\n",
            ] {
                let (used, ended, _) = run(fake, policy);
                assert!(
                    !ended,
                    "{policy:?} ended on {:?}",
                    String::from_utf8_lossy(fake)
                );
                assert_eq!(used, fake.len());
                let mut whole = fake.to_vec();
                whole.extend_from_slice(b".\r\n");
                let (used, ended, body) = run(&whole, policy);
                assert!(
                    ended && used == whole.len(),
                    "{:?}",
                    String::from_utf8_lossy(&whole)
                );
                match policy {
                    BareNewlinePolicy::Reject => assert_eq!(body, Err(BodyError::BareNewline)),
                    BareNewlinePolicy::Normalize => {
                        let body = body.unwrap();
                        assert!(
                            !has_bare_line_end(&body),
                            "{:?}",
                            String::from_utf8_lossy(&body)
                        );
                        assert!(
                            !body.windows(5).any(|w| w == b"\r\n.\r\n"),
                            "terminator inside {:?}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                }
            }
        }
    }

    fn has_bare_line_end(body: &[u8]) -> bool {
        body.iter().enumerate().any(|(i, &b)| match b {
            b'\n' => i == 0 || body[i - 1] != b'\r',
            b'\r' => body.get(i + 1) != Some(&b'\n'),
            _ => false,
        })
    }

    #[test]
    fn normalize_converts_bare_line_ends() {
        let (_, ended, body) = run(b"a\nb\rc\r\n.x\n..\r\n.\r\n", BareNewlinePolicy::Normalize);
        assert!(ended);
        assert_eq!(body.unwrap(), b"a\r\nb\r\nc\r\nx\r\n.\r\n");
    }

    #[test]
    fn real_terminator_after_bare_cr_still_ends() {
        // CR CR LF: the first CR is bare, the CR LF is real, so the dot line ends the data.
        let (used, ended, body) = run(b"a\r\r\n.\r\nNOOP\r\n", BareNewlinePolicy::Reject);
        assert!(ended && used == 7);
        assert_eq!(body, Err(BodyError::BareNewline));
    }

    #[test]
    fn long_lines_are_refused() {
        let mut input = vec![b'x'; MAX_TEXT_LINE];
        input.extend_from_slice(b"\r\n.\r\n");
        assert!(BodyReceiverExt::whole(&input).is_ok());
        let mut input = vec![b'x'; MAX_TEXT_LINE + 1];
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(BodyReceiverExt::whole(&input), Err(BodyError::LineTooLong));
        // The dot stuffed for transparency does not count (RFC 5321 §4.5.3.1.6).
        let mut input = vec![b'.'; MAX_TEXT_LINE + 1];
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            BodyReceiverExt::whole(&input).map(|b| b.len()),
            Ok(MAX_TEXT_LINE + 2)
        );
        let mut input = vec![b'.'; MAX_TEXT_LINE + 2];
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(BodyReceiverExt::whole(&input), Err(BodyError::LineTooLong));
    }

    struct BodyReceiverExt;
    impl BodyReceiverExt {
        fn whole(input: &[u8]) -> Result<Vec<u8>, BodyError> {
            let mut rx = BodyReceiver::dot_terminated(BareNewlinePolicy::Reject, BIG);
            let (used, ended) = rx.ingest(input);
            assert!(ended && used == input.len());
            rx.finish()
        }
    }

    #[test]
    fn size_limit_keeps_parsing_to_the_end() {
        let mut rx = BodyReceiver::dot_terminated(BareNewlinePolicy::Reject, 10);
        let input = b"0123456789\r\n0123\r\n.\r\nQUIT\r\n";
        let (used, ended) = rx.ingest(input);
        assert!(ended);
        assert_eq!(&input[used..], b"QUIT\r\n");
        assert_eq!(rx.finish(), Err(BodyError::TooBig));
        let mut rx = BodyReceiver::dot_terminated(BareNewlinePolicy::Reject, 12);
        assert!(rx.ingest(b"0123456789\r\n.\r\n").1);
        assert_eq!(rx.finish().unwrap().len(), 12);
    }

    #[test]
    fn chunked_content_checks_line_ends_across_chunks() {
        let mut rx = BodyReceiver::chunked(BareNewlinePolicy::Reject, BIG);
        assert_eq!(rx.ingest(b"a\r"), (2, false));
        assert_eq!(rx.ingest(b"\n.\r\n"), (4, false));
        assert_eq!(rx.finish().unwrap(), b"a\r\n.\r\n");
        for bad in [&b"a\nb"[..], b"a\rb", b"a\r"] {
            let mut rx = BodyReceiver::chunked(BareNewlinePolicy::Reject, BIG);
            rx.ingest(bad);
            assert_eq!(rx.finish(), Err(BodyError::BareNewline), "{bad:?}");
            let mut rx = BodyReceiver::chunked(BareNewlinePolicy::Normalize, BIG);
            rx.ingest(bad);
            assert!(!has_bare_line_end(&rx.finish().unwrap()));
        }
    }
}
