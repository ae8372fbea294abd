//! SVG line plots (plotters), one call per figure of the report.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One line of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Which system a series belongs to, from its label: the same system looks the same in every
/// plot (sluice blue, Litestream orange, floors and references grey).
fn family(label: &str) -> usize {
    if label.starts_with("sluice") {
        0
    } else if label.starts_with("Litestream") {
        1
    } else {
        2
    }
}

/// The `nth` series of a family: three clearly different shades, then round again.
fn colour(family: usize, nth: usize) -> RGBColor {
    const SHADES: [[RGBColor; 3]; 3] = [
        [
            RGBColor(20, 60, 150),
            RGBColor(60, 130, 220),
            RGBColor(120, 190, 250),
        ],
        [
            RGBColor(200, 80, 0),
            RGBColor(245, 150, 40),
            RGBColor(250, 200, 110),
        ],
        [
            RGBColor(40, 40, 40),
            RGBColor(110, 110, 110),
            RGBColor(170, 170, 170),
        ],
    ];
    SHADES[family.min(2)][nth % 3]
}

/// Lines with a point at every measurement; the axes fit the data (from 0).
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let err = |e: String| anyhow!("cannot draw {}: {e}", path.display());
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points.clone().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9) * 1.05;
    let y_max = points.map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let mut seen = [0usize; 3];
    for s in series {
        let f = family(&s.label);
        let c = colour(f, seen[f]);
        seen[f] += 1;
        // References (floors) are drawn thinner: they are not systems.
        let style = if f == 2 {
            c.stroke_width(1)
        } else {
            c.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(|e| err(e.to_string()))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
        if s.points.len() <= 64 {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The empirical CDF of `values` as a series: (value, fraction at or below it).
pub fn cdf(label: String, values: &[f64]) -> Series {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    // At most ~200 points: a CDF of 60,000 lags draws the same line.
    let step = (v.len() / 200).max(1);
    let mut points: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == v.len())
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect();
    points.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    Series { label, points }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_ends_at_one_and_rises() {
        let s = cdf("x".into(), &[3.0, 1.0, 2.0, 2.0]);
        assert_eq!(s.points.last(), Some(&(3.0, 1.0)));
        assert!(
            s.points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
    }

    #[test]
    fn lines_writes_an_svg_with_every_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.svg");
        let series = [
            Series {
                label: "sluice".into(),
                points: vec![(0.0, 1.0), (50.0, 2.0)],
            },
            Series {
                label: "Litestream".into(),
                points: vec![(0.0, 2.0), (50.0, 9.0)],
            },
        ];
        lines(&path, "t", "x", "y", &series).expect("draw");
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        // Each label is a text element's content, on a line of its own.
        for label in ["sluice", "Litestream"] {
            assert!(svg.lines().any(|l| l.trim() == label), "no label {label}");
        }
        // Each system's line in its own colour: sluice's first blue, Litestream's first orange.
        for colour in ["#143C96", "#C85000"] {
            assert!(svg.to_uppercase().contains(colour), "no line in {colour}");
        }
    }
}
