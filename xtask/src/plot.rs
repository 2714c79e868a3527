//! The benchmark's picture: p99 latency against delivered messages per second, one line per system (plotters, SVG).

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x3b, 0x4c, 0xca),
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0x1b, 0x9e, 0x77),
    RGBColor(0x66, 0x66, 0x66),
];

/// Draws every system's ramp (scenario 1) from `results` into an SVG at `out`.
pub fn p99_against_rate(results: &Value, out: &Path) -> anyhow::Result<()> {
    let systems = results["systems"].as_object().cloned().unwrap_or_default();
    let lines: Vec<(String, Vec<(f64, f64)>)> = systems
        .iter()
        .map(|(name, r)| {
            let points = r["ramp"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            (
                                p["deliveries_per_sec"].as_f64().unwrap_or(0.0) / 1000.0,
                                p["p99_ms"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (name.clone(), points)
        })
        .collect();
    let max_x = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(10.0, f64::max);
    let root = SVGBackend::new(out, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Fan-out: one room of members, p99 send → delivery",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x * 1.05, (1.0f64..2000.0f64).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("delivered, thousands of messages per second")
        .y_desc("p99 latency, ms (log)")
        .draw()?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let clamped: Vec<(f64, f64)> = points
            .iter()
            .map(|(x, y)| (*x, y.clamp(1.0, 2000.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(clamped.clone(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(clamped.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Draws the storm's timeline: clients joined and clients down over time, `try_again` answers per second, and a
/// marker at each event (kill, drain).
pub fn storm_timeline(
    series: &[crate::bench::StormStatus],
    events: &[(f64, &str)],
    out: &Path,
) -> anyhow::Result<()> {
    let max_t = series.last().map_or(1.0, |s| s.t);
    let max_y = series.iter().map(|s| s.joined).max().unwrap_or(1).max(1);
    #[allow(clippy::cast_precision_loss)]
    let max_y = max_y as f64 * 1.1;
    let root = SVGBackend::new(out, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Reconnect storm: 3 replicas, one killed, then one drained",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_t, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("clients (try_again: answers per second)")
        .draw()?;
    #[allow(clippy::cast_precision_loss)]
    let lines: [(&str, Vec<(f64, f64)>); 3] = [
        (
            "joined",
            series.iter().map(|s| (s.t, s.joined as f64)).collect(),
        ),
        (
            "reconnecting",
            series.iter().map(|s| (s.t, s.down as f64)).collect(),
        ),
        (
            "try_again per second",
            series
                .windows(2)
                .map(|w| {
                    let dt = (w[1].t - w[0].t).max(0.1);
                    (w[1].t, (w[1].try_again - w[0].try_again) as f64 / dt)
                })
                .collect(),
        ),
    ];
    for (i, (name, points)) in lines.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    for (t, what) in events {
        chart.draw_series(LineSeries::new(
            vec![(*t, 0.0), (*t, max_y)],
            COLORS[3].stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            (*what).to_owned(),
            (*t + max_t * 0.005, max_y * 0.95),
            ("sans-serif", 14),
        )))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::MiddleRight)
        .draw()?;
    root.present()?;
    Ok(())
}
