//! Password policy and hashing.
//!
//! Hashes are Argon2id PHC strings with OWASP's parameters (m = 19 MiB, t = 2, p = 1). Hashing
//! takes tens of milliseconds of CPU and 19 MiB of memory, so it runs on a few dedicated worker
//! threads: a burst of sign-ins queues instead of stalling the async runtime.
//!
//! Dedicated threads rather than tokio's blocking pool, measured: with `spawn_blocking` behind a
//! semaphore, 50 concurrent sign-ins raised the server's peak RSS from 60 MB to 373 MB, because
//! glibc raises its mmap threshold after the first 19 MiB free and then serves each hash from
//! the arena of whichever of the many blocking threads ran it, keeping it there. With a fixed set
//! of workers each reuses its own memory: peak use stays near `workers × 19 MiB`.

use std::sync::{Arc, Mutex, mpsc};

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use portcullis_token::Secret;
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::oneshot;

/// What a password must satisfy. Defaults: at least 12 characters, at most 256 bytes, and a
/// zxcvbn strength of at least 2 (more than 10⁶ guesses: rejects common and dictionary-based
/// passwords such as `password1234` or `qwertyuiop12`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Minimum length in characters (Unicode scalar values).
    pub min_chars: usize,
    /// Maximum length in bytes of UTF-8; bounds the hashing work an attacker can ask for.
    pub max_bytes: usize,
    /// Minimum zxcvbn score, 0–4; 0 turns the common-password check off.
    pub min_strength: u8,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_chars: 12,
            max_bytes: 256,
            min_strength: 2,
        }
    }
}

/// Why a password was refused, in words the user can act on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is too short: {got} characters, at least {min} required")]
    TooShort { min: usize, got: usize },
    #[error("the password is too long: {got} bytes, at most {max} allowed")]
    TooLong { max: usize, got: usize },
    #[error(
        "the password contains a control character (such as a newline or NUL); use printable characters only"
    )]
    ControlCharacter,
    #[error(
        "the password is too easy to guess{hint}; choose a longer passphrase of unrelated words, or let portcullis generate one"
    )]
    TooCommon { hint: String },
}

/// How many characters of a password the strength estimate looks at. zxcvbn's matching grows
/// faster than linearly with length; a password this long that is still weak in its first 64
/// characters is weak.
const STRENGTH_WINDOW: usize = 64;

impl PasswordPolicy {
    /// Checks a password. `context` holds words the password must not be built from (the
    /// username, the email address): zxcvbn counts them as known.
    pub fn check(&self, password: &str, context: &[&str]) -> Result<(), PasswordError> {
        if password.len() > self.max_bytes {
            return Err(PasswordError::TooLong {
                max: self.max_bytes,
                got: password.len(),
            });
        }
        let chars = password.chars().count();
        if chars < self.min_chars {
            return Err(PasswordError::TooShort {
                min: self.min_chars,
                got: chars,
            });
        }
        if password.chars().any(char::is_control) {
            return Err(PasswordError::ControlCharacter);
        }
        if self.min_strength > 0 {
            let window: String = password.chars().take(STRENGTH_WINDOW).collect();
            let estimate = zxcvbn::zxcvbn(&window, context);
            if (estimate.score() as u8) < self.min_strength {
                let hint = estimate
                    .feedback()
                    .and_then(|f| f.warning())
                    .map(|w| format!(" ({})", w.to_string().trim_end_matches('.').to_lowercase()))
                    .unwrap_or_default();
                return Err(PasswordError::TooCommon { hint });
            }
        }
        Ok(())
    }
}

impl PasswordPolicy {
    /// zxcvbn's score of a password, 0 (very weak) to 4 (very strong), for the strength meter.
    pub fn strength(&self, password: &str, context: &[&str]) -> u8 {
        let window: String = password.chars().take(STRENGTH_WINDOW).collect();
        if window.is_empty() {
            return 0;
        }
        zxcvbn::zxcvbn(&window, context).score() as u8
    }
}

