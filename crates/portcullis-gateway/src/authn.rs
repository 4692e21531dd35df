//! Authentication: find the one credential a route accepts, verify it, check revocation.
//!
//! Verified tokens are cached until they expire (or 5 minutes), so the hot path costs a hash-map
//! lookup; revocation is checked on every request against an in-memory set refreshed from the
//! store twice a second, never a database read per request.
//!
//! Two levels: each serving thread keeps the last tokens it saw ([`recent`]: a keep-alive client
//! sends request after request on one connection, so on one thread), found by a cheap keyed hash
//! of the token and confirmed by comparing the token itself in constant time; behind it the cache
//! all threads share, keyed by the token's SHA-256 so that it holds 32 bytes per token however
//! many sessions are live.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use portcullis_policy::Principal;
use portcullis_token::Clock;
use portcullis_token::jwt::{self, Expect, KeySet, TokenUse, VerifyError};

use crate::settings::TokenSource;

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub sub: String,
    pub username: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub sid: Option<String>,
    pub jti: Option<String>,
    pub exp: i64,
    /// When it was issued, if the token says.
    pub iat: Option<i64>,
    /// The cached verification counts while now is before this (`exp` plus the issuer's leeway).
    pub valid_until: i64,
    /// Group principals compare exactly (an external issuer with case-sensitive group names).
    pub exact_groups: bool,
    /// The principals policies may name, computed once when the token is verified.
    pub principals: Vec<Principal>,
    /// How the user signed in (`amr` holds `mfa`, `auth_time`), for policy conditions.
    pub auth: portcullis_policy::AuthContext,
    /// The identity headers for the upstream, built once when the token is verified.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Every claim of the verified token, for the routes' transformations.
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Identity {
    fn identity_headers(&self) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let value = |v: &str| HeaderValue::from_str(v).ok();
        let mut h = vec![
            (HeaderName::from_static("x-auth-subject"), value(&self.sub)?),
            (
                HeaderName::from_static("x-auth-groups"),
                value(&self.groups.join(","))?,
            ),
            (
                HeaderName::from_static("x-auth-scopes"),
                value(&self.scopes.join(" "))?,
            ),
        ];
        if let Some(u) = &self.username {
            h.push((HeaderName::from_static("x-auth-username"), value(u)?));
        }
        if let Some(c) = &self.client_id {
            h.push((HeaderName::from_static("x-auth-client-id"), value(c)?));
        }
        Some(h)
    }

    /// The principals policies may name.
    fn compute_principals(&self) -> Vec<Principal> {
        let mut p: Vec<Principal> = self
            .groups
            .iter()
            .map(|g| {
                if self.exact_groups {
                    Principal::ExactGroup(g.clone())
                } else {
                    Principal::Group(g.to_ascii_lowercase())
                }
            })
            .collect();
        p.extend(self.scopes.iter().map(|s| Principal::Scope(s.clone())));
        if let Some(c) = &self.client_id {
            p.push(Principal::Client(c.clone()));
        }
        p.push(Principal::Authenticated);
        p
    }
}

/// Why a request has no valid credential. Every variant is a 401 (an API) or a sign-in redirect
/// (a page); the variant is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential")]
    Missing,
    #[error("more than one credential")]
    Ambiguous,
    #[error("malformed Authorization header")]
    MalformedHeader,
    #[error("{0}")]
    Invalid(VerifyError),
    #[error("revoked")]
    Revoked,
}

/// Where the keys of our own issuer come from (the identity provider's key ring).
pub trait KeySource: Send + Sync {
    fn keys(&self) -> Arc<KeySet>;
    /// The key that signs `X-Auth-Assertion` tokens (the access-token key), if any.
    fn assertion_key(&self) -> Option<Arc<portcullis_token::SigningKey>>;
    /// Re-reads the keys now (a token names a key this node has not loaded: another node may
    /// have published it since this one last looked). Whether the read succeeded; by default
    /// there is nothing to re-read.
    fn reload(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async { false })
    }
}

