//! Identifiers: how run and job ids are built and taken apart, in one place.
//!
//! Run ids carry their creation time and a store-wide sequence number, so
//! they never collide and listing can order them without reading the runs.
//! A job id names one attempt of one step of one run, so every document
//! about a job can be keyed by it and a callback names everything it needs.

use crate::agent::check_name;

/// A run id: creation time and a store-wide sequence number, so ids sort by
/// creation and never collide.
pub fn run_id(now_ms: u64, seq: u64) -> String {
    format!("r{now_ms:013}-{seq:06}")
}

/// Longest incoming `X-Request-Id` honoured.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether `id` is an acceptable incoming request id: 1 to 128 of
/// `A-Z a-z 0-9 - _ . :` (what tracing systems send), nothing that could
/// forge a log line or a header.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Whether `id` is a well-formed run id (a name without dots, so a job id
/// splits unambiguously).
pub fn valid_run_id(id: &str) -> bool {
    check_name(id).is_ok()
}

/// The creation time a run id carries.
pub fn run_created_ms(id: &str) -> Option<u64> {
    id.strip_prefix('r')?.split('-').next()?.parse().ok()
}

/// The sequence number a run id carries: the order in which runs were
/// created, store-wide.
pub fn run_seq(id: &str) -> Option<u64> {
    let rest = id.strip_prefix('r')?;
    let (_, seq) = rest.split_once('-')?;
    seq.parse().ok()
}

/// Most items one fan-out step may have; item numbers stay below it.
pub const MAX_ITEMS: usize = 256;

/// The unit id of item `index` of fan-out step `step`: `<step>_<index>`.
/// Step ids never hold `_`, so an item's id cannot be a step's.
pub fn item_unit(step: &str, index: usize) -> String {
    format!("{step}_{index}")
}

/// A unit id taken apart: a step (`scan`), or an item of a fan-out step
/// (`scan_3`: the step and the item's index); `None` if malformed.
pub fn parse_unit(unit: &str) -> Option<(&str, Option<usize>)> {
    match unit.split_once('_') {
        None => check_name(unit).is_ok().then_some((unit, None)),
        Some((step, index)) => {
            // One spelling per item: no sign, no leading zero.
            let canonical = !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit())
                && (index == "0" || !index.starts_with('0'));
            let n: usize = index.parse().ok().filter(|_| canonical)?;
            (n < MAX_ITEMS && check_name(step).is_ok()).then_some((step, Some(n)))
        }
    }
}

/// Whether `unit` names a step or an item of one.
pub fn valid_unit(unit: &str) -> bool {
    parse_unit(unit).is_some()
}

/// `<run>.<unit>.<attempt>`, where a unit is a step or an item of one.
pub fn job_id(run_id: &str, step_id: &str, attempt: u32) -> String {
    format!("{run_id}.{step_id}.{attempt}")
}

/// A job id taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRef<'a> {
    /// The run.
    pub run: &'a str,
    /// The unit: a step, or an item of one (`scan_3`).
    pub step: &'a str,
    /// 1-based attempt number.
    pub attempt: u32,
}

/// Splits a job id into run, step and attempt; `None` if malformed.
pub fn parse_job_id(job_id: &str) -> Option<JobRef<'_>> {
    let mut parts = job_id.rsplitn(3, '.');
    let attempt = parts.next()?.parse().ok().filter(|a| *a > 0)?;
    let step = parts.next()?;
    let run = parts.next()?;
    (valid_unit(step) && valid_run_id(run)).then_some(JobRef { run, step, attempt })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_plain() {
        assert!(valid_request_id("abc-123_x.y:z"));
        for bad in ["", "a b", "a\r\nb", "ü", &"a".repeat(129)] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn job_ids_round_trip_and_junk_is_refused() {
        let id = job_id("r-0001", "scan", 3);
        assert_eq!(
            parse_job_id(&id),
            Some(JobRef {
                run: "r-0001",
                step: "scan",
                attempt: 3
            })
        );
        for bad in [
            "",
            "r.scan",
            "r.scan.0",
            "r.scan.x",
            "r.Scan.1",
            ".scan.1",
            "r/x.scan.1",
            "r.scan.99999999999",
            "r.scan_.1",
            "r.scan_01.1",
            "r.scan_-1.1",
            "r.scan_256.1",
            "r.scan_1_2.1",
            "r._1.1",
        ] {
            assert_eq!(parse_job_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn item_units_round_trip_and_never_look_like_steps() {
        assert_eq!(item_unit("scan", 12), "scan_12");
        assert_eq!(parse_unit("scan_12"), Some(("scan", Some(12))));
        assert_eq!(parse_unit("scan"), Some(("scan", None)));
        assert_eq!(parse_unit("scan_0"), Some(("scan", Some(0))));
        let job = job_id("r-1", "scan_3", 2);
        assert_eq!(parse_job_id(&job).map(|j| j.step), Some("scan_3"));
        for bad in [
            "", "_", "scan_", "_3", "scan_03", "scan_+3", "Scan_1", "scan_1_1",
        ] {
            assert_eq!(parse_unit(bad), None, "{bad}");
        }
    }

    #[test]
    fn run_ids_sort_by_creation_and_carry_time_and_sequence() {
        let id = run_id(1_795_305_599_999, 7);
        assert_eq!(id, "r1795305599999-000007");
        assert!(valid_run_id(&id));
        assert!(run_id(5, 1) < run_id(6, 0), "ids sort by creation time");
        assert_eq!(run_created_ms(&id), Some(1_795_305_599_999));
        assert_eq!(run_seq(&id), Some(7));
        assert_eq!(run_seq(&run_id(1, 12_345_678)), Some(12_345_678));
        assert_eq!(run_created_ms("x"), None);
        assert_eq!(run_seq("r12"), None);
    }
}
