//! Quoting a tool's output in an error. promtool, amtool, alembic, pg_dump, pg_restore and redis-check-rdb repeat
//! the lines of the files they reject: an error that quoted them whole would copy a file's content to the screen,
//! the journal and the run log. So an error carries only a bounded, sanitised excerpt (the first diagnostic
//! lines, capped), and the full output, when there is a run directory, goes to an owner-only file the error names.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Lines of a tool's output an error quotes.
pub const EXCERPT_LINES: usize = 3;
/// Characters kept of each quoted line: enough for a long path and the diagnostic after it (promtool puts its
/// parse error at the end of a line that starts with the file's path).
pub const EXCERPT_LINE_CHARS: usize = 400;

/// One line made safe to print: control characters (terminal escapes) become spaces, runs of blanks one space,
/// and it is cut at [`EXCERPT_LINE_CHARS`].
fn sanitise_line(line: &str) -> String {
    let mut out = String::new();
    let mut blank = false;
    for c in line.trim().chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' {
            if blank {
                continue;
            }
            blank = true;
        } else {
            blank = false;
        }
        out.push(c);
    }
    if out.chars().count() > EXCERPT_LINE_CHARS {
        out = out.chars().take(EXCERPT_LINE_CHARS).collect();
        out.push('…');
    }
    out
}

fn diagnostic_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// The first [`EXCERPT_LINES`] non-empty lines of `text`, sanitised and capped, joined by " | ", and how many
/// lines were left out.
pub fn excerpt(text: &str) -> String {
    let lines = diagnostic_lines(text);
    if lines.is_empty() {
        return "no output".into();
    }
    let shown: Vec<String> = lines
        .iter()
        .take(EXCERPT_LINES)
        .map(|l| sanitise_line(l))
        .collect();
    let mut s = shown.join(" | ");
    if lines.len() > EXCERPT_LINES {
        s.push_str(&format!(" (+{} more lines)", lines.len() - EXCERPT_LINES));
    }
    s
}

/// The last non-empty line of `text`, sanitised and capped: where a tool puts its verdict (a Python traceback's
/// exception, pg_dump's final error).
pub fn last_line(text: &str) -> String {
    diagnostic_lines(text)
        .last()
        .map(|l| sanitise_line(l))
        .unwrap_or_else(|| "no output".into())
}

/// Writes a tool's full output to `dir/name` (directory 0700, file 0600, created so) for the owner to read.
pub fn keep_full(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(name);
    let mut f = crate::files::create_private(&path)?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// The excerpt, and where the full output is (or why it could not be kept).
pub fn quote(text: &str, dir: &Path, name: &str) -> String {
    let ex = excerpt(text);
    match keep_full(dir, name, text) {
        Ok(p) => format!("{ex} (full output in {})", p.display()),
        Err(e) => format!(
            "{ex} (the full output could not be kept in {}: {e})",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_like(n: usize) -> String {
        (1..=n)
            .map(|i| format!("  line {i}: field secretline{i}:x:$y$abc not found\n"))
            .collect()
    }

    #[test]
    fn an_excerpt_quotes_a_few_capped_lines_never_the_whole_output() {
        let text = format!("Checking f\n\nFAILED:\n{}", file_like(30));
        let e = excerpt(&text);
        assert!(
            e.starts_with("Checking f | FAILED: | line 1: field secretline1"),
            "{e}"
        );
        assert!(!e.contains("secretline2"), "{e}");
        assert!(e.ends_with("(+29 more lines)"), "{e}");
        let long = "x".repeat(10_000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_LINE_CHARS + 1, "{e}");
        assert_eq!(excerpt(" \n\n"), "no output");
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let e = excerpt("bad\x1b[2J\x07 thing\r\tend");
        assert_eq!(e, "bad [2J thing end");
        assert_eq!(
            last_line("Traceback\n  x\nKeyError: 'y'\n\n"),
            "KeyError: 'y'"
        );
    }

    #[test]
    fn the_full_output_is_kept_owner_only_and_named() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::env::temp_dir().join(format!("xorb-toolout-{}", std::process::id()));
        let q = quote(&file_like(10), &tmp.join("out"), "promtool.txt");
        let p = tmp.join("out/promtool.txt");
        let file_mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        let dir_mode = std::fs::metadata(tmp.join("out"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let kept = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
        assert!(q.contains(&p.display().to_string()), "{q}");
        assert!(kept.contains("secretline10"));
        assert_eq!((file_mode, dir_mode), (0o600, 0o700));
    }
}
