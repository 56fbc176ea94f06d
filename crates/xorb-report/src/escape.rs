//! HTML escaping: every text that comes from a run (step details, operator names, reasons, errors) goes through
//! [`esc`] before it reaches a page, in elements and in attributes alike.

/// Escapes `& < > " '`: safe in element content and in quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            esc(r#"<img src=x onerror="alert('1')">&amp;"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;amp;"
        );
    }

    #[test]
    fn plain_text_and_unicode_pass_through() {
        assert_eq!(esc("Phase 2 of 5 — ✅ done"), "Phase 2 of 5 — ✅ done");
    }
}
