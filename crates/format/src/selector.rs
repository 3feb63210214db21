//! How people name restore points: `SOURCE@latest`, `SOURCE@TIME` or an id
//! prefix, and the time labels that name each restore point exactly.
//! Pure functions of their input: no clock, no I/O.

use std::collections::HashMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::RestorePointId;
use crate::restore_point::RestorePoint;
use crate::tree::Timestamp;

/// `YYYY-MM-DDTHH:MM:SSZ`: whole seconds, for times that name no restore
/// point (expiries, lock holders, file times). Restore points are shown
/// with [`time_labels`], which keep as many digits as it takes to name
/// each one.
pub fn format_time(t: Timestamp) -> String {
    format_time_digits(t, 0)
}

/// The exact time, with the shortest fraction (in groups of three digits)
/// that loses nothing: what `--json` prints.
pub fn format_time_exact(t: Timestamp) -> String {
    let digits = match t.nsec {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    format_time_digits(t, digits)
}

/// RFC 3339 in UTC with `digits` (0 to 9) fractional digits, truncated.
fn format_time_digits(t: Timestamp, digits: u32) -> String {
    let Ok(dt) = OffsetDateTime::from_unix_timestamp(t.sec) else {
        return format!("@{}", t.sec);
    };
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if digits > 0 {
        let digits = digits.min(9);
        let fraction = t.nsec.min(999_999_999) / 10u32.pow(9 - digits);
        text.push_str(&format!(".{fraction:0width$}", width = digits as usize));
    }
    text.push('Z');
    text
}

/// How each restore point's time is shown: whole seconds where that
/// suffices, else milli-, micro- or nanoseconds, so that `SOURCE@LABEL`
/// selects exactly that restore point (a time selects the latest restore
/// point up to the end of the interval its digits name). Two restore points
/// of one source at the very same nanosecond share a label; their ids tell
/// them apart.
pub fn time_labels(points: &[RestorePoint]) -> HashMap<RestorePointId, String> {
    let mut by_source: HashMap<&str, Vec<&RestorePoint>> = HashMap::new();
    for rp in points {
        by_source.entry(&rp.manifest.source).or_default().push(rp);
    }
    let mut labels = HashMap::with_capacity(points.len());
    for mut of_source in by_source.into_values() {
        of_source.sort_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id));
        for (i, rp) in of_source.iter().enumerate() {
            let time = rp.manifest.time.as_nanos();
            let next = of_source[i + 1..]
                .iter()
                .map(|later| later.manifest.time.as_nanos())
                .find(|t| *t > time);
            let digits = [0u32, 3, 6, 9]
                .into_iter()
                .find(|d| {
                    let unit = 10i128.pow(9 - d);
                    next.is_none_or(|next| next.div_euclid(unit) > time.div_euclid(unit))
                })
                .unwrap_or(9);
            labels.insert(rp.id, format_time_digits(rp.manifest.time, digits));
        }
    }
    labels
}

/// Parses an RFC 3339 time such as `2026-11-23T07:04:05Z`.
pub fn parse_time(text: &str) -> Result<Timestamp> {
    Ok(parse_time_interval(text)?.0)
}

/// Parses an RFC 3339 time and says how long an interval its digits name:
/// `…:05Z` is the whole second, `…:05.120Z` one millisecond.
fn parse_time_interval(text: &str) -> Result<(Timestamp, i128)> {
    let dt = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        Error::InvalidInput(format!(
            "{text:?} is not an RFC 3339 time (e.g. 2026-11-23T07:04:05Z): {e}"
        ))
    })?;
    let fraction_digits = text
        .split_once('.')
        .map(|(_, rest)| rest.bytes().take_while(u8::is_ascii_digit).count())
        .unwrap_or(0)
        .min(9);
    // At most 9 after `min`, so the conversion always succeeds.
    let fraction_digits = u32::try_from(fraction_digits).unwrap_or(9);
    Ok((
        Timestamp {
            sec: dt.unix_timestamp(),
            // The nanoseconds past `unix_timestamp()`, in 0..1e9.
            nsec: dt.nanosecond(),
        },
        10i128.pow(9 - fraction_digits),
    ))
}

