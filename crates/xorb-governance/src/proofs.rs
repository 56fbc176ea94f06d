//! The proofs a run can produce, so that a checklist item naming one that cannot exist (a typo: `check.smok`,
//! `phase.6`, `2.apii.image`) is refused when the file loads instead of staying open forever.
//!
//! Step ids follow the planner's shape `<phase>.<subject>.<what>[.<revision>]`; the subjects below are the ones it
//! uses; a new planner subject must be added here.

use xorb_model::check::Check;
use xorb_model::release::SERVICE_ORDER;

/// Notification events (`notify::Event::kind`).
const EVENTS: [&str; 4] = ["initiation", "progress", "completion", "failure"];

/// Subjects of planner step ids other than services and migration labels (`g6`, `g7`, …).
const SUBJECTS: [&str; 11] = [
    "state",
    "target",
    "integrity",
    "streams",
    "monitoring",
    "data",
    "db",
    "nats",
    "redis",
    "config",
    "check",
];

/// What the planner does to each subject (the third part of a step id).
const WHAT: [(&str, &[&str]); 9] = [
    ("state", &["capture"]),
    ("target", &["verify"]),
    ("integrity", &["quick"]),
    ("streams", &["expand"]),
    ("monitoring", &["validate", "apply"]),
    ("data", &["reimport"]),
    ("nats", &["save", "apply"]),
    ("redis", &["backup", "apply"]),
    ("config", &["apply"]),
];

fn check_name(name: &str) -> bool {
    Check::parse(name).is_some()
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
}

/// Whether the run can ever produce `proof` (or, for a pattern ending in `*`, a proof it matches).
pub(crate) fn check(proof: &str) -> Result<(), String> {
    let why = |what: &str| Err(format!("{proof:?} names {what}"));
    match proof.split_once('.') {
        Some(("gate", rest)) => {
            return if rest == "open" {
                Ok(())
            } else {
                why("no gate proof; the one is \"gate.open\"")
            };
        }
        Some(("report", rest)) => {
            return if rest == "written" {
                Ok(())
            } else {
                why("no report proof; the one is \"report.written\"")
            };
        }
        Some(("phase", n)) => {
            return match n.parse::<u8>() {
                Ok(1..=5) if !n.starts_with('0') => Ok(()),
                _ => why("no phase; phases are phase.1 to phase.5"),
            };
        }
        Some(("check", name)) => {
            return if check_name(name) {
                Ok(())
            } else {
                why(&format!("no check; known: {}", checks_list()))
            };
        }
        Some(("notify", ev)) => {
            return if EVENTS.contains(&ev) {
                Ok(())
            } else {
                why(&format!("no notification; known: {}", EVENTS.join(", ")))
            };
        }
        _ => {}
    }
    step_pattern(proof).or_else(|m| why(&m))
}

fn checks_list() -> String {
    Check::names()
}

/// A step id or a prefix pattern of step ids (`2.*`, `2.api.*`).
fn step_pattern(proof: &str) -> Result<(), String> {
    let (body, pattern) = match proof.strip_suffix('*') {
        Some(prefix) => match prefix.strip_suffix('.') {
            Some(body) => (body, true),
            None => return Err("a pattern that does not end in \".*\"".into()),
        },
        None => (proof, false),
    };
    let segs: Vec<&str> = body.split('.').collect();
    let phase_ok = matches!(segs[0], "1" | "2" | "3" | "4" | "5");
    if !phase_ok {
        return Err(
            "no step, phase, check, gate, notification or report (a step id starts with its phase 1 to 5, e.g. \"2.api.image\")"
                .into(),
        );
    }
    if segs.iter().skip(1).any(|s| !segment_ok(s)) {
        return Err("no step: a step id is lowercase words separated by dots".into());
    }
    if segs.len() == 1 {
        return if pattern {
            Ok(())
        } else {
            Err("no step: a whole phase is \"N.*\" or \"phase.N\"".into())
        };
    }
    let subject = segs[1];
    let is_label = subject.len() > 1
        && subject.starts_with('g')
        && subject[1..].chars().all(|c| c.is_ascii_digit());
    if !(SERVICE_ORDER.contains(&subject) || SUBJECTS.contains(&subject) || is_label) {
        return Err(format!(
            "no step: {subject:?} is not a service ({}), a migration label (g6, …) or one of {}",
            SERVICE_ORDER.join(", "),
            SUBJECTS.join(", ")
        ));
    }
    if subject == "check"
        && let Some(name) = segs.get(2)
        && !check_name(name)
    {
        return Err(format!("no check {name:?}; known: {}", checks_list()));
    }
    if let Some(what) = segs.get(2)
        && !(pattern && segs.len() == 3 && what.is_empty())
        && subject != "check"
    {
        let known: &[&str] = if SERVICE_ORDER.contains(&subject) {
            &["add", "image", "remove", "config"]
        } else if is_label || subject == "db" {
            &[
                "upgrade",
                "downgrade",
                "backup",
                "snapshot",
                "compat",
                "verify",
            ]
        } else {
            WHAT.iter()
                .find(|(s, _)| *s == subject)
                .map(|(_, w)| *w)
                .unwrap_or(&[])
        };
        if !known.contains(what) {
            return Err(format!(
                "no step: {subject:?} has no step {what:?} (known: {})",
                known.join(", ")
            ));
        }
    }
    if !pattern && segs.len() < 3 {
        return Err("no step: a step id is <phase>.<subject>.<what>".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn the_shipped_proof_kinds_exist() {
        for p in [
            "gate.open",
            "report.written",
            "phase.1",
            "phase.5",
            "check.health",
            "check.integrity-quick",
            "notify.initiation",
            "notify.completion",
            "1.state.capture",
            "2.config.apply",
            "2.api.config",
            "2.control-plane.add",
            "3.g8.downgrade.8d9a2c3",
            "1.g6.upgrade.6b7e0a1",
            "4.nats.apply",
            "5.check.smoke",
            "2.*",
            "2.api.*",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn proofs_that_cannot_exist_are_named() {
        for (p, why) in [
            ("check.smok", "no check"),
            ("phase.6", "no phase"),
            ("phase.01", "no phase"),
            ("notify.sms", "no notification"),
            ("gate.closed", "gate.open"),
            ("report.sent", "report.written"),
            ("9.api.image", "starts with its phase"),
            ("deploy", "starts with its phase"),
            ("2.apii.image", "\"apii\" is not a service"),
            ("5.check.smok", "no check \"smok\""),
            ("2", "N.*"),
            ("2.api", "<phase>.<subject>.<what>"),
            ("2.API.image", "lowercase"),
            ("2*", "\".*\""),
            ("2..image", "lowercase"),
            ("1.target.verfy", "has no step \"verfy\""),
            ("2.api.imag", "has no step \"imag\""),
        ] {
            let e = check(p).unwrap_err();
            assert!(e.contains(why) && e.contains(&format!("{p:?}")), "{p}: {e}");
        }
    }
}
