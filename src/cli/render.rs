//! Rendering shared by several commands: sizes, rates, names from restore
//! points, JSON.

use anyhow::Result;
use serde_json::json;
use strata::restore_point::RestorePoint;
use strata::selector::format_time_exact;

/// "encrypted (aes-256-gcm, format 2)" or "unencrypted (format 1)".
pub fn describe_protection(encryption: &str, format_version: u32) -> String {
    if encryption == "none" {
        format!("unencrypted (format {format_version})")
    } else {
        format!("encrypted ({encryption}, format {format_version})")
    }
}

pub fn print_json(value: &serde_json::Value) -> Result<()> {
    out!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn mb_per_s(bytes: u64, ms: u64) -> f64 {
    bytes as f64 / 1e6 / (ms.max(1) as f64 / 1000.0)
}

/// A name from a restore point, made safe for a terminal as `ls -b` does:
/// control characters (escape sequences, newlines), backslashes, bytes
/// that are not UTF-8 and characters that reorder text become escapes, so
/// a hostile name can neither rewrite the screen nor pass for another.
pub fn escape_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\{b:03o}"));
                    }
                }
                '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

/// A restore point as `list --json` and `show --json` print it.
pub fn rp_json(rp: &RestorePoint) -> serde_json::Value {
    let m = &rp.manifest;
    json!({
        "id": rp.id.to_string(),
        "kind": m.kind,
        "source": m.source,
        "time": format_time_exact(m.time),
        "host": m.hostname,
        "tags": m.tags,
        "paths": m.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
        "parent": m.parent.map(|p| p.to_string()),
        "stats": m.stats,
        "missed": m.missed,
    })
}
