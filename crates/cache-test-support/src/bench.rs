//! What the benchmarks share: the value they cache, and where their
//! results go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An offer of the offers service: the ~200-byte value (once serialized
/// with postcard) that the benchmarks cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// Its id.
    pub id: u64,
    /// Its price.
    pub price_cents: u64,
    /// Its average rating.
    pub rating: f32,
    /// What is on offer.
    pub title: String,
    /// More about it.
    pub description: String,
    /// Its tags' ids.
    pub tags: Vec<u32>,
}

/// The offer with this id (the same for the same id).
pub fn offer(id: u64) -> Offer {
    Offer {
        id,
        price_cents: 1999 + id,
        rating: 4.5,
        title: format!("Offer number {id:06} - a fairly ordinary title"),
        description: format!(
            "A description of offer {id:06}, long enough to make the value about two hundred bytes \
             once serialized."
        ),
        tags: vec![1, 2, 3, 4],
    }
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` (relative to the
/// workspace root if relative), else `target/` at the root.
pub fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Writes a benchmark's results, `target/bench/<name>.json`, where
/// `cargo xtask bench` gathers them; returns the path.
pub fn write_results(name: &str, json: &str) -> std::io::Result<PathBuf> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, json)?;
    Ok(path)
}

/// The CPU time (user and system) process `pid` has used so far, in
/// seconds (this process's with `None`); 0 where `/proc` cannot tell
/// (another OS). Two readings around a run say how many cores it kept busy:
/// the figure a shared machine's throughput needs beside it.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The fields after the command name (in parentheses, and free to
    // contain spaces): utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // In clock ticks, 100 a second on Linux (`getconf CLK_TCK`).
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's load average over the last minute, from `/proc/loadavg`
/// (`None` elsewhere): how busy the machine was while a benchmark ran.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
