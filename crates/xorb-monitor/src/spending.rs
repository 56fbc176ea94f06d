//! Repeated looks without more false alarms: the Lan-DeMets alpha-spending function of
//! O'Brien-Fleming type. A monitor that reports every 15 minutes for two hours looks 8 times; testing
//! each look at the full level would raise the chance of a false FAIL far above it. Each look `k`
//! at information fraction `t_k` (elapsed / duration) is tested at the increment
//! `alpha(t_k) - alpha(t_(k-1))`, where `alpha(t) = 2 - 2 Phi(z_(1-a/2) / sqrt(t))`. The increments
//! sum to at most `a`, so by the union bound the whole monitor's false-FAIL chance stays below `a`
//! (conservative: the exact boundaries from recursive integration would be a little less strict).
//! Early looks get almost nothing, so only a gross regression fails early, which is what an
//! on-call engineer wants from the first minutes after a rollback.

use crate::stats::{normal_cdf, normal_quantile};

/// The share of `alpha` spent by information fraction `t` (clamped to 0..=1).
pub fn spent(alpha: f64, t: f64) -> f64 {
    let t = t.clamp(0.0, 1.0);
    if t == 0.0 {
        return 0.0;
    }
    2.0 - 2.0 * normal_cdf(normal_quantile(1.0 - alpha / 2.0) / t.sqrt())
}

/// The level to test a look at, given the fraction of the previous look (0 for the first).
pub fn look_level(alpha: f64, previous: f64, current: f64) -> f64 {
    (spent(alpha, current) - spent(alpha, previous)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_all_of_alpha_at_the_end_and_little_early() {
        let a = 0.01;
        assert!((spent(a, 1.0) - a).abs() < 1e-9);
        assert_eq!(spent(a, 0.0), 0.0);
        assert!(spent(a, 0.125) < 1e-10, "{}", spent(a, 0.125));
        assert!(spent(a, 0.5) < a / 5.0);
    }

    #[test]
    fn the_looks_of_a_monitor_sum_to_alpha() {
        let a = 0.01;
        let looks: Vec<f64> = (1..=8).map(|k| f64::from(k) / 8.0).collect();
        let mut prev = 0.0;
        let mut total = 0.0;
        for &t in &looks {
            let l = look_level(a, prev, t);
            assert!(l >= 0.0);
            total += l;
            prev = t;
        }
        assert!((total - a).abs() < 1e-9, "{total}");
        // A look repeated at the same fraction spends nothing more.
        assert_eq!(look_level(a, 0.5, 0.5), 0.0);
    }
}
