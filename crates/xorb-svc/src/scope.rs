//! Scan targets and the tenant's scope allowlist: pure logic shared by the api (validation before
//! anything is stored) and the worker (the re-check right before it connects).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// At most this many targets per session.
pub const MAX_TARGETS: usize = 64;
/// At most this many ports per session, over all its targets (after de-duplication).
pub const MAX_PORTS_PER_SESSION: usize = 1024;

/// A target as the client sends it. Ports are parsed wide so that out-of-range values get a
/// clear message instead of a deserialisation error.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetIn {
    pub host: String,
    pub ports: Vec<i64>,
}

/// A validated target: the host is the canonical IP literal, ports are sorted and unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetProblem {
    /// Index of the target in the request, if the problem concerns one target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub problem: String,
}

impl TargetProblem {
    fn session(problem: impl Into<String>) -> Self {
        TargetProblem {
            target: None,
            host: None,
            problem: problem.into(),
        }
    }
    fn target(i: usize, host: &str, problem: impl Into<String>) -> Self {
        TargetProblem {
            target: Some(i),
            host: Some(host.to_string()),
            problem: problem.into(),
        }
    }
}

/// Parse a tenant's `scope_allowlist`; entries that are not CIDRs (or bare addresses) are
/// returned separately so that the caller can log them. They never widen the scope.
pub fn parse_allowlist(entries: &[String]) -> (Vec<IpNet>, Vec<String>) {
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for e in entries {
        let e = e.trim();
        if let Ok(n) = e.parse::<IpNet>() {
            nets.push(n.trunc());
        } else if let Ok(ip) = e.parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else {
            bad.push(e.to_string());
        }
    }
    (nets, bad)
}

