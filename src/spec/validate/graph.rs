//! Graph algorithms over dependencies, on plain adjacency lists
//! (node -> nodes it depends on) so they can be tested on their own.

use std::collections::BTreeSet;

/// Every distinct cycle (by its set of nodes) as a path that returns to its
/// start, e.g. `[a, b, a]`. Iterative, so a long chain cannot overflow the stack.
pub(super) fn find_cycles(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut mark = vec![Mark::New; graph.len()];
    let mut seen = BTreeSet::new();
    let mut cycles = Vec::new();
    for root in 0..graph.len() {
        if mark[root] != Mark::New {
            continue;
        }
        mark[root] = Mark::Active;
        // (node, index of its next edge to follow)
        let mut stack = vec![(root, 0)];
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            let Some(&to) = graph.get(node).and_then(|edges| edges.get(*next)) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            match mark.get(to).copied() {
                Some(Mark::New) => {
                    mark[to] = Mark::Active;
                    stack.push((to, 0));
                }
                Some(Mark::Active) => {
                    let start = stack.iter().position(|&(n, _)| n == to).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[start..].iter().map(|&(n, _)| n).collect();
                    let mut members = cycle.clone();
                    members.sort_unstable();
                    if seen.insert(members) {
                        cycle.push(to);
                        cycles.push(cycle);
                    }
                }
                _ => {}
            }
        }
    }
    cycles
}

/// Kahn's algorithm over `graph` (node -> nodes it needs first); among the
/// nodes ready at once the lowest index goes first. Nodes left on a cycle
/// (which validation rejects) come last rather than being lost.
pub(super) fn topological_order(graph: &[Vec<usize>]) -> Vec<usize> {
    let mut waiting_on: Vec<usize> = graph.iter().map(Vec::len).collect();
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); graph.len()];
    for (node, needs) in graph.iter().enumerate() {
        for &n in needs {
            if let Some(d) = dependants.get_mut(n) {
                d.push(node);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..graph.len()).filter(|&n| waiting_on[n] == 0).collect();
    let mut order = Vec::with_capacity(graph.len());
    while let Some(node) = ready.pop_first() {
        order.push(node);
        for &d in &dependants[node] {
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                ready.insert(d);
            }
        }
    }
    let placed: BTreeSet<usize> = order.iter().copied().collect();
    order.extend((0..graph.len()).filter(|n| !placed.contains(n)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_cycle_once() {
        // 0 -> 1 -> 2 -> 0, and 3 -> 4 -> 3; 5 depends on the first cycle only.
        let graph = vec![vec![1], vec![2], vec![0], vec![4], vec![3], vec![0]];
        assert_eq!(find_cycles(&graph), vec![vec![0, 1, 2, 0], vec![3, 4, 3]]);
    }

    #[test]
    fn no_cycles_in_a_diamond() {
        let graph = vec![vec![], vec![0], vec![0], vec![1, 2]];
        assert!(find_cycles(&graph).is_empty());
    }

    #[test]
    fn topological_order_breaks_ties_by_index() {
        // 0 needs 3; 1 and 2 need nothing; 3 needs 2.
        let graph = vec![vec![3], vec![], vec![], vec![2]];
        assert_eq!(topological_order(&graph), vec![1, 2, 3, 0]);
    }

    #[test]
    fn nodes_on_a_cycle_are_kept_last() {
        let graph = vec![vec![1], vec![0], vec![]];
        assert_eq!(topological_order(&graph), vec![2, 0, 1]);
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let n = 200_000;
        let graph: Vec<Vec<usize>> = (0..n)
            .map(|i| if i == 0 { vec![n - 1] } else { vec![i - 1] })
            .collect();
        let cycles = find_cycles(&graph);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].len(), n + 1);
    }
}
