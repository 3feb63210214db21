//! The restore-point catalog behind the dynamic directories, re-read at
//! most once a second, and the VM descriptions read from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Namespace;
use crate::error::Result;
use crate::id::RestorePointId;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::selector::{format_time, time_labels};
use crate::vm::description::VmDescription;

const CATALOG_MAX_AGE: Duration = Duration::from_secs(1);

/// Restore points as last read, with the times `list` shows for them.
#[derive(Default)]
pub(super) struct Catalog {
    pub(super) points: Vec<Arc<RestorePoint>>,
    pub(super) labels: HashMap<RestorePointId, String>,
}

/// The catalog as last read, and when.
pub(super) type CatalogSnapshot = (Option<Instant>, Arc<Catalog>);

impl Namespace {
    pub(super) fn catalog(&self) -> Result<Arc<Catalog>> {
        let mut catalog = self.catalog.lock().expect("catalog");
        if catalog.0.is_none_or(|at| at.elapsed() > CATALOG_MAX_AGE) {
            self.repo.catch_up()?;
            let points = self.repo.restore_points()?;
            let labels = time_labels(&points);
            let points: Vec<_> = points.into_iter().map(Arc::new).collect();
            self.xattr_names.cover(&points);
            *catalog = (Some(Instant::now()), Arc::new(Catalog { points, labels }));
        }
        Ok(catalog.1.clone())
    }

    pub fn description(&self, rp: &RestorePoint) -> Result<Arc<VmDescription>> {
        if let Some(d) = self.descriptions.lock().expect("descriptions").get(&rp.id) {
            return Ok(d.clone());
        }
        let d = Arc::new(VmDescription::decode(
            &rp.manifest.root,
            &self.repo.read_chunk(&rp.manifest.root)?,
        )?);
        self.descriptions
            .lock()
            .expect("descriptions")
            .insert(rp.id, d.clone());
        Ok(d)
    }

    /// Restore points of one source and kind, named by time as `list`
    /// shows it (with as many fractional digits as it takes). Restore
    /// points that still share a time all get their id appended, so a
    /// name never passes from one restore point to another while both
    /// exist, and a plain time never names one of several.
    pub(super) fn points_of(
        &self,
        kind: RestorePointKind,
        source: &str,
    ) -> Result<Vec<(String, Arc<RestorePoint>)>> {
        let catalog = self.catalog()?;
        let points: Vec<(String, Arc<RestorePoint>)> = catalog
            .points
            .iter()
            .filter(|rp| rp.manifest.kind == kind && rp.manifest.source == source)
            .map(|rp| {
                let label = catalog.labels.get(&rp.id).cloned();
                (
                    label.unwrap_or_else(|| format_time(rp.manifest.time)),
                    rp.clone(),
                )
            })
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (name, _) in &points {
            *seen.entry(name.as_str()).or_default() += 1;
        }
        let shared: Vec<bool> = points
            .iter()
            .map(|(name, _)| seen[name.as_str()] > 1)
            .collect();
        Ok(points
            .into_iter()
            .zip(shared)
            .map(|((name, rp), shared)| {
                if shared {
                    (format!("{name}-{}", rp.id.short()), rp)
                } else {
                    (name, rp)
                }
            })
            .collect())
    }
}
