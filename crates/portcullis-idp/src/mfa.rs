//! Second factors: TOTP (RFC 6238, through `totp-rs`) with secrets sealed at rest like the
//! signing keys, and single-use recovery codes; the second step of a sign-in, enrolment when a
//! user must have a factor and has none, and the account page's management.
//!
//! A TOTP code is accepted within ±1 step (30 s) and only once: the store accepts a step only if
//! it is later than the last one accepted for the user, in one conditional update, so a code seen
//! by an attacker over a shoulder or a proxy is worthless once used, on every node. Wrong codes
//! count towards the same per-account lockout as wrong passwords.

use portcullis_store::{Session, User, UserStatus};
use portcullis_token::Secret;
use serde::{Deserialize, Serialize};

use crate::crypto::sha256_hex;
use crate::provider::{OAuthError, Provider, SignIn};

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;
/// How long the second step of a sign-in may take.
const TICKET_SECS: i64 = 300;
const SEAL_CONTEXT: &str = "totp secret v1";

/// A TOTP secret to show while enrolling.
#[derive(Clone, Debug)]
pub struct Enrolment {
    /// Base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/...`, what the QR code holds.
    pub url: String,
    /// The QR code as an SVG document (rendered here: no image reaches a third party).
    pub qr_svg: String,
}

/// Who the second step of a sign-in is for.
#[derive(Serialize, Deserialize)]
struct MfaTicket {
    user_id: String,
    /// The user's `updated_at` when issued: a change to the user voids the ticket.
    updated_at: i64,
    expires_at: i64,
    /// An enrolment (true) or a verification (false).
    enrol: bool,
    /// How the first step was passed (`amr`): `pwd`, or `fed` for a federated sign-in.
    #[serde(default)]
    first: Option<String>,
}

/// The outcome of the second step.
#[derive(Debug)]
pub enum SecondFactor {
    Session {
        session: Box<Session>,
        secret: Secret<String>,
        /// New recovery codes, after an enrolment: shown once.
        recovery_codes: Vec<String>,
    },
    /// Wrong, replayed, or another user's code.
    Wrong,
    Locked {
        seconds: i64,
    },
    /// The ticket is forged, expired, or its user changed.
    Expired,
}

fn new_recovery_code() -> String {
    // 10 characters of a 32-letter alphabet without look-alikes: 50 bits, single use, hashed.
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut raw = String::with_capacity(10);
    while raw.len() < 10 {
        let mut byte = [0u8; 1];
        rand::fill(&mut byte);
        // Rejection sampling: 248 = 8 × 31, so every letter is equally likely.
        if usize::from(byte[0]) < 248 {
            raw.push(ALPHABET[usize::from(byte[0]) % ALPHABET.len()] as char);
        }
    }
    format!("{}-{}", &raw[..5], &raw[5..])
}

/// A recovery code as typed, normalized: lowercase, no spaces or dashes.
fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Six digits, spaces allowed ("123 456").
fn totp_digits(code: &str) -> Option<String> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    (digits.len() == 6 && digits.chars().all(|c| c.is_ascii_digit())).then_some(digits)
}

/// What an enrolment page shows for a TOTP: the secret, its URL and the QR code.
fn enrolment_of(totp: &totp_rs::Totp) -> Result<Enrolment, OAuthError> {
    let url = totp.to_url().map_err(|_| OAuthError::ServerError)?;
    let qr_svg = qrcode::QrCode::new(url.as_bytes())
        .map_err(|_| OAuthError::ServerError)?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    Ok(Enrolment {
        secret: totp.secret().to_base32(),
        url,
        qr_svg,
    })
}

