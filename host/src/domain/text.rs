//! Bounds on text the host takes from an extension: every string it keeps, logs, stores or
//! answers is at most [`MAX_TEXT_BYTES`], and a bad value is quoted by a short prefix only,
//! so an extension answering megabytes cannot grow the host's memory, its log or its
//! responses (docs/security.md, "What the host takes from an extension").

/// Longest message, name, description or unit kept from an extension.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Longest prefix of a bad value quoted in an error.
pub const QUOTED_BYTES: usize = 64;

/// `s` cut to at most `max` bytes at a character boundary, with a marker saying how long
/// it was; `s` itself when it fits.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let total = s.len();
    let marker = format!("… (truncated, {total} bytes)");
    let mut cut = max.saturating_sub(marker.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&marker);
    s
}

/// [`bounded`] at [`MAX_TEXT_BYTES`].
pub fn bounded_text(s: String) -> String {
    bounded(s, MAX_TEXT_BYTES)
}

/// `s` for an error message: whole when short, else its first [`QUOTED_BYTES`] and its
/// length.
pub fn quoted(s: &str) -> String {
    if s.len() <= QUOTED_BYTES {
        return format!("{s:?}");
    }
    let mut cut = QUOTED_BYTES;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..cut], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_a_marker_and_short_text_kept() {
        assert_eq!(bounded_text("ok".into()), "ok");
        let long = "é".repeat(10_000);
        let b = bounded_text(long);
        assert!(b.len() <= MAX_TEXT_BYTES, "{}", b.len());
        assert!(b.ends_with("(truncated, 20000 bytes)"), "{b}");
    }

    #[test]
    fn quoting_shows_a_prefix_and_the_length() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let q = quoted(&"9".repeat(10_000_000));
        assert!(q.len() < 100 && q.ends_with("(10000000 bytes)"), "{q}");
    }
}
