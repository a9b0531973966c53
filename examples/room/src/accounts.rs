//! Accounts: names, salted argon2 password hashes and session tokens; in memory, or kept in a
//! JSON file.
//!
//! Hashing is slow on purpose, so it runs on tokio's blocking pool, a few at a time: at most
//! one per CPU, however many sign-ins arrive (the others wait their turn), and never for a
//! name or password longer than the limits. Tokens are 256 random bits; only their BLAKE2b
//! hash is kept (a leaked file does not leak sessions), and they expire (24 h by default).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2b512, Digest};
use serde::{Deserialize, Serialize};
use stmp::Status;

use crate::{now_ms, valid_name};

/// Tokens kept per account: a sign-in beyond this forgets the oldest.
const MAX_TOKENS: usize = 16;

/// The longest password, in bytes: argon2 reads all of it, so a megabyte would cost real time.
pub const MAX_PASSWORD: usize = 1024;

/// How long a session token is good for, unless [`Accounts::with_token_ttl`] says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The time in Unix milliseconds: [`now_ms`] unless a test winds its own clock.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The account store. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    path: Option<PathBuf>,
    params: Params,
    hashing: Arc<HashGate>,
    token_ttl: Duration,
    clock: Clock,
    /// Saves one at a time, each writing the state as it is when it starts.
    saving: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    file: File,
    /// Token hash → whose it is and when it was issued.
    tokens: HashMap<String, Issued>,
}

#[derive(Clone, Debug)]
struct Issued {
    user: String,
    /// Unix milliseconds.
    at: i64,
}

/// What the data file holds.
#[derive(Default, Serialize, Deserialize)]
struct File {
    users: BTreeMap<String, Account>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Account {
    /// The PHC string of the password's argon2id hash (salt and parameters included).
    password: String,
    /// When the account was made, in Unix milliseconds.
    created: i64,
    /// The account's session tokens, oldest first.
    #[serde(default)]
    tokens: Vec<StoredToken>,
}

/// A session token as the file keeps it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredToken {
    Issued {
        /// The token's hash.
        hash: String,
        /// When it was issued, in Unix milliseconds.
        issued: i64,
    },
    /// A file from before tokens expired: the bare hash, read as long expired.
    Legacy(String),
}

impl StoredToken {
    fn hash(&self) -> &str {
        match self {
            StoredToken::Issued { hash, .. } | StoredToken::Legacy(hash) => hash,
        }
    }

    fn issued(&self) -> i64 {
        match self {
            StoredToken::Issued { issued, .. } => *issued,
            StoredToken::Legacy(_) => 0,
        }
    }
}

/// Runs password hashes a few at a time, and counts them.
struct HashGate {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    running: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicU64,
}

impl HashGate {
    fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        HashGate {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Runs `hash` on the blocking pool once a permit is free. The permit goes with the work,
    /// so a caller that gives up while hashing does not free a place for another hash early.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        hash: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::internal("password hashing stopped"))?;
        let gate = self.clone();
        tokio::task::spawn_blocking(move || {
            let running = gate.running.fetch_add(1, Ordering::SeqCst) + 1;
            gate.peak.fetch_max(running, Ordering::SeqCst);
            gate.total.fetch_add(1, Ordering::SeqCst);
            let hashed = hash();
            gate.running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            hashed
        })
        .await
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))
    }
}

/// What the password hashing has done so far (see [`Accounts::hash_stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashStats {
    /// Hashes allowed at once.
    pub limit: usize,
    /// Hashes running now.
    pub running: usize,
    /// The most that ever ran at once.
    pub peak: usize,
    /// Hashes run in all (made or checked).
    pub total: u64,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("users", &self.len())
            .field("path", &self.inner.path)
            .field("hashing", &self.hash_stats())
            .finish()
    }
}

impl Accounts {
    /// An empty store that lives in memory only.
    pub fn in_memory() -> Self {
        Self::with(State::default(), None)
    }

