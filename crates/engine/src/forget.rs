//! `strata forget`: retention policies. Decides which restore points a
//! policy keeps and removes the others' manifests; their data stays until
//! `strata prune` finds it unreferenced.
//!
//! The rules compose as in common backup tools: within each source,
//! restore points are taken newest first; `keep_last` keeps the newest N;
//! each calendar rule keeps the newest restore point of each of the N
//! newest hours, days, ISO weeks, months or years that have one. A restore
//! point is kept if any rule keeps it.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::RestorePointId;
use crate::repository::{Exclusive, Repository};
use crate::restore_point::{self, RestorePoint};

#[derive(Debug, Clone, Default)]
pub struct KeepPolicy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly == 0
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub id: String,
    pub source: String,
    pub time: String,
    pub keep: bool,
    /// The rules that keep it ("last", "daily 2026-11-23", …); empty if removed.
    pub reasons: Vec<String>,
}

fn bucket(rule: &str, t: OffsetDateTime) -> String {
    match rule {
        "hourly" => format!(
            "{:04}-{:02}-{:02}T{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour()
        ),
        "daily" => format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day()),
        "weekly" => {
            let (year, week, _) = t.to_iso_week_date();
            format!("{year:04}-W{week:02}")
        }
        "monthly" => format!("{:04}-{:02}", t.year(), t.month() as u8),
        _ => format!("{:04}", t.year()),
    }
}

