//! What every benchmark measures with: one caller's round trip ([`Call`]), latency histograms
//! and the figures of one point ([`Measured`]).

use std::future::Future;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Result;

/// What one point measured.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// Calls completed in the measured window.
    pub requests: u64,
    /// Calls per second.
    pub rps: f64,
    /// Median latency, ns.
    pub p50_ns: u64,
    /// 99th percentile latency, ns.
    pub p99_ns: u64,
    /// Rounds it is the median of (1: a single measurement).
    pub rounds: usize,
    /// CPU time per call of the server and the load generator together, ns: steadier than
    /// requests/s on shared machines, where a point can wait on wake-ups with CPUs idle.
    /// `None` where the server is not ours to read.
    pub cpu_ns_per_call: Option<u64>,
}

impl Measured {
    /// The median of each figure over rounds (requests are summed).
    pub fn median(rounds: Vec<Measured>) -> Measured {
        let median = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(0.0)
        };
        Measured {
            requests: rounds.iter().map(|m| m.requests).sum(),
            rps: median(rounds.iter().map(|m| m.rps).collect()),
            p50_ns: median(rounds.iter().map(|m| m.p50_ns as f64).collect()) as u64,
            p99_ns: median(rounds.iter().map(|m| m.p99_ns as f64).collect()) as u64,
            cpu_ns_per_call: match rounds.iter().all(|m| m.cpu_ns_per_call.is_some()) {
                true => Some(median(
                    rounds
                        .iter()
                        .filter_map(|m| m.cpu_ns_per_call)
                        .map(|ns| ns as f64)
                        .collect(),
                ) as u64),
                false => None,
            },
            rounds: rounds.len(),
        }
    }

    /// From a latency histogram (ns) and the window's length.
    pub fn new(histogram: Histogram<u64>, requests: u64, window: Duration) -> Measured {
        Measured {
            requests,
            rps: requests as f64 / window.as_secs_f64(),
            p50_ns: histogram.value_at_quantile(0.50),
            p99_ns: histogram.value_at_quantile(0.99),
            rounds: 1,
            cpu_ns_per_call: None,
        }
    }

    /// With the CPU time the window took, if it was read.
    pub fn with_cpu(mut self, cpu_ns: Option<u64>) -> Measured {
        self.cpu_ns_per_call = cpu_ns
            .filter(|_| self.requests > 0)
            .map(|ns| ns / self.requests);
        self
    }
}

/// A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

/// One caller: makes one call and checks the answer.
pub trait Call: Send + 'static {
    /// One round trip.
    fn call(&mut self) -> impl Future<Output = Result<()>> + Send;
}
