//! A minimum s-t cut by maximum flow (Dinic's algorithm), for choosing which forward values to
//! keep for the backward pass (`rematerialize.rs`). Vertices are dense indices; capacities are
//! bytes, with [`INFINITE`] for edges that must never be cut.

use std::collections::VecDeque;

/// A capacity no cut pays: larger than any sum of tensor sizes (2^48 elements of 4 bytes each,
/// times the node count), yet far from overflow when added up along a path.
pub(crate) const INFINITE: u64 = 1 << 62;

struct Edge {
    to: usize,
    capacity: u64,
}

/// A flow network: edge `2k` and its reverse (residual) edge `2k + 1`.
pub(crate) struct FlowNetwork {
    edges: Vec<Edge>,
    outgoing: Vec<Vec<usize>>,
}

impl FlowNetwork {
    pub fn new(vertex_count: usize) -> FlowNetwork {
        FlowNetwork {
            edges: Vec::new(),
            outgoing: vec![Vec::new(); vertex_count],
        }
    }

    pub fn add_edge(&mut self, from: usize, to: usize, capacity: u64) {
        self.outgoing[from].push(self.edges.len());
        self.edges.push(Edge { to, capacity });
        self.outgoing[to].push(self.edges.len());
        self.edges.push(Edge {
            to: from,
            capacity: 0,
        });
    }

    /// Pushes a maximum flow from `source` to `sink` (leaving residual capacities) and returns
    /// the vertices that can still reach `sink` in the residual network: the sink side of the
    /// minimum cut closest to the sink. Of all minimum cuts that one keeps the values latest in
    /// the graph, so it recomputes the fewest nodes.
    pub fn sink_side_of_min_cut(&mut self, source: usize, sink: usize) -> Vec<bool> {
        while let Some(levels) = self.levels(source, sink) {
            let mut next_edge = vec![0; self.outgoing.len()];
            while self.augment(source, sink, INFINITE, &levels, &mut next_edge) > 0 {}
        }
        self.reaching(sink)
    }

    /// Breadth-first distances from `source` over edges with residual capacity, or `None`
    /// once `sink` is unreachable (the flow is maximum).
    fn levels(&self, source: usize, sink: usize) -> Option<Vec<usize>> {
        let mut levels = vec![usize::MAX; self.outgoing.len()];
        levels[source] = 0;
        let mut queue = VecDeque::from([source]);
        while let Some(vertex) = queue.pop_front() {
            for &edge in &self.outgoing[vertex] {
                let Edge { to, capacity } = self.edges[edge];
                if capacity > 0 && levels[to] == usize::MAX {
                    levels[to] = levels[vertex] + 1;
                    queue.push_back(to);
                }
            }
        }
        (levels[sink] != usize::MAX).then_some(levels)
    }

    /// One blocking-flow augmenting path along increasing levels; iterative, so that deep
    /// graphs (a thousand layers) do not overflow the stack.
    fn augment(
        &mut self,
        source: usize,
        sink: usize,
        limit: u64,
        levels: &[usize],
        next_edge: &mut [usize],
    ) -> u64 {
        let mut path: Vec<usize> = Vec::new();
        let mut vertex = source;
        loop {
            if vertex == sink {
                let pushed = path
                    .iter()
                    .map(|edge| self.edges[*edge].capacity)
                    .fold(limit, u64::min);
                for edge in &path {
                    self.edges[*edge].capacity -= pushed;
                    self.edges[*edge ^ 1].capacity += pushed;
                }
                return pushed;
            }
            let mut advanced = false;
            while next_edge[vertex] < self.outgoing[vertex].len() {
                let edge = self.outgoing[vertex][next_edge[vertex]];
                let Edge { to, capacity } = self.edges[edge];
                if capacity > 0 && levels[to] == levels[vertex] + 1 {
                    path.push(edge);
                    vertex = to;
                    advanced = true;
                    break;
                }
                next_edge[vertex] += 1;
            }
            if advanced {
                continue;
            }
            // A dead end: never try it again in this phase, and step back.
            let Some(edge) = path.pop() else {
                return 0;
            };
            vertex = self.edges[edge ^ 1].to;
            next_edge[vertex] += 1;
        }
    }

    /// The vertices from which `target` is reachable over edges with residual capacity.
    fn reaching(&self, target: usize) -> Vec<bool> {
        let mut reached = vec![false; self.outgoing.len()];
        reached[target] = true;
        let mut queue = VecDeque::from([target]);
        while let Some(vertex) = queue.pop_front() {
            // An edge u -> vertex with residual capacity appears in vertex's list as the
            // reverse of that edge.
            for &edge in &self.outgoing[vertex] {
                let from = self.edges[edge].to;
                if self.edges[edge ^ 1].capacity > 0 && !reached[from] {
                    reached[from] = true;
                    queue.push_back(from);
                }
            }
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_the_cheapest_edges_closest_to_the_sink() {
        // 0 -> 1 -> 2 -> 3 with capacities 5, 2, 2: two minimum cuts of 2; the one closest to
        // the sink cuts 2 -> 3.
        let mut network = FlowNetwork::new(4);
        network.add_edge(0, 1, 5);
        network.add_edge(1, 2, 2);
        network.add_edge(2, 3, 2);
        let sink_side = network.sink_side_of_min_cut(0, 3);
        assert_eq!(sink_side, vec![false, false, false, true]);
    }

    #[test]
    fn parallel_paths_add_up() {
        // Two paths of bottleneck 3 and 4 from 0 to 3: the cut is 7, at both bottlenecks.
        let mut network = FlowNetwork::new(4);
        network.add_edge(0, 1, 3);
        network.add_edge(1, 3, INFINITE);
        network.add_edge(0, 2, 9);
        network.add_edge(2, 3, 4);
        let sink_side = network.sink_side_of_min_cut(0, 3);
        assert_eq!(sink_side, vec![false, true, false, true]);
    }
}
