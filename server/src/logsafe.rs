//! Text from clients and plugins on its way into a log record or an error
//! body: control characters escaped (so one call is one record and nobody
//! can start a forged line), and the length capped (so one request cannot
//! write megabytes of log).

/// `text` with control characters escaped (`\n`, `\u{1b}`) and cut to at
/// most `max_bytes` bytes of output, with a note of how much was left out.
pub fn escape(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes) + 24);
    for (at, c) in text.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max_bytes {
            out.truncate(before);
            out.push_str(&format!("... ({} more bytes)", text.len() - at));
            break;
        }
    }
    out
}

/// Like [`escape`] for bytes that may not be UTF-8 (invalid sequences
/// become U+FFFD). Reads at most `4 * max_bytes` of the input.
pub fn escape_bytes(bytes: &[u8], max_bytes: usize) -> String {
    let read = bytes.len().min(max_bytes.saturating_mul(4));
    let mut text = escape(&String::from_utf8_lossy(&bytes[..read]), max_bytes);
    if read < bytes.len() && !text.ends_with("more bytes)") {
        text.push_str(&format!("... ({} more bytes)", bytes.len() - read));
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_line_and_bounded() {
        assert_eq!(escape("plain é", 100), "plain é");
        let forged = escape(
            "ok\n{\"level\":\"ERROR\",\"msg\":\"forged\"}\r\x1b[31m",
            200,
        );
        assert!(!forged.contains('\n') && !forged.contains('\r') && !forged.contains('\x1b'));
        assert!(forged.starts_with("ok\\n{"));
        let long = escape(&"é".repeat(10_000), 1024);
        assert!(long.len() <= 1024 + 32, "{}", long.len());
        assert!(long.ends_with("more bytes)"));
        let raw = escape_bytes(&[b'a', 0xff, b'\n'], 100);
        assert_eq!(raw, "a\u{fffd}\\n");
        let huge = escape_bytes(&vec![b'A'; 1 << 20], 1024);
        assert!(huge.len() <= 1024 + 32);
    }
}
