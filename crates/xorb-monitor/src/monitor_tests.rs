use super::*;
use crate::prom::Series;
use crate::series::Point;

fn settings() -> Settings {
    Settings {
        baseline_release: "v2025.07-stable".into(),
        baseline_source: "pinned by the operator".into(),
        baseline_windows: vec![Window {
            start_ms: 0,
            end_ms: 40_000,
        }],
        start_ms: 100_000,
        duration_ms: 20_000,
        step_ms: 2000,
        report_interval_ms: 4000,
        threshold: 0.1,
        alpha: 0.05,
        min_points: 10,
        min_requests: 100,
        queries: Queries::new("xorb-api", 2000),
    }
}

/// Steady traffic of 100 requests per step with `errors` of them failing, over `[from, to]`.
fn samples(from: i64, to: i64, errors: f64) -> Samples {
    let steps: Vec<i64> = (from / 2000..=to / 2000).map(|k| k * 2000).collect();
    let series = |labels: &[(&str, &str)], f: &dyn Fn(i64) -> f64| Series {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        points: steps.iter().map(|&t| Point { t_ms: t, v: f(t) }).collect(),
    };
    Samples::from_series(
        vec![series(&[("instance", "api")], &|_| 1.0)],
        vec![
            series(&[("status", "200")], &|t| {
                (t / 2000) as f64 * (100.0 - errors)
            }),
            series(&[("status", "500")], &|t| (t / 2000) as f64 * errors),
        ],
        vec![series(&[], &|t| 0.1 + (t % 7000) as f64 * 1e-6)],
        vec![series(&[], &|t| (t % 3) as f64)],
    )
}

fn ok(at_ms: i64, range: Range, errors: f64) -> Increment {
    Increment {
        at_ms,
        range: Some(range),
        fetched: Fetched::Samples(samples(range.start_ms, range.end_ms, errors)),
    }
}

#[test]
fn a_failed_fetch_is_an_error_and_the_next_fetches_what_it_missed() {
    let mut m = Monitor::new(settings(), samples(0, 38_000, 0.0));
    let r1 = m.next_range(102_500).unwrap();
    assert_eq!((r1.start_ms, r1.end_ms), (100_000, 102_000));
    m.apply(ok(102_000, r1, 0.0));
    let e = m.apply(Increment {
        at_ms: 104_000,
        range: None,
        fetched: Fetched::Error("Prometheus at http://127.0.0.1:1 is unreachable".into()),
    });
    assert_eq!(e.verdict, Verdict::Error);
    assert!(e.metrics.is_empty());
    let r3 = m.next_range(106_100).unwrap();
    assert_eq!(
        (r3.start_ms, r3.end_ms),
        (104_000, 106_000),
        "the missed step is fetched"
    );
    assert!(m.next_range(107_900).is_some_and(|r| r.start_ms == 104_000));
    m.apply(ok(106_000, r3, 0.0));
    assert_ne!(m.report().verdict, Verdict::Error, "resumed");
    assert!(!m.finished());
}

#[test]
fn a_burst_of_errors_fails_and_ends_the_monitor() {
    let mut m = Monitor::new(settings(), samples(0, 38_000, 0.0));
    let mut at = 100_000;
    while !m.finished() {
        at += 2000;
        let r = m.next_range(at).unwrap();
        m.apply(ok(at, r, 50.0));
    }
    let rep = m.report();
    assert_eq!(rep.verdict, Verdict::Fail);
    assert!(at < 120_000, "ended at the FAIL, not the duration: {at}");
    let j = &rep.latest.unwrap().metrics["error_ratio"].judgement;
    assert!(
        j.reason.contains("against the baseline's 0.00%"),
        "{}",
        j.reason
    );
}

#[test]
fn a_replayed_recording_gives_the_same_report_and_a_torn_last_line_is_ignored() {
    let base = samples(0, 38_000, 1.0);
    let mut m = Monitor::new(settings(), base.clone());
    let mut text = crate::record::head_line(m.settings(), &base) + "\n";
    let mut at = 100_000;
    while !m.finished() {
        at += 2000;
        let inc = ok(at, m.next_range(at).unwrap(), 1.0);
        text.push_str(&(crate::record::increment_line(&inc) + "\n"));
        m.apply(inc);
    }
    let live = serde_json::to_string(&m.report()).unwrap();
    assert_eq!(m.report().verdict, Verdict::Pass, "{live}");
    let again = crate::record::replay(&text).unwrap();
    assert_eq!(serde_json::to_string(&again.report()).unwrap(), live);

    let torn = format!("{text}{{\"at_ms\":12");
    assert_eq!(
        crate::record::replay(&torn).unwrap().evaluations.len(),
        m.evaluations.len()
    );
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{not json";
    let e = crate::record::replay(&(lines.join("\n") + "\n"))
        .err()
        .unwrap();
    assert_eq!(e.line, 3, "{e}");
}
