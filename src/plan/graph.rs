//! The action graph: which action waits for which, and one deterministic execution order.
//!
//! Edges: every fetch a model folder needs -> its install -> its config mirror -> its registry
//! record (the registry is written after the files); a folder removal -> the record's removal;
//! and, so that two models never fight over one folder, whatever vacates a folder (a removal or
//! a move) -> the install that occupies it; every install that links from a loose file -> the
//! deletion of that file. The order is Kahn's algorithm taking, among the
//! ready actions, the smallest id first, so the same input always gives the same list.
//!
//! Edges of this module: pure; only called by the planner.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::Path;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use super::{Action, FileSource, PlannedAction};

/// Builds the dependency graph of `actions` and returns them in execution order.
pub(super) fn order(actions: Vec<Action>) -> Vec<PlannedAction> {
    let ids: Vec<String> = actions.iter().map(Action::id).collect();
    let graph = build(&actions, &ids);
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    // Node weights are indices into `actions`/`ids`; node i holds action i.
    let mut ready: BinaryHeap<Reverse<(&str, usize)>> = (0..ids.len())
        .filter(|&i| indegree[i] == 0)
        .map(|i| Reverse((ids[i].as_str(), i)))
        .collect();
    let mut slots: Vec<Option<Action>> = actions.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(ids.len());
    while let Some(Reverse((id, index))) = ready.pop() {
        let node = NodeIndex::new(index);
        let mut depends_on: Vec<String> = graph
            .neighbors_directed(node, Direction::Incoming)
            .map(|dep| ids[dep.index()].clone())
            .collect();
        depends_on.sort();
        depends_on.dedup();
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse((ids[next.index()].as_str(), next.index())));
            }
        }
        ordered.push(PlannedAction {
            id: id.to_string(),
            depends_on,
            action: slots[index].take().expect("each action is ordered once"),
        });
    }
    assert_eq!(
        ordered.len(),
        ids.len(),
        "the action graph has a cycle (a planner bug)"
    );
    ordered
}

fn build(actions: &[Action], ids: &[String]) -> DiGraph<(), ()> {
    let mut graph = DiGraph::with_capacity(actions.len(), actions.len());
    let mut by_id: HashMap<&str, NodeIndex> = HashMap::with_capacity(actions.len());
    for id in ids {
        let node = graph.add_node(());
        let previous = by_id.insert(id.as_str(), node);
        assert!(
            previous.is_none(),
            "duplicate action id {id} (a planner bug)"
        );
    }
    let node_of = |id: &str| by_id.get(id).copied();
    let mut edges = Vec::new();
    // Folder -> the actions that empty it / fill it.
    let mut vacates: BTreeMap<&Path, Vec<NodeIndex>> = BTreeMap::new();
    let mut occupies: BTreeMap<&Path, Vec<NodeIndex>> = BTreeMap::new();
    // Loose file -> the installs that link from it.
    let mut takes: BTreeMap<&Path, Vec<NodeIndex>> = BTreeMap::new();
    for (index, action) in actions.iter().enumerate() {
        let node = NodeIndex::new(index);
        match action {
            Action::InstallModel {
                install_dir,
                previous_install_dir,
                files,
                ..
            } => {
                for file in files {
                    match &file.source {
                        FileSource::Fetch { action } => {
                            if let Some(fetch) = node_of(action) {
                                edges.push((fetch, node));
                            }
                        }
                        FileSource::Keep { path } => {
                            takes.entry(path).or_default().push(node);
                        }
                    }
                }
                occupies.entry(install_dir).or_default().push(node);
                if let Some(previous) = previous_install_dir {
                    vacates.entry(previous).or_default().push(node);
                }
            }
            Action::MirrorConfig { model, .. } => {
                if let Some(install) = node_of(&format!("install:{model}")) {
                    edges.push((install, node));
                }
            }
            Action::Register { model, .. } => {
                let before = node_of(&format!("mirror-config:{model}"))
                    .or_else(|| node_of(&format!("install:{model}")));
                if let Some(before) = before {
                    edges.push((before, node));
                }
            }
            Action::RemoveModel {
                model, install_dir, ..
            } => {
                if let Some(unregister) = node_of(&format!("unregister:{model}")) {
                    edges.push((node, unregister));
                }
                vacates.entry(install_dir).or_default().push(node);
            }
            Action::Fetch { .. }
            | Action::Unregister { .. }
            | Action::DeleteStray { .. }
            | Action::DeleteMoved { .. } => {}
        }
    }
    for (index, action) in actions.iter().enumerate() {
        if let Action::DeleteMoved { path } = action {
            for &install in takes.get(path.as_path()).into_iter().flatten() {
                edges.push((install, NodeIndex::new(index)));
            }
        }
    }
    for (dir, vacating) in &vacates {
        for &occupant in occupies.get(dir).into_iter().flatten() {
            for &vacate in vacating {
                if vacate != occupant {
                    edges.push((vacate, occupant));
                }
            }
        }
    }
    edges.sort();
    edges.dedup();
    for (from, to) in edges {
        graph.add_edge(from, to, ());
    }
    graph
}
