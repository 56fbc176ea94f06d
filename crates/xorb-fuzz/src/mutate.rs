//! Structure-blind mutations that still reach deep into text formats: numbers swapped for boundary values,
//! syntax tokens inserted, chunks repeated (deep nesting, long lines), splices of two inputs.

use crate::rng::Rng;

/// Inputs never grow past this: parsers must bound time per byte, not handle arbitrarily large files here.
pub(crate) const MAX_LEN: usize = 64 * 1024;

const NUMBERS: [&str; 22] = [
    "0",
    "-1",
    "1",
    "-0",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "4294967296",
    "2147483648",
    "99999999999999999999999999",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "1.5",
    "0x7fffffff",
    "213503982334601d",
    "99999999999999999999s",
    "1h99999999999999m",
    "0s",
];

const TOKENS: [&str; 30] = [
    "\n",
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ":",
    ": ",
    "- ",
    "#",
    "*",
    ".*",
    "&a ",
    "*a",
    "!!binary ",
    "<<: *a",
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{% for i in range(10000) %}",
    "{% endfor %}",
    "\\u0000",
    "\u{feff}",
    "\r\n",
    "\t",
];

pub(crate) fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>], dict: &[&str]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        step(rng, &mut out, others, dict);
    }
    out.truncate(MAX_LEN);
    out
}

fn step(rng: &mut Rng, out: &mut Vec<u8>, others: &[Vec<u8>], dict: &[&str]) {
    let at = |rng: &mut Rng, v: &Vec<u8>| rng.below(v.len() + 1);
    match rng.below(10) {
        0 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] ^= 1 << rng.below(8);
        }
        1 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] = rng.next() as u8;
        }
        2 if !out.is_empty() => {
            let i = rng.below(out.len());
            let n = (1 + rng.below(16)).min(out.len() - i);
            out.drain(i..i + n);
        }
        3 => {
            let i = at(rng, out);
            let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
            out.splice(i..i, bytes);
        }
        4 => {
            let tok = if !dict.is_empty() && rng.chance(50) {
                *rng.pick(dict)
            } else {
                *rng.pick(&TOKENS)
            };
            let i = at(rng, out);
            out.splice(i..i, tok.bytes());
        }
        5 => replace_number(rng, out),
        6 if !out.is_empty() => {
            // Repeat a chunk: long lines, deep nesting, many entries.
            let i = rng.below(out.len());
            let n = (1 + rng.below(32)).min(out.len() - i);
            let chunk = out[i..i + n].to_vec();
            let most = if rng.chance(10) { 2000 } else { 8 };
            let times = 1 + rng.below(most);
            let mut rep = Vec::with_capacity(chunk.len() * times);
            for _ in 0..times {
                rep.extend_from_slice(&chunk);
                if rep.len() > MAX_LEN {
                    break;
                }
            }
            out.splice(i..i, rep);
        }
        7 if !others.is_empty() => {
            let other = rng.pick(others);
            let cut = at(rng, out);
            let from = rng.below(other.len() + 1);
            out.truncate(cut);
            out.extend_from_slice(&other[from..]);
        }
        8 if !out.is_empty() => {
            let n = rng.below(out.len());
            out.truncate(n);
        }
        _ => replace_number(rng, out),
    }
}

/// Swaps a run of digits (or inserts one) for a boundary value.
fn replace_number(rng: &mut Rng, out: &mut Vec<u8>) {
    let digits: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    let value = rng.pick(&NUMBERS).as_bytes();
    if digits.is_empty() {
        let i = rng.below(out.len() + 1);
        out.splice(i..i, value.iter().copied());
        return;
    }
    let start = *rng.pick(&digits);
    let mut end = start;
    while end < out.len() && (out[end].is_ascii_digit() || out[end] == b'_') {
        end += 1;
    }
    out.splice(start..end, value.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_bounded_and_vary() {
        let mut rng = Rng::new(7);
        let seed = b"rollout_secs = 300\n[services]\nattempts = 2\n".to_vec();
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let m = mutate(
                &mut rng,
                &seed,
                std::slice::from_ref(&seed),
                &["backoff_ms"],
            );
            assert!(m.len() <= MAX_LEN);
            distinct.insert(m);
        }
        assert!(distinct.len() > 1500, "{}", distinct.len());
    }
}
