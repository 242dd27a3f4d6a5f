//! The dependency graph of a runbook's steps: cycles, upstream/downstream sets, the steps that
//! are ready, and DOT/Mermaid renderings. Pure data: no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone)]
pub(crate) struct Graph {
    /// Step ids in file order, each with what it needs.
    nodes: Vec<(String, Vec<String>)>,
    /// Position of each id in `nodes`.
    index: HashMap<String, usize>,
}

impl Graph {
    pub(crate) fn new(nodes: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        let nodes: Vec<(String, Vec<String>)> = nodes.into_iter().collect();
        let index = nodes.iter().enumerate().map(|(i, (id, _))| (id.clone(), i)).collect();
        Self { nodes, index }
    }

    fn needs(&self, id: &str) -> &[String] {
        self.index.get(id).map(|&i| self.nodes[i].1.as_slice()).unwrap_or(&[])
    }

    /// One cycle, as the path of its members back to the first (`A → B → A`), if any.
    pub(crate) fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        fn visit<'a>(
            graph: &'a Graph,
            id: &'a str,
            marks: &mut BTreeMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match marks.get(id).copied().unwrap_or(Mark::New) {
                Mark::Done => return None,
                Mark::Open => {
                    let start = path.iter().position(|p| *p == id).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(id.to_string());
                    return Some(cycle);
                }
                Mark::New => {}
            }
            marks.insert(id, Mark::Open);
            path.push(id);
            for need in graph.needs(id) {
                if let Some(cycle) = visit(graph, need, marks, path) {
                    return Some(cycle);
                }
            }
            path.pop();
            marks.insert(id, Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        for (id, _) in &self.nodes {
            if let Some(cycle) = visit(self, id, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
        None
    }

    /// Every step that `id` depends on, directly or not.
    pub(crate) fn upstream(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = self.needs(id).iter().map(String::as_str).collect();
        while let Some(next) = stack.pop() {
            if seen.insert(next.to_string()) {
                stack.extend(self.needs(next).iter().map(String::as_str));
            }
        }
        seen
    }

    /// The steps that need `id` directly, in file order.
    pub(crate) fn dependents(&self, id: &str) -> Vec<String> {
        self.nodes.iter().filter(|(_, needs)| needs.iter().any(|n| n == id)).map(|(n, _)| n.clone()).collect()
    }

    /// Every step that depends on `id`, directly or not.
    pub(crate) fn downstream(&self, id: &str) -> BTreeSet<String> {
        self.nodes.iter().filter(|(n, _)| self.upstream(n).contains(id)).map(|(n, _)| n.clone()).collect()
    }

    /// Step ids in waves: every step after what it needs, each wave in file order.
    pub(crate) fn topological(&self) -> Vec<String> {
        self.waves().into_iter().flatten().collect()
    }

    /// The waves themselves: the first holds the steps that need nothing, each next one the
    /// steps whose needs are all in the waves before it (what the web view draws as columns).
    pub(crate) fn waves(&self) -> Vec<Vec<String>> {
        let mut frontier = Frontier::new(self, &BTreeSet::new());
        let mut waves = Vec::new();
        loop {
            let wave = frontier.take_ready();
            if wave.is_empty() {
                return waves;
            }
            for id in &wave {
                frontier.finish(id);
            }
            waves.push(wave);
        }
    }

    /// Every dependency as (what is needed, the step that needs it), in file order.
    pub(crate) fn edges(&self) -> Vec<(String, String)> {
        self.nodes.iter().flat_map(|(id, needs)| needs.iter().map(move |n| (n.clone(), id.clone()))).collect()
    }

    pub(crate) fn to_dot(&self, name: &str, titles: &BTreeMap<String, String>) -> String {
        let mut out = format!("digraph \"{name}\" {{\n  rankdir=LR;\n  node [shape=box];\n");
        for (id, _) in &self.nodes {
            let title = titles.get(id).map(String::as_str).unwrap_or("");
            out.push_str(&format!("  \"{id}\" [label=\"{id}\\n{}\"];\n", title.replace('"', "\\\"")));
        }
        for (id, needs) in &self.nodes {
            for need in needs {
                out.push_str(&format!("  \"{need}\" -> \"{id}\";\n"));
            }
        }
        out.push_str("}\n");
        out
    }

    pub(crate) fn to_mermaid(&self, titles: &BTreeMap<String, String>) -> String {
        let key = |id: &str| id.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let mut out = String::from("graph LR\n");
        for (id, _) in &self.nodes {
            let title = titles.get(id).map(String::as_str).unwrap_or("").replace('"', "'");
            out.push_str(&format!("  {}[\"{id}: {title}\"]\n", key(id)));
        }
        for (id, needs) in &self.nodes {
            for need in needs {
                out.push_str(&format!("  {} --> {}\n", key(need), key(id)));
            }
        }
        out
    }
}

/// The steps that may start, kept up to date as steps finish: a finish costs its dependents,
/// not a scan of the whole graph (the engine asks after every step).
///
/// A step already finished when the frontier is made (applied, satisfied, skipped) is never
/// handed out. It still stands between its needs and its dependents: it passes, without
/// running, once everything it needs has finished, so what depends on it waits for whatever
/// upstream of it runs again (a retried step, or steps not yet run when it was skipped).
pub(crate) struct Frontier<'g> {
    graph: &'g Graph,
    /// Needs not yet finished, by node.
    waiting: Vec<usize>,
    /// Who needs each node.
    dependents: Vec<Vec<usize>>,
    /// Where each node is.
    place: Vec<Place>,
    /// Ready and not yet taken, by file position.
    ready: BTreeSet<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    /// Waiting for its needs; it runs once they have finished.
    Waiting,
    /// Finished (before this frontier was made, or just now): it passes on to its dependents
    /// once its needs have finished.
    Passing,
    /// Ready, or handed out and not yet finished.
    Out,
    Finished,
}

impl<'g> Frontier<'g> {
    /// The frontier of a run in which `finished` are done.
    pub(crate) fn new(graph: &'g Graph, finished: &BTreeSet<String>) -> Self {
        let count = graph.nodes.len();
        let mut dependents = vec![Vec::new(); count];
        let mut waiting = vec![0; count];
        for (i, (_, needs)) in graph.nodes.iter().enumerate() {
            for need in needs {
                if let Some(&n) = graph.index.get(need) {
                    dependents[n].push(i);
                    waiting[i] += 1;
                }
            }
        }
        let place = graph
            .nodes
            .iter()
            .map(|(id, _)| if finished.contains(id) { Place::Passing } else { Place::Waiting })
            .collect();
        let mut frontier = Frontier { graph, waiting, dependents, place, ready: BTreeSet::new() };
        let roots = (0..count).filter(|&i| frontier.waiting[i] == 0).collect();
        frontier.release(roots);
        frontier
    }

