//! Sign-in rate limits: token buckets per connection and per remote address.
//!
//! Every `SignIn` or `SignUp` takes an attempt from its connection's bucket and from its
//! address's bucket before any password is hashed; a successful one gives both back, so only
//! failures (wrong passwords, unknown users, taken names) use the budget up. With a bucket
//! empty the call is refused with `TooManyRequests` and a retry hint, at no hashing cost.
//!
//! The buckets are plain values advanced by a `now` the caller passes ([`Bucket`],
//! [`AddressBuckets`]); [`SignInLimiter`] ties them to connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stmp::{Conn, Status};

/// `attempts` per `period`, refilled evenly; a full bucket holds `attempts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Attempts a full bucket holds.
    pub attempts: u32,
    /// The time in which an empty bucket refills.
    pub period: Duration,
}

impl RateLimit {
    /// `attempts` per minute.
    pub const fn per_minute(attempts: u32) -> Self {
        RateLimit {
            attempts,
            period: Duration::from_secs(60),
        }
    }

    fn refill_time(&self) -> Duration {
        self.period / self.attempts.max(1)
    }
}

/// One bucket of attempts.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// Whole attempts left.
    left: u32,
    /// When `left` was last brought up to date.
    since: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            left: limit.attempts,
            since: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        if self.left >= limit.attempts {
            self.since = now;
            return;
        }
        let step = limit.refill_time();
        let elapsed = now.saturating_duration_since(self.since);
        let earned = (elapsed.as_nanos() / step.as_nanos().max(1)) as u64;
        let room = u64::from(limit.attempts - self.left);
        if earned >= room {
            self.left = limit.attempts;
            self.since = now;
        } else {
            // Keep the part of a step already waited.
            self.left += earned as u32;
            self.since += step * earned as u32;
        }
    }

    /// Takes an attempt, or says how long until one is back.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        self.check(limit, now)?;
        self.left -= 1;
        Ok(())
    }

    /// Whether an attempt could be taken now, or how long until one is back.
    pub fn check(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.left > 0 {
            Ok(())
        } else {
            let waited = now.saturating_duration_since(self.since);
            Err(limit.refill_time().saturating_sub(waited))
        }
    }

    /// Gives an attempt back (up to full).
    pub fn give_back(&mut self, limit: RateLimit) {
        self.left = (self.left + 1).min(limit.attempts);
    }

    /// Whether the bucket is full at `now` (and so need not be remembered).
    pub fn is_full(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        self.left >= limit.attempts
    }
}

/// The buckets of remote addresses, bounded in number. IPv6 addresses count by their /64, the
/// block one host usually has to itself.
#[derive(Debug)]
pub struct AddressBuckets {
    limit: RateLimit,
    most: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl AddressBuckets {
    /// Buckets for at most `most` addresses at once.
    pub fn new(limit: RateLimit, most: usize) -> Self {
        AddressBuckets {
            limit,
            most: most.max(1),
            buckets: HashMap::new(),
        }
    }

    fn key(addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(_) => addr,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    IpAddr::from(octets)
                }
            },
        }
    }

    /// The bucket of `addr`, made full when new. `None` when every place is taken by an
    /// address still refilling: then nobody new gets in until one is full again.
    fn bucket(&mut self, addr: IpAddr, now: Instant) -> Option<&mut Bucket> {
        let key = Self::key(addr);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.most {
            let limit = self.limit;
            self.buckets.retain(|_, bucket| !bucket.is_full(limit, now));
            if self.buckets.len() >= self.most {
                return None;
            }
        }
        let limit = self.limit;
        Some(
            self.buckets
                .entry(key)
                .or_insert_with(|| Bucket::full(limit, now)),
        )
    }

    /// Whether `addr` may try now, or how long until it may.
    pub fn check(&mut self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let limit = self.limit;
        match self.bucket(addr, now) {
            Some(bucket) => bucket.check(limit, now),
            None => Err(limit.refill_time()),
        }
    }

    /// Takes an attempt of `addr`, or says how long until one is back.
    pub fn take(&mut self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let limit = self.limit;
        match self.bucket(addr, now) {
            Some(bucket) => bucket.take(limit, now),
            None => Err(limit.refill_time()),
        }
    }

    /// Gives an attempt of `addr` back.
    pub fn give_back(&mut self, addr: IpAddr) {
        let limit = self.limit;
        if let Some(bucket) = self.buckets.get_mut(&Self::key(addr)) {
            bucket.give_back(limit);
        }
    }

    /// The addresses remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The sign-in limits of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignInLimits {
    /// Per connection. Default 5 per minute.
    pub per_conn: RateLimit,
    /// Per remote address (IPv6: per /64). Default 20 per minute.
    pub per_address: RateLimit,
    /// Addresses remembered at once. Default 65,536.
    pub addresses: usize,
}

impl Default for SignInLimits {
    fn default() -> Self {
        SignInLimits {
            per_conn: RateLimit::per_minute(5),
            per_address: RateLimit::per_minute(20),
            addresses: 1 << 16,
        }
    }
}

/// A connection's own bucket, kept on the connection (it goes when the connection does).
#[derive(Clone)]
struct ConnBucket(Arc<Mutex<Bucket>>);

