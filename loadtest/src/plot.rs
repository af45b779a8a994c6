//! SVG plot of a report's per-second series: acked (and offered) spans/s on top, latency
//! percentiles of the requests acked in each second below (log scale).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::Report;

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Err<'a> = &'a dyn Fn(&dyn std::fmt::Display) -> anyhow::Error;

pub fn write_svg(r: &Report, path: &Path) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(350);
    throughput(&top, r, &e)?;
    latency(&bottom, r, &e)?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Acked (and offered) spans per second.
fn throughput(top: &Area<'_>, r: &Report, e: Err<'_>) -> Result<()> {
    let s = &r.series;
    let t_max = s.last().map_or(1, |p| p.t).max(1) as f64;
    let tp_max = s
        .iter()
        .map(|p| p.acked_spans.max(p.offered_spans))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    let mut c = ChartBuilder::on(top)
        .caption(
            format!(
                "loadtest {}: {} spans/s acked ({} {}, {} spans/request)",
                r.run_id,
                r.acked_spans_per_sec.round(),
                r.config["protocol"].as_str().unwrap_or("?"),
                r.config["compression"].as_str().unwrap_or("?"),
                r.spans_per_request
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, 0f64..tp_max)
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc("spans/s")
        .draw()
        .map_err(|x| e(&x))?;
    c.draw_series(LineSeries::new(
        s.iter().map(|p| (p.t as f64, p.acked_spans as f64)),
        &BLUE,
    ))
    .map_err(|x| e(&x))?
    .label("acked spans/s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if r.offered_spans_per_sec.is_some() {
        c.draw_series(LineSeries::new(
            s.iter().map(|p| (p.t as f64, p.offered_spans as f64)),
            &BLACK.mix(0.5),
        ))
        .map_err(|x| e(&x))?
        .label("offered spans/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// Latency percentiles of the requests acked in each second (log scale).
fn latency(bottom: &Area<'_>, r: &Report, e: Err<'_>) -> Result<()> {
    let s = &r.series;
    let t_max = s.last().map_or(1, |p| p.t).max(1) as f64;
    let lat_max = s.iter().map(|p| p.latency.max_ms).fold(1.0f64, f64::max) * 1.5;
    let mut c = ChartBuilder::on(bottom)
        .caption(
            format!(
                "latency of acked requests (run: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms)",
                r.latency.p50_ms, r.latency.p99_ms, r.latency.p999_ms
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, (0.01f64..lat_max).log_scale())
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|x| e(&x))?;
    type Pick = fn(&crate::stats::Percentiles) -> f64;
    let lines: [(&str, RGBColor, Pick); 4] = [
        ("p50", GREEN, |p| p.p50_ms),
        ("p90", BLUE, |p| p.p90_ms),
        ("p99", MAGENTA, |p| p.p99_ms),
        ("max", RED, |p| p.max_ms),
    ];
    for (name, color, f) in lines {
        c.draw_series(LineSeries::new(
            s.iter()
                .filter(|p| p.latency.count > 0)
                .map(|p| (p.t as f64, f(&p.latency).max(0.01))),
            &color,
        ))
        .map_err(|x| e(&x))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}
