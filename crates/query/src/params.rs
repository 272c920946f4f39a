//! Query-string parameters shared by several endpoints.

use std::collections::HashMap;

use sextant_store::TimeWindow;

use crate::error::QueryError;

/// The decoded query string. A parameter given twice keeps its last value.
pub(crate) type Params = HashMap<String, String>;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The value of `name`, or `None` when absent or empty (`start=` is no start).
pub(crate) fn get<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A unix time in whole seconds.
fn unix_seconds(params: &Params, name: &'static str) -> Result<Option<u64>, QueryError> {
    get(params, name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| QueryError::param(name, v, "expected a unix time in seconds"))
        })
        .transpose()
}

/// `start` and `end` (unix seconds) as a window in nanoseconds. `end` covers its whole second,
/// so `end=now` includes spans that started a moment ago.
pub(crate) fn time_window(params: &Params) -> Result<TimeWindow, QueryError> {
    let start = unix_seconds(params, "start")?;
    let end = unix_seconds(params, "end")?;
    if let (Some(s), Some(e)) = (start, end) {
        if s > e {
            return Err(QueryError::InconsistentParams(format!(
                "start ({s}) must not be after end ({e})"
            )));
        }
    }
    let to_ns = |name: &'static str, secs: u64, extra: u64| {
        secs.checked_mul(NANOS_PER_SECOND)
            .and_then(|ns| ns.checked_add(extra))
            .ok_or_else(|| QueryError::param(name, &secs.to_string(), "too far in the future"))
    };
    Ok(TimeWindow {
        start_ns: start.map(|s| to_ns("start", s, 0)).transpose()?,
        end_ns: end
            .map(|e| to_ns("end", e, NANOS_PER_SECOND - 1))
            .transpose()?,
    })
}

/// A count; absent or `0` means `default` (as in Tempo).
pub(crate) fn count(
    params: &Params,
    name: &'static str,
    default: usize,
) -> Result<usize, QueryError> {
    match get(params, name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(0) => Ok(default),
            Ok(n) => Ok(n),
            Err(_) => Err(QueryError::param(
                name,
                v,
                "expected a non-negative integer",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn windows() {
        assert_eq!(time_window(&params(&[])).unwrap(), TimeWindow::all());
        let w = time_window(&params(&[("start", "10"), ("end", "20")])).unwrap();
        assert_eq!(w.start_ns, Some(10_000_000_000));
        assert_eq!(w.end_ns, Some(20_999_999_999));
        let w = time_window(&params(&[("start", ""), ("end", "5")])).unwrap();
        assert_eq!(w.start_ns, None);
        let e = time_window(&params(&[("start", "soon")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid start "soon": expected a unix time in seconds"#
        );
        let e = time_window(&params(&[("start", "30"), ("end", "20")])).unwrap_err();
        assert_eq!(e.to_string(), "start (30) must not be after end (20)");
        let e = time_window(&params(&[("end", &u64::MAX.to_string())])).unwrap_err();
        assert!(e.to_string().contains("too far"), "{e}");
    }

    #[test]
    fn counts() {
        assert_eq!(count(&params(&[]), "limit", 20).unwrap(), 20);
        assert_eq!(count(&params(&[("limit", "0")]), "limit", 20).unwrap(), 20);
        assert_eq!(count(&params(&[("limit", "5")]), "limit", 20).unwrap(), 5);
        assert_eq!(
            count(&params(&[("limit", "-1")]), "limit", 20)
                .unwrap_err()
                .to_string(),
            r#"invalid limit "-1": expected a non-negative integer"#
        );
    }
}
