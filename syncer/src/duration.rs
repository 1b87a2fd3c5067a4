//! Durations on the command line (pure; used by the syncer's and the CLI's flags).

use std::time::Duration;

/// Durations as `<number><unit>` with unit `ms`, `s` or `m` (e.g. `500ms`, `5s`, `2m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration: write e.g. 500ms, 5s or 2m");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(err),
        _ => Err(err()),
    }
}
