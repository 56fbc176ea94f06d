//! Redaction of secrets by value.
//!
//! Every secret the tool reads (database and Redis passwords, tenant tokens, webhook URLs, URLs with credentials)
//! is registered with a [`Redactor`]; everything the tool writes (terminal, log file, journal, report,
//! notifications, audit trail, the arguments of the processes it starts) goes through [`Redactor::redact`] or
//! [`Redactor::redact_json`] first. Redaction is **by value**: it does not rely on field names, so a password that
//! ends up inside an error message, a URL or a JSON blob is still found.
//!
//! For each registered value the redactor also looks for the encodings a value commonly takes on its way into a
//! log line:
//!
//! - the value as given, and trimmed of surrounding whitespace (a secret read from a file often ends in `\n`);
//! - percent-encoded (every non-alphanumeric byte, RFC 3986 unreserved kept, JavaScript `encodeURIComponent`,
//!   `application/x-www-form-urlencoded` with `+` for space; upper- and lower-case hex), and percent-*decoded* when
//!   the value as given contains `%XX` escapes;
//! - base64 (standard and URL-safe alphabet, with or without padding), including the characters that are fully
//!   determined by the value when it is embedded at any byte offset inside a larger base64 blob (as in an HTTP
//!   `Authorization: Basic` header);
//! - JSON-escaped (as `serde_json` writes it, with `\/` for `/`, with `\uXXXX` for every non-ASCII character, and
//!   JSON-escaped twice for JSON carried inside a JSON string);
//! - for a URL with credentials (`scheme://user:password@host/…`): the password alone (as written and
//!   percent-decoded) and the base64 of `user:password` (HTTP Basic).
//!
//! Independently of what was registered, [`Redactor::redact`] also masks the password of every URL with userinfo it
//! sees (see [`redact_url`]), so a credential the tool never read as a secret still does not print.
//!
//! # Values too short to be meaningful
//! Values shorter than [`MIN_SECRET_LEN`] characters (after trimming) are **ignored**: [`Redactor::add`] returns
//! `false`. Replacing every occurrence of a 3-letter string would shred ordinary output, and a secret that short
//! offers no protection worth the name; callers should warn when `add` returns `false`.
//!
//! # Guarantee, and its limits
//! Every byte of every occurrence of every registered pattern is replaced: all matches, including overlapping
//! ones, are merged into intervals and each interval becomes one [`REDACTED`] marker, so no fragment of a
//! secret that overlaps another secret survives. A value can only "survive" if it lies inside the marker text
//! itself (a "secret" such as `REDACT`) — such values are meaningless as secrets. Text must be redacted **whole**:
//! a secret split across two separately-redacted chunks (two `write` calls of a stream) cannot be recognised, so
//! redact formatted lines or complete documents, never raw stream fragments.
//!
//! # Sharing
//! A [`Redactor`] is an `Arc` around a registry: cloning is cheap and **all clones share the same registry**, so a
//! logger built at start-up with a clone of the redactor also redacts a secret registered later.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// What every secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Values shorter than this many characters (after trimming whitespace) are not registered; see the module docs.
pub const MIN_SECRET_LEN: usize = 6;

/// RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) kept, everything else encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// JavaScript `encodeURIComponent`: keeps `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// `application/x-www-form-urlencoded` (WHATWG): keeps `A-Z a-z 0-9 * - . _`, space becomes `+` (done after).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// Replaces registered secret values, and their common encodings, with [`REDACTED`].
///
/// Cheap to clone; clones share one registry (see the module docs). Thread-safe.
#[derive(Clone, Default)]
pub struct Redactor {
    shared: Arc<RwLock<Arc<Compiled>>>,
}

#[derive(Default)]
struct Compiled {
    /// The registered values (trimmed), to report how many there are.
    secrets: BTreeSet<String>,
    /// Every pattern searched for: the values and all their encodings.
    patterns: BTreeSet<String>,
    matcher: Option<AhoCorasick>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.snapshot();
        f.debug_struct("Redactor")
            .field("secrets", &c.secrets.len())
            .field("patterns", &c.patterns.len())
            .finish()
    }
}