/// A random password of 24 letters and digits (about 142 bits), for users created without one.
pub fn generate_password() -> Secret<String> {
    Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// Hashing failed for a reason that is not the user's (a worker panicked, a stored hash is not
/// a PHC string).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing worker stopped: {0}")]
    Worker(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run hashing jobs in order of arrival.
#[derive(Debug)]
struct Workers {
    queue: Mutex<mpsc::Sender<Job>>,
}

impl Workers {
    fn start(count: usize) -> Result<Workers, HashError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..count {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take a job, not while running it.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // every sender is gone: shut down
                        }
                    }
                })
                .map_err(|e| HashError::Worker(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Workers {
            queue: Mutex::new(tx),
        })
    }
}

/// Hashes and verifies passwords off the async runtime, a bounded number at a time.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    params: Params,
    workers: Arc<Workers>,
    /// A hash of a random password, verified against when the user does not exist, so an
    /// unknown username costs the same time as a wrong password.
    dummy: Arc<str>,
}

impl PasswordHasher {
    /// OWASP parameters; `concurrency` hashes at most at once (0 means the number of CPUs).
    pub fn new(concurrency: usize) -> Result<Self, HashError> {
        Self::with_params(Params::default(), concurrency)
    }

    /// Cheap parameters (8 KiB, one pass) so tests that create many users stay fast.
    /// Never use outside tests: such hashes fall to a GPU in seconds.
    #[doc(hidden)]
    pub fn insecure_fast_for_tests() -> Self {
        #[allow(clippy::expect_used)]
        let params = Params::new(8, 1, 1, None).expect("valid argon2 test parameters");
        #[allow(clippy::expect_used)]
        Self::with_params(params, 2).expect("test hasher")
    }

    fn with_params(params: Params, concurrency: usize) -> Result<Self, HashError> {
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let dummy = dummy_hash(&params);
        Ok(PasswordHasher {
            params,
            workers: Arc::new(Workers::start(concurrency)?),
            dummy: dummy.into(),
        })
    }

    /// Hashes a password into a PHC string.
    pub async fn hash(&self, password: Secret<String>) -> Result<String, HashError> {
        let params = self.params.clone();
        self.run(move || hash_now(&params, password.expose().as_bytes()))
            .await?
    }

    /// Checks a password against a stored PHC string. With no stored hash (unknown user, or a
    /// user without a password) it verifies against a dummy hash and returns false, taking the
    /// same time as a wrong password.
    pub async fn verify(
        &self,
        password: Secret<String>,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let dummy = self.dummy.clone();
        self.run(move || {
            let (hash, real) = match &stored {
                Some(h) => (h.as_str(), true),
                None => (&*dummy, false),
            };
            // The parameters come from the PHC string, so old hashes keep verifying after the
            // defaults change.
            let ok = Argon2::default()
                .verify_password(password.expose().as_bytes(), hash)
                .is_ok();
            ok && real
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let boxed: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        self.workers
            .queue
            .lock()
            .map_err(|_| HashError::Worker("hashing queue poisoned".into()))?
            .send(boxed)
            .map_err(|_| HashError::Worker("hashing threads stopped".into()))?;
        rx.await
            .map_err(|_| HashError::Worker("a hashing job panicked".into()))
    }
}

/// The hash unknown users are verified against: a PHC string with `params`, a random salt and a
/// random output, which no password produces. Verifying against it costs what verifying a real
/// hash with those parameters costs, and it is made without hashing anything: hashing one at
/// start-up took tens of milliseconds and a 19 MiB transient.
fn dummy_hash(params: &Params) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut salt = [0u8; 16];
    let mut output = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    rand::fill(&mut salt);
    rand::fill(&mut output[..]);
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        b64.encode(salt),
        b64.encode(output)
    )
}