/// Sign-in attempts, counted per connection and per address.
#[derive(Clone, Debug)]
pub struct SignInLimiter {
    limits: SignInLimits,
    addresses: Arc<Mutex<AddressBuckets>>,
}

/// A granted attempt: [`succeeded`](Attempt::succeeded) gives it back.
#[must_use = "an attempt that succeeded is given back"]
#[derive(Debug)]
pub struct Attempt {
    limiter: SignInLimiter,
    conn: Option<Arc<Mutex<Bucket>>>,
    addr: Option<IpAddr>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn too_many(whose: &str, retry: Duration) -> Status {
    let seconds = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    Status::too_many_requests(format!(
        "too many sign-in attempts from this {whose}: retry in {}s",
        seconds.max(1)
    ))
}

impl SignInLimiter {
    /// A limiter with these limits.
    pub fn new(limits: SignInLimits) -> Self {
        SignInLimiter {
            limits,
            addresses: Arc::new(Mutex::new(AddressBuckets::new(
                limits.per_address,
                limits.addresses,
            ))),
        }
    }

    /// The limits.
    pub fn limits(&self) -> SignInLimits {
        self.limits
    }

    /// Takes an attempt of `conn` and of its address, or refuses with `TooManyRequests` (and
    /// takes nothing).
    pub fn attempt(&self, conn: &Conn, now: Instant) -> Result<Attempt, Status> {
        let bucket = match conn.extension::<ConnBucket>() {
            Some(bucket) => bucket.0,
            None => {
                let bucket = Arc::new(Mutex::new(Bucket::full(self.limits.per_conn, now)));
                conn.insert_extension(ConnBucket(bucket.clone()));
                bucket
            }
        };
        // The connection's lock is held while the address is charged, so two attempts on
        // one connection cannot both pass a check meant for one.
        let mut own = lock(&bucket);
        own.check(self.limits.per_conn, now)
            .map_err(|retry| too_many("connection", retry))?;
        let addr = conn.remote_addr().map(|a| a.ip());
        if let Some(addr) = addr {
            lock(&self.addresses)
                .take(addr, now)
                .map_err(|retry| too_many("address", retry))?;
        }
        own.take(self.limits.per_conn, now)
            .map_err(|retry| too_many("connection", retry))?;
        drop(own);
        Ok(Attempt {
            limiter: self.clone(),
            conn: Some(bucket),
            addr,
        })
    }

    /// The addresses remembered now.
    pub fn addresses(&self) -> usize {
        lock(&self.addresses).len()
    }
}

impl Attempt {
    /// The attempt succeeded: it does not count against either limit.
    pub fn succeeded(mut self) {
        if let Some(bucket) = self.conn.take() {
            lock(&bucket).give_back(self.limiter.limits.per_conn);
        }
        if let Some(addr) = self.addr.take() {
            lock(&self.limiter.addresses).give_back(addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        attempts: 3,
        period: Duration::from_secs(30),
    };

    #[test]
    fn a_bucket_empties_then_refills_one_step_at_a_time() {
        let start = Instant::now();
        let mut bucket = Bucket::full(LIMIT, start);
        for _ in 0..3 {
            bucket.take(LIMIT, start).unwrap();
        }
        assert_eq!(bucket.take(LIMIT, start), Err(Duration::from_secs(10)));
        let later = start + Duration::from_secs(4);
        assert_eq!(bucket.take(LIMIT, later), Err(Duration::from_secs(6)));
        // One step refills one attempt; the part of the next step already waited is kept.
        let later = start + Duration::from_secs(15);
        bucket.take(LIMIT, later).unwrap();
        assert_eq!(bucket.take(LIMIT, later), Err(Duration::from_secs(5)));
        // A long wait fills it, no more.
        let much_later = start + Duration::from_secs(3600);
        assert!(bucket.is_full(LIMIT, much_later));
        for _ in 0..3 {
            bucket.take(LIMIT, much_later).unwrap();
        }
        assert!(bucket.take(LIMIT, much_later).is_err());
        bucket.give_back(LIMIT);
        bucket.take(LIMIT, much_later).unwrap();
    }

    #[test]
    fn addresses_have_buckets_of_their_own() {
        let now = Instant::now();
        let mut buckets = AddressBuckets::new(LIMIT, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            buckets.take(a, now).unwrap();
        }
        assert!(buckets.take(a, now).is_err());
        buckets.take(b, now).unwrap();
        // The same host over IPv4 and as a mapped IPv6 address, and one /64.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(buckets.take(mapped, now).is_err());
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let same_block: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other_block: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        for _ in 0..3 {
            buckets.take(one, now).unwrap();
        }
        assert!(buckets.take(same_block, now).is_err());
        buckets.take(other_block, now).unwrap();
    }

    #[test]
    fn the_address_table_is_bounded() {
        let now = Instant::now();
        let mut buckets = AddressBuckets::new(LIMIT, 2);
        let addr = |n: u8| IpAddr::from([192, 0, 2, n]);
        buckets.take(addr(1), now).unwrap();
        buckets.take(addr(2), now).unwrap();
        // Both still refilling: a third address waits.
        assert!(buckets.take(addr(3), now).is_err());
        assert_eq!(buckets.len(), 2);
        // Once they are full they are forgotten to make room.
        let later = now + Duration::from_secs(10);
        buckets.take(addr(3), later).unwrap();
        assert!(buckets.len() <= 2);
    }
}