impl Redactor {
    /// An empty redactor (it still masks URL passwords, see [`redact_url`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A redactor knowing `secrets` (values too short are skipped, see [`MIN_SECRET_LEN`]).
    pub fn with_secrets<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let r = Self::new();
        r.add_all(secrets);
        r
    }

    /// Registers one secret value; visible to every clone of this redactor at once.
    ///
    /// Returns `true` if the value is (now or already) redacted, `false` if it was ignored because it is shorter
    /// than [`MIN_SECRET_LEN`] characters after trimming. A URL with credentials also registers its password.
    pub fn add(&self, secret: impl AsRef<str>) -> bool {
        self.add_all([secret]) == 1
    }

    /// Registers a webhook URL (Slack-compatible incoming webhook and the like): the whole URL, the URL without
    /// its scheme, and its path and query, which is the credential of such a URL (`/services/T…/B…/XXXX`).
    pub fn add_webhook_url(&self, url: impl AsRef<str>) -> bool {
        let url = url.as_ref().trim();
        let mut values = vec![url.to_string()];
        if let Some(sep) = url.find("://") {
            let rest = &url[sep + 3..];
            values.push(rest.to_string());
            if let Some(slash) = rest.find('/') {
                values.push(rest[slash..].to_string());
            }
        }
        self.add_all(values) > 0
    }

    /// Registers a [`Secret`]'s value.
    pub fn add_secret(&self, secret: &Secret<String>) -> bool {
        self.add(secret.expose())
    }

    /// Registers many values at once (one rebuild of the matcher); returns how many are redacted (now or
    /// already), i.e. were long enough.
    pub fn add_all<I, S>(&self, secrets: I) -> usize
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut accepted = Vec::new();
        for s in secrets {
            let t = s.as_ref().trim();
            if t.chars().count() >= MIN_SECRET_LEN {
                accepted.push(t.to_string());
            }
        }
        if accepted.is_empty() {
            return 0;
        }
        let count = accepted.len();
        let mut guard = self.shared.write().unwrap_or_else(|e| e.into_inner());
        if accepted.iter().all(|s| guard.secrets.contains(s)) {
            return count;
        }
        let mut secrets = guard.secrets.clone();
        let mut patterns = guard.patterns.clone();
        for s in accepted {
            patterns.extend(variants(&s));
            secrets.insert(s);
        }
        // A contiguous NFA: fast to build (the matcher is rebuilt on every registration) and still a linear
        // scan of the text; a full DFA would cost far more memory and build time for many secrets.
        let matcher = AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(patterns.iter())
            .expect("aho-corasick: patterns are non-empty strings and the automaton is small");
        *guard = Arc::new(Compiled {
            secrets,
            patterns,
            matcher: Some(matcher),
        });
        count
    }

    /// How many distinct values are registered.
    pub fn len(&self) -> usize {
        self.snapshot().secrets.len()
    }

    /// True if no value is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<Compiled> {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True if `text` contains a registered value or one of its encodings (for assertions: "the planted secret
    /// appears nowhere").
    pub fn contains_secret(&self, text: &str) -> bool {
        self.snapshot()
            .matcher
            .as_ref()
            .is_some_and(|m| m.is_match(text))
    }

    /// `text` with every registered value (and encoding) replaced by [`REDACTED`], and the password of every URL
    /// with userinfo masked. Borrows when there is nothing to replace.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let c = self.snapshot();
        let by_value = match &c.matcher {
            Some(m) => replace_all_overlapping(m, text),
            None => Cow::Borrowed(text),
        };
        match by_value {
            Cow::Borrowed(t) => mask_url_passwords(t),
            Cow::Owned(t) => match mask_url_passwords(&t) {
                Cow::Borrowed(_) => Cow::Owned(t),
                Cow::Owned(masked) => Cow::Owned(masked),
            },
        }
    }

    /// [`Redactor::redact`] into an owned `String`.
    pub fn redact_string(&self, text: &str) -> String {
        self.redact(text).into_owned()
    }

    /// A copy of `value` with every string (object keys included) redacted, recursively. A number whose decimal
    /// form contains a secret becomes the string it redacts to.
    pub fn redact_json(&self, value: &Value) -> Value {
        let mut v = value.clone();
        self.redact_json_in_place(&mut v);
        v
    }

    /// [`Redactor::redact_json`] in place.
    pub fn redact_json_in_place(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact(s) {
                    *s = r;
                }
            }
            Value::Number(n) => {
                let text = n.to_string();
                if let Cow::Owned(r) = self.redact(&text) {
                    *value = Value::String(r);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.redact_json_in_place(item);
                }
            }
            Value::Object(map) => {
                let needs_key_change = map.keys().any(|k| matches!(self.redact(k), Cow::Owned(_)));
                if needs_key_change {
                    let old = std::mem::take(map);
                    for (k, mut v) in old {
                        self.redact_json_in_place(&mut v);
                        let mut key = self.redact(&k).into_owned();
                        // Two keys can redact to the same text: keep both values.
                        let mut n = 2;
                        while map.contains_key(&key) {
                            key = format!("{} ({n})", self.redact(&k));
                            n += 1;
                        }
                        map.insert(key, v);
                    }
                } else {
                    for v in map.values_mut() {
                        self.redact_json_in_place(v);
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
}

/// Replaces the union of all (possibly overlapping) matches; merged intervals become one marker each.
fn replace_all_overlapping<'a>(matcher: &AhoCorasick, text: &'a str) -> Cow<'a, str> {
    let mut spans: Vec<(usize, usize)> = matcher
        .find_overlapping_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect();
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut cur: Option<(usize, usize)> = None;
    for (s, e) in spans {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                out.push_str(&text[last..cs]);
                out.push_str(REDACTED);
                last = ce;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        out.push_str(&text[last..cs]);
        out.push_str(REDACTED);
        last = ce;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// `url` with the password of its userinfo (`scheme://user:PASSWORD@host…`) replaced by [`REDACTED`], whether
/// or not the password was registered anywhere. The user name, host, path and query are kept. Text that is not a
/// URL with a password is returned unchanged. Also works on text containing several URLs, and on JSON-escaped
/// URLs (`scheme:\/\/user:pw@host`).
pub fn redact_url(url: &str) -> String {
    mask_url_passwords(url).into_owned()
}

fn mask_url_passwords(text: &str) -> Cow<'_, str> {
    let once = mask_url_passwords_sep(text, "://");
    match once {
        Cow::Borrowed(t) => mask_url_passwords_sep(t, ":\\/\\/"),
        Cow::Owned(t) => Cow::Owned(mask_url_passwords_sep(&t, ":\\/\\/").into_owned()),
    }
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

fn ends_authority(c: char) -> bool {
    matches!(
        c,
        '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`' | '\\' | '[' | ']' | '(' | ')' | ',' | ';'
    ) || c.is_whitespace()
        || c.is_control()
}

/// Masks `user:PASSWORD@` after every `sep` (`://` or its JSON-escaped form) preceded by a scheme.
fn mask_url_passwords_sep<'a>(text: &'a str, sep: &str) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut search = 0;
    while let Some(rel) = text[search..].find(sep) {
        let at_sep = search + rel;
        let auth_start = at_sep + sep.len();
        search = auth_start;
        if at_sep == 0 || !is_scheme_byte(bytes[at_sep - 1]) {
            continue;
        }
        // The authority ends at the first delimiter; "[REDACTED]" (a password already masked by value) is
        // skipped over so that its brackets do not end the authority early.
        let mut end = auth_start;
        let rest = &text[auth_start..];
        let mut it = rest.char_indices().peekable();
        while let Some((i, c)) = it.next() {
            if rest[i..].starts_with(REDACTED) {
                // skip the marker
                let skip_to = i + REDACTED.len();
                while it.peek().is_some_and(|(j, _)| *j < skip_to) {
                    it.next();
                }
                end = auth_start + skip_to;
                continue;
            }
            if ends_authority(c) {
                break;
            }
            end = auth_start + i + c.len_utf8();
        }
        let authority = &text[auth_start..end];
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        let userinfo = &authority[..at];
        let Some(colon) = userinfo.find(':') else {
            continue;
        };
        let pw_start = auth_start + colon + 1;
        let pw_end = auth_start + at;
        let pw = &text[pw_start..pw_end];
        if pw.is_empty() || pw == REDACTED {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[copied..pw_start]);
        o.push_str(REDACTED);
        copied = pw_end;
        search = pw_end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// `(user, password)` of `scheme://user:password@host…`, as written (not decoded).
fn url_credentials(url: &str) -> Option<(&str, &str)> {
    let sep = url.find("://")?;
    if sep == 0 || !url[..sep].bytes().all(is_scheme_byte) {
        return None;
    }
    let rest = &url[sep + 3..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let at = authority.rfind('@')?;
    let (user, pw) = authority[..at].split_once(':')?;
    (!pw.is_empty()).then_some((user, pw))
}

/// Every pattern searched for on behalf of one registered value.
fn variants(secret: &str) -> BTreeSet<String> {
    let mut bases: BTreeSet<String> = BTreeSet::new();
    let mut extra: BTreeSet<String> = BTreeSet::new();
    bases.insert(secret.to_string());
    if let Some(decoded) = percent_decoded(secret) {
        bases.insert(decoded);
    }
    if let Some((user, pw)) = url_credentials(secret) {
        bases.insert(pw.to_string());
        let pw_decoded = percent_decoded(pw).unwrap_or_else(|| pw.to_string());
        let user_decoded = percent_decoded(user).unwrap_or_else(|| user.to_string());
        bases.insert(pw_decoded.clone());
        // HTTP Basic: base64("user:password").
        for basic in [
            format!("{user_decoded}:{pw_decoded}"),
            format!("{user}:{pw}"),
        ] {
            extra.extend(base64_forms(basic.as_bytes()));
        }
    }
    let mut out = BTreeSet::new();
    for b in bases.iter().filter(|b| b.chars().count() >= MIN_SECRET_LEN) {
        out.insert(b.clone());
        out.extend(percent_forms(b));
        out.extend(base64_forms(b.as_bytes()));
        out.extend(json_forms(b));
    }
    out.extend(extra);
    // JSON encoders that escape '/' (PHP, some loggers) turn every '/' of any form into "\/".
    let slashed: Vec<String> = out
        .iter()
        .filter(|v| v.contains('/'))
        .map(|v| v.replace('/', "\\/"))
        .collect();
    out.extend(slashed);
    out.retain(|v| v.chars().count() >= MIN_SECRET_LEN);
    out
}

fn percent_decoded(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let d = percent_decode_str(s).decode_utf8().ok()?;
    (d != s).then(|| d.into_owned())
}

fn lower_hex_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

fn percent_forms(s: &str) -> Vec<String> {
    let mut v = Vec::new();
    for set in [NON_ALPHANUMERIC, UNRESERVED, URI_COMPONENT, FORM] {
        let enc = utf8_percent_encode(s, set).to_string();
        let form = enc.replace("%20", "+");
        for e in [enc, form] {
            v.push(lower_hex_escapes(&e));
            v.push(e);
        }
    }
    v
}

/// Base64 of `bytes` standalone (both alphabets, padded and not) and, for each of the three byte alignments
/// inside a larger blob, the run of characters that depends on `bytes` only.
fn base64_forms(bytes: &[u8]) -> Vec<String> {
    let mut v = vec![
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    for offset in 0..3usize {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(bytes);
        let first_bit = 8 * offset;
        let end_bit = 8 * (offset + bytes.len());
        // Character j covers bits [6j, 6j+6): keep those entirely inside the value.
        let first_char = first_bit.div_ceil(6);
        let end_char = end_bit / 6;
        if end_char <= first_char {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(&buf);
            if let Some(frag) = enc.get(first_char..end_char) {
                v.push(frag.to_string());
            }
        }
    }
    v
}

fn json_forms(s: &str) -> Vec<String> {
    let mut v = Vec::new();
    let once = json_inner(s);
    let ascii = json_ascii(s);
    for f in [once.clone(), ascii.clone()] {
        v.push(json_inner(&f));
        v.push(f);
    }
    v.push(ascii.to_uppercase_hex());
    v
}

/// The body of `serde_json::to_string(s)`, without the quotes.
fn json_inner(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_string()
}

/// JSON-escaped with every non-ASCII character as `\uxxxx` (Python's `json.dumps` default).
fn json_ascii(s: &str) -> String {
    let base = json_inner(s);
    let mut out = String::with_capacity(base.len());
    for c in base.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

trait UpperHex {
    fn to_uppercase_hex(&self) -> String;
}

impl UpperHex for String {
    /// `\u00e9` → `\u00E9` (other encoders use upper-case hex).
    fn to_uppercase_hex(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut rest = self.as_str();
        while let Some(i) = rest.find("\\u") {
            out.push_str(&rest[..i + 2]);
            let hex_end = (i + 6).min(rest.len());
            out.push_str(&rest[i + 2..hex_end].to_ascii_uppercase());
            rest = &rest[hex_end..];
        }
        out.push_str(rest);
        out
    }
}

/// A value that never prints: `Debug`, `Display` and `Serialize` all give [`REDACTED`]. Deserializes
/// transparently from the plain value, so configuration structs can hold `Secret<String>` fields.
/// Use [`Secret::expose`] where the value is really needed, and register it with [`Redactor::add_secret`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret value itself.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl From<String> for Secret<String> {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret<String> {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PW: &str = "S3cr3t/pw+x";

    #[test]
    fn plain_value_is_replaced_everywhere() {
        let r = Redactor::with_secrets([PW]);
        let text = format!("a {PW} b {PW}{PW} c");
        let out = r.redact(&text);
        assert_eq!(out, "a [REDACTED] b [REDACTED] c");
        assert!(!r.contains_secret(&out));
    }

    #[test]
    fn nothing_to_replace_borrows() {
        let r = Redactor::with_secrets([PW]);
        assert!(matches!(r.redact("all clear"), Cow::Borrowed(_)));
    }

    #[test]
    fn short_values_are_ignored_and_reported() {
        let r = Redactor::new();
        assert!(!r.add("abc"));
        assert!(!r.add("  12345\n"));
        assert!(!r.add(""));
        assert!(r.add("123456"));
        assert_eq!(r.len(), 1);
        assert_eq!(r.redact("abc 12345 123456"), "abc 12345 [REDACTED]");
    }

    #[test]
    fn value_read_from_a_file_is_trimmed() {
        let r = Redactor::new();
        assert!(r.add("tok-0123456789\n"));
        assert_eq!(r.redact("Bearer tok-0123456789."), "Bearer [REDACTED].");
    }

    #[test]
    fn clones_share_the_registry() {
        let r = Redactor::new();
        let logger_copy = r.clone();
        r.add("late-secret-value");
        assert_eq!(logger_copy.redact("x late-secret-value"), "x [REDACTED]");
        assert!(format!("{logger_copy:?}").contains("secrets: 1"));
        assert!(!format!("{logger_copy:?}").contains("late-secret"));
    }

    #[test]
    fn table_of_encodings() {
        let r = Redactor::with_secrets([PW]);
        let b64 = STANDARD.encode(PW);
        let cases = [
            ("raw", format!("pw={PW}")),
            ("percent upper", "pw=S3cr3t%2Fpw%2Bx".to_string()),
            ("percent lower", "pw=S3cr3t%2fpw%2bx".to_string()),
            ("base64", format!("b64 {b64} end")),
            ("base64 url-safe", URL_SAFE_NO_PAD.encode(PW)),
            ("json", serde_json::to_string(&json!({ "pw": PW })).unwrap()),
            (
                "json slash-escaped",
                "{\"pw\":\"S3cr3t\\/pw+x\"}".to_string(),
            ),
            (
                "json inside json",
                serde_json::to_string(&json!({"body": json!({"pw": PW}).to_string()})).unwrap(),
            ),
        ];
        for (name, text) in cases {
            let out = r.redact(&text);
            assert!(out.contains(REDACTED), "{name}: not redacted: {out}");
            assert!(!out.contains(PW), "{name}: {out}");
            assert!(!out.contains("S3cr3t"), "{name}: fragment survives: {out}");
            assert!(!out.contains(&b64[..8]), "{name}: base64 survives: {out}");
        }
    }

    #[test]
    fn json_special_characters_in_a_secret() {
        let secret = "p\"a\\ss\u{e9}\u{1F600}word";
        let r = Redactor::with_secrets([secret]);
        let json_text = serde_json::to_string(&json!({ "s": secret })).unwrap();
        assert_eq!(r.redact(&json_text), "{\"s\":\"[REDACTED]\"}");
        // Python json.dumps (ensure_ascii): \u00e9 and a surrogate pair.
        let py = "{\"s\": \"p\\\"a\\\\ss\\u00e9\\ud83d\\ude00word\"}";
        assert_eq!(r.redact(py), "{\"s\": \"[REDACTED]\"}");
        let py_upper = "p\\\"a\\\\ss\\u00E9\\uD83D\\uDE00word";
        assert_eq!(r.redact(py_upper), REDACTED);
    }

    #[test]
    fn url_with_credentials_registers_its_password() {
        let url = "postgres://xorb:S3cr3t%2Fpw@127.0.0.1:5432/xorb";
        let r = Redactor::with_secrets([url]);
        assert_eq!(r.redact(url), REDACTED);
        assert_eq!(r.redact("password is S3cr3t/pw"), "password is [REDACTED]");
        assert_eq!(r.redact("PGPASSWORD=S3cr3t%2Fpw"), "PGPASSWORD=[REDACTED]");
        let basic = STANDARD.encode("xorb:S3cr3t/pw");
        assert_eq!(
            r.redact(&format!("Authorization: Basic {basic}")),
            "Authorization: Basic [REDACTED]"
        );
        // The same credentials in a different URL (another host) still lose the password.
        assert_eq!(
            r.redact("redis://xorb:S3cr3t%2Fpw@10.0.0.9/0"),
            "redis://xorb:[REDACTED]@10.0.0.9/0"
        );
    }

    #[test]
    fn webhook_url_path_is_the_credential() {
        let hook = "https://hooks.example.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX";
        let r = Redactor::new();
        assert!(r.add_webhook_url(hook));
        assert_eq!(
            r.redact(&format!("posting to {hook} failed")),
            "posting to [REDACTED] failed"
        );
        assert_eq!(
            r.redact("POST /services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX HTTP/1.1"),
            "POST [REDACTED] HTTP/1.1"
        );
        assert_eq!(
            r.redact("hooks.example.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX"),
            REDACTED
        );
    }

    #[test]
    fn redact_url_masks_unregistered_passwords() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/x?sslmode=disable"),
            "postgres://app:[REDACTED]@db:5432/x?sslmode=disable"
        );
        assert_eq!(
            redact_url("redis://:pw12@127.0.0.1:6379/0"),
            "redis://:[REDACTED]@127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("https://user@host/p"), "https://user@host/p");
        assert_eq!(
            redact_url("amqp://u:p@ss@host/"),
            "amqp://u:[REDACTED]@host/"
        );
        assert_eq!(redact_url("not a url: a:b@c"), "not a url: a:b@c");
        assert_eq!(
            redact_url("postgres://u:pw12@[::1]:5432/x"),
            "postgres://u:[REDACTED]@[::1]:5432/x"
        );
        assert_eq!(redact_url("http://[::1]:8080/a@b"), "http://[::1]:8080/a@b");
        // In free text and JSON, several URLs, short passwords too.
        let r = Redactor::new();
        assert_eq!(
            r.redact("a=postgres://u:x@h/d b=\"redis:\\/\\/u:yy@h\""),
            "a=postgres://u:[REDACTED]@h/d b=\"redis:\\/\\/u:[REDACTED]@h\""
        );
    }

    #[test]
    fn url_password_registered_and_masked_once() {
        let r = Redactor::with_secrets(["hunter2hunter2"]);
        assert_eq!(
            r.redact("pg://app:hunter2hunter2@db/x"),
            "pg://app:[REDACTED]@db/x"
        );
    }

    #[test]
    fn overlapping_secrets_leave_no_fragment() {
        let r = Redactor::with_secrets(["ABCDEFGH", "FGHIJKLM"]);
        assert_eq!(r.redact("..ABCDEFGHIJKLM.."), "..[REDACTED]..");
        let r = Redactor::with_secrets(["token-123456", "token-123456-long"]);
        assert_eq!(
            r.redact("x token-123456-long y token-123456 z"),
            "x [REDACTED] y [REDACTED] z"
        );
    }

    #[test]
    fn json_values_and_keys_are_redacted_recursively() {
        let r = Redactor::with_secrets(["tok-abcdef", "987654321"]);
        let v = json!({
            "a": ["x tok-abcdef y", {"deep": "tok-abcdef"}],
            "tok-abcdef": 1,
            "pin": 987654321,
            "n": 5,
            "url": "postgres://u:whatever@h/d",
        });
        let out = r.redact_json(&v);
        assert_eq!(
            out,
            json!({
                "a": ["x [REDACTED] y", {"deep": "[REDACTED]"}],
                "[REDACTED]": 1,
                "pin": "[REDACTED]",
                "n": 5,
                "url": "postgres://u:[REDACTED]@h/d",
            })
        );
        assert!(!r.contains_secret(&out.to_string()));
    }

    #[test]
    fn secret_wrapper_never_prints() {
        let s: Secret = Secret::new("hunter2hunter2".to_string());
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[REDACTED]\"");
        #[derive(Debug, Deserialize)]
        struct Cfg {
            #[allow(dead_code)]
            password: Secret<String>,
        }
        let c: Cfg = serde_json::from_str("{\"password\":\"hunter2hunter2\"}").unwrap();
        assert_eq!(c.password.expose(), "hunter2hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let r = Redactor::new();
        assert!(r.add_secret(&c.password));
        assert!(r.contains_secret("xx hunter2hunter2"));
    }

    /// Small deterministic PRNG (xorshift64*), so the property test needs no extra dependency and is repeatable.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn string(&mut self, alphabet: &[char], min: usize, max: usize) -> String {
            let len = min + self.below(max - min + 1);
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    /// Property: a registered secret embedded anywhere, in any supported encoding, never survives redaction.
    #[test]
    fn property_embedded_secret_never_survives() {
        let secret_alphabet: Vec<char> =
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !\"#$%&'()*+,-./:;<=>?@\\^_`{|}~é日😀\t"
                .chars()
                .collect();
        let context_alphabet: Vec<char> = "abcxyz019 :/=\"{}@%+\n-_éq".chars().collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..1000 {
            let secret = rng.string(&secret_alphabet, MIN_SECRET_LEN, 24);
            let trimmed = secret.trim();
            if trimmed.chars().count() < MIN_SECRET_LEN || REDACTED.contains(trimmed) {
                continue;
            }
            let r = Redactor::with_secrets([&secret]);
            let before = rng.string(&context_alphabet, 0, 20);
            let after = rng.string(&context_alphabet, 0, 20);
            let embedded = format!("{before}{trimmed}{after}");

            let mut forms: Vec<(&str, String, String)> = Vec::new(); // (name, text, what must not survive)
            forms.push(("raw", embedded.clone(), trimmed.to_string()));
            let pct = utf8_percent_encode(trimmed, NON_ALPHANUMERIC).to_string();
            forms.push(("percent", format!("{before}{pct}{after}"), pct.clone()));
            let pct_u = utf8_percent_encode(trimmed, UNRESERVED).to_string();
            forms.push((
                "percent-unreserved",
                format!("q={pct_u}&x=1"),
                pct_u.clone(),
            ));
            let b64 = STANDARD.encode(trimmed);
            forms.push(("base64", format!("{before}{b64}{after}"), b64.clone()));
            // Inside a larger base64 blob at a random byte offset: no fully-determined run survives.
            let pad = rng.string(&context_alphabet, 0, 5);
            let blob = STANDARD.encode(format!("{pad}{trimmed}{after}"));
            let mut determined = base64_forms(trimmed.as_bytes());
            determined.retain(|f| blob.contains(f.as_str()) && f.len() >= MIN_SECRET_LEN);
            let json_text = serde_json::to_string(&json!({ "k": embedded })).unwrap();
            let json_body = json_inner(trimmed);
            forms.push(("json", json_text.clone(), json_body.clone()));
            let double = serde_json::to_string(&json!({ "outer": json_text })).unwrap();
            forms.push(("json-in-json", double, json_inner(&json_body)));
            let ascii = json_ascii(trimmed);
            forms.push((
                "json-ascii",
                format!("{{\"k\":\"{ascii}\"}}"),
                ascii.clone(),
            ));

            for (name, text, needle) in &forms {
                let out = r.redact(text);
                assert!(
                    !out.contains(needle.as_str()),
                    "case {case} {name}: secret {secret:?} survives in {out:?}"
                );
                assert!(!r.contains_secret(&out), "case {case} {name}: {out:?}");
            }
            let out = r.redact(&blob);
            for d in &determined {
                assert!(
                    !out.contains(d.as_str()),
                    "case {case} blob: {d:?} survives in {out:?}"
                );
            }

            // As the password of a URL, registered through the URL.
            let user = "svc";
            let pw_enc = utf8_percent_encode(trimmed, UNRESERVED).to_string();
            let url = format!("postgres://{user}:{pw_enc}@db.internal:5432/app");
            let ru = Redactor::with_secrets([&url]);
            let text = format!("connecting with {trimmed} / {pw_enc} to {url}");
            let out = ru.redact(&text);
            assert!(!out.contains(trimmed), "case {case} url: {out:?}");
            assert!(!out.contains(&pw_enc), "case {case} url: {out:?}");
        }
    }
}