    /// The steps ready now, in file order; each is handed out once.
    pub(crate) fn take_ready(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ready).into_iter().map(|i| self.graph.nodes[i].0.clone()).collect()
    }

    /// `id` is done: what waited only for it becomes ready. Only a step handed out counts, and
    /// only once; anything else (an unknown id, a second finish) changes nothing.
    pub(crate) fn finish(&mut self, id: &str) {
        let Some(&n) = self.graph.index.get(id) else { return };
        if self.place[n] == Place::Out && !self.ready.contains(&n) {
            self.place[n] = Place::Passing;
            self.release(vec![n]);
        }
    }

    /// `released` have no need left unfinished: each becomes ready, or, finished already,
    /// passes on to its dependents (a worklist: a long chain that passes is no deep recursion).
    fn release(&mut self, mut released: Vec<usize>) {
        while let Some(n) = released.pop() {
            match self.place[n] {
                Place::Waiting => {
                    self.place[n] = Place::Out;
                    self.ready.insert(n);
                }
                Place::Passing => {
                    self.place[n] = Place::Finished;
                    for &d in &self.dependents[n] {
                        self.waiting[d] = self.waiting[d].saturating_sub(1);
                        if self.waiting[d] == 0 {
                            released.push(d);
                        }
                    }
                }
                Place::Out | Place::Finished => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sprint2() -> Graph {
        let edge = |id: &str, needs: &[&str]| (id.to_string(), needs.iter().map(|s| s.to_string()).collect());
        Graph::new([
            edge("T2.1", &[]),
            edge("T2.2", &["T2.1"]),
            edge("T2.3", &[]),
            edge("T2.4", &["T2.2"]),
            edge("T2.5", &["T2.4", "T2.3"]),
        ])
    }

    #[test]
    fn independent_steps_are_ready_together_and_a_step_once_all_its_needs_finish() {
        let g = sprint2();
        let mut frontier = Frontier::new(&g, &BTreeSet::new());
        assert_eq!(frontier.take_ready(), ["T2.1", "T2.3"]);
        assert!(frontier.take_ready().is_empty(), "handed out once");
        frontier.finish("T2.3");
        assert!(frontier.take_ready().is_empty(), "T2.5 still needs T2.4");
        frontier.finish("T2.1");
        assert_eq!(frontier.take_ready(), ["T2.2"]);
    }

    #[test]
    fn a_resumed_frontier_starts_after_what_is_finished() {
        let g = sprint2();
        let finished = BTreeSet::from(["T2.1".to_string(), "T2.2".to_string(), "T2.3".to_string()]);
        assert_eq!(Frontier::new(&g, &finished).take_ready(), ["T2.4"]);
    }

    /// Sprint 2 in full: T2.7 and T2.8 follow T2.6 in a line.
    fn sprint2_to_t28() -> Graph {
        let mut nodes = sprint2().nodes;
        for (id, need) in [("T2.6", "T2.5"), ("T2.7", "T2.6"), ("T2.8", "T2.7")] {
            nodes.push((id.to_string(), vec![need.to_string()]));
        }
        Graph::new(nodes)
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_step_finished_before_its_upstream_passes_once_its_needs_finish_and_is_never_handed_out() {
        let g = sprint2_to_t28();
        // T2.7 skipped while T2.4 had not run: T2.8 still waits for T2.4, T2.5 and T2.6.
        let mut frontier = Frontier::new(&g, &set(&["T2.1", "T2.2", "T2.3", "T2.7"]));
        let mut order = Vec::new();
        loop {
            let wave = frontier.take_ready();
            if wave.is_empty() {
                break;
            }
            wave.iter().for_each(|id| frontier.finish(id));
            order.extend(wave);
        }
        assert_eq!(order, ["T2.4", "T2.5", "T2.6", "T2.8"]);
        // T2.6 retried on a run where everything else is done: T2.6 alone.
        let mut frontier = Frontier::new(&g, &set(&["T2.1", "T2.2", "T2.3", "T2.4", "T2.5", "T2.7", "T2.8"]));
        assert_eq!(frontier.take_ready(), ["T2.6"]);
        frontier.finish("T2.6");
        assert!(frontier.take_ready().is_empty(), "T2.7 and T2.8 pass without running again");
    }

    #[test]
    fn only_a_step_handed_out_finishes_and_only_once() {
        let g = sprint2_to_t28();
        let mut frontier = Frontier::new(&g, &set(&["T2.1", "T2.2", "T2.3", "T2.4", "T2.5"]));
        frontier.finish("T2.7"); // not handed out: it has not run
        frontier.finish("T9.9"); // not a step
        assert_eq!(frontier.take_ready(), ["T2.6"]);
        frontier.finish("T2.6");
        frontier.finish("T2.6");
        assert_eq!(frontier.take_ready(), ["T2.7"]);
        frontier.finish("T2.6");
        frontier.finish("T2.7");
        frontier.finish("T2.7");
        assert_eq!(frontier.take_ready(), ["T2.8"]);
        frontier.finish("T2.8");
        assert!(frontier.take_ready().is_empty());
    }

    #[test]
    fn upstream_and_downstream_are_transitive() {
        let g = sprint2();
        assert_eq!(g.upstream("T2.5").into_iter().collect::<Vec<_>>(), ["T2.1", "T2.2", "T2.3", "T2.4"]);
        assert_eq!(g.downstream("T2.2").into_iter().collect::<Vec<_>>(), ["T2.4", "T2.5"]);
    }

    #[test]
    fn a_cycle_names_its_members_in_order() {
        let g = Graph::new([
            ("a".to_string(), vec!["c".to_string()]),
            ("b".to_string(), vec!["a".to_string()]),
            ("c".to_string(), vec!["b".to_string()]),
        ]);
        assert_eq!(g.find_cycle().unwrap(), ["a", "c", "b", "a"]);
        assert!(sprint2().find_cycle().is_none());
    }

    #[test]
    fn topological_order_respects_needs() {
        assert_eq!(sprint2().topological(), ["T2.1", "T2.3", "T2.2", "T2.4", "T2.5"]);
    }

    #[test]
    fn dot_and_mermaid_renderings() {
        let titles: BTreeMap<String, String> = [
            ("T2.1", "Create ECR repository"),
            ("T2.2", "Build and push \"Docker\" image"),
            ("T2.3", "Create database on RDS"),
            ("T2.4", "Initialize terraform and apply"),
            ("T2.5", "Seed SSM parameters"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let g = sprint2();
        insta::assert_snapshot!(format!("{}\n{}", g.to_dot("sprint-2", &titles), g.to_mermaid(&titles)));
    }
}
