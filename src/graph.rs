//! The dependency graph of a runbook's steps: cycles, upstream/downstream sets, the steps that
//! are ready, and DOT/Mermaid renderings. Pure data: no I/O.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub(crate) struct Graph {
    /// Step ids in file order, each with what it needs.
    nodes: Vec<(String, Vec<String>)>,
}

impl Graph {
    pub(crate) fn new(nodes: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        Self { nodes: nodes.into_iter().collect() }
    }

    fn needs(&self, id: &str) -> &[String] {
        self.nodes.iter().find(|(n, _)| n == id).map(|(_, needs)| needs.as_slice()).unwrap_or(&[])
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

    /// Every step that depends on `id`, directly or not.
    pub(crate) fn downstream(&self, id: &str) -> BTreeSet<String> {
        self.nodes.iter().filter(|(n, _)| self.upstream(n).contains(id)).map(|(n, _)| n.clone()).collect()
    }

    /// Steps not in `finished` and not in `excluded` whose needs are all in `finished`,
    /// in file order.
    pub(crate) fn ready(&self, finished: &BTreeSet<String>, excluded: &BTreeSet<String>) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(id, needs)| {
                !finished.contains(id) && !excluded.contains(id) && needs.iter().all(|n| finished.contains(n))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Step ids in an order where every step comes after what it needs.
    pub(crate) fn topological(&self) -> Vec<String> {
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        loop {
            let ready = self.ready(&done, &BTreeSet::new());
            if ready.is_empty() {
                return order;
            }
            for id in ready {
                done.insert(id.clone());
                order.push(id);
            }
        }
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
    fn independent_steps_are_ready_together() {
        assert_eq!(sprint2().ready(&BTreeSet::new(), &BTreeSet::new()), ["T2.1", "T2.3"]);
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
}