/// How often (milliseconds) a token naming an unknown key of our own may make the gateway
/// re-read its keys.
const KEY_RELOAD_EVERY_MS: i64 = 1000;

/// Revoked session ids and token ids.
#[derive(Debug, Default, Clone)]
pub struct RevokedSet {
    pub sids: HashSet<String, foldhash::fast::RandomState>,
    pub jtis: HashSet<String, foldhash::fast::RandomState>,
}

impl RevokedSet {
    pub fn len(&self) -> usize {
        self.sids.len() + self.jtis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a store row (`kind` is `sid` or `jti`); another kind is refused, not dropped.
    pub fn insert(&mut self, kind: &str, value: String) -> Result<(), UnknownKind> {
        match RevocationKind::parse(kind)? {
            RevocationKind::Session => self.sids.insert(value),
            RevocationKind::Token => self.jtis.insert(value),
        };
        Ok(())
    }
}

/// What a revocation row names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationKind {
    /// A session (`sid`): every token of it.
    Session,
    /// One access token (`jti`).
    Token,
}

/// A revocation kind this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation kind {0:?}")]
pub struct UnknownKind(pub String);

impl RevocationKind {
    pub fn parse(kind: &str) -> Result<RevocationKind, UnknownKind> {
        match kind {
            "sid" => Ok(RevocationKind::Session),
            "jti" => Ok(RevocationKind::Token),
            other => Err(UnknownKind(other.to_owned())),
        }
    }
}

/// The revocation set in force, swapped whole when it changes (lock-free reads, no allocation
/// per check).
#[derive(Debug, Default)]
pub struct Revocations {
    set: ArcSwap<RevokedSet>,
}

impl Revocations {
    pub fn replace(&self, set: RevokedSet) {
        self.set.store(Arc::new(set));
    }

    pub fn snapshot(&self) -> Arc<RevokedSet> {
        self.set.load_full()
    }

    fn is_revoked(&self, id: &Identity) -> bool {
        let set = self.set.load();
        id.sid.as_deref().is_some_and(|s| set.sids.contains(s))
            || id.jti.as_deref().is_some_and(|j| set.jtis.contains(j))
    }
}

/// The SHA-256 of a token: the verification cache's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &str) -> TokenDigest {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenDigest(out)
    }
}

/// A verified token's identity, and until when (the gateway's clock, seconds) the verification
/// may be reused: the token's end plus the issuer's leeway, and no more than [`VERIFIED_FOR`]
/// after it was checked (a key removed from the ring stops counting within that).
#[derive(Clone, Debug)]
pub(crate) struct Verified {
    identity: Arc<Identity>,
    until: i64,
}

#[cfg(test)]
pub(crate) const RECENT_SLOTS: usize = recent::SLOTS;
#[cfg(test)]
pub(crate) const RECENT_MAX_TOKEN: usize = recent::MAX_TOKEN;

/// How long a verification is reused at most, seconds.
const VERIFIED_FOR: i64 = 300;

/// Tells authenticators apart in the per-thread cache: an entry counts only for the one that
/// made it (a gateway rebuilt with other issuers or keys starts with nothing cached).
static NEXT_AUTHENTICATOR: AtomicU64 = AtomicU64::new(1);

/// The tokens a serving thread verified or found last, in front of the shared cache.
///
/// The shared cache costs a SHA-256 of the token (~0.25–0.5 µs for a 400–700-byte token) and a
/// lookup that writes to state every core shares (its read log, epoch pins, the entry's
/// counters). Here a thread finds a token it saw recently with a keyed 64-bit hash of it
/// (foldhash, seeded per thread: nobody outside can aim two tokens at one slot) and the token
/// itself compared in constant time — a cached token is a credential. Direct-mapped: a token
/// replaces whatever held its slot. At most [`recent::SLOTS`] tokens per thread, each of at most
/// [`recent::MAX_TOKEN`] bytes (a longer one is found in the shared cache only): 1 MiB a thread
/// at worst. Unlike the shared cache this keeps the tokens themselves, in memory only, until
/// replaced — a digest or a fast hash in their place would need a collision-resistant hash per
/// request, which is the cost this level exists to avoid.
mod recent {
    use std::cell::RefCell;
    use std::hash::BuildHasher;

