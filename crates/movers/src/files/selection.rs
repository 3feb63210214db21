//! Which paths a backup covers: the command line's paths made absolute,
//! and the part of the file system they select.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Which parts of the file system are selected: a whole subtree, or only
/// some children (the ancestors of the selected paths).
#[derive(Default)]
pub(super) struct Selection {
    pub(super) whole: bool,
    pub(super) children: BTreeMap<OsString, Selection>,
}

/// Everything below a wholly selected directory is selected too.
static WHOLE: Selection = Selection {
    whole: true,
    children: BTreeMap::new(),
};

impl Selection {
    pub(super) fn add(&mut self, path: &Path) {
        let mut node = self;
        for part in path.components().skip(1) {
            if node.whole {
                return;
            }
            node = node
                .children
                .entry(part.as_os_str().to_os_string())
                .or_default();
        }
        node.whole = true;
        node.children.clear();
    }

    /// The selection below `name`, one of the names this selection lists.
    pub(super) fn child(&self, name: &OsStr) -> &Selection {
        if self.whole {
            &WHOLE
        } else {
            &self.children[name]
        }
    }
}

/// Absolute form of a path to back up. The last component is kept as is,
/// so a symlink given on the command line is stored as a symlink.
pub(super) fn normalize(path: &Path) -> Result<PathBuf> {
    std::fs::symlink_metadata(path)
        .map_err(|e| Error::InvalidInput(format!("cannot back up {}: {e}", path.display())))?;
    let absolute = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .at("resolving", parent)?
                .join(name)
        }
        _ => std::fs::canonicalize(path).at("resolving", path)?,
    };
    Ok(absolute)
}