/// A host is an IP literal (IPv6 optionally in brackets) or `localhost` (= 127.0.0.1; no DNS is
/// ever consulted). IPv4-mapped IPv6 addresses are reduced to IPv4.
pub fn parse_host(host: &str) -> Option<IpAddr> {
    let h = host.trim();
    if h.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Addresses that are never scanned, whatever the allowlist says.
pub fn never_scan(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("a broadcast address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

pub fn in_scope(ip: IpAddr, allow: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    allow.iter().any(|n| n.contains(&ip))
}

fn scope_list(allow: &[IpNet]) -> String {
    if allow.is_empty() {
        return "empty".to_string();
    }
    allow
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validate a session's targets against the tenant's scope. On success the targets are
/// normalised (canonical host, same host merged, ports sorted and unique).
pub fn validate_targets(
    targets: &[TargetIn],
    allow: &[IpNet],
) -> Result<Vec<Target>, Vec<TargetProblem>> {
    let mut problems = Vec::new();
    if targets.is_empty() {
        problems.push(TargetProblem::session("at least one target is required"));
    }
    if targets.len() > MAX_TARGETS {
        problems.push(TargetProblem::session(format!(
            "{} targets given, at most {MAX_TARGETS} per session",
            targets.len()
        )));
    }
    let mut merged: BTreeMap<IpAddr, Vec<u16>> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        let Some(ip) = parse_host(&t.host) else {
            problems.push(TargetProblem::target(
                i,
                &t.host,
                "host must be an IP address literal or \"localhost\" (names are not resolved)",
            ));
            continue;
        };
        if let Some(why) = never_scan(ip) {
            problems.push(TargetProblem::target(
                i,
                &t.host,
                format!("{ip} is {why} and is never scanned"),
            ));
            continue;
        }
        if !in_scope(ip, allow) {
            problems.push(TargetProblem::target(
                i,
                &t.host,
                format!(
                    "{ip} is outside the tenant's scope allowlist ({})",
                    scope_list(allow)
                ),
            ));
            continue;
        }
        if t.ports.is_empty() {
            problems.push(TargetProblem::target(i, &t.host, "no ports given"));
            continue;
        }
        let bad: Vec<i64> = t
            .ports
            .iter()
            .copied()
            .filter(|p| !(1..=65535).contains(p))
            .collect();
        if !bad.is_empty() {
            problems.push(TargetProblem::target(
                i,
                &t.host,
                format!("ports must be in 1..=65535, got {bad:?}"),
            ));
            continue;
        }
        merged
            .entry(ip)
            .or_default()
            .extend(t.ports.iter().map(|&p| p as u16));
    }
    let mut out = Vec::new();
    let mut total = 0usize;
    for (ip, mut ports) in merged {
        ports.sort_unstable();
        ports.dedup();
        total += ports.len();
        out.push(Target {
            host: ip.to_string(),
            ports,
        });
    }
    if total > MAX_PORTS_PER_SESSION {
        problems.push(TargetProblem::session(format!(
            "{total} ports requested, at most {MAX_PORTS_PER_SESSION} per session"
        )));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The worker's last check before it opens a connection: the address must be the literal the job
/// names, be scannable at all, and lie inside the tenant's allowlist as it is now in the database
/// (the default allowlist is loopback only, so nothing leaves 127.0.0.0/8 / ::1 unless a tenant's
/// allowlist names it explicitly).
pub fn connect_allowed(host: &str, allow: &[IpNet]) -> Result<IpAddr, String> {
    let ip = parse_host(host).ok_or_else(|| format!("{host:?} is not an IP literal"))?;
    if let Some(why) = never_scan(ip) {
        return Err(format!("{ip} is {why}"));
    }
    if !in_scope(ip, allow) {
        return Err(format!(
            "{ip} is outside the tenant's scope allowlist ({})",
            scope_list(allow)
        ));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_scope() -> Vec<IpNet> {
        parse_allowlist(&["127.0.0.0/8".into(), "::1/128".into()]).0
    }

    fn t(host: &str, ports: &[i64]) -> TargetIn {
        TargetIn {
            host: host.into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn allowlist_parsing() {
        let (nets, bad) = parse_allowlist(&[
            "127.0.0.0/8".into(),
            "10.1.2.3".into(),
            "::1/128".into(),
            "not-a-cidr".into(),
            "192.168.1.77/24".into(),
        ]);
        assert_eq!(nets.len(), 4);
        assert_eq!(bad, vec!["not-a-cidr".to_string()]);
        // host bits are truncated
        assert_eq!(nets[3].to_string(), "192.168.1.0/24");
    }

    #[test]
    fn hosts() {
        assert_eq!(parse_host("localhost"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_host("LOCALHOST"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_host("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(
            parse_host("::ffff:127.0.0.2"),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(parse_host("example.com"), None);
        assert_eq!(parse_host("127.1"), None);
        assert_eq!(parse_host("fe80::1%eth0"), None);
        assert_eq!(parse_host(""), None);
    }

    #[test]
    fn valid_targets_are_normalised() {
        let out = validate_targets(
            &[
                t("127.0.0.1", &[443, 80, 80]),
                t("localhost", &[22]),
                t("::1", &[8080]),
            ],
            &default_scope(),
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                Target {
                    host: "127.0.0.1".into(),
                    ports: vec![22, 80, 443]
                },
                Target {
                    host: "::1".into(),
                    ports: vec![8080]
                },
            ]
        );
    }

    #[test]
    fn out_of_scope_is_rejected_with_a_reason() {
        let err = validate_targets(
            &[t("127.0.0.1", &[80]), t("10.0.0.1", &[80])],
            &default_scope(),
        )
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].target, Some(1));
        assert!(
            err[0]
                .problem
                .contains("outside the tenant's scope allowlist")
        );
        assert!(err[0].problem.contains("127.0.0.0/8, ::1/128"));
        // v4-mapped v6 of an outside address is still outside
        assert!(validate_targets(&[t("::ffff:8.8.8.8", &[53])], &default_scope()).is_err());
        // an empty allowlist allows nothing
        assert!(validate_targets(&[t("127.0.0.1", &[80])], &[]).is_err());
    }

    #[test]
    fn names_are_not_resolved() {
        let err =
            validate_targets(&[t("scanme.nmap.org", &[80, 443])], &default_scope()).unwrap_err();
        assert!(err[0].problem.contains("IP address literal"));
    }

    #[test]
    fn port_rules() {
        assert!(validate_targets(&[t("127.0.0.1", &[0])], &default_scope()).is_err());
        assert!(validate_targets(&[t("127.0.0.1", &[65536])], &default_scope()).is_err());
        assert!(validate_targets(&[t("127.0.0.1", &[-1])], &default_scope()).is_err());
        assert!(validate_targets(&[t("127.0.0.1", &[])], &default_scope()).is_err());
        assert!(validate_targets(&[t("127.0.0.1", &[1, 65535])], &default_scope()).is_ok());
        let many: Vec<i64> = (1..=1024).collect();
        assert!(validate_targets(&[t("127.0.0.1", &many)], &default_scope()).is_ok());
        let too_many: Vec<i64> = (1..=1025).collect();
        let err = validate_targets(&[t("127.0.0.1", &too_many)], &default_scope()).unwrap_err();
        assert!(err[0].problem.contains("at most 1024"));
        // the bound is per session, over all targets
        let half: Vec<i64> = (1..=600).collect();
        assert!(
            validate_targets(&[t("127.0.0.1", &half), t("::1", &half)], &default_scope()).is_err()
        );
    }

    #[test]
    fn target_count_rules() {
        assert!(validate_targets(&[], &default_scope()).is_err());
        let many: Vec<TargetIn> = (0..65).map(|i| t(&format!("127.0.0.{i}"), &[80])).collect();
        assert!(validate_targets(&many, &default_scope()).is_err());
    }

    #[test]
    fn special_addresses_are_never_scanned() {
        let wide = parse_allowlist(&["0.0.0.0/0".into(), "::/0".into()]).0;
        for h in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
            assert!(validate_targets(&[t(h, &[80])], &wide).is_err(), "{h}");
            assert!(connect_allowed(h, &wide).is_err(), "{h}");
        }
    }

    #[test]
    fn worker_recheck() {
        let scope = default_scope();
        assert_eq!(
            connect_allowed("127.0.0.1", &scope).unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(connect_allowed("::1", &scope).is_ok());
        assert!(connect_allowed("10.0.0.1", &scope).is_err());
        assert!(connect_allowed("192.168.0.1", &scope).is_err());
        assert!(connect_allowed("example.com", &scope).is_err());
        // explicitly allowlisted non-loopback is allowed
        let wider = parse_allowlist(&["127.0.0.0/8".into(), "192.0.2.0/24".into()]).0;
        assert!(connect_allowed("192.0.2.7", &wider).is_ok());
    }
}
