//! Text fit for a log line or an error message, whatever it held: on one line, bounded.
//! A leaf: every module may use it.

/// `text` on one line and at most `max` bytes: control characters escaped (`\n`,
/// `\u{1b}`), the rest cut with a note of the full length.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 32));
    for c in text.chars() {
        if out.len() >= max {
            out.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