fn hash_now(params: &Params, password: &[u8]) -> Result<String, HashError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_has_the_real_parameters_and_matches_no_password() {
        let params = Params::default();
        let dummy = dummy_hash(&params);
        let parsed = argon2::PasswordHash::new(&dummy).expect("a PHC string");
        let real = hash_now(&Params::new(8, 1, 1, None).expect("params"), b"x").expect("hash");
        let real = argon2::PasswordHash::new(&real).expect("a PHC string");
        assert_eq!(parsed.algorithm, real.algorithm);
        assert_eq!(parsed.version, real.version);
        let got = Params::try_from(&parsed).expect("params");
        assert_eq!(
            (got.m_cost(), got.t_cost(), got.p_cost()),
            (params.m_cost(), params.t_cost(), params.p_cost())
        );
        assert_eq!(
            parsed.hash.map(|h| h.len()),
            Some(Params::DEFAULT_OUTPUT_LEN)
        );
        // Verified like any stored hash, it refuses; two are never the same.
        let cheap = dummy_hash(&Params::new(8, 1, 1, None).expect("params"));
        assert!(
            Argon2::default()
                .verify_password(b"", &argon2::PasswordHash::new(&cheap).expect("phc"))
                .is_err()
        );
        assert_ne!(dummy_hash(&params), dummy);
    }

    #[test]
    fn policy_lengths() {
        let p = PasswordPolicy::default();
        assert_eq!(
            p.check("short", &[]),
            Err(PasswordError::TooShort { min: 12, got: 5 })
        );
        // Counted in characters, not bytes: 11 two-byte characters are still too short.
        assert!(matches!(
            p.check(&"é".repeat(11), &[]),
            Err(PasswordError::TooShort { .. })
        ));
        assert!(matches!(
            p.check(&"x".repeat(257), &[]),
            Err(PasswordError::TooLong { max: 256, got: 257 })
        ));
        assert_eq!(p.check("correct-horse-battery-staple-42", &[]), Ok(()));
        assert_eq!(p.check("tNDq4nh8wN3pVqmjHcGz", &[]), Ok(()));
        assert_eq!(
            p.check("line\nbreak-in-here", &[]),
            Err(PasswordError::ControlCharacter)
        );
    }

    #[test]
    fn common_passwords_are_refused() {
        let p = PasswordPolicy::default();
        for common in [
            "password1234",
            "qwertyuiop123",
            "123456789012",
            "aaaaaaaaaaaa",
            "iloveyou1234",
        ] {
            assert!(
                matches!(p.check(common, &[]), Err(PasswordError::TooCommon { .. })),
                "{common}"
            );
        }
        // Built from the username: weak in context.
        assert!(p.check("customer1234", &["customer"]).is_err());
        let off = PasswordPolicy {
            min_strength: 0,
            ..PasswordPolicy::default()
        };
        assert_eq!(off.check("password1234", &[]), Ok(()));
    }

    #[test]
    fn generated_passwords_pass_the_policy() {
        let p = PasswordPolicy::default();
        for _ in 0..20 {
            let pw = generate_password();
            assert_eq!(pw.expose().len(), 24);
            assert_eq!(p.check(pw.expose(), &[]), Ok(()));
        }
    }

    #[tokio::test]
    async fn owasp_parameters_and_round_trip() {
        let hasher = PasswordHasher::new(1).expect("hasher");
        let hash = hasher
            .hash(Secret::new("a long passphrase here".into()))
            .await
            .expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify(
                    Secret::new("a long passphrase here".into()),
                    Some(hash.clone())
                )
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify(Secret::new("a long passphrase herE".into()), Some(hash))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify(Secret::new("anything".into()), None)
                .await
                .expect("dummy")
        );
        assert!(
            !hasher
                .verify(Secret::new("x".into()), Some("not a phc string".into()))
                .await
                .expect("garbage")
        );
    }
}
