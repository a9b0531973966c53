//! One stream's history: a ring of recent events bounded by count, bytes and age, each event
//! stamped with the next offset. Pure state: time comes in as an argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How much history a stream keeps. Whichever bound is hit first evicts the oldest events.
///
/// ```
/// use std::time::Duration;
/// use stmp::history::Retention;
///
/// let chat = Retention::new(1000, 1 << 20, Duration::from_secs(300));
/// assert_eq!(chat.max_events, 1000);
/// assert!(!Retention::NONE.keeps_anything());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events kept at most.
    pub max_events: usize,
    /// Bytes (encoded payloads) kept at most.
    pub max_bytes: usize,
    /// Age after which an event is forgotten.
    pub max_age: Duration,
}

impl Retention {
    /// Keeps nothing: offsets are still stamped, but a client that misses an event cannot
    /// recover it.
    pub const NONE: Retention = Retention {
        max_events: 0,
        max_bytes: 0,
        max_age: Duration::ZERO,
    };

    /// At most `max_events` events, `max_bytes` bytes, each for at most `max_age`.
    pub const fn new(max_events: usize, max_bytes: usize, max_age: Duration) -> Retention {
        Retention {
            max_events,
            max_bytes,
            max_age,
        }
    }

    /// Whether any event can be kept.
    pub fn keeps_anything(&self) -> bool {
        self.max_events > 0 && self.max_bytes > 0 && !self.max_age.is_zero()
    }
}

impl Default for Retention {
    /// 100 events, 1 MiB, 5 minutes: enough to ride out a network blip or a server restart
    /// behind a load balancer, small enough for thousands of rooms.
    fn default() -> Self {
        Retention::new(100, 1 << 20, Duration::from_secs(300))
    }
}

/// Why the events after a position cannot be replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrecoverable {
    /// The stream's history was lost since (a restart, say): offsets start over.
    EpochChanged,
    /// Some of the events after the position are no longer kept.
    TooOld,
    /// The position is past the newest offset: it cannot be from this epoch.
    Ahead,
}

struct Entry<T> {
    offset: u64,
    at: Instant,
    size: usize,
    value: T,
}

/// The history of one stream: its epoch, the last offset stamped, and the events retained.
pub struct Stream<T> {
    epoch: String,
    top: u64,
    events: VecDeque<Entry<T>>,
    bytes: usize,
    retention: Retention,
}

impl<T> Stream<T> {
    /// An empty stream of this epoch; its first event gets offset 1.
    pub fn new(epoch: impl Into<String>, retention: Retention) -> Stream<T> {
        Stream {
            epoch: epoch.into(),
            top: 0,
            events: VecDeque::new(),
            bytes: 0,
            retention,
        }
    }

    /// The epoch: offsets only compare within it.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The offset of the newest event (0 before the first).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Events retained now.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is retained.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes retained now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stamps `value` (of `size` bytes) with the next offset and keeps it as long as the
    /// retention allows; returns the offset.
    pub fn push(&mut self, value: T, size: usize, now: Instant) -> u64 {
        self.top += 1;
        self.events.push_back(Entry {
            offset: self.top,
            at: now,
            size,
            value,
        });
        self.bytes += size;
        self.evict(now);
        self.top
    }