impl Provider {
    fn totp_for(&self, user: &User, secret: Vec<u8>) -> Result<totp_rs::Totp, OAuthError> {
        let issuer: String = self
            .settings()
            .branding
            .app_name
            .chars()
            .filter(|c| *c != ':')
            .collect();
        totp_rs::Builder::new()
            .with_secret(secret)
            .with_skew(1)
            .with_account_name(user.username.as_str())
            .with_issuer(Some(issuer.as_str()))
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "TOTP parameters refused");
                OAuthError::ServerError
            })
    }

    /// The user's TOTP (confirmed or pending), opened.
    async fn stored_totp(&self, user: &User) -> Result<Option<(totp_rs::Totp, bool)>, OAuthError> {
        let Some(factor) = self.store().totp(&user.id).await? else {
            return Ok(None);
        };
        let secret = self
            .totp_kek()
            .open(&format!("{SEAL_CONTEXT}:{}", user.id), &factor.sealed)
            .map_err(|e| {
                tracing::error!(error = %e, "a TOTP secret cannot be opened (was the instance secret changed?)");
                OAuthError::ServerError
            })?;
        Ok(Some((
            self.totp_for(user, secret.expose().clone())?,
            factor.confirmed,
        )))
    }

    /// Whether the user has a confirmed second factor: an authenticator app or a passkey.
    pub async fn has_mfa(&self, user: &User) -> Result<bool, OAuthError> {
        Ok(self.has_totp(user).await? || !self.store().credentials_of(&user.id).await?.is_empty())
    }

    /// Whether the user has a confirmed authenticator app.
    pub async fn has_totp(&self, user: &User) -> Result<bool, OAuthError> {
        Ok(self
            .store()
            .totp(&user.id)
            .await?
            .is_some_and(|f| f.confirmed))
    }

    /// Whether this user must sign in with a second factor: asked for by the request
    /// (`acr_values=mfa`, a client that requires it), or required for one of their groups.
    pub fn mfa_required(&self, user: &User, asked: bool) -> bool {
        asked
            || user.groups.iter().any(|g| {
                self.settings()
                    .mfa_required_groups
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(g))
            })
    }

    /// Starts a TOTP enrolment: a new secret, pending until a code confirms it. Refused
    /// (`None`) when the user already has a confirmed one.
    pub async fn begin_totp(&self, user: &User) -> Result<Option<Enrolment>, OAuthError> {
        let mut secret = vec![0u8; 20];
        rand::fill(&mut secret[..]);
        let sealed = self
            .totp_kek()
            .seal(&format!("{SEAL_CONTEXT}:{}", user.id), &secret)
            .map_err(|_| OAuthError::ServerError)?;
        if !self
            .store()
            .totp_begin(&user.id, &sealed, self.now())
            .await?
        {
            return Ok(None);
        }
        let totp = self.totp_for(user, secret)?;
        Ok(Some(enrolment_of(&totp)?))
    }

    /// The user's pending enrolment, to show again (after a wrong first code).
    pub async fn pending_enrolment(&self, user: &User) -> Result<Option<Enrolment>, OAuthError> {
        match self.stored_totp(user).await? {
            Some((totp, false)) => Ok(Some(enrolment_of(&totp)?)),
            _ => Ok(None),
        }
    }

    /// Checks a TOTP code of the user: right, for a step not used before (confirming a pending
    /// enrolment when `confirm`). Wrong codes are not counted here.
    async fn accept_totp(
        &self,
        user: &User,
        code: &str,
        confirm: bool,
    ) -> Result<bool, OAuthError> {
        let Some(digits) = totp_digits(code) else {
            return Ok(false);
        };
        let Some((totp, confirmed)) = self.stored_totp(user).await? else {
            return Ok(false);
        };
        if confirmed == confirm {
            return Ok(false);
        }
        let now = u64::try_from(self.now()).unwrap_or(0);
        let Some(step) = totp.check(&digits, now) else {
            return Ok(false);
        };
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        Ok(self
            .store()
            .totp_accept_step(&user.id, step, confirm)
            .await?)
    }

    /// Ten new recovery codes for the user (the old ones stop working); shown once.
    pub async fn new_recovery_codes(&self, user: &User) -> Result<Vec<String>, OAuthError> {
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let hashes: Vec<String> = codes
            .iter()
            .map(|c| sha256_hex(&normalize_recovery(c)))
            .collect();
        self.store()
            .set_recovery_codes(&user.id, &hashes, self.now())
            .await?;
        Ok(codes)
    }

    /// Confirms the account page's pending enrolment with a code; returns the recovery codes.
    pub async fn confirm_totp(
        &self,
        user: &User,
        code: &str,
    ) -> Result<Option<Vec<String>>, OAuthError> {
        if !self.accept_totp(user, code, true).await? {
            return Ok(None);
        }
        crate::audit::record(
            self.store(),
            self.now(),
            "mfa.totp.enrol",
            &crate::audit::Actor::user(&user.id, "server"),
            &user.username,
            serde_json::json!({}),
        )
        .await;
        Ok(Some(self.new_recovery_codes(user).await?))
    }

    /// Removes the user's second factors — app, recovery codes and passkeys (an operator's
    /// reset; the account page removes the app and the codes only: `passkeys` false).
    pub async fn remove_mfa(&self, user: &User, by: &str) -> Result<bool, OAuthError> {
        let mut removed = self.store().reset_mfa(&user.id).await?;
        if by != "user" {
            removed |= self.store().remove_credentials(&user.id).await? > 0;
        }
        let actor = if by == "user" {
            crate::audit::Actor::user(&user.id, "server")
        } else {
            crate::audit::Actor::system()
        };
        crate::audit::record(
            self.store(),
            self.now(),
            "mfa.remove",
            &actor,
            &user.username,
            serde_json::json!({ "removed": removed, "by": by }),
        )
        .await;
        Ok(removed)
    }

    fn mfa_ticket(&self, user: &User, enrol: bool, first: &str) -> String {
        let t = MfaTicket {
            user_id: user.id.clone(),
            updated_at: user.updated_at,
            expires_at: self.now() + TICKET_SECS,
            enrol,
            first: (first != "pwd").then(|| first.to_owned()),
        };
        self.ticket_signer()
            .sign(&serde_json::to_vec(&t).unwrap_or_default())
    }

    /// How the first step of a ticket's sign-in was passed (`pwd` or `fed`), for the session's
    /// `amr`; read from a ticket whose validity [`Provider::mfa_ticket_user`] checks.
    pub(crate) fn ticket_first_factor(&self, ticket: &str) -> &'static str {
        let first = self
            .ticket_signer()
            .open(ticket)
            .and_then(|b| serde_json::from_slice::<MfaTicket>(&b).ok())
            .and_then(|t| t.first);
        match first.as_deref() {
            Some("fed") => "fed",
            _ => "pwd",
        }
    }

    /// The user a second-step ticket is for, while it is valid.
    pub async fn mfa_ticket_user(
        &self,
        ticket: &str,
        enrol: bool,
    ) -> Result<Option<User>, OAuthError> {
        let Some(bytes) = self.ticket_signer().open(ticket) else {
            return Ok(None);
        };
        let Ok(t) = serde_json::from_slice::<MfaTicket>(&bytes) else {
            return Ok(None);
        };
        if t.expires_at <= self.now() || t.enrol != enrol {
            return Ok(None);
        }
        let user = self.store().user_by_id(&t.user_id).await?;
        Ok(user.filter(|u| u.status == UserStatus::Enabled && u.updated_at == t.updated_at))
    }

    /// What follows a right password: the second factor if the user has one, enrolment if they
    /// must have one and do not, else a session.
    pub(crate) async fn second_step(
        &self,
        user: User,
        need_mfa: bool,
    ) -> Result<SignIn, OAuthError> {
        self.second_step_after(user, need_mfa, &["pwd"]).await
    }

    /// [`Provider::second_step`] after a first step passed by the methods in `amr` (`pwd`, or
    /// `fed` and what the upstream provider reported). An `amr` that already has `mfa` needs no
    /// second factor here.
    pub(crate) async fn second_step_after(
        &self,
        user: User,
        need_mfa: bool,
        amr: &[&str],
    ) -> Result<SignIn, OAuthError> {
        let first = amr.first().copied().unwrap_or("pwd");
        if amr.contains(&"mfa") {
            let (session, secret) = self.start_session(&user, amr).await?;
            return Ok(SignIn::Session {
                session: Box::new(session),
                secret,
            });
        }
        if self.has_mfa(&user).await? {
            return Ok(SignIn::SecondFactor {
                ticket: self.mfa_ticket(&user, false, first),
                user: Box::new(user),
            });
        }
        if self.mfa_required(&user, need_mfa) {
            let Some(enrolment) = self.begin_totp(&user).await? else {
                return Err(OAuthError::ServerError);
            };
            return Ok(SignIn::Enrol {
                ticket: self.mfa_ticket(&user, true, first),
                user: Box::new(user),
                enrolment: Box::new(enrolment),
            });
        }
        let (session, secret) = self.start_session(&user, amr).await?;
        Ok(SignIn::Session {
            session: Box::new(session),
            secret,
        })
    }

    /// The second step: a TOTP code or a recovery code (or, with `enrol`, the first code of a
    /// new TOTP, which also yields the recovery codes). Wrong codes count towards the account's
    /// lockout, like wrong passwords.
    pub async fn complete_second_factor(
        &self,
        ticket: &str,
        code: &str,
        enrol: bool,
    ) -> Result<SecondFactor, OAuthError> {
        let Some(user) = self.mfa_ticket_user(ticket, enrol).await? else {
            return Ok(SecondFactor::Expired);
        };
        let first = self.ticket_first_factor(ticket);
        let key = user.username.to_ascii_lowercase();
        let now = self.now();
        let until = self.store().login_locked_until(&key).await?;
        if until > now {
            return Ok(SecondFactor::Locked {
                seconds: until - now,
            });
        }
        let (amr, recovery_codes): (Vec<&str>, Vec<String>) =
            if self.accept_totp(&user, code, enrol).await? {
                let codes = if enrol {
                    crate::audit::record(
                        self.store(),
                        self.now(),
                        "mfa.totp.enrol",
                        &crate::audit::Actor::user(&user.id, "server"),
                        &user.username,
                        serde_json::json!({ "at": "sign-in" }),
                    )
                    .await;
                    self.new_recovery_codes(&user).await?
                } else {
                    Vec::new()
                };
                (vec![first, "otp", "mfa"], codes)
            } else if !enrol
                && self
                    .store()
                    .use_recovery_code(&user.id, &sha256_hex(&normalize_recovery(code)), now)
                    .await?
            {
                crate::audit::record(
                    self.store(),
                    self.now(),
                    "mfa.recovery_code.use",
                    &crate::audit::Actor::user(&user.id, "server"),
                    &user.username,
                    serde_json::json!({}),
                )
                .await;
                (vec![first, "otp", "mfa"], Vec::new())
            } else {
                let s = self.settings();
                self.store()
                    .record_login_failure(
                        &key,
                        now,
                        s.lockout_threshold,
                        s.lockout_base_delay,
                        s.lockout_max_delay,
                    )
                    .await?;
                return Ok(SecondFactor::Wrong);
            };
        self.store().clear_login_failures(&key).await?;
        let (session, secret) = self.start_session(&user, &amr).await?;
        Ok(SecondFactor::Session {
            session: Box::new(session),
            secret,
            recovery_codes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_distinct_and_normalize() {
        let a = new_recovery_code();
        assert_eq!(a.len(), 11);
        assert_ne!(a, new_recovery_code());
        assert_eq!(
            normalize_recovery(&a.to_uppercase().replace('-', " ")),
            a.replace('-', "")
        );
        assert_eq!(totp_digits("123 456").as_deref(), Some("123456"));
        assert_eq!(totp_digits("12345"), None);
        assert_eq!(totp_digits("12345a"), None);
    }
}
