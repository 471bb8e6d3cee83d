//! The action graph: which action waits for which, and one deterministic execution order.
//!
//! Edges: every fetch a model folder needs -> its install -> its config mirror -> its registry
//! record (the registry is written after the files); a folder removal -> the record's removal;
//! and, so that two models never fight over one folder, whatever vacates a folder (a removal or
//! a move) -> the install that occupies it. The order is Kahn's algorithm taking, among the
//! ready actions, the smallest id first, so the same input always gives the same list.
//!
//! Edges of this module: pure; only called by the planner.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use super::{Action, FileSource, PlannedAction};

/// Builds the dependency graph of `actions` and returns them in execution order.
pub(super) fn order(actions: Vec<Action>) -> Vec<PlannedAction> {
    let graph = build(actions);
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<(String, NodeIndex)>> = graph
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(|n| Reverse((graph[n].id(), n)))
        .collect();
    let mut ordered = Vec::with_capacity(graph.node_count());
    while let Some(Reverse((id, node))) = ready.pop() {
        let mut depends_on: Vec<String> = graph
            .neighbors_directed(node, Direction::Incoming)
            .map(|dep| graph[dep].id())
            .collect();
        depends_on.sort();
        depends_on.dedup();
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse((graph[next].id(), next)));
            }
        }
        ordered.push(PlannedAction {
            id,
            depends_on,
            action: graph[node].clone(),
        });
    }
    assert_eq!(
        ordered.len(),
        graph.node_count(),
        "the action graph has a cycle (a planner bug)"
    );
    ordered
}

fn build(actions: Vec<Action>) -> DiGraph<Action, ()> {
    let mut graph = DiGraph::new();
    let mut by_id: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for action in actions {
        let id = action.id();
        let node = graph.add_node(action);
        let previous = by_id.insert(id.clone(), node);
        assert!(
            previous.is_none(),
            "duplicate action id {id} (a planner bug)"
        );
    }
    let node_of = |id: String| by_id.get(&id).copied();
    let mut edges = Vec::new();
    // Folder -> the actions that empty it / fill it.
    let mut vacates: BTreeMap<PathBuf, Vec<NodeIndex>> = BTreeMap::new();
    let mut occupies: BTreeMap<PathBuf, Vec<NodeIndex>> = BTreeMap::new();
    for node in graph.node_indices() {
        match &graph[node] {
            Action::InstallModel {
                install_dir,
                previous_install_dir,
                files,
                ..
            } => {
                for file in files {
                    if let FileSource::Fetch { action } = &file.source
                        && let Some(fetch) = node_of(action.clone())
                    {
                        edges.push((fetch, node));
                    }
                }
                occupies.entry(install_dir.clone()).or_default().push(node);
                if let Some(previous) = previous_install_dir {
                    vacates.entry(previous.clone()).or_default().push(node);
                }
            }
            Action::MirrorConfig { model, .. } => {
                if let Some(install) = node_of(format!("install:{model}")) {
                    edges.push((install, node));
                }
            }
            Action::Register { model, .. } => {
                let before = node_of(format!("mirror-config:{model}"))
                    .or_else(|| node_of(format!("install:{model}")));
                if let Some(before) = before {
                    edges.push((before, node));
                }
            }
            Action::RemoveModel {
                model, install_dir, ..
            } => {
                if let Some(unregister) = node_of(format!("unregister:{model}")) {
                    edges.push((node, unregister));
                }
                vacates.entry(install_dir.clone()).or_default().push(node);
            }
            Action::Fetch { .. } | Action::Unregister { .. } | Action::DeleteStray { .. } => {}
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