    /// The store kept in `path`: read now if the file exists, written after every change.
    pub async fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file: File = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(e),
        };
        let tokens = file
            .users
            .iter()
            .flat_map(|(name, account)| {
                account.tokens.iter().map(move |token| {
                    let issued = Issued {
                        user: name.clone(),
                        at: token.issued(),
                    };
                    (token.hash().to_owned(), issued)
                })
            })
            .collect();
        Ok(Self::with(State { file, tokens }, Some(path)))
    }

    fn with(state: State, path: Option<PathBuf>) -> Self {
        Accounts {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                path,
                params: Params::default(),
                hashing: Arc::new(HashGate::new(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )),
                token_ttl: DEFAULT_TOKEN_TTL,
                clock: Arc::new(now_ms),
                saving: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Hashes new passwords with these argon2 parameters instead of the defaults (19 MiB, 2
    /// passes): cheaper ones make tests fast. Existing hashes keep their own parameters.
    pub fn with_params(self, params: Params) -> Self {
        self.rebuilt(|inner| Inner { params, ..inner })
    }

    /// Runs at most `limit` password hashes at once (at least 1) instead of one per CPU.
    pub fn with_hash_limit(self, limit: usize) -> Self {
        self.rebuilt(|inner| Inner {
            hashing: Arc::new(HashGate::new(limit)),
            ..inner
        })
    }

    /// Session tokens are good for `ttl` after they are issued instead of
    /// [`DEFAULT_TOKEN_TTL`].
    pub fn with_token_ttl(self, ttl: Duration) -> Self {
        self.rebuilt(|inner| Inner {
            token_ttl: ttl,
            ..inner
        })
    }

    /// Tells the time with `clock` (Unix milliseconds) instead of the system's: tests use it
    /// to let tokens expire without waiting.
    pub fn with_clock(self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.rebuilt(|inner| Inner {
            clock: Arc::new(clock),
            ..inner
        })
    }

    fn rebuilt(self, change: impl FnOnce(Inner) -> Inner) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            panic!("the store's settings must be made before the store is shared")
        });
        Accounts {
            inner: Arc::new(change(inner)),
        }
    }

    /// What the password hashing has done so far: how many at once it allows, runs, ran at
    /// most, and ran in all.
    pub fn hash_stats(&self) -> HashStats {
        let gate = &self.inner.hashing;
        HashStats {
            limit: gate.limit,
            running: gate.running.load(Ordering::SeqCst),
            peak: gate.peak.load(Ordering::SeqCst),
            total: gate.total.load(Ordering::SeqCst),
        }
    }

    /// How long a session token is good for.
    pub fn token_ttl(&self) -> Duration {
        self.inner.token_ttl
    }

    fn now(&self) -> i64 {
        (self.inner.clock)()
    }

    /// Cheap argon2 parameters (64 KiB, 1 pass), for tests only.
    pub fn test_params() -> Params {
        Params::new(64, 1, 1, None).expect("valid argon2 parameters")
    }

    /// The file the store is kept in.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The number of accounts.
    pub fn len(&self) -> usize {
        self.lock().file.users.len()
    }

    /// Whether there is no account.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an account is called `name`.
    pub fn exists(&self, name: &str) -> bool {
        self.lock().file.users.contains_key(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an account; returns a new session token. `BadRequest` when the name is invalid
    /// or taken, or the password empty or longer than [`MAX_PASSWORD`].
    pub async fn sign_up(&self, name: &str, password: &str) -> Result<String, Status> {
        check_credentials(name, password)?;
        if self.exists(name) {
            return Err(taken(name));
        }
        let hash = self.hash(password).await?;
        let now = self.now();
        let token = {
            let mut state = self.lock();
            if state.file.users.contains_key(name) {
                return Err(taken(name));
            }
            state.file.users.insert(
                name.to_owned(),
                Account {
                    password: hash,
                    created: now,
                    tokens: Vec::new(),
                },
            );
            new_token(&mut state, name, now)
        };
        self.save().await?;
        Ok(token)
    }

    /// Checks a password; returns a new session token. `NotFound` for an unknown user,
    /// `Unauthorized` for a wrong password, `BadRequest` (without hashing anything) for a name
    /// no account can have or a password longer than [`MAX_PASSWORD`].
    pub async fn sign_in(&self, name: &str, password: &str) -> Result<String, Status> {
        check_credentials(name, password)?;
        let Some(stored) = self
            .lock()
            .file
            .users
            .get(name)
            .map(|account| account.password.clone())
        else {
            return Err(Status::not_found(format!(
                "no user named {name:?}: sign up first"
            )));
        };
        let password = password.to_owned();
        let matches = self
            .inner
            .hashing
            .run(move || {
                let parsed = PasswordHash::new(&stored)
                    .map_err(|e| Status::internal(format!("stored password hash: {e}")))?;
                Ok::<_, Status>(
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok(),
                )
            })
            .await??;
        if !matches {
            return Err(Status::unauthorized(format!("wrong password for {name:?}")));
        }
        let now = self.now();
        let token = {
            let mut state = self.lock();
            if !state.file.users.contains_key(name) {
                return Err(Status::not_found(format!("no user named {name:?}")));
            }
            new_token(&mut state, name, now)
        };
        self.save().await?;
        Ok(token)
    }

    /// The user of a session token. `Unauthorized` when it is unknown, was forgotten, or is
    /// older than the token TTL (the client signs in with its password again).
    pub fn check_token(&self, token: &str) -> Result<String, Status> {
        self.check_token_at(token, self.now())
    }

    /// [`check_token`](Self::check_token) at `now` (Unix milliseconds). An expired token is
    /// forgotten.
    pub fn check_token_at(&self, token: &str, now: i64) -> Result<String, Status> {
        let hash = token_hash(token);
        let mut state = self.lock();
        let issued = state.tokens.get(&hash).cloned().ok_or_else(|| {
            Status::unauthorized("unknown or forgotten token: sign in with a password")
        })?;
        if expired(issued.at, self.inner.token_ttl, now) {
            state.tokens.remove(&hash);
            if let Some(account) = state.file.users.get_mut(&issued.user) {
                account.tokens.retain(|t| t.hash() != hash);
            }
            return Err(Status::unauthorized(
                "the token expired: sign in with a password",
            ));
        }
        Ok(issued.user)
    }

    async fn hash(&self, password: &str) -> Result<String, Status> {
        let password = password.to_owned();
        let params = self.inner.params.clone();
        self.inner
            .hashing
            .run(move || {
                let mut salt = [0u8; 16];
                getrandom::fill(&mut salt)
                    .map_err(|e| Status::internal(format!("no randomness: {e}")))?;
                let salt = SaltString::encode_b64(&salt)
                    .map_err(|e| Status::internal(format!("salt: {e}")))?;
                Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                    .hash_password(password.as_bytes(), &salt)
                    .map(|hash| hash.to_string())
                    .map_err(|e| Status::internal(format!("cannot hash the password: {e}")))
            })
            .await?
    }

    /// Writes the file (when there is one, readable by its owner only): a temporary file
    /// renamed over the old one.
    async fn save(&self) -> Result<(), Status> {
        let Some(path) = &self.inner.path else {
            return Ok(());
        };
        let _one_at_a_time = self.inner.saving.lock().await;
        let bytes = serde_json::to_vec_pretty(&self.lock().file)
            .map_err(|e| Status::internal(format!("cannot encode the accounts: {e}")))?;
        let temporary = path.with_extension("tmp");
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            // Password hashes are nobody else's business.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &target)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot save the accounts");
            Status::internal("cannot save the accounts")
        })
    }
}

