//! SVG line charts: well-formed markup, every series named, only finite numbers, non-finite
//! points skipped, edge cases (no points, one point, flat), atomic write.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use polylm_trainer::plot::{render_svg, write_svg, Series};
use proptest::prelude::*;

/// Checks that tags are balanced and well nested (a small XML reader: comments, declarations,
/// self-closing tags, quoted attributes); returns the element names in document order.
fn check_well_formed(svg: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut rest = svg;
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        check_entities(text);
        rest = &rest[open..];
        let close = find_tag_end(rest).unwrap_or_else(|| panic!("unterminated tag in {rest:?}"));
        let tag = &rest[1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().unwrap_or_else(|| panic!("closing </{name}> with nothing open"));
            assert_eq!(top, name.trim(), "mismatched closing tag");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':'));
        check_attributes(&body[name.len()..]);
        if stack.is_empty() {
            roots += 1;
        }
        names.push(name.clone());
        if !self_closing {
            stack.push(name);
        }
    }
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert_eq!(roots, 1, "one root element");
    assert_eq!(names.first().map(String::as_str), Some("svg"));
    names
}

/// The position of the `>` that ends the tag starting at `s[0] == '<'`, skipping quoted values.
fn find_tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '<') => panic!("'<' inside a tag: {s:?}"),
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// `name="value"` pairs only, values without `<` and with valid entities.
fn check_attributes(mut s: &str) {
    loop {
        s = s.trim_start();
        if s.is_empty() {
            return;
        }
        let eq = s.find('=').unwrap_or_else(|| panic!("attribute without value: {s:?}"));
        let name = s[..eq].trim();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':'),
            "{name:?}"
        );
        s = s[eq + 1..].trim_start();
        let q = s.chars().next().unwrap();
        assert!(q == '"' || q == '\'', "unquoted attribute {name}");
        let end = s[1..].find(q).unwrap() + 1;
        let value = &s[1..end];
        assert!(!value.contains('<'));
        check_entities(value);
        s = &s[end + 1..];
    }
}

fn check_entities(s: &str) {
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        rest = &rest[i..];
        let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].iter().any(|e| rest.starts_with(e));
        assert!(ok, "bare '&' in {s:?}");
        rest = &rest[1..];
    }
}

/// Every number in attribute values that hold coordinates, parsed.
fn coordinates(svg: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for attr in ["x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "points", "width", "height"] {
        let pat = format!(" {attr}=\"");
        let mut rest = svg;
        while let Some(i) = rest.find(&pat) {
            rest = &rest[i + pat.len()..];
            let end = rest.find('"').unwrap();
            for n in rest[..end].split([' ', ',']).filter(|s| !s.is_empty()) {
                out.push(n.parse::<f64>().unwrap_or_else(|_| panic!("{attr}: {n:?} is not a number")));
            }
        }
    }
    out
}

