//! Rows grouped by instance path into a tree: `layer1` holds `layer1.0`, which holds
//! `layer1.0.conv1`. The table's block subtotals and `--depth`, and the DOT clusters, use it.

use std::collections::HashMap;

use crate::ir::InstancePath;

use super::LayerRow;

#[derive(Debug)]
pub struct PathTree {
    pub path: InstancePath,
    /// Indices of rows whose path is exactly `path`.
    pub rows: Vec<usize>,
    /// Sub-paths, in order of first appearance.
    pub children: Vec<PathTree>,
}

impl PathTree {
    pub fn build(rows: &[LayerRow]) -> PathTree {
        let mut root = PathTree {
            path: InstancePath::default(),
            rows: vec![],
            children: vec![],
        };
        // Each path's position among its parent's children, so that a network with many layers
        // at one level is grouped in linear time.
        let mut positions: HashMap<InstancePath, usize> = HashMap::new();
        for (index, row) in rows.iter().enumerate() {
            let mut node = &mut root;
            for depth in 1..=row.path.depth() {
                let prefix = row.path.prefix(depth);
                let position = match positions.get(&prefix) {
                    Some(position) => *position,
                    None => {
                        positions.insert(prefix.clone(), node.children.len());
                        node.children.push(PathTree {
                            path: prefix,
                            rows: vec![],
                            children: vec![],
                        });
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[position];
            }
            node.rows.push(index);
        }
        root
    }

    /// Every row index in this subtree.
    pub fn all_rows(&self) -> Vec<usize> {
        let mut rows = self.rows.clone();
        for child in &self.children {
            rows.extend(child.all_rows());
        }
        rows.sort_unstable();
        rows
    }

    pub fn is_group(&self) -> bool {
        !self.children.is_empty()
    }
}
