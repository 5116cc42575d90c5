//! Per-token fair use: a request rate (a GCRA token bucket from
//! `governor`) and a bound on requests in flight. A token past either gets
//! `429` with `Retry-After`, so one busy team cannot starve the others.
//! A reload of the tokens keeps a token's state when its name and limits
//! stay the same, so a reload is no way to reset a bucket or to slip
//! past the requests already in flight.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::TokenSpec;

/// One token's limits and their state.
#[derive(Debug, Default)]
pub struct Limits {
    rate: Option<DefaultDirectRateLimiter>,
    in_flight: Option<(Arc<Semaphore>, u32)>,
    /// The spec's `rate_per_second`, `burst` and `max_in_flight`: a
    /// reloaded token with the same ones keeps this state.
    asked: [Option<u32>; 3],
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Past the request rate; a retry after this many seconds can pass.
    Rate {
        /// Whole seconds, at least 1.
        retry_after_s: u64,
    },
    /// Past the requests in flight.
    InFlight {
        /// The bound.
        max: u32,
    },
}

impl Refusal {
    /// The `limit` label of the metric.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Rate { .. } => "rate",
            Refusal::InFlight { .. } => "in_flight",
        }
    }
}

/// What admits a request: hold it until the answer is ready.
pub type Admission = Option<OwnedSemaphorePermit>;

/// Checks the limit fields of a spec; the error names the field.
pub fn check(spec: &TokenSpec) -> Result<(), String> {
    for (field, value) in [
        ("rate_per_second", spec.rate_per_second),
        ("burst", spec.burst),
        ("max_in_flight", spec.max_in_flight),
    ] {
        if value == Some(0) {
            return Err(format!(
                "{field}: must be at least 1 (leave it out for no limit)"
            ));
        }
    }
    if spec.burst.is_some() && spec.rate_per_second.is_none() {
        return Err("burst: needs rate_per_second".into());
    }
    Ok(())
}

impl Limits {
    /// The limits a (checked) spec asks for.
    pub fn of(spec: &TokenSpec) -> Self {
        let rate = spec
            .rate_per_second
            .and_then(NonZeroU32::new)
            .map(|per_second| {
                let burst = spec.burst.and_then(NonZeroU32::new).unwrap_or(per_second);
                RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
            });
        let in_flight = spec
            .max_in_flight
            .map(|max| (Arc::new(Semaphore::new(max as usize)), max));
        Self {
            rate,
            in_flight,
            asked: Self::asked_by(spec),
        }
    }

    /// The limits a spec asks for, kept from `previous` (the same token's
    /// before a reload) when they are the same ones.
    pub fn carried_over(spec: &TokenSpec, previous: Option<&Arc<Limits>>) -> Arc<Self> {
        match previous {
            Some(old) if old.asked == Self::asked_by(spec) => Arc::clone(old),
            _ => Arc::new(Self::of(spec)),
        }
    }

    fn asked_by(spec: &TokenSpec) -> [Option<u32>; 3] {
        [spec.rate_per_second, spec.burst, spec.max_in_flight]
    }

    /// Admits one request now, or says why not.
    pub fn admit(&self) -> Result<Admission, Refusal> {
        if let Some(rate) = &self.rate {
            if let Err(not_until) = rate.check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Refusal::Rate {
                    retry_after_s: retry_after_s.max(1),
                });
            }
        }
        match &self.in_flight {
            None => Ok(None),
            Some((slots, max)) => Arc::clone(slots)
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| Refusal::InFlight { max: *max }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limits = Limits::of(&TokenSpec {
            rate_per_second: Some(1),
            burst: Some(3),
            ..TokenSpec::default()
        });
        for _ in 0..3 {
            assert!(limits.admit().is_ok());
        }
        assert_eq!(
            limits.admit().unwrap_err(),
            Refusal::Rate { retry_after_s: 1 }
        );
    }

    #[test]
    fn requests_in_flight_are_bounded_until_they_end() {
        let limits = Limits::of(&TokenSpec {
            max_in_flight: Some(2),
            ..TokenSpec::default()
        });
        let (a, b) = (limits.admit().unwrap(), limits.admit().unwrap());
        assert_eq!(limits.admit().unwrap_err(), Refusal::InFlight { max: 2 });
        drop(a);
        assert!(limits.admit().is_ok());
        drop(b);
        assert!(Limits::default().admit().unwrap().is_none());
    }

    #[test]
    fn the_same_limits_keep_their_state_and_new_ones_start_afresh() {
        let spec = TokenSpec {
            rate_per_second: Some(1),
            burst: Some(2),
            max_in_flight: Some(1),
            ..TokenSpec::default()
        };
        let before = Limits::carried_over(&spec, None);
        let _held = before.admit().unwrap();
        let kept = Limits::carried_over(&spec, Some(&before));
        assert_eq!(kept.admit().unwrap_err(), Refusal::InFlight { max: 1 });
        let changed = TokenSpec {
            max_in_flight: Some(2),
            ..spec
        };
        let fresh = Limits::carried_over(&changed, Some(&before));
        assert!(
            fresh.admit().is_ok(),
            "new limits start with their own state"
        );
    }

    #[test]
    fn zero_and_a_lone_burst_are_refused() {
        let refused = |spec: TokenSpec| check(&spec).unwrap_err();
        assert!(refused(TokenSpec {
            rate_per_second: Some(0),
            ..TokenSpec::default()
        })
        .contains("rate_per_second"));
        assert!(refused(TokenSpec {
            burst: Some(5),
            ..TokenSpec::default()
        })
        .contains("burst"));
        assert!(check(&TokenSpec {
            rate_per_second: Some(5),
            burst: Some(10),
            ..TokenSpec::default()
        })
        .is_ok());
    }
}