    use super::Verified;

    pub(crate) const SLOTS: usize = 128;
    pub(crate) const MAX_TOKEN: usize = 8192;

    struct Entry {
        owner: u64,
        token: Box<[u8]>,
        verified: Verified,
    }

    struct Slots {
        hasher: foldhash::fast::RandomState,
        entries: Box<[Option<Entry>]>,
    }

    impl Slots {
        fn index(&self, token: &[u8]) -> usize {
            (self.hasher.hash_one(token) as usize) & (SLOTS - 1)
        }
    }

    thread_local! {
        static SLOTS_OF_THIS_THREAD: RefCell<Option<Slots>> = const { RefCell::new(None) };
    }

    /// What `owner` last stored for `token` on this thread, if it is still there.
    pub(super) fn get(owner: u64, token: &str) -> Option<Verified> {
        let token = token.as_bytes();
        SLOTS_OF_THIS_THREAD
            .try_with(|slots| {
                let slots = slots.try_borrow().ok()?;
                let slots = slots.as_ref()?;
                let entry = slots.entries[slots.index(token)].as_ref()?;
                let same = entry.owner == owner
                    && entry.token.len() == token.len()
                    && aws_lc_rs::constant_time::verify_slices_are_equal(&entry.token, token)
                        .is_ok();
                same.then(|| entry.verified.clone())
            })
            .ok()
            .flatten()
    }

    pub(super) fn put(owner: u64, token: &str, verified: &Verified) {
        let token = token.as_bytes();
        if token.len() > MAX_TOKEN {
            return;
        }
        let _ = SLOTS_OF_THIS_THREAD.try_with(|slots| {
            let Ok(mut slots) = slots.try_borrow_mut() else {
                return;
            };
            let slots = slots.get_or_insert_with(|| Slots {
                hasher: foldhash::fast::RandomState::default(),
                entries: (0..SLOTS).map(|_| None).collect(),
            });
            let at = slots.index(token);
            slots.entries[at] = Some(Entry {
                owner,
                token: token.into(),
                verified: verified.clone(),
            });
        });
    }
}

/// Verifies credentials.
pub struct Authenticator {
    /// This authenticator's entries in the per-thread cache ([`recent`]).
    id: u64,
    pub(crate) issuer: String,
    pub(crate) external: std::collections::HashMap<String, Arc<crate::issuers::ExternalIssuer>>,
    groups_claim: String,
    access_cookie: String,
    /// `gateway.token_leeway`, seconds.
    own_leeway: i64,
    pub(crate) keys: Arc<dyn KeySource>,
    /// Keyed by the token's SHA-256, not the token: 32 bytes instead of 300–1,000 per entry
    /// (100,000 live sessions held ~60 MB of keys), and no one can present a different token
    /// that finds a cached identity without a SHA-256 collision. foldhash with a per-process
    /// random seed over the digest; only verified tokens are inserted.
    cache: moka::sync::Cache<TokenDigest, Verified, foldhash::fast::RandomState>,
    pub revocations: Revocations,
    clock: Clock,
    /// Whether identities keep every claim of their token (a route's transformation reads them).
    pub(crate) keep_claims: bool,
    /// The claims of identities that keep none: shared, so not one allocation per token.
    no_claims: Arc<serde_json::Map<String, serde_json::Value>>,
    /// Registered once: the macros build a labelled key on every call.
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
    /// When a token naming an unknown key of ours last made the keys be re-read; requests that
    /// meet one wait here for the re-read in progress rather than start another.
    /// (The gateway's clock, in milliseconds: tests control it.)
    key_reload: tokio::sync::Mutex<Option<i64>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Clock skew allowed for `nbf`/`iat` of an external issuer's tokens, seconds (or its `leeway`
/// if larger). Skew only ever lets a token count slightly *before* its issuer says; `exp` has
/// its own, strict by default, leeway.
const SKEW: i64 = 60;
/// The same for our own tokens: signed and checked by nodes of one deployment, whose clocks agree
/// far better than an external issuer's and ours.
const OWN_SKEW: i64 = 5;

impl Authenticator {
    pub fn new(
        issuer: String,
        groups_claim: String,
        access_cookie: String,
        own_leeway: i64,
        keys: Arc<dyn KeySource>,
        external: Vec<Arc<crate::issuers::ExternalIssuer>>,
        clock: Clock,
    ) -> Self {
        Authenticator {
            id: NEXT_AUTHENTICATOR.fetch_add(1, Ordering::Relaxed),
            issuer,
            external: external
                .into_iter()
                .map(|e| (e.issuer.clone(), e))
                .collect(),
            groups_claim,
            access_cookie,
            own_leeway,
            keys,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(VERIFIED_FOR as u64))
                .build_with_hasher(foldhash::fast::RandomState::default()),
            revocations: Revocations::default(),
            clock,
            keep_claims: true,
            no_claims: Arc::new(serde_json::Map::new()),
            cache_hits: metrics::counter!("portcullis_gateway_token_cache_total", "result" => "hit"),
            cache_misses: metrics::counter!("portcullis_gateway_token_cache_total", "result" => "miss"),
            key_reload: tokio::sync::Mutex::new(None),
        }
    }