    /// Forgets what is over the bounds at `now`.
    pub fn evict(&mut self, now: Instant) {
        let retention = self.retention;
        while let Some(oldest) = self.events.front() {
            let expired = now.saturating_duration_since(oldest.at) >= retention.max_age;
            if self.events.len() > retention.max_events
                || self.bytes > retention.max_bytes
                || expired
            {
                self.bytes -= oldest.size;
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// The events after `offset` of `epoch`, oldest first, if every one of them is still
    /// retained at `now`.
    pub fn since(
        &mut self,
        epoch: &str,
        offset: u64,
        now: Instant,
    ) -> Result<impl ExactSizeIterator<Item = (u64, &T)>, Unrecoverable> {
        if epoch != self.epoch {
            return Err(Unrecoverable::EpochChanged);
        }
        if offset > self.top {
            return Err(Unrecoverable::Ahead);
        }
        self.evict(now);
        let first_kept = self.events.front().map_or(self.top + 1, |e| e.offset);
        if offset + 1 < first_kept {
            return Err(Unrecoverable::TooOld);
        }
        // Offsets in the ring are consecutive, so the first one wanted is found by arithmetic.
        let skip = (offset + 1 - first_kept) as usize;
        Ok(self
            .events
            .iter()
            .skip(skip)
            .map(|entry| (entry.offset, &entry.value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn offsets<T>(stream: &mut Stream<T>, epoch: &str, offset: u64, now: Instant) -> Vec<u64> {
        stream
            .since(epoch, offset, now)
            .map(|events| events.map(|(o, _)| o).collect())
            .unwrap_or_else(|e| panic!("unrecoverable: {e:?}"))
    }

    #[test]
    fn offsets_start_at_one_and_grow_by_one() {
        let now = Instant::now();
        let mut stream = Stream::new("e", Retention::default());
        assert_eq!(stream.top(), 0);
        assert_eq!(stream.push('a', 1, now), 1);
        assert_eq!(stream.push('b', 1, now), 2);
        assert_eq!(offsets(&mut stream, "e", 0, now), [1, 2]);
        assert_eq!(offsets(&mut stream, "e", 1, now), [2]);
        assert!(offsets(&mut stream, "e", 2, now).is_empty());
    }

    #[test]
    fn count_bound_evicts_the_oldest_and_makes_older_positions_unrecoverable() {
        let now = Instant::now();
        let mut stream = Stream::new("e", Retention::new(3, usize::MAX, secs(60)));
        for n in 0..5 {
            stream.push(n, 1, now);
        }
        assert_eq!(stream.len(), 3);
        assert_eq!(offsets(&mut stream, "e", 2, now), [3, 4, 5]);
        assert_eq!(stream.since("e", 1, now).err(), Some(Unrecoverable::TooOld));
    }

    #[test]
    fn byte_bound_evicts_until_the_rest_fits() {
        let now = Instant::now();
        let mut stream = Stream::new("e", Retention::new(100, 10, secs(60)));
        stream.push('a', 4, now);
        stream.push('b', 4, now);
        stream.push('c', 4, now);
        assert_eq!(stream.bytes(), 8);
        assert_eq!(offsets(&mut stream, "e", 1, now), [2, 3]);
        // An event larger than the whole budget is not kept at all.
        stream.push('d', 11, now);
        assert!(stream.is_empty());
        assert_eq!(stream.bytes(), 0);
        assert_eq!(stream.since("e", 3, now).err(), Some(Unrecoverable::TooOld));
        assert!(offsets(&mut stream, "e", 4, now).is_empty());
    }

    #[test]
    fn age_bound_forgets_events_at_read_time_too() {
        let start = Instant::now();
        let mut stream = Stream::new("e", Retention::new(100, 100, secs(10)));
        stream.push('a', 1, start);
        stream.push('b', 1, start + secs(5));
        assert_eq!(offsets(&mut stream, "e", 0, start + secs(9)), [1, 2]);
        assert_eq!(
            stream.since("e", 0, start + secs(11)).err(),
            Some(Unrecoverable::TooOld)
        );
        assert_eq!(offsets(&mut stream, "e", 1, start + secs(11)), [2]);
    }

    #[test]
    fn another_epoch_or_a_position_ahead_cannot_recover() {
        let now = Instant::now();
        let mut stream = Stream::new("new", Retention::default());
        stream.push('a', 1, now);
        assert_eq!(
            stream.since("old", 0, now).err(),
            Some(Unrecoverable::EpochChanged)
        );
        assert_eq!(
            stream.since("new", 2, now).err(),
            Some(Unrecoverable::Ahead)
        );
    }

    #[test]
    fn no_retention_still_stamps_offsets_and_recovers_only_an_empty_gap() {
        let now = Instant::now();
        let mut stream = Stream::new("e", Retention::NONE);
        assert_eq!(stream.push('a', 1, now), 1);
        assert!(stream.is_empty());
        assert!(offsets(&mut stream, "e", 1, now).is_empty());
        assert_eq!(stream.since("e", 0, now).err(), Some(Unrecoverable::TooOld));
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Publish an event of this size, this many milliseconds after the previous step.
        Push { size: usize, after_ms: u64 },
        /// A client that was at the top this many events ago asks what it missed.
        Resume { behind: u64, after_ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0usize..64, 0u64..50).prop_map(|(size, after_ms)| Step::Push { size, after_ms }),
            1 => (0u64..40, 0u64..50).prop_map(|(behind, after_ms)| Step::Resume { behind, after_ms }),
        ]
    }

    proptest! {
        /// Against a model that keeps every event: a resume gets exactly the events after its
        /// position, each once and in order, or is refused only when one of them is gone.
        #[test]
        fn resume_gets_exactly_the_missed_events_or_a_refusal(
            max_events in 0usize..20,
            max_bytes in 0usize..400,
            max_age_ms in 1u64..500,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let start = Instant::now();
            let mut now = start;
            let retention = Retention::new(max_events, max_bytes, Duration::from_millis(max_age_ms));
            let mut stream = Stream::new("e", retention);
            // Every event ever pushed: (offset, value, size, time).
            let mut all: Vec<(u64, u32, usize, Instant)> = Vec::new();
            for (n, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Push { size, after_ms } => {
                        now += Duration::from_millis(after_ms);
                        let offset = stream.push(n as u32, size, now);
                        prop_assert_eq!(offset, all.len() as u64 + 1);
                        all.push((offset, n as u32, size, now));
                    }
                    Step::Resume { behind, after_ms } => {
                        now += Duration::from_millis(after_ms);
                        let from = stream.top().saturating_sub(behind);
                        let missed = &all[from as usize..];
                        // The model: the newest events that fit every bound are kept.
                        let mut kept = 0;
                        let mut bytes = 0;
                        for event in all.iter().rev() {
                            bytes += event.2;
                            if kept + 1 > max_events
                                || bytes > max_bytes
                                || now.duration_since(event.3) >= retention.max_age
                            {
                                break;
                            }
                            kept += 1;
                        }
                        let recoverable = missed.len() <= kept;
                        match stream.since("e", from, now) {
                            Ok(events) => {
                                prop_assert!(recoverable);
                                let got: Vec<(u64, u32)> = events.map(|(o, v)| (o, *v)).collect();
                                let want: Vec<(u64, u32)> = missed.iter().map(|e| (e.0, e.1)).collect();
                                prop_assert_eq!(got, want);
                            }
                            Err(reason) => {
                                prop_assert!(!recoverable);
                                prop_assert_eq!(reason, Unrecoverable::TooOld);
                            }
                        }
                        prop_assert!(stream.len() <= max_events);
                        prop_assert!(stream.bytes() <= max_bytes);
                    }
                }
            }
        }

        /// A client that resumes after every gap and then hears the live events sees every
        /// offset once, in order, whenever no resume is refused.
        #[test]
        fn resumes_and_live_events_join_without_gap_or_duplicate(
            gaps in proptest::collection::vec((0u64..10, 1usize..10), 1..30),
        ) {
            let now = Instant::now();
            let mut stream = Stream::new("e", Retention::new(10, usize::MAX, Duration::from_secs(60)));
            let mut seen = Vec::new();
            let mut position = 0;
            for (missed, live) in gaps {
                for _ in 0..missed {
                    stream.push((), 1, now);
                }
                let events = stream.since("e", position, now).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                seen.extend(events.map(|(offset, _)| offset));
                for _ in 0..live {
                    seen.push(stream.push((), 1, now));
                }
                position = stream.top();
            }
            let want: Vec<u64> = (1..=stream.top()).collect();
            prop_assert_eq!(seen, want);
        }
    }
}
