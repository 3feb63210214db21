//! What a restore will write, found and checked before anything is
//! written: the selected subtrees, every name in them, whether their data
//! is on the warm tier, and how many bytes it comes to.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::reader::RepositoryReader;
use crate::restore_point::RestorePoint;
use crate::tree::{validate_name, Extent, Node, NodeKind};

/// One selected subtree: where it sits and its node (`None`: the root).
pub(super) struct Selected {
    pub(super) ancestors: Vec<Node>,
    pub(super) node: Option<Node>,
}

pub(super) fn select(
    repo: &dyn RepositoryReader,
    rp: &RestorePoint,
    paths: &[String],
) -> Result<Vec<Selected>> {
    if paths.is_empty() || paths.iter().any(|p| p.trim_matches('/').is_empty()) {
        return Ok(vec![Selected {
            ancestors: Vec::new(),
            node: None,
        }]);
    }
    let mut out = Vec::new();
    for path in paths {
        let components: Vec<Vec<u8>> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let mut ancestors = Vec::new();
        let mut prefix = String::new();
        for part in &components[..components.len() - 1] {
            prefix.push('/');
            prefix.push_str(&String::from_utf8_lossy(part));
            ancestors.push(
                repo.lookup_path(rp, &prefix)?
                    .expect("non-root path has a node"),
            );
        }
        let node = repo.lookup_path(rp, path)?;
        out.push(Selected { ancestors, node });
    }
    Ok(out)
}

fn file_data_bytes(node: &Node) -> Result<u64> {
    let NodeKind::File { extents } = &node.kind else {
        return Ok(0);
    };
    let total: u64 = extents.iter().map(Extent::len).sum();
    if total != node.size {
        return Err(Error::corrupt(
            format!("file {:?}", String::from_utf8_lossy(&node.name)),
            format!("extents cover {total} bytes but the size is {}", node.size),
        ));
    }
    Ok(extents
        .iter()
        .filter(|e| matches!(e, Extent::Data { .. }))
        .map(Extent::len)
        .sum())
}

/// Data bytes below a tree, validating every name on the way.
pub(super) fn measure_tree(
    repo: &dyn RepositoryReader,
    rp: &RestorePoint,
    id: &ChunkId,
) -> Result<u64> {
    let tree = repo.load_tree(id)?;
    // Its subdirectories are read next: fetched together from a server.
    let subtrees: Vec<ChunkId> = tree
        .nodes
        .iter()
        .filter_map(|node| match &node.kind {
            NodeKind::Directory { subtree } => Some(*subtree),
            _ => None,
        })
        .collect();
    repo.prefetch(&subtrees);
    let mut total = 0;
    // One question about every file of the directory (one request to a
    // server), not one per chunk.
    let mut data = Vec::new();
    for node in &tree.nodes {
        validate_name(&node.name, "restore point")?;
        match &node.kind {
            NodeKind::Directory { subtree } => total += measure_tree(repo, rp, subtree)?,
            NodeKind::File { extents } => {
                data.extend(data_ids(extents));
                total += file_data_bytes(node)?;
            }
            _ => total += file_data_bytes(node)?,
        }
    }
    refuse_cold(repo, rp, &data)?;
    Ok(total)
}

pub(super) fn measure_node(repo: &dyn RepositoryReader, rp: &RestorePoint, node: &Node) -> Result<u64> {
    validate_name(&node.name, "restore point")?;
    match &node.kind {
        NodeKind::Directory { subtree } => measure_tree(repo, rp, subtree),
        NodeKind::File { extents } => {
            refuse_cold(repo, rp, &data_ids(extents).collect::<Vec<_>>())?;
            file_data_bytes(node)
        }
        _ => file_data_bytes(node),
    }
}

fn data_ids(extents: &[Extent]) -> impl Iterator<Item = ChunkId> + '_ {
    extents.iter().filter_map(|extent| match extent {
        Extent::Data { id, .. } => Some(*id),
        Extent::Hole { .. } => None,
    })
}

/// Cold data is refused before anything is written. A chunk the index
/// lacks (lost to damage) fails its own file when it is restored, not the
/// whole restore.
fn refuse_cold(repo: &dyn RepositoryReader, rp: &RestorePoint, ids: &[ChunkId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    if repo.readable_chunks(ids)?.contains(&Some(false)) {
        return Err(Error::RestorePointCold {
            restore_point: rp.id.short(),
        });
    }
    Ok(())
}
