//! A run's dependency graph drawn as SVG on the server: one column per topological wave, a
//! box per step coloured by its state (classes the stylesheet colours: no inline style), a
//! line per dependency. Pure: it is given the waves, the edges and the states.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::pages::escape;
use crate::event::StepState;

const WIDTH: i64 = 150;
const HEIGHT: i64 = 44;
const GAP_X: i64 = 50;
const GAP_Y: i64 = 14;
const MARGIN: i64 = 10;

/// The graph: `waves` of step ids, `edges` as (needed, needing), each step's state and title.
pub(crate) fn draw(
    waves: &[Vec<String>],
    edges: &[(String, String)],
    states: &BTreeMap<String, StepState>,
    titles: &BTreeMap<String, String>,
) -> String {
    let mut at = BTreeMap::new();
    for (column, wave) in waves.iter().enumerate() {
        for (row, id) in wave.iter().enumerate() {
            at.insert(id.as_str(), (MARGIN + column as i64 * (WIDTH + GAP_X), MARGIN + row as i64 * (HEIGHT + GAP_Y)));
        }
    }
    let rows = waves.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let width = 2 * MARGIN + waves.len() as i64 * (WIDTH + GAP_X) - GAP_X.min(waves.len() as i64 * GAP_X);
    let height = 2 * MARGIN + rows * (HEIGHT + GAP_Y) - GAP_Y.min(rows * GAP_Y);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"graph\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"dependency graph\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 8 8\" refX=\"8\" refY=\"4\" markerWidth=\"8\" markerHeight=\"8\" \
         orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\"/></marker></defs>"
    );
    for (need, id) in edges {
        if let (Some((x1, y1)), Some((x2, y2))) = (at.get(need.as_str()), at.get(id.as_str())) {
            let _ = write!(
                out,
                "<line class=\"edge\" x1=\"{}\" y1=\"{}\" x2=\"{x2}\" y2=\"{}\" marker-end=\"url(#arrow)\"/>",
                x1 + WIDTH,
                y1 + HEIGHT / 2,
                y2 + HEIGHT / 2
            );
        }
    }
    for wave in waves {
        for id in wave {
            let (x, y) = at[id.as_str()];
            let state = states.get(id).map(|s| s.as_str()).unwrap_or("unknown");
            let title = titles.get(id).map(String::as_str).unwrap_or("");
            let step = escape(id);
            let _ = write!(
                out,
                "<g class=\"node s-{state}\" data-step=\"{step}\"><title>{step} {}: {state}</title>\
                 <rect x=\"{x}\" y=\"{y}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" rx=\"4\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text><text class=\"state\" x=\"{}\" y=\"{}\">{state}</text></g>",
                escape(title),
                x + 8,
                y + 18,
                escape(&shortened(id, 20)),
                x + 8,
                y + 36,
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// At most `max` characters, an ellipsis in place of the rest.
fn shortened(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;

    fn strings(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn steps_are_boxes_in_their_wave_coloured_by_state_with_a_line_per_need() {
        let graph = Graph::new([
            ("T2.1".to_string(), vec![]),
            ("T2.3".to_string(), vec![]),
            ("T2.2".to_string(), strings(&["T2.1"])),
            ("T2.5".to_string(), strings(&["T2.2", "T2.3"])),
        ]);
        let waves = graph.waves();
        assert_eq!(waves, vec![strings(&["T2.1", "T2.3"]), strings(&["T2.2"]), strings(&["T2.5"])]);
        let states = BTreeMap::from([
            ("T2.1".to_string(), StepState::Applied),
            ("T2.2".to_string(), StepState::Failed),
            ("T2.3".to_string(), StepState::Satisfied),
        ]);
        let svg = draw(&waves, &graph.edges(), &states, &BTreeMap::new());
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<rect ").count(), 4);
        assert_eq!(svg.matches("class=\"edge\"").count(), 3);
        assert!(svg.contains("class=\"node s-applied\"") && svg.contains("class=\"node s-failed\""));
        assert!(svg.contains("class=\"node s-unknown\""), "a step with no recorded state: {svg}");
        // Second wave, first row; the third wave's step is to its right.
        assert!(svg.contains("<rect x=\"210\" y=\"10\""), "{svg}");
        assert!(svg.contains("<rect x=\"410\" y=\"10\""), "{svg}");
        assert!(svg.contains("<rect x=\"10\" y=\"68\""), "T2.3 under T2.1: {svg}");
        assert!(svg.contains("width=\"570\" height=\"122\""), "{svg}");
        assert!(!svg.contains("style="), "no inline style (the CSP forbids it)");
    }

    #[test]
    fn hostile_ids_and_titles_are_escaped() {
        let waves = vec![strings(&["<script>alert(1)</script>"])];
        let titles = BTreeMap::from([("<script>alert(1)</script>".to_string(), "a \"title\" & \u{1b}[2J".to_string())]);
        let svg = draw(&waves, &[], &BTreeMap::new(), &titles);
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("&lt;script&gt;") && svg.contains("&quot;title&quot; &amp; \\u{1b}[2J"), "{svg}");
    }

    #[test]
    fn an_empty_graph_is_an_empty_picture() {
        let svg = draw(&[], &[], &BTreeMap::new(), &BTreeMap::new());
        assert!(svg.contains("width=\"20\" height=\"20\""), "{svg}");
    }
}
