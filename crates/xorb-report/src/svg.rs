//! Inline SVG drawn by our code (no script, no library): the run's timeline to scale, and a chart per monitored
//! metric, baseline against current. Every text is escaped; every chart has a `<title>` and `<desc>` for screen
//! readers, and states are written in words and symbols, colour only repeats them.

use std::fmt::Write as _;

use serde::Serialize;
use xorb_engine::format_duration_ms;

use crate::escape::esc;
use crate::timeline::{SpanEnd, Timeline};

/// A metric's verdict, as `xorbctl monitor` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Too little data to judge: never a PASS.
    Inconclusive,
    /// Prometheus could not be read.
    Error,
    Fail,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::Error => "ERROR",
            Verdict::Fail => "FAIL",
        }
    }
    pub fn symbol(self) -> &'static str {
        match self {
            Verdict::Pass => "✓",
            Verdict::Inconclusive => "?",
            Verdict::Error => "!",
            Verdict::Fail => "✗",
        }
    }
    pub fn class(self) -> &'static str {
        match self {
            Verdict::Pass => "ok",
            Verdict::Inconclusive | Verdict::Error => "warn",
            Verdict::Fail => "bad",
        }
    }
}

/// One metric of a monitor (issue #13 fills these): two series of (seconds since the window's start, value).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricChart {
    pub metric: String,
    pub unit: String,
    pub baseline: Vec<(f64, f64)>,
    pub current: Vec<(f64, f64)>,
    pub verdict: Verdict,
    pub reason: String,
}

const W: f64 = 560.0;
const H: f64 = 200.0;
const PAD_L: f64 = 56.0;
const PAD_R: f64 = 12.0;
const PAD_T: f64 = 14.0;
const PAD_B: f64 = 30.0;

/// Finite (min, max) of both series, widened when flat so the line sits mid-chart.
fn bounds(points: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = points
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    Some(if (hi - lo).abs() < f64::EPSILON {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    })
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The chart of one metric: baseline dashed, current solid, axes with their ranges, the verdict in words.
pub fn metric_chart(c: &MetricChart) -> String {
    let mut s = String::new();
    let title = format!(
        "{}: {} {} — {}",
        c.metric,
        c.verdict.symbol(),
        c.verdict.word(),
        c.reason
    );
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg"><title>{}</title><desc>Baseline (dashed) against current (solid), {} points each</desc>"#,
        esc(&title),
        c.current.len().max(c.baseline.len())
    );
    let both = || c.baseline.iter().chain(&c.current);
    let (Some((x0, x1)), Some((y0, y1))) =
        (bounds(both().map(|p| p.0)), bounds(both().map(|p| p.1)))
    else {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" class="muted">no data</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return s;
    };
    let px = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let py = |y: f64| H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B);
    let _ = write!(
        s,
        r#"<line class="axis" x1="{PAD_L}" y1="{}" x2="{}" y2="{}"/><line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{}"/>"#,
        H - PAD_B,
        W - PAD_R,
        H - PAD_B,
        H - PAD_B
    );
    for (v, y) in [(y1, PAD_T + 4.0), (y0, H - PAD_B)] {
        let _ = write!(
            s,
            r#"<text class="tick" x="{}" y="{y:.1}" text-anchor="end">{}</text>"#,
            PAD_L - 6.0,
            esc(&format!("{} {}", fmt_num(v), c.unit))
        );
    }
    let _ = write!(
        s,
        r#"<text class="tick" x="{PAD_L}" y="{}">0 s</text><text class="tick" x="{}" y="{}" text-anchor="end">{} s</text>"#,
        H - 10.0,
        W - PAD_R,
        H - 10.0,
        fmt_num(x1 - x0)
    );
    for (series, class) in [(&c.baseline, "baseline"), (&c.current, "current")] {
        let pts: Vec<String> = series
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                s,
                r#"<polyline class="{class}" points="{}"/>"#,
                pts.join(" ")
            );
        }
    }
    let _ = write!(
        s,
        r#"<g class="legend"><line class="baseline" x1="{}" y1="{PAD_T}" x2="{}" y2="{PAD_T}"/><text class="tick" x="{}" y="{}">baseline</text><line class="current" x1="{}" y1="{PAD_T}" x2="{}" y2="{PAD_T}"/><text class="tick" x="{}" y="{}">current</text></g></svg>"#,
        W - 190.0,
        W - 170.0,
        W - 166.0,
        PAD_T + 4.0,
        W - 100.0,
        W - 80.0,
        W - 76.0,
        PAD_T + 4.0
    );
    s
}