    pub fn access_cookie(&self) -> &str {
        &self.access_cookie
    }

    /// The credential a request carries, from the sources the route allows. Returns the token and
    /// whether it came from the cookie. Two `Authorization` headers, or two access cookies, are
    /// refused rather than one picked.
    pub fn credential<'h>(
        &self,
        headers: &'h HeaderMap,
        sources: &[TokenSource],
    ) -> Result<(&'h str, bool), AuthError> {
        if sources.contains(&TokenSource::Header) {
            let mut values = headers.get_all(header::AUTHORIZATION).iter();
            if let Some(first) = values.next() {
                if values.next().is_some() {
                    return Err(AuthError::Ambiguous);
                }
                let v = first.to_str().map_err(|_| AuthError::MalformedHeader)?;
                let (scheme, token) = v.split_once(' ').ok_or(AuthError::MalformedHeader)?;
                if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                    return Err(AuthError::MalformedHeader);
                }
                return Ok((token.trim(), false));
            }
        }
        if sources.contains(&TokenSource::Cookie) {
            let values = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            match portcullis_token::cookie::single(values, &self.access_cookie) {
                Ok(Some(token)) => return Ok((token, true)),
                Ok(None) => {}
                Err(_) => return Err(AuthError::Ambiguous),
            }
        }
        Err(AuthError::Missing)
    }

    /// Verifies an access token (cached) and checks revocation (every time).
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let now = self.clock.now();
        let identity = match self.cached(token, now) {
            Some(id) => {
                self.cache_hits.increment(1);
                id
            }
            None => {
                self.cache_misses.increment(1);
                // Boxed: a miss is rare and already costs a signature check, and the verification
                // future (it may fetch an issuer's keys) would otherwise make every request's
                // future larger — futures are moved whole as they are built.
                let identity = Arc::new(Box::pin(self.verify(token, now)).await?);
                let verified = Verified {
                    until: identity.valid_until.min(now + VERIFIED_FOR),
                    identity: identity.clone(),
                };
                recent::put(self.id, token, &verified);
                self.cache.insert(TokenDigest::of(token), verified);
                identity
            }
        };
        if self.revocations.is_revoked(&identity) {
            return Err(AuthError::Revoked);
        }
        Ok(identity)
    }

    /// A verification of `token` that still counts at `now`: this thread's, else the shared one.
    fn cached(&self, token: &str, now: i64) -> Option<Arc<Identity>> {
        if let Some(v) = recent::get(self.id, token)
            && now < v.until
        {
            return Some(v.identity);
        }
        let v = self.cache.get(&TokenDigest::of(token))?;
        if now >= v.until {
            return None;
        }
        recent::put(self.id, token, &v);
        Some(v.identity)
    }

    /// Re-reads our keys for a token that names one not loaded, at most once a
    /// [`KEY_RELOAD_EVERY_MS`]: whether the keys may have changed since the caller looked (a re-read
    /// now, or one that finished while it waited), so that checking again is worth it.
    async fn reload_keys(&self) -> bool {
        let mut last = self.key_reload.lock().await;
        let now = self.clock.now_millis();
        if last.is_some_and(|at| now.saturating_sub(at) < KEY_RELOAD_EVERY_MS) {
            return true;
        }
        *last = Some(now);
        self.keys.reload().await
    }

    async fn verify(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        // The issuer picks the keys and the rules; the signature is checked with that issuer's
        // keys only, so a forged `iss` gains nothing.
        let iss =
            peek_issuer(token).ok_or(AuthError::Invalid(VerifyError::Malformed("payload")))?;
        let own = iss == self.issuer;
        let (claims, groups_claim, exp_leeway, exact_groups) = if own {
            let keys = self.keys.keys();
            let expect = Expect {
                issuer: &self.issuer,
                audiences: &[],
                token_use: Some(TokenUse::Access),
                leeway: OWN_SKEW.max(self.own_leeway),
                exp_leeway: self.own_leeway,
                now,
            };
            let claims = match jwt::verify(token, &keys, &expect) {
                // A key this node has not loaded: during a rotation another node may have
                // published it since this one last looked. Re-read (at most once a second) and
                // check again.
                Err(VerifyError::UnknownKey) if self.reload_keys().await => {
                    jwt::verify(token, &self.keys.keys(), &expect)
                }
                other => other,
            };
            (
                claims.map_err(AuthError::Invalid)?,
                self.groups_claim.as_str(),
                self.own_leeway,
                false,
            )
        } else if let Some(ext) = self.external.get(&iss) {
            let expect = Expect {
                issuer: &ext.issuer,
                audiences: &ext.audiences,
                token_use: ext.token_use,
                leeway: SKEW.max(ext.leeway),
                exp_leeway: ext.leeway,
                now,
            };
            let claims = match jwt::verify(token, &ext.keys(), &expect) {
                // A key we have not seen: the issuer may have rotated. Refetch (rate-limited).
                Err(VerifyError::UnknownKey) if ext.refresh().await => {
                    jwt::verify(token, &ext.keys(), &expect)
                }
                other => other,
            }
            .map_err(AuthError::Invalid)?;
            (
                claims,
                ext.groups_claim.as_str(),
                ext.leeway,
                !ext.fold_group_case,
            )
        } else {
            return Err(AuthError::Invalid(VerifyError::WrongIssuer));
        };
        let groups = claims
            .string_list(groups_claim)
            .map_err(AuthError::Invalid)?;
        let mut id = Identity {
            sub: claims
                .sub
                .clone()
                .ok_or(AuthError::Invalid(VerifyError::BadClaim("sub")))?,
            username: claims.string("username").map(str::to_owned),
            groups,
            scopes: claims.scopes.clone(),
            client_id: claims.client_id.clone(),
            sid: claims.sid.clone(),
            jti: claims.jti.clone(),
            exp: claims.exp,
            iat: claims.iat,
            valid_until: claims.exp.saturating_add(exp_leeway),
            exact_groups,
            principals: Vec::new(),
            auth: portcullis_policy::AuthContext {
                mfa: claims
                    .raw
                    .get("amr")
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("mfa"))),
                auth_time: claims
                    .raw
                    .get("auth_time")
                    .and_then(serde_json::Value::as_i64),
            },
            headers: Vec::new(),
            claims: if self.keep_claims {
                Arc::new(claims.raw.clone())
            } else {
                self.no_claims.clone()
            },
        };
        id.principals = id.compute_principals();
        // A claim that cannot travel in a header (a newline, say) fails closed here.
        id.headers = id
            .identity_headers()
            .ok_or(AuthError::Invalid(VerifyError::BadClaim("sub")))?;
        Ok(id)
    }
}

/// The `iss` of a compact JWS, unverified (only to choose the keys to verify it with).
fn peek_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    if token.len() > jwt::MAX_TOKEN_BYTES {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}
