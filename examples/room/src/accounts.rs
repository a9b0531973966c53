//! Accounts: names, salted argon2 password hashes and session tokens; in memory, or kept in a
//! JSON file.
//!
//! Hashing is slow on purpose, so it runs on tokio's blocking pool. Tokens are 256 random
//! bits; only their BLAKE2b hash is kept (a leaked file does not leak sessions).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2b512, Digest};
use serde::{Deserialize, Serialize};
use stmp::Status;

use crate::{now_ms, valid_name};

/// Tokens kept per account: a sign-in beyond this forgets the oldest.
const MAX_TOKENS: usize = 16;

/// The account store. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    path: Option<PathBuf>,
    params: Params,
    /// Saves one at a time, each writing the state as it is when it starts.
    saving: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    file: File,
    /// Token hash → user.
    tokens: HashMap<String, String>,
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
    /// Hashes of the account's session tokens, oldest first.
    #[serde(default)]
    tokens: Vec<String>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("users", &self.len())
            .field("path", &self.inner.path)
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
                account
                    .tokens
                    .iter()
                    .map(move |token| (token.clone(), name.clone()))
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
                saving: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Hashes new passwords with these argon2 parameters instead of the defaults (19 MiB, 2
    /// passes): cheaper ones make tests fast. Existing hashes keep their own parameters.
    pub fn with_params(self, params: Params) -> Self {
        let inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_params must be called before the store is shared"));
        Accounts {
            inner: Arc::new(Inner { params, ..inner }),
        }
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
    /// or taken, or the password empty.
    pub async fn sign_up(&self, name: &str, password: &str) -> Result<String, Status> {
        valid_name("user name", name)?;
        if password.is_empty() {
            return Err(Status::bad_request("the password is empty"));
        }
        if password.len() > 1024 {
            return Err(Status::bad_request(
                "the password is longer than 1024 bytes",
            ));
        }
        if self.exists(name) {
            return Err(taken(name));
        }
        let hash = self.hash(password).await?;
        let token = {
            let mut state = self.lock();
            if state.file.users.contains_key(name) {
                return Err(taken(name));
            }
            state.file.users.insert(
                name.to_owned(),
                Account {
                    password: hash,
                    created: now_ms(),
                    tokens: Vec::new(),
                },
            );
            new_token(&mut state, name)
        };
        self.save().await?;
        Ok(token)
    }

    /// Checks a password; returns a new session token. `NotFound` for an unknown user,
    /// `Unauthorized` for a wrong password.
    pub async fn sign_in(&self, name: &str, password: &str) -> Result<String, Status> {
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
        let matches = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&stored)
                .map_err(|e| Status::internal(format!("stored password hash: {e}")))?;
            Ok::<_, Status>(
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
            )
        })
        .await
        .map_err(|e| Status::internal(format!("password check failed: {e}")))??;
        if !matches {
            return Err(Status::unauthorized(format!("wrong password for {name:?}")));
        }
        let token = {
            let mut state = self.lock();
            if !state.file.users.contains_key(name) {
                return Err(Status::not_found(format!("no user named {name:?}")));
            }
            new_token(&mut state, name)
        };
        self.save().await?;
        Ok(token)
    }

    /// The user of a session token. `Unauthorized` when it is unknown (or was forgotten).
    pub fn check_token(&self, token: &str) -> Result<String, Status> {
        self.lock()
            .tokens
            .get(&token_hash(token))
            .cloned()
            .ok_or_else(|| {
                Status::unauthorized("unknown or expired token: sign in with a password")
            })
    }

    async fn hash(&self, password: &str) -> Result<String, Status> {
        let password = password.to_owned();
        let params = self.inner.params.clone();
        tokio::task::spawn_blocking(move || {
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
        .await
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))?
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

fn taken(name: &str) -> Status {
    Status::bad_request(format!("the name {name:?} is taken"))
}

/// Makes a token for `name`, remembering its hash (and forgetting the oldest beyond
/// [`MAX_TOKENS`]).
fn new_token(state: &mut State, name: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    let token = hex(&bytes);
    let hash = token_hash(&token);
    let account = state
        .file
        .users
        .get_mut(name)
        .expect("the caller checked the account exists");
    account.tokens.push(hash.clone());
    let excess = account.tokens.len().saturating_sub(MAX_TOKENS);
    let forgotten: Vec<String> = account.tokens.drain(..excess).collect();
    for old in forgotten {
        state.tokens.remove(&old);
    }
    state.tokens.insert(hash, name.to_owned());
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
