//! Showing text other people wrote without letting it pose as the program.
//!
//! Message bodies, chat names and notices come from other users or the
//! relay. Printed raw, a newline starts what looks like a new line of
//! output (a forged "SAFETY NUMBER CHANGED" or a fake message from someone
//! else), an ANSI escape rewrites the screen or the terminal title, and a
//! bidirectional override makes text read differently than it is. Every
//! place that shows such text to a person goes through one of these
//! functions. JSON output needs none of this: its encoding escapes control
//! characters already.

use std::borrow::Cow;

/// Whether a character must not reach a terminal as it is: control
/// characters (C0, DEL, C1) and the Unicode format characters that reorder
/// or hide text (bidirectional embeddings, overrides and isolates; zero-width
/// joiners and marks are harmless and kept for emoji and scripts).
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}'              // Arabic letter mark
            | '\u{200E}' | '\u{200F}' // LRM, RLM
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
        )
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
    }
}

/// Text for one line of terminal output: every control and reordering
/// character, newlines included, is shown as an escape such as `\n` or
/// `\u{1b}`.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(dangerous) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if dangerous(c) {
            escape_char(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Text that may span lines (a message on the chat screen): the lines it
/// was written with, each escaped as [`one_line`] does, so a line break
/// stays a line break but nothing else can act on the terminal. The caller
/// shows continuation lines so they cannot be mistaken for new entries.
pub fn lines(text: &str) -> Vec<Cow<'_, str>> {
    text.split('\n')
        .map(|line| one_line(line.strip_suffix('\r').unwrap_or(line)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_untouched() {
        assert!(matches!(one_line("héllo 👋🏽 שלום"), Cow::Borrowed(_)));
    }

    #[test]
    fn control_and_reordering_characters_are_escaped() {
        assert_eq!(
            one_line("hi\n[12:00 UTC] *: SAFETY NUMBER CHANGED"),
            "hi\\n[12:00 UTC] *: SAFETY NUMBER CHANGED"
        );
        assert_eq!(one_line("\u{1b}[2J\u{7}x"), "\\u{1b}[2J\\u{7}x");
        assert_eq!(one_line("a\u{202E}cba"), "a\\u{202e}cba");
        assert_eq!(one_line("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
    }

    #[test]
    fn lines_keep_line_breaks_only() {
        assert_eq!(
            lines("one\r\ntwo\u{1b}]0;title\u{7}\nthree"),
            vec!["one", "two\\u{1b}]0;title\\u{7}", "three"]
        );
    }
}