const LANE: f64 = 20.0;
const LABEL_W: f64 = 230.0;
const TL_W: f64 = 980.0;
const AXIS_H: f64 = 26.0;

fn class_of(end: SpanEnd) -> &'static str {
    match end {
        SpanEnd::Ok => "ok",
        SpanEnd::Skipped => "skip",
        SpanEnd::Failed => "bad",
        SpanEnd::Interrupted => "warn",
        SpanEnd::Open => "open",
    }
}

/// Ticks at a round step so the axis reads in seconds, minutes or hours.
fn tick_step(total_ms: u64) -> u64 {
    const STEPS: [u64; 14] = [
        100, 250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000,
        600_000, 1_800_000,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| total_ms / s <= 10)
        .unwrap_or(3_600_000.max(total_ms / 10))
}

/// The whole run to scale: a lane for the run's executions and waits, then one per phase and one per step, each
/// attempt a bar; failures, crashes and waits are named in the bar's tooltip and marked with a symbol.
pub fn timeline(t: &Timeline, phase_labels: &[(u8, String)]) -> String {
    let plot_w = TL_W - LABEL_W - 10.0;
    let x = |ms: u64| LABEL_W + ms as f64 / t.total_ms as f64 * plot_w;
    let lanes = 1 + phase_labels.len() + t.steps.len();
    let height = AXIS_H + lanes as f64 * LANE + 6.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline" role="img" viewBox="0 0 {TL_W} {height}" width="{TL_W}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>Timeline of the run, to scale: {} in total</title><desc>One row per phase and step; each bar is an attempt, from its start to its end. Executions, crashes, resumes and waits are in the first row.</desc>"#,
        esc(&format_duration_ms(t.total_ms))
    );
    let step = tick_step(t.total_ms);
    let mut at = 0;
    while at <= t.total_ms {
        let _ = write!(
            s,
            r#"<line class="grid" x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{height}"/><text class="tick" x="{x:.1}" y="14" text-anchor="middle">+{}</text>"#,
            AXIS_H - 6.0,
            esc(&format_duration_ms(at)),
            x = x(at)
        );
        at += step;
    }
    let mut row = 0usize;
    let lane_label = |s: &mut String, row: usize, text: &str, class: &str| {
        let y = AXIS_H + row as f64 * LANE;
        let _ = write!(
            s,
            r#"<text class="{class}" x="4" y="{:.1}">{}</text>"#,
            y + 14.0,
            esc(text)
        );
        y
    };
    let bar = |s: &mut String, y: f64, a: u64, b: u64, class: &str, tip: &str, mark: &str| {
        let (x0, x1) = (x(a), x(b));
        let w = (x1 - x0).max(2.0);
        let _ = write!(
            s,
            r#"<g><title>{}</title><rect class="{class}" x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" rx="2"/>"#,
            esc(tip),
            y + 3.0,
            LANE - 6.0
        );
        // A resume is marked where it starts, everything else where it ended.
        let (mx, anchor) = if mark == "↻" {
            (x0 - 2.0, "end")
        } else {
            (x0 + w + 2.0, "start")
        };
        if !mark.is_empty() {
            let _ = write!(
                s,
                r#"<text class="mark" x="{mx:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                y + 14.0,
                esc(mark)
            );
        }
        s.push_str("</g>");
    };
    let y = lane_label(&mut s, row, "Run", "lane phase");
    row += 1;
    for w in &t.waits {
        let tip = format!(
            "waiting for {}: {}{}",
            w.what,
            format_duration_ms(w.end_ms.saturating_sub(w.start_ms)),
            if w.open { " (still waiting)" } else { "" }
        );
        bar(&mut s, y, w.start_ms, w.end_ms, "wait", &tip, "‖");
    }
    for (i, e) in t.executions.iter().enumerate() {
        let tip = format!(
            "{} {}: {} ({})",
            if e.resumed { "resume" } else { "start" },
            i + 1,
            format_duration_ms(e.end_ms.saturating_sub(e.start_ms)),
            e.ended
        );
        let mark = if e.ended == "crashed" {
            "⚡"
        } else if e.resumed {
            "↻"
        } else {
            ""
        };
        let class = match e.ended.as_str() {
            "succeeded" => "ok",
            "running" => "open",
            "crashed" => "warn",
            e if e.starts_with("waiting") => "wait",
            _ => "bad",
        };
        bar(&mut s, y, e.start_ms, e.end_ms, class, &tip, mark);
    }
    for (n, label) in phase_labels {
        let lanes: Vec<_> = t.steps.iter().filter(|l| l.phase == *n).collect();
        let y = lane_label(&mut s, row, label, &format!("lane phase p{n}"));
        row += 1;
        let spans = lanes.iter().flat_map(|l| &l.attempts);
        let first = spans.clone().map(|a| a.start_ms).min();
        let last = spans.clone().map(|a| a.end_ms).max();
        if let (Some(a), Some(b)) = (first, last) {
            // The phase's state is its steps' last attempts: a retry that succeeded leaves the phase done.
            let worst = lanes
                .iter()
                .filter_map(|l| l.attempts.last())
                .map(|a| a.end)
                .filter(|e| !matches!(e, SpanEnd::Ok | SpanEnd::Skipped))
                .max_by_key(|e| match e {
                    SpanEnd::Open => 1,
                    SpanEnd::Interrupted => 2,
                    _ => 3,
                })
                .unwrap_or(SpanEnd::Ok);
            let tip = format!("{label}: {}", format_duration_ms(b - a));
            bar(
                &mut s,
                y,
                a,
                b,
                &format!("phase {}", class_of(worst)),
                &tip,
                "",
            );
        }
        for l in lanes {
            let y = lane_label(&mut s, row, &l.step, "lane");
            row += 1;
            for a in &l.attempts {
                let tip = format!(
                    "{} attempt {}: {} {} ({})",
                    l.step,
                    a.attempt,
                    a.end.symbol(),
                    a.end.word(),
                    format_duration_ms(a.end_ms - a.start_ms)
                );
                let mark = if matches!(a.end, SpanEnd::Ok) {
                    ""
                } else {
                    a.end.symbol()
                };
                bar(&mut s, y, a.start_ms, a.end_ms, class_of(a.end), &tip, mark);
            }
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(verdict: Verdict) -> MetricChart {
        MetricChart {
            metric: "http_error_rate".into(),
            unit: "%".into(),
            baseline: (0..10).map(|i| (f64::from(i) * 30.0, 0.5)).collect(),
            current: (0..10)
                .map(|i| (f64::from(i) * 30.0, 0.5 + f64::from(i) * 0.2))
                .collect(),
            verdict,
            reason: "current 2.30 % > baseline 0.50 % + 1 % tolerance <script>".into(),
        }
    }

    #[test]
    fn a_chart_draws_both_series_to_scale() {
        let svg = metric_chart(&chart(Verdict::Fail));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        // x spans the plot: the first point at the left padding, the last at the right edge.
        assert!(svg.contains(r#"class="current" points="56.0,"#), "{svg}");
        assert!(
            svg.contains(&format!("{:.1},{:.1}", W - PAD_R, PAD_T)),
            "max of current at the top: {svg}"
        );
        assert!(
            svg.contains("0.50 %") && svg.contains("2.30 %"),
            "y range in the axis: {svg}"
        );
        assert!(svg.contains("270 s"), "x range in the axis: {svg}");
    }

    #[test]
    fn a_chart_says_its_verdict_and_reason_in_words() {
        let svg = metric_chart(&chart(Verdict::Fail));
        assert!(
            svg.contains("<title>http_error_rate: ✗ FAIL — current 2.30 % &gt; baseline"),
            "{svg}"
        );
        assert!(!svg.contains("<script>"), "reason escaped: {svg}");
        let svg = metric_chart(&chart(Verdict::Pass));
        assert!(svg.contains("✓ PASS"), "{svg}");
    }

    #[test]
    fn a_chart_without_finite_points_says_so() {
        let mut c = chart(Verdict::Inconclusive);
        c.baseline = vec![(f64::NAN, 1.0)];
        c.current = vec![];
        let svg = metric_chart(&c);
        assert!(svg.contains("no data") && !svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn a_flat_series_is_drawn_mid_chart() {
        let mut c = chart(Verdict::Pass);
        c.current = c.baseline.clone();
        let svg = metric_chart(&c);
        let mid = (H - PAD_B + PAD_T) / 2.0;
        assert!(svg.contains(&format!("56.0,{mid:.1}")), "{svg}");
    }

    #[test]
    fn ticks_are_round_and_few() {
        assert_eq!(tick_step(900), 100);
        assert_eq!(tick_step(45_000), 5_000);
        assert_eq!(tick_step(3_600_000), 600_000);
        assert_eq!(tick_step(10 * 3_600_000), 3_600_000);
    }
}
