//! The module graph of xorbctl, checked mechanically: every `crate::…`, `super::…` and `self::…` path in the
//! non-test code of `src/` is an edge to the module it names (a module declaration is not an edge). The graph has
//! no cycle, and dependencies go one way: `main` → `dispatch` → `cmd::*` → shared helpers. Commands do not use
//! each other, no helper uses a command or the dispatcher, and only `target` (and its submodules) names `xorb_local`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source text without comments, string and character literals (so doc comments naming modules are not edges),
/// and without the `#[cfg(test)]` module at the end of a file.
fn code_only(src: &str) -> String {
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    };
    let b: Vec<char> = src.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '/' if b.get(i + 1) == Some(&'/') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '/' if b.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if matches!(b.get(i + 1), Some('#' | '"'))
                && !b
                    .get(i.wrapping_sub(1))
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_') =>
            {
                let mut hashes = 0;
                let mut j = i + 1;
                while b.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < b.len() && b[i] != '"' {
                    if b[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' if b.get(i + 2) == Some(&'\'') || b.get(i + 1) == Some(&'\\') => {
                // A character literal ('a', '\n', '\u{8}'); a lifetime ('a) has no closing quote.
                i += 1;
                while i < b.len() && b[i] != '\'' {
                    if b[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Module path of a source file: `src/cmd/rollback.rs` → `cmd::rollback`, `src/governance/mod.rs` →
/// `governance`, `src/main.rs` → `` (the crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "main")) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name()
                .is_some_and(|n| n != "tests.rs" && n != "layering.rs")
        {
            out.push(p);
        }
    }
}

/// The paths after each `crate::`/`super::`/`self::` in `code`, with `{a, b::c}` groups expanded, as segments
/// (resolved against `module`).
fn referenced_paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let here: Vec<String> = if module.is_empty() {
        vec![]
    } else {
        module.split("::").map(str::to_string).collect()
    };
    let b: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let ident_at = |i: usize| -> Option<(String, usize)> {
        let mut j = i;
        while j < b.len() && (b[j].is_alphanumeric() || b[j] == '_') {
            j += 1;
        }
        (j > i).then(|| (b[i..j].iter().collect(), j))
    };
    // Expands the use-tree starting at `i` under `prefix`.
    fn tree(
        b: &[char],
        mut i: usize,
        prefix: Vec<String>,
        out: &mut Vec<Vec<String>>,
        ident_at: &dyn Fn(usize) -> Option<(String, usize)>,
    ) -> usize {
        let mut path = prefix;
        loop {
            while i < b.len() && b[i].is_whitespace() {
                i += 1;
            }
            if b.get(i) == Some(&'{') {
                i += 1;
                loop {
                    while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == '}' {
                        return i + 1;
                    }
                    i = tree(b, i, path.clone(), out, ident_at);
                }
            }
            let Some((id, j)) = ident_at(i) else {
                out.push(path);
                return i;
            };
            path.push(id);
            i = j;
            if b.get(i) == Some(&':') && b.get(i + 1) == Some(&':') {
                i += 2;
            } else {
                out.push(path);
                return i;
            }
        }
    }
    let mut i = 0;
    while i < b.len() {
        let preceded = i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_');
        if preceded {
            i += 1;
            continue;
        }
        let start: Option<(Vec<String>, usize)> =
            if b[i..].starts_with(&['c', 'r', 'a', 't', 'e', ':', ':']) {
                Some((vec![], i + 7))
            } else if b[i..].starts_with(&['s', 'e', 'l', 'f', ':', ':']) {
                Some((here.clone(), i + 6))
            } else if b[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                let mut base = here.clone();
                let mut j = i;
                while b[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                    base.pop();
                    j += 7;
                }
                Some((base, j))
            } else {
                None
            };
        match start {
            Some((prefix, j)) => i = tree(&b, j, prefix, &mut found, &ident_at),
            // A relative path (`dispatch::run` in the crate root, `frame::render` in `watch`): it names a child
            // module when `here::ident` is one (the graph keeps only paths that name a module).
            None => match ident_at(i) {
                Some((_, j))
                    if b.get(j) == Some(&':')
                        && b.get(j + 1) == Some(&':')
                        && !(i >= 2 && b[i - 1] == ':' && b[i - 2] == ':') =>
                {
                    i = tree(&b, i, here.clone(), &mut found, &ident_at);
                }
                Some((_, j)) => i = j,
                None => i += 1,
            },
        }
    }
    found
}

/// The module graph: module → modules its code names.
fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let codes: BTreeMap<String, String> = files
        .iter()
        .map(|f| {
            (
                module_of(&src, f),
                code_only(&std::fs::read_to_string(f).unwrap()),
            )
        })
        .collect();
    let modules: BTreeSet<&String> = codes.keys().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, code) in &codes {
        let e = edges.entry(m.clone()).or_default();
        for path in referenced_paths(m, code) {
            // The longest prefix of the path that is a module (an item of the crate root is the root).
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|p| modules.contains(p))
                .unwrap_or_default();
            if &target != m {
                e.insert(target);
            }
        }
    }
    (edges, codes)
}

/// A cycle of the graph, if it has one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n)
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle_and_goes_one_way() {
    let (edges, codes) = graph();
    assert!(
        edges["cmd::approve"].contains("execution") && edges[""].contains("dispatch"),
        "the graph misses known edges: {edges:#?}"
    );
    if let Some(c) = cycle(&edges) {
        panic!("module cycle: {}", c.join(" → "));
    }
    let is_cmd = |m: &str| m == "cmd" || m.starts_with("cmd::");
    for (from, tos) in &edges {
        for to in tos {
            if to == "dispatch" {
                assert!(from.is_empty(), "{from} uses the dispatcher");
            }
            if is_cmd(to) && to != "cmd" {
                assert!(
                    from == "dispatch" || (is_cmd(from) && to.starts_with(&format!("{from}::"))),
                    "{from} uses the command {to}: commands are used by the dispatcher only"
                );
            }
        }
    }
    for (m, code) in &codes {
        if m != "target" && !m.starts_with("target::") {
            assert!(
                !code.contains("xorb_local"),
                "{m} names xorb_local: go through crate::target"
            );
        }
    }
}

#[test]
fn references_in_comments_and_strings_are_not_edges() {
    let code = code_only(
        "// crate::a\n/// crate::b\nlet s = \"crate::c\"; use crate::{d::x, e}; use super::f::g; let c = '\\'';",
    );
    let mut found: Vec<String> = referenced_paths("m::n", &code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    found.sort();
    assert_eq!(found, ["d::x", "e", "m::f::g"]);
    let relative: Vec<String> = referenced_paths("", "fn main() { dispatch::run(x); a::b::c(); }")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(relative, ["dispatch::run", "a::b::c"]);
}