/// Applies `policy` to restore points (of any sources); the result is in
/// the input's order.
pub fn decide(points: &[RestorePoint], policy: &KeepPolicy) -> Vec<Decision> {
    let mut by_source: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, rp) in points.iter().enumerate() {
        by_source.entry(&rp.manifest.source).or_default().push(i);
    }
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); points.len()];
    for indices in by_source.values_mut() {
        indices.sort_by_key(|&i| {
            std::cmp::Reverse((points[i].manifest.time.as_nanos(), points[i].id))
        });
        for &i in indices.iter().take(policy.last) {
            reasons[i].push("last".into());
        }
        let rules = [
            ("hourly", policy.hourly),
            ("daily", policy.daily),
            ("weekly", policy.weekly),
            ("monthly", policy.monthly),
            ("yearly", policy.yearly),
        ];
        for (rule, count) in rules {
            let mut seen: Vec<String> = Vec::new();
            for &i in indices.iter() {
                if seen.len() >= count {
                    break;
                }
                let Ok(t) = OffsetDateTime::from_unix_timestamp(points[i].manifest.time.sec) else {
                    continue;
                };
                let key = bucket(rule, t);
                if !seen.contains(&key) {
                    reasons[i].push(format!("{rule} {key}"));
                    seen.push(key);
                }
            }
        }
    }
    points
        .iter()
        .zip(reasons)
        .map(|(rp, reasons)| Decision {
            id: rp.id.to_string(),
            source: rp.manifest.source.clone(),
            time: crate::selector::format_time_exact(rp.manifest.time),
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

/// The restore points of `sources` (all when it names none) among
/// `points`, and the policy's decision on each.
pub fn choose(
    points: Vec<RestorePoint>,
    sources: &[String],
    policy: &KeepPolicy,
) -> Result<(Vec<RestorePoint>, Vec<Decision>)> {
    if policy.is_empty() {
        return Err(Error::InvalidInput(
            "no --keep-* rule given: refusing to forget every restore point".into(),
        ));
    }
    let points: Vec<RestorePoint> = points
        .into_iter()
        .filter(|rp| sources.is_empty() || sources.contains(&rp.manifest.source))
        .collect();
    let decisions = decide(&points, policy);
    Ok((points, decisions))
}

/// Decides and, unless `dry_run`, removes the restore points the policy
/// does not keep. `sources`, when it names any, limits the policy to them.
pub fn forget(
    repo: &Repository<Exclusive>,
    sources: &[String],
    policy: &KeepPolicy,
    dry_run: bool,
) -> Result<Vec<Decision>> {
    let (points, decisions) = choose(repo.restore_points()?, sources, policy)?;
    if !dry_run {
        for (rp, decision) in points.iter().zip(&decisions) {
            if !decision.keep {
                remove(repo, &rp.id)?;
            }
        }
    }
    Ok(decisions)
}

/// Removes one restore point (a repository server removes those its admin
/// client decided on). Deleting the manifest is the commit point of a
/// removal; the catalog entry follows (and is reconciled on the next open
/// if a crash comes between the two).
pub fn remove(repo: &Repository<Exclusive>, id: &RestorePointId) -> Result<()> {
    repo.store().delete(&restore_point::object_name(id))?;
    repo.catalog().remove_restore_point(id)?;
    tracing::info!(restore_point = %id, "forgotten");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use crate::restore_point::{BackupStats, Manifest, RestorePointKind};
    use crate::selector::parse_time;

    fn point(n: u8, source: &str, time: &str) -> RestorePoint {
        RestorePoint {
            id: RestorePointId([n; 32]),
            manifest: Manifest {
                kind: RestorePointKind::Files,
                source: source.into(),
                time: parse_time(time).unwrap(),
                hostname: String::new(),
                tags: vec![],
                paths: vec![],
                root: ChunkId([0; 32]),
                parent: None,
                stats: BackupStats::default(),
                missed: vec![],
            },
        }
    }

    /// A synthetic calendar: every 6 hours for 400 days.
    fn calendar() -> Vec<RestorePoint> {
        let start = parse_time("2025-01-01T00:00:00Z").unwrap().sec;
        (0..1600u32)
            .map(|i| {
                let t = OffsetDateTime::from_unix_timestamp(start + i as i64 * 6 * 3600).unwrap();
                let text = t
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap();
                let mut rp = point(0, "host", &text);
                rp.id = RestorePointId(*blake3::hash(&i.to_le_bytes()).as_bytes());
                rp
            })
            .collect()
    }

    fn kept_times(points: &[RestorePoint], policy: &KeepPolicy) -> Vec<String> {
        let mut kept: Vec<String> = decide(points, policy)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.time)
            .collect();
        kept.sort();
        kept
    }

    #[test]
    fn keep_last_and_daily() {
        let points = calendar();
        let kept = kept_times(
            &points,
            &KeepPolicy {
                last: 2,
                daily: 3,
                ..Default::default()
            },
        );
        // Newest: 2026-02-04T18:00 (index 1599 = 399.75 days after start).
        assert_eq!(
            kept,
            vec![
                "2026-02-02T18:00:00Z",
                "2026-02-03T18:00:00Z",
                "2026-02-04T12:00:00Z",
                "2026-02-04T18:00:00Z"
            ]
        );
    }

    #[test]
    fn weekly_monthly_yearly_pick_the_newest_of_each_period() {
        let points = calendar();
        let kept = kept_times(
            &points,
            &KeepPolicy {
                weekly: 2,
                monthly: 3,
                yearly: 5,
                ..Default::default()
            },
        );
        assert_eq!(
            kept,
            vec![
                "2025-12-31T18:00:00Z", // yearly 2025, monthly 2025-12
                "2026-01-31T18:00:00Z", // monthly 2026-01
                "2026-02-01T18:00:00Z", // weekly 2026-W05 (ends Sunday 1 Feb)
                "2026-02-04T18:00:00Z", // newest: weekly W06, monthly 02, yearly 2026
            ]
        );
    }

    #[test]
    fn sources_are_independent_and_hourly_works() {
        let mut points = vec![
            point(1, "a", "2026-01-01T10:05:00Z"),
            point(2, "a", "2026-01-01T10:55:00Z"),
            point(3, "a", "2026-01-01T11:10:00Z"),
            point(4, "b", "2026-01-01T09:00:00Z"),
        ];
        points.reverse();
        let decisions = decide(
            &points,
            &KeepPolicy {
                hourly: 2,
                ..Default::default()
            },
        );
        let kept: Vec<u8> = points
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.keep)
            .map(|(p, _)| p.id.0[0])
            .collect();
        assert_eq!(kept, vec![4, 3, 2]);
        assert!(KeepPolicy::default().is_empty());
    }

    #[test]
    fn a_choice_for_some_sources_leaves_the_others_out() {
        let points = vec![
            point(1, "a", "2026-01-01T10:00:00Z"),
            point(2, "b", "2026-01-02T10:00:00Z"),
            point(3, "c", "2026-01-03T10:00:00Z"),
        ];
        let last = KeepPolicy {
            last: 1,
            ..Default::default()
        };
        let (chosen, decisions) = choose(points.clone(), &["a".into(), "c".into()], &last).unwrap();
        let ids: Vec<u8> = chosen.iter().map(|p| p.id.0[0]).collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(decisions.iter().all(|d| d.keep));
        let (all, _) = choose(points, &[], &last).unwrap();
        assert_eq!(all.len(), 3);
    }
}