/// Picks one restore point from `candidates` by id prefix, `SOURCE@latest`
/// or `SOURCE@TIME` (the latest at or before TIME).
pub fn select<'a>(candidates: &'a [RestorePoint], selector: &str) -> Result<&'a RestorePoint> {
    let not_found = || Error::RestorePointNotFound {
        selector: selector.to_string(),
    };
    if let Some((source, when)) = selector.rsplit_once('@') {
        let of_source = candidates.iter().filter(|rp| rp.manifest.source == source);
        let chosen = if when == "latest" {
            of_source.max_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id))
        } else {
            let (start, interval) = parse_time_interval(when)?;
            let end = start.as_nanos() + interval;
            of_source
                .filter(|rp| rp.manifest.time.as_nanos() < end)
                .max_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id))
        };
        return chosen.ok_or_else(not_found);
    }
    let prefix = selector.to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "{selector:?} is not a restore point: give an id (prefix), SOURCE@latest or SOURCE@TIME"
        )));
    }
    let matches: Vec<_> = candidates
        .iter()
        .filter(|rp| rp.id.to_string().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        many => Err(Error::AmbiguousRestorePoint {
            selector: selector.to_string(),
            candidates: many
                .iter()
                .map(|rp| rp.id.short())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore_point::tests::sample;
    use crate::restore_point::Manifest;

    #[test]
    fn times_parse_and_format() {
        let t = parse_time("2026-11-23T07:04:05Z").unwrap();
        assert_eq!(format_time(t), "2026-11-23T07:04:05Z");
        assert!(parse_time("yesterday").is_err());
        // Before 1970 the fraction still counts forward from a whole second.
        let t = parse_time("1969-12-31T23:59:59.25+01:00").unwrap();
        assert_eq!((t.sec, t.nsec), (-3601, 250_000_000));
    }

    #[test]
    fn labels_name_each_restore_point_within_one_second() {
        let mk = |id: u8, source: &str, sec: i64, nsec: u32| RestorePoint {
            id: RestorePointId([id; 32]),
            manifest: Manifest {
                source: source.into(),
                time: Timestamp { sec, nsec },
                ..sample()
            },
        };
        let all = vec![
            mk(1, "a", 1_795_000_000, 120_000_000),
            mk(2, "a", 1_795_000_000, 120_400_000),
            mk(3, "a", 1_795_000_000, 900_000_000),
            mk(4, "a", 1_795_000_001, 5),
            mk(5, "b", 1_795_000_000, 999_999_999),
        ];
        let labels = time_labels(&all);
        assert_eq!(labels[&all[0].id], "2026-11-18T11:06:40.120000Z");
        assert_eq!(labels[&all[1].id], "2026-11-18T11:06:40.120Z");
        assert_eq!(labels[&all[2].id], "2026-11-18T11:06:40Z");
        assert_eq!(labels[&all[3].id], "2026-11-18T11:06:41Z");
        assert_eq!(labels[&all[4].id], "2026-11-18T11:06:40Z");
        for rp in &all {
            let selector = format!("{}@{}", rp.manifest.source, labels[&rp.id]);
            assert_eq!(select(&all, &selector).unwrap().id, rp.id, "{selector}");
        }
        assert_eq!(
            format_time_exact(all[3].manifest.time),
            "2026-11-18T11:06:41.000000005Z"
        );
        assert_eq!(
            format_time_exact(all[1].manifest.time),
            "2026-11-18T11:06:40.120400Z"
        );
        assert_eq!(
            select(
                &all,
                &format!("a@{}", format_time_exact(all[1].manifest.time))
            )
            .unwrap()
            .id,
            all[1].id
        );
    }

    #[test]
    fn selectors() {
        let mk = |id: u8, source: &str, sec: i64| RestorePoint {
            id: RestorePointId([id; 32]),
            manifest: Manifest {
                source: source.into(),
                time: Timestamp { sec, nsec: 0 },
                ..sample()
            },
        };
        let all = vec![mk(0xaa, "a", 100), mk(0xab, "a", 200), mk(0xcc, "b", 300)];
        assert_eq!(select(&all, "a@latest").unwrap().id, all[1].id);
        assert_eq!(select(&all, "cc").unwrap().id, all[2].id);
        assert!(matches!(
            select(&all, "a"),
            Err(Error::AmbiguousRestorePoint { .. })
        ));
        assert!(select(&all, "dd").is_err());
        assert!(select(&all, "c@latest").is_err());
        assert_eq!(
            select(&all, "a@1970-01-01T00:02:30Z").unwrap().id,
            all[0].id
        );
    }
}
