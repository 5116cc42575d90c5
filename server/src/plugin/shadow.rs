//! Shadow mode: a plugin with `mode = "shadow"` runs on every matching
//! write and its verdicts are recorded, while the write proceeds as if the
//! plugin were absent. This is how a new validator is tried against live
//! traffic without risk; `POST /v1/admin/plugins/{name}/promote` makes it
//! enforce once its record looks right.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{json, Value};

/// Would-be rejections, replacements and failures kept per plugin: the
/// most recent ones, a bounded sample.
pub const MAX_SAMPLES: usize = 32;
/// Longest key and detail text kept in a sample, in bytes.
const MAX_TEXT: usize = 256;

/// What a shadow plugin would have done to one write.
#[derive(Debug, Clone)]
pub struct ShadowSample {
    /// The key written (cut to 256 bytes).
    pub key: String,
    /// `reject`, `replace` or `fail`.
    pub verdict: &'static str,
    /// The reason code and message, the replacement, or the failure.
    pub detail: String,
    /// When (ms since the Unix epoch, the host clock the plugin saw).
    pub at_ms: i64,
}

/// The bounded sample of one plugin's would-be verdicts.
#[derive(Debug, Default)]
pub struct ShadowLog {
    samples: Mutex<VecDeque<ShadowSample>>,
}

impl ShadowLog {
    /// Keeps `sample`, dropping the oldest past [`MAX_SAMPLES`].
    pub fn push(&self, key: &str, verdict: &'static str, detail: &str, at_ms: i64) {
        let sample = ShadowSample {
            key: crate::logsafe::escape(key, MAX_TEXT),
            verdict,
            detail: crate::logsafe::escape(detail, MAX_TEXT),
            at_ms,
        };
        let mut samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if samples.len() == MAX_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, newest first, as JSON.
    pub fn to_json(&self) -> Value {
        let samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        samples
            .iter()
            .rev()
            .map(|s| json!({"key": s.key, "verdict": s.verdict, "detail": s.detail, "at_ms": s.at_ms}))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_samples_within_bounds() {
        let log = ShadowLog::default();
        for i in 0..(MAX_SAMPLES + 5) {
            log.push(&format!("k{i}"), "reject", &"x".repeat(1000), i as i64);
        }
        let json = log.to_json();
        let samples = json.as_array().map(Vec::len);
        assert_eq!(samples, Some(MAX_SAMPLES));
        assert_eq!(json[0]["key"], format!("k{}", MAX_SAMPLES + 4));
        assert!(json[0]["detail"].as_str().map_or(0, str::len) <= MAX_TEXT + 64);
    }
}
