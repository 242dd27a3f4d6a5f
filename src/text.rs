//! Text from operators and tools, made safe for a terminal. A leaf: the rendering edge, the live
//! reporter and `watch` all print through it.

/// Text from operators and tools as a terminal may show it: every control character but the
/// newline and tab, and the bidirectional overrides, written as an escape (`\u{1b}`), so that
/// a skip reason, a host name or a tool's output cannot clear or rewrite the screen of whoever
/// reads it. Applied to everything runbook prints for people; JSON escapes them already.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars().map(|c| if unsafe_char(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// A value that must stay on its line (a host, an operator, a reason): `printable`, with
/// newlines and tabs escaped too.
pub(crate) fn one_line(text: &str) -> String {
    printable(text).replace('\n', "\\n").replace('\t', "\\t")
}
