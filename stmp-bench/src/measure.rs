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
    /// Each round's requests/s and median latency (ns), in the order measured. Every system
    /// of a point is measured once per round, one after the other, so round `i` of two
    /// systems ran under about the same load: their ratio round by round shows how far the
    /// machine's noise moves it.
    pub per_round: Vec<(f64, u64)>,
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
            per_round: rounds.iter().flat_map(|m| m.per_round.clone()).collect(),
            rounds: rounds.len(),
        }
    }

    /// The lowest and highest of this point's ratio to `other`'s, round by round (`figure`
    /// picks what is compared); `None` with fewer than two rounds or unequal rounds.
    pub fn round_ratios(
        &self,
        other: &Measured,
        figure: impl Fn(&(f64, u64)) -> f64,
    ) -> Option<(f64, f64)> {
        if self.per_round.len() < 2 || self.per_round.len() != other.per_round.len() {
            return None;
        }
        ratio_range(
            self.per_round
                .iter()
                .zip(&other.per_round)
                .map(|(mine, theirs)| figure(mine) / figure(theirs)),
        )
    }

    /// From a latency histogram (ns) and the window's length.
    pub fn new(histogram: Histogram<u64>, requests: u64, window: Duration) -> Measured {
        let rps = requests as f64 / window.as_secs_f64();
        let p50_ns = histogram.value_at_quantile(0.50);
        Measured {
            requests,
            rps,
            p50_ns,
            p99_ns: histogram.value_at_quantile(0.99),
            rounds: 1,
            per_round: vec![(rps, p50_ns)],
            cpu_ns_per_call: None,
        }
    }

    /// How many CPUs the point kept busy: its CPU time over the wall time, the product of the
    /// medians of CPU per call and requests/s. Below the machine's CPUs, the point waited on
    /// something other than work (wake-ups, the network) part of the time.
    pub fn cpus_busy(&self) -> Option<f64> {
        self.cpu_ns_per_call.map(|ns| ns as f64 * self.rps / 1e9)
    }

    /// The requests/s `cpus` CPUs could serve at this CPU time per call, never idle: what no
    /// amount of waiting less reaches without less work per call.
    pub fn cpu_limit_rps(&self, cpus: usize) -> Option<f64> {
        self.cpu_ns_per_call
            .filter(|&ns| ns > 0)
            .map(|ns| cpus as f64 * 1e9 / ns as f64)
    }

    /// With the CPU time the window took, if it was read.
    pub fn with_cpu(mut self, cpu_ns: Option<u64>) -> Measured {
        self.cpu_ns_per_call = cpu_ns
            .filter(|_| self.requests > 0)
            .map(|ns| ns / self.requests);
        self
    }
}

/// The lowest and highest of `ratios`, when there are any.
pub fn ratio_range(ratios: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    ratios.fold(None, |range, x| match range {
        None => Some((x, x)),
        Some((low, high)) => Some((f64::min(low, x), f64::max(high, x))),
    })
}

/// Latencies as they are measured, put into a histogram once the window is over. A histogram
/// of [`new_histogram`]'s range holds 216 KiB of counters: with each of 64 callers
/// recording into its own, most records missed the cache, and that cost showed as the load
/// generator's top function with the fastest systems. Appended to a list, eight calls share
/// one new cache line.
#[derive(Debug, Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.0
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.0.len() as u64
    }

    /// A histogram of them all (see [`new_histogram`]).
    pub fn histogram(all: impl IntoIterator<Item = Latencies>) -> Result<Histogram<u64>> {
        let mut histogram = new_histogram()?;
        for latency in all.into_iter().flat_map(|latencies| latencies.0) {
            histogram.saturating_record(latency);
        }
        Ok(histogram)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rps: f64, p50_ns: u64) -> Measured {
        Measured {
            requests: 1,
            rps,
            p50_ns,
            p99_ns: p50_ns,
            rounds: 1,
            per_round: vec![(rps, p50_ns)],
            cpu_ns_per_call: None,
        }
    }

    #[test]
    fn ratios_pair_the_rounds_measured_together() {
        let mine = Measured::median(vec![round(90.0, 30), round(60.0, 40), round(100.0, 20)]);
        let theirs = Measured::median(vec![round(100.0, 20), round(100.0, 20), round(80.0, 20)]);
        assert_eq!(mine.rps, 90.0);
        let (low, high) = mine.round_ratios(&theirs, |r| r.0).unwrap();
        assert_eq!((low, high), (0.6, 1.25));
        let (low, high) = mine.round_ratios(&theirs, |r| r.1 as f64).unwrap();
        assert_eq!((low, high), (1.0, 2.0));
        assert!(
            round(1.0, 1)
                .round_ratios(&round(1.0, 1), |r| r.0)
                .is_none()
        );
    }

    #[test]
    fn busy_cpus_and_the_cpu_limit_follow_cpu_per_call() {
        let mut measured = round(500_000.0, 100);
        assert_eq!(measured.cpus_busy(), None);
        assert_eq!(measured.cpu_limit_rps(2), None);
        // 3 µs per call at 500k calls/s is 1.5 CPUs; two CPUs allow 666,666 calls/s.
        measured.cpu_ns_per_call = Some(3_000);
        assert!((measured.cpus_busy().unwrap() - 1.5).abs() < 1e-9);
        assert!((measured.cpu_limit_rps(2).unwrap() - 2e9 / 3_000.0).abs() < 1e-6);
        measured.cpu_ns_per_call = Some(0);
        assert_eq!(measured.cpu_limit_rps(2), None);
    }

    #[test]
    fn latencies_of_all_callers_make_one_histogram() {
        let mut fast = Latencies::default();
        let mut slow = Latencies::default();
        for _ in 0..3 {
            fast.record(Duration::from_micros(100));
        }
        slow.record(Duration::from_millis(5));
        slow.record(Duration::from_secs(100_000));
        assert_eq!(fast.count() + slow.count(), 5);
        let histogram = Latencies::histogram([fast, slow]).unwrap();
        assert_eq!(histogram.len(), 5);
        assert!(histogram.equivalent(histogram.value_at_quantile(0.5), 100_000));
        assert!(histogram.equivalent(histogram.value_at_quantile(0.8), 5_000_000));
        // Beyond the histogram's range it counts at the top, as a record of it did.
        assert!(histogram.equivalent(histogram.max(), 60_000_000_000));
    }
}
