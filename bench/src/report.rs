//! Figures and the report they go into: `report.md`, `report.json`, SVG plots.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

/// A figure over several runs: median, min and max, and every run.
#[derive(Clone, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Stat {
    pub fn of(runs: Vec<f64>) -> Stat {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            runs,
        }
    }

    /// Pair by pair `a[i] / b[i]`: a ratio that holds when the machine's speed drifts.
    pub fn ratio(a: &[f64], b: &[f64]) -> Stat {
        Stat::of(a.iter().zip(b).map(|(a, b)| a / b).collect())
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.runs.is_empty() {
            return "not run".into();
        }
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// A target printed next to a measured figure: met or missed, and by how much.
pub fn verdict(measured: f64, target: f64, lower_is_better: bool) -> String {
    if measured.is_nan() {
        return "not measured".into();
    }
    let met = if lower_is_better {
        measured <= target
    } else {
        measured >= target
    };
    let sign = if lower_is_better { "≤" } else { "≥" };
    // Three decimals at most: a target taken from a measurement prints like one.
    let target = (target * 1000.0).round() / 1000.0;
    if met {
        format!("met ({sign} {target})")
    } else if target == 0.0 {
        format!("**missed** (target {sign} 0)")
    } else {
        format!(
            "**missed** by {:.0} % (target {sign} {target})",
            ((measured / target) - 1.0).abs() * 100.0
        )
    }
}

/// The report as it is built: Markdown, the JSON of every raw figure, the plots written.
#[derive(Default)]
pub struct Report {
    pub md: String,
    pub json: serde_json::Map<String, Value>,
    pub plots: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn section(&mut self, title: &str) {
        let _ = writeln!(self.md, "\n## {title}\n");
    }

    pub fn line(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.md, "{}", text.as_ref());
    }

    /// A Markdown table.
    pub fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.md, "| {} |", head.join(" | "));
        let _ = writeln!(
            self.md,
            "|{}",
            head.iter().map(|_| " --- |").collect::<String>()
        );
        for r in rows {
            let _ = writeln!(self.md, "| {} |", r.join(" | "));
        }
        let _ = writeln!(self.md);
    }

    pub fn put(&mut self, key: &str, value: impl Serialize) {
        self.json.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(json!(null)),
        );
    }

    /// Draws `series` as `dir/file` (an SVG line plot) and links it, titled, in the report.
    pub fn figure(
        &mut self,
        dir: &std::path::Path,
        file: &str,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[crate::plot::Series],
    ) -> anyhow::Result<()> {
        crate::plot::lines(&dir.join(file), title, x_label, y_label, series)?;
        self.plots.push(file.to_string());
        let _ = writeln!(self.md, "\n![{title}]({file})\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_takes_the_middle_and_pairs_ratios_run_by_run() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(vec![4.0, 1.0]).median, 2.5);
        let r = Stat::ratio(&[2.0, 9.0], &[1.0, 3.0]);
        assert_eq!((r.min, r.max), (2.0, 3.0));
    }

    #[test]
    fn verdict_says_by_how_much_a_target_is_missed() {
        assert!(verdict(0.5, 1.0, true).starts_with("met"));
        assert_eq!(verdict(1.5, 1.0, true), "**missed** by 50 % (target ≤ 1)");
        assert!(verdict(2.0, 1.0, false).starts_with("met (≥"));
    }
}
