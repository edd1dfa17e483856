//! Line charts as hand-written SVG (loss curves, learning rate, per-language validation loss):
//! axes with round tick values, a light grid, a legend and one distinct colour per series.
//!
//! Non-finite points are skipped (the line joins the finite neighbours); a series with a
//! single finite point is drawn as a dot; series without points still get a legend entry;
//! the y range is padded so curves do not touch the frame. The file is written atomically
//! (a temporary file in the same folder, then a rename).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// One named curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend text.
    pub name: String,
    /// `(x, y)` points, drawn in the given order.
    pub points: Vec<(f64, f64)>,
}

/// Distinct colours (Tableau 10), reused in order beyond ten series.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
];

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Escapes text for SVG content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A round step (1, 2 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Round tick values covering `[lo, hi]` (about `target` of them) and the range extended to
/// the outer ticks. `lo < hi`, both finite.
fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64, f64, f64) {
    let step = nice_step((hi - lo) / target.max(1) as f64);
    let start = (lo / step).floor() * step;
    let end = (hi / step).ceil() * step;
    let n = ((end - start) / step).round() as usize;
    let ticks = (0..=n).map(|i| start + i as f64 * step).collect();
    (ticks, start, end, step)
}

/// A tick label with as many decimals as the step needs.
fn label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    let a = v.abs().max(step.abs());
    if !(1e-4..1e6).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// Range of the finite values, widened when empty or flat; `pad` adds a fraction on each side.
fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()).max(1e-300) {
        let d = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 1.0 };
        return (lo - d, hi + d);
    }
    let p = (hi - lo) * pad;
    (lo - p, hi + p)
}

/// The SVG text of a line chart (see the module docs).
pub fn render_svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
        .collect();
    let (x_lo, x_hi) = range(finite.iter().flatten().map(|p| p.0), 0.0);
    let (y_lo, y_hi) = range(finite.iter().flatten().map(|p| p.1), 0.05);
    let (x_ticks, x0, x1, x_step) = ticks(x_lo, x_hi, 8);
    let (y_ticks, y0, y1, y_step) = ticks(y_lo, y_hi, 6);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| TOP + plot_h - (y - y0) / (y1 - y0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and tick labels.
    let _ = writeln!(s, r##"<g stroke="#e0e0e0" stroke-width="1">"##);
    for &t in &x_ticks {
        let x = sx(t);
        let _ = writeln!(s, r#"<line x1="{x:.2}" y1="{TOP:.2}" x2="{x:.2}" y2="{:.2}"/>"#, TOP + plot_h);
    }
    for &t in &y_ticks {
        let y = sy(t);
        let _ = writeln!(s, r#"<line x1="{LEFT:.2}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}"/>"#, LEFT + plot_w);
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r##"<g fill="#333333">"##);
    for &t in &x_ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
            sx(t),
            TOP + plot_h + 18.0,
            escape(&label(t, x_step))
        );
    }
    for &t in &y_ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            sy(t) + 4.0,
            escape(&label(t, y_step))
        );
    }
    let _ = writeln!(s, "</g>");
    // Frame and axis labels.
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT:.2}" y="{TOP:.2}" width="{plot_w:.2}" height="{plot_h:.2}" fill="none" stroke="#333333" stroke-width="1"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" text-anchor="middle" font-size="13">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0,
        escape(x_label)
    );
    let (ylx, yly) = (20.0, TOP + plot_h / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{ylx:.2}" y="{yly:.2}" text-anchor="middle" font-size="13" transform="rotate(-90 {ylx:.2} {yly:.2})">{}</text>"#,
        escape(y_label)
    );
    // Curves.
    for (i, pts) in finite.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        match pts.len() {
            0 => {}
            1 => {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{colour}"/>"#,
                    sx(pts[0].0),
                    sy(pts[0].1)
                );
            }
            _ => {
                let coords: Vec<String> =
                    pts.iter().map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y))).collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" stroke-linejoin="round" points="{}"/>"#,
                    coords.join(" ")
                );
            }
        }
    }
    // Legend.
    let lx = LEFT + plot_w + 15.0;
    for (i, (ser, pts)) in series.iter().zip(&finite).enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let y = TOP + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.2}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="{colour}" stroke-width="3"/>"#,
            lx + 22.0
        );
        let note = if pts.is_empty() { " (no data)" } else { "" };
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}">{}{note}</text>"#,
            lx + 28.0,
            y + 4.0,
            escape(&ser.name)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// Writes a line chart of `series` to `path` as SVG (see the module docs), atomically.
pub fn write_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> std::io::Result<()> {
    let svg = render_svg(title, x_label, y_label, series);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the SVG path has no file name")
    })?;
    let tmp = path.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(svg.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