fn text_contents(svg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find("<text") {
        rest = &rest[i..];
        let start = rest.find('>').unwrap() + 1;
        let end = rest.find("</text>").unwrap();
        out.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn check(svg: &str, series: &[Series]) {
    let names = check_well_formed(svg);
    for n in coordinates(svg) {
        assert!(n.is_finite() && n.abs() < 1e6, "coordinate {n}");
    }
    let texts: Vec<String> = text_contents(svg).iter().map(|t| unescape(t)).collect();
    for s in series {
        assert!(
            texts.iter().any(|t| t.starts_with(&s.name.replace(|c: char| c.is_control(), " "))),
            "legend lacks {:?}",
            s.name
        );
    }
    // One curve element per series with at least one finite point.
    let drawn =
        series.iter().filter(|s| s.points.iter().any(|(x, y)| x.is_finite() && y.is_finite())).count();
    let curves = names.iter().filter(|n| *n == "polyline" || *n == "circle").count();
    assert_eq!(curves, drawn);
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => -1e5f64..1e5,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_charts_are_well_formed(
        series in prop::collection::vec(
            ("[a-zA-Z0-9 <>&\"'é_-]{0,12}", prop::collection::vec((value(), value()), 0..40)),
            0..12,
        ),
        title in "[a-z<>& ]{0,20}",
    ) {
        let series: Vec<Series> = series.into_iter().map(|(name, points)| Series { name, points }).collect();
        let svg = render_svg(&title, "step", "loss <nats>", &series);
        check(&svg, &series);
        let escaped = title.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let wanted = format!(">{escaped}</text>");
        prop_assert!(svg.contains(&wanted), "title missing");
    }
}

#[test]
fn polyline_points_skip_non_finite_values_and_keep_order() {
    let s = Series {
        name: "train".into(),
        points: vec![(0.0, 5.0), (1.0, f64::NAN), (2.0, 4.0), (f64::INFINITY, 1.0), (3.0, 3.5), (4.0, 3.0)],
    };
    let svg = render_svg("loss", "step", "loss", std::slice::from_ref(&s));
    check(&svg, std::slice::from_ref(&s));
    let i = svg.find("<polyline").unwrap();
    let pts_start = svg[i..].find("points=\"").unwrap() + i + 8;
    let pts_end = svg[pts_start..].find('"').unwrap() + pts_start;
    let pts: Vec<(f64, f64)> = svg[pts_start..pts_end]
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(pts.len(), 4);
    // x increases, y (screen, downwards) increases as loss falls.
    assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "{pts:?}");
}

#[test]
fn edge_cases() {
    let cases: Vec<Vec<Series>> = vec![
        vec![],
        vec![Series { name: "empty".into(), points: vec![] }],
        vec![Series { name: "nan only".into(), points: vec![(f64::NAN, 1.0), (1.0, f64::NAN)] }],
        vec![Series { name: "one".into(), points: vec![(3.0, 2.5)] }],
        vec![Series { name: "flat".into(), points: vec![(0.0, 7.0), (10.0, 7.0)] }],
        vec![Series { name: "zero".into(), points: vec![(5.0, 0.0), (5.0, 0.0)] }],
        vec![Series { name: "tiny".into(), points: vec![(0.0, 1e-9), (1.0, 2e-9)] }],
        vec![Series { name: "huge".into(), points: vec![(0.0, 1e12), (1e9, 3e12)] }],
        (0..15)
            .map(|i| Series { name: format!("lang{i}"), points: vec![(0.0, i as f64), (1.0, 1.0)] })
            .collect(),
    ];
    for series in cases {
        let svg = render_svg("t", "x", "y", &series);
        check(&svg, &series);
    }
    let svg = render_svg("t", "x", "y", &[Series { name: "one".into(), points: vec![(3.0, 2.5)] }]);
    assert!(svg.contains("<circle"));
    let svg = render_svg("t", "x", "y", &[Series { name: "empty".into(), points: vec![] }]);
    assert!(svg.contains("(no data)"));
}

#[test]
fn series_get_distinct_colours() {
    let series: Vec<Series> =
        (0..6).map(|i| Series { name: format!("s{i}"), points: vec![(0.0, i as f64), (1.0, 0.0)] }).collect();
    let svg = render_svg("t", "x", "y", &series);
    let mut colours: Vec<&str> = svg
        .match_indices("<polyline")
        .map(|(i, _)| {
            let s = &svg[i..];
            let a = s.find("stroke=\"").unwrap() + 8;
            &s[a..a + s[a..].find('"').unwrap()]
        })
        .collect();
    assert_eq!(colours.len(), 6);
    colours.sort_unstable();
    colours.dedup();
    assert_eq!(colours.len(), 6);
}

#[test]
fn y_axis_is_padded_and_ticks_are_round() {
    let s = vec![Series { name: "loss".into(), points: vec![(0.0, 2.0), (100.0, 3.0)] }];
    let svg = render_svg("t", "x", "y", &s);
    let labels: Vec<f64> = text_contents(&svg).iter().filter_map(|t| t.parse::<f64>().ok()).collect();
    // The y labels include values below 2 and above 3 (padding), all multiples of the step.
    assert!(labels.iter().any(|&v| v < 2.0) && labels.iter().any(|&v| v > 3.0), "{labels:?}");
    assert!(labels.contains(&100.0) && labels.contains(&0.0), "{labels:?}");
    for v in &labels {
        let steps = v / 0.2;
        let on_grid = (steps - steps.round()).abs() < 1e-9 || (v / 10.0 - (v / 10.0).round()).abs() < 1e-9;
        assert!(on_grid, "tick {v} is not round");
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn writes_atomically() {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = TempDir(std::env::temp_dir().join(format!(
        "polylm-plot-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("loss.svg");
    std::fs::write(&path, "old").unwrap();
    let s = vec![Series { name: "train".into(), points: vec![(0.0, 1.0), (1.0, 0.5)] }];
    write_svg(&path, "loss", "step", "nats", &s).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, render_svg("loss", "step", "nats", &s));
    let entries: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert_eq!(entries.len(), 1, "temporary file left behind");
    assert!(write_svg(&dir.0.join("missing").join("x.svg"), "t", "x", "y", &s).is_err());
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
}