/// Refuses, before any hashing, what no account can have: a bad name, an empty password or
/// one longer than [`MAX_PASSWORD`] (`BadRequest`).
pub fn check_credentials(name: &str, password: &str) -> Result<(), Status> {
    valid_name("user name", name)?;
    if password.is_empty() {
        return Err(Status::bad_request("the password is empty"));
    }
    if password.len() > MAX_PASSWORD {
        return Err(Status::bad_request(format!(
            "the password is longer than {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

fn expired(issued: i64, ttl: Duration, now: i64) -> bool {
    now.saturating_sub(issued) >= i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn taken(name: &str) -> Status {
    Status::bad_request(format!("the name {name:?} is taken"))
}

/// Makes a token for `name` issued at `now`, remembering its hash (and forgetting the oldest
/// beyond [`MAX_TOKENS`]).
fn new_token(state: &mut State, name: &str, now: i64) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    let token = hex(&bytes);
    let hash = token_hash(&token);
    let account = state
        .file
        .users
        .get_mut(name)
        .expect("the caller checked the account exists");
    account.tokens.push(StoredToken::Issued {
        hash: hash.clone(),
        issued: now,
    });
    let excess = account.tokens.len().saturating_sub(MAX_TOKENS);
    let forgotten: Vec<StoredToken> = account.tokens.drain(..excess).collect();
    for old in forgotten {
        state.tokens.remove(old.hash());
    }
    state.tokens.insert(
        hash,
        Issued {
            user: name.to_owned(),
            at: now,
        },
    );
    token
}

fn token_hash(token: &str) -> String {
    hex(&Blake2b512::digest(token.as_bytes())[..32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stmp::Code;

    fn store() -> Accounts {
        Accounts::in_memory().with_params(Accounts::test_params())
    }

    #[tokio::test]
    async fn sign_up_then_sign_in() {
        let accounts = store();
        let token = accounts.sign_up("alice", "secret").await.unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(accounts.check_token(&token).unwrap(), "alice");
        let again = accounts.sign_in("alice", "secret").await.unwrap();
        assert_ne!(again, token);
        assert_eq!(accounts.check_token(&again).unwrap(), "alice");
        let stored = accounts.lock().file.users["alice"].password.clone();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("secret"));
    }

    #[tokio::test]
    async fn errors_are_clear() {
        let accounts = store();
        accounts.sign_up("alice", "secret").await.unwrap();
        let wrong = accounts.sign_in("alice", "nope").await.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthorized);
        assert!(wrong.message().contains("wrong password"), "{wrong}");
        let unknown = accounts.sign_in("bob", "secret").await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        let taken = accounts.sign_up("alice", "other").await.unwrap_err();
        assert_eq!(taken.code(), Code::BadRequest);
        assert_eq!(
            accounts.sign_up("a b", "x").await.unwrap_err().code(),
            Code::BadRequest
        );
        assert_eq!(
            accounts.sign_up("carol", "").await.unwrap_err().code(),
            Code::BadRequest
        );
        assert_eq!(
            accounts.check_token("deadbeef").unwrap_err().code(),
            Code::Unauthorized
        );
    }

    #[tokio::test]
    async fn old_tokens_are_forgotten() {
        let accounts = store();
        let first = accounts.sign_up("alice", "secret").await.unwrap();
        for _ in 0..MAX_TOKENS {
            accounts.sign_in("alice", "secret").await.unwrap();
        }
        assert!(accounts.check_token(&first).is_err());
        assert_eq!(accounts.lock().tokens.len(), MAX_TOKENS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_run_a_few_at_a_time() {
        // Slow enough hashes that unbounded ones would overlap many at once.
        let slow = Params::new(2048, 1, 1, None).unwrap();
        let accounts = Accounts::in_memory().with_params(slow).with_hash_limit(2);
        accounts.sign_up("alice", "secret").await.unwrap();
        let attempts: Vec<_> = (0..12)
            .map(|n| {
                let accounts = accounts.clone();
                tokio::spawn(async move { accounts.sign_in("alice", &format!("guess-{n}")).await })
            })
            .collect();
        for attempt in attempts {
            let refused = attempt.await.unwrap().unwrap_err();
            assert_eq!(refused.code(), Code::Unauthorized, "{refused}");
        }
        let stats = accounts.hash_stats();
        assert_eq!(stats.total, 13, "{stats:?}");
        assert_eq!(stats.running, 0, "{stats:?}");
        assert!(stats.peak <= 2, "{stats:?}");
    }

    #[tokio::test]
    async fn the_default_hash_limit_is_the_cpu_count() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Accounts::in_memory().hash_stats().limit, cpus);
        assert_eq!(store().with_hash_limit(0).hash_stats().limit, 1);
    }

    #[tokio::test]
    async fn long_passwords_and_names_are_refused_without_hashing() {
        let accounts = store();
        accounts.sign_up("alice", "secret").await.unwrap();
        let hashed = accounts.hash_stats().total;
        let long = "p".repeat(MAX_PASSWORD + 1);
        for refused in [
            accounts.sign_in("alice", &long).await.unwrap_err(),
            accounts.sign_up("bob", &long).await.unwrap_err(),
            accounts
                .sign_in(&"a".repeat(4096), "secret")
                .await
                .unwrap_err(),
        ] {
            assert_eq!(refused.code(), Code::BadRequest, "{refused}");
            assert!(refused.message().len() < 200, "{refused}");
        }
        assert_eq!(accounts.hash_stats().total, hashed);
        // The longest allowed password still works.
        let longest = "p".repeat(MAX_PASSWORD);
        accounts.sign_up("carol", &longest).await.unwrap();
        accounts.sign_in("carol", &longest).await.unwrap();
    }

    #[tokio::test]
    async fn tokens_expire() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = now.clone();
        let accounts = Accounts::in_memory()
            .with_params(Accounts::test_params())
            .with_token_ttl(Duration::from_secs(60))
            .with_clock(move || clock.load(Ordering::SeqCst) as i64);
        let token = accounts.sign_up("alice", "secret").await.unwrap();
        assert_eq!(accounts.check_token(&token).unwrap(), "alice");
        assert_eq!(
            accounts.check_token_at(&token, 1_000_000 + 59_999).unwrap(),
            "alice"
        );
        now.fetch_add(60_000, Ordering::SeqCst);
        let expired = accounts.check_token(&token).unwrap_err();
        assert_eq!(expired.code(), Code::Unauthorized);
        assert!(expired.message().contains("expired"), "{expired}");
        // Forgotten once expired, even if the clock went back.
        assert!(accounts.check_token_at(&token, 1_000_000).is_err());
        assert!(accounts.lock().tokens.is_empty());
        // A new sign-in gives a token good for another TTL.
        let again = accounts.sign_in("alice", "secret").await.unwrap();
        assert_eq!(accounts.check_token(&again).unwrap(), "alice");
    }

    #[tokio::test]
    async fn a_file_without_issue_times_has_only_expired_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.json");
        let token = "ab".repeat(32);
        let legacy = serde_json::json!({
            "users": {"alice": {"password": "x", "created": 1, "tokens": [token_hash(&token)]}}
        });
        std::fs::write(&path, legacy.to_string()).unwrap();
        let accounts = Accounts::open(&path).await.unwrap();
        assert!(accounts.exists("alice"));
        let refused = accounts.check_token(&token).unwrap_err();
        assert!(refused.message().contains("expired"), "{refused}");
    }

    #[tokio::test]
    async fn a_file_keeps_accounts_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.json");
        let accounts = Accounts::open(&path)
            .await
            .unwrap()
            .with_params(Accounts::test_params());
        let token = accounts.sign_up("alice", "secret").await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("secret") && !text.contains(&token), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let reopened = Accounts::open(&path).await.unwrap();
        assert!(reopened.exists("alice"));
        assert_eq!(reopened.check_token(&token).unwrap(), "alice");
        reopened.sign_in("alice", "secret").await.unwrap();
        assert_eq!(
            reopened.sign_in("alice", "wrong").await.unwrap_err().code(),
            Code::Unauthorized
        );
    }
}
