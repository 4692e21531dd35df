//! Self-service accounts: sign-up, e-mail verification, password reset and invitations.
//!
//! Every message goes through the store's outbox ([`Accounts::queue`]); a delivery worker in the
//! binary sends it. Codes are 256-bit random tokens mailed as links and stored as SHA-256 digests,
//! single-use and expiring; a newer code of the same purpose replaces the older.
//!
//! Nothing here may tell a visitor whether an address or username exists: the hosted pages
//! answer sign-up and reset requests before the work that depends on it runs
//! ([`Accounts::complete_sign_up`] and [`Accounts::forgot_password`] are spawned), and the mail
//! itself tells the owner what happened.

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis_store::{CodePurpose, NewCode, NewMail, StoreError, User, UserStatus};
use portcullis_token::{Clock, Secret};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::crypto::{random_token, sha256_hex};
use crate::names::validate_email;
use crate::pool::{AddUser, PoolError, UserPool};
use crate::settings::{IdpSettings, SignupMode};
use crate::templates::Templates;

/// Codes of one purpose mailed to one user per hour; more are silently not sent.
const CODES_PER_HOUR: i64 = 3;

/// Why an account operation did not happen. `Invalid` messages are for the user.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    /// The code is unknown, used, expired or for something else.
    #[error("this link has expired or was already used")]
    BadCode,
    #[error("sign-up is closed")]
    Closed,
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("mail template: {0}")]
    Template(String),
}

impl AccountError {
    /// True when the user can fix it by changing what they typed.
    pub fn is_user_error(&self) -> bool {
        match self {
            AccountError::Invalid(_) | AccountError::BadCode | AccountError::Closed => true,
            AccountError::Pool(e) => e.is_user_error(),
            _ => false,
        }
    }
}

/// What the sign-up form sent.
#[derive(Debug)]
pub struct SignUp {
    pub email: String,
    pub name: String,
    pub password: Secret<String>,
    /// The sealed authorization request the visitor came with, carried into the mail's link.
    pub request: Option<String>,
    /// The custom attributes' fields as sent (`name` without `custom:`), checked by
    /// [`Accounts::check_sign_up`].
    pub custom: BTreeMap<String, String>,
}

/// The account operations of the hosted pages and the CLI.
#[derive(Clone, Debug)]
pub struct Accounts {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: UserPool,
    settings: IdpSettings,
    templates: Arc<Templates>,
    clock: Clock,
    /// Woken when a message is queued, so the local worker sends it at once.
    queued: Arc<Notify>,
}

impl Accounts {
    pub fn new(
        pool: UserPool,
        settings: IdpSettings,
        templates: Arc<Templates>,
        clock: Clock,
    ) -> Accounts {
        Accounts {
            inner: Arc::new(Inner {
                pool,
                settings,
                templates,
                clock,
                queued: Arc::new(Notify::new()),
            }),
        }
    }

    pub fn settings(&self) -> &IdpSettings {
        &self.inner.settings
    }

    pub fn pool(&self) -> &UserPool {
        &self.inner.pool
    }

    pub fn templates(&self) -> &Arc<Templates> {
        &self.inner.templates
    }

    /// Notified whenever a message is queued on this node.
    pub fn queued(&self) -> Arc<Notify> {
        self.inner.queued.clone()
    }

    fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Renders `mail_<kind>` for `to` and queues it in the store.
    pub async fn queue(&self, kind: &str, to: &str, ctx: Value) -> Result<(), AccountError> {
        let s = &self.inner.settings;
        let mail = self
            .inner
            .templates
            .render_mail(kind, &s.branding, ctx)
            .map_err(|e| AccountError::Template(e.to_string()))?;
        self.inner
            .pool
            .store()
            .enqueue_mail(&NewMail {
                id: uuid::Uuid::now_v7().to_string(),
                recipient: to.to_owned(),
                subject: mail.subject,
                text_body: mail.text,
                html_body: mail.html,
                kind: kind.to_owned(),
                now: self.now(),
            })
            .await?;
        metrics::counter!("portcullis_mail_queued_total", "kind" => kind.to_owned()).increment(1);
        self.inner.queued.notify_one();
        Ok(())
    }

    /// Mails `user` a new code for `purpose` at `email`, unless CODES_PER_HOUR were mailed in
    /// the last hour (then nothing happens: the answer to the visitor is the same). Returns
    /// whether it was sent.
    async fn mail_code(
        &self,
        user: &User,
        email: &str,
        purpose: CodePurpose,
        request: Option<&str>,
    ) -> Result<bool, AccountError> {
        let store = self.inner.pool.store();
        let now = self.now();
        let a = &self.inner.settings.accounts;
        let (ttl, path, kind) = match purpose {
            CodePurpose::Verify => (a.verify_ttl, "/verifyEmail", "verify"),
            CodePurpose::Reset => (a.reset_ttl, "/resetPassword", "reset"),
            CodePurpose::Invite => (a.invite_ttl, "/invitation", "invite"),
            CodePurpose::Notice => {
                return Err(AccountError::Template(
                    "a notice is not a mailed code".into(),
                ));
            }
        };
        let code = random_token();
        let stored = store
            .insert_account_code(
                &NewCode {
                    code_hash: sha256_hex(code.expose()),
                    purpose,
                    user_id: user.id.clone(),
                    email: email.to_owned(),
                    now,
                    expires_at: now + ttl,
                },
                CODES_PER_HOUR,
            )
            .await?;
        if !stored {
            tracing::info!(
                purpose = purpose.as_str(),
                "account code not mailed: hourly limit"
            );
            return Ok(false);
        }
        let mut link = url::Url::parse(&format!("{}{path}", self.inner.settings.issuer))
            .map_err(|e| AccountError::Template(format!("issuer URL: {e}")))?;
        link.query_pairs_mut().append_pair("code", code.expose());
        if let Some(r) = request.filter(|r| !r.is_empty()) {
            link.query_pairs_mut().append_pair("request", r);
        }
        self.queue(
            kind,
            email,
            json!({
                "username": user.username,
                "email": email,
                "link": link.as_str(),
                "expires_in": human_duration(ttl),
            }),
        )
        .await?;
        Ok(true)
    }

    // ---- sign-up ------------------------------------------------------------------------------

    /// Checks what a sign-up form can be told without revealing whether the address is taken:
    /// the page is open, the address is well-formed and allowed, the password meets the policy.
    pub fn check_sign_up(&self, form: &SignUp) -> Result<(), AccountError> {
        let a = &self.inner.settings.accounts;
        if !a.signup_open() {
            return Err(AccountError::Closed);
        }
        let email = form.email.trim();
        validate_email(email).map_err(|e| AccountError::Invalid(capitalise(&e.to_string())))?;
        if a.signup == SignupMode::Domains {
            let domain = email
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            if !a.signup_domains.contains(&domain) {
                return Err(AccountError::Invalid(
                    "Accounts can be created only with an address of the organisation's own domains."
                        .into(),
                ));
            }
        }
        if form.name.chars().count() > 200 || form.name.chars().any(char::is_control) {
            return Err(AccountError::Invalid(
                "The name must be at most 200 characters of printable text.".into(),
            ));
        }
        for attribute in &a.signup_attributes {
            let sent = form
                .custom
                .get(&attribute.name)
                .map(String::as_str)
                .unwrap_or_default();
            attribute.check(sent).map_err(AccountError::Invalid)?;
        }
        let local = email.split('@').next().unwrap_or_default();
        self.inner
            .pool
            .policy()
            .check(form.password.expose(), &[email, local, form.name.as_str()])
            .map_err(|e| AccountError::Invalid(capitalise(&e.to_string())))?;
        Ok(())
    }

    /// The part of a sign-up that depends on whether the address is taken, run after the
    /// visitor has had their answer: a new account and a verification mail, or a mail telling
    /// the owner of the address that someone tried. The same password hash is computed either
    /// way.
    pub async fn complete_sign_up(&self, form: SignUp) -> Result<(), AccountError> {
        let email = form.email.trim().to_owned();
        let pool = &self.inner.pool;
        let taken = pool.store().usernames_by_email(&email).await?;
        if let Some(owner) = taken.first() {
            // Equal work: the password is hashed although it is thrown away.
            let _ = pool.hasher().hash(form.password).await;
            let owner = pool.user(owner).await?;
            return self
                .mail_signup_exists(&owner, &email, form.request.as_deref())
                .await;
        }
        let mut attributes = BTreeMap::new();
        if !form.name.trim().is_empty() {
            attributes.insert("name".to_owned(), form.name.trim().to_owned());
        }
        for attribute in &self.inner.settings.accounts.signup_attributes {
            let sent = form
                .custom
                .get(&attribute.name)
                .map(String::as_str)
                .unwrap_or_default();
            if let Ok(Some(value)) = attribute.check(sent) {
                attributes.insert(attribute.key(), value);
            }
        }
        let added = pool
            .add_user(AddUser {
                username: email.clone(),
                email: Some(email.clone()),
                email_verified: false,
                attributes,
                groups: self.inner.settings.accounts.signup_groups.clone(),
                password: Some(form.password),
                temporary_password: false,
                no_password: false,
            })
            .await;
        let user = match added {
            Ok((user, _)) => user,
            Err(PoolError::Store(StoreError::AlreadyExists { .. })) => {
                // The address is someone's username but not their address on file: tell nobody.
                tracing::info!("sign-up for an address that is an existing username");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user_id = %user.id, "account created by sign-up");
        crate::audit::record(
            self.inner.pool.store(),
            self.now(),
            "account.signup",
            &crate::audit::Actor::user(&user.id, "server"),
            &user.username,
            json!({ "groups": user.groups }),
        )
        .await;
        metrics::counter!("portcullis_signups_total").increment(1);
        self.mail_code(&user, &email, CodePurpose::Verify, form.request.as_deref())
            .await?;
        Ok(())
    }

    async fn mail_signup_exists(
        &self,
        owner: &User,
        email: &str,
        request: Option<&str>,
    ) -> Result<(), AccountError> {
        // Recorded like a code (one nobody can use), so that the sign-up form cannot flood an
        // inbox either: at most CODES_PER_HOUR such notices an hour.
        let now = self.now();
        let recorded = self
            .inner
            .pool
            .store()
            .insert_account_code(
                &NewCode {
                    code_hash: sha256_hex(random_token().expose()),
                    purpose: CodePurpose::Notice,
                    user_id: owner.id.clone(),
                    email: email.to_owned(),
                    now,
                    expires_at: now + 3600,
                },
                CODES_PER_HOUR,
            )
            .await?;
        if !recorded {
            return Ok(());
        }
        let mut link = url::Url::parse(&format!("{}/forgotPassword", self.inner.settings.issuer))
            .map_err(|e| AccountError::Template(format!("issuer URL: {e}")))?;
        if let Some(r) = request.filter(|r| !r.is_empty()) {
            link.query_pairs_mut().append_pair("request", r);
        }
        self.queue(
            "signup_exists",
            email,
            json!({ "username": owner.username, "email": email, "link": link.as_str() }),
        )
        .await
    }

    // ---- the account page ---------------------------------------------------------------------

    /// Changes a user's address: the new one is unverified until its link is followed, and the
    /// old one (if any) is told. Returns the user as stored.
    pub async fn change_email(&self, user: &User, email: &str) -> Result<User, AccountError> {
        let email = email.trim();
        validate_email(email).map_err(|e| AccountError::Invalid(capitalise(&e.to_string())))?;
        if user
            .email
            .as_deref()
            .is_some_and(|old| old.eq_ignore_ascii_case(email))
        {
            return Err(AccountError::Invalid(
                "That is already the address of your account.".into(),
            ));
        }
        let store = self.inner.pool.store();
        store
            .set_email(&user.id, Some(email), false, self.now())
            .await?;
        let updated = store
            .user_by_id(&user.id)
            .await?
            .ok_or(AccountError::BadCode)?;
        tracing::info!(user_id = %user.id, "e-mail address changed");
        crate::audit::record(
            self.inner.pool.store(),
            self.now(),
            "account.email_change",
            &crate::audit::Actor::user(&user.id, "server"),
            &user.username,
            json!({ "before": user.email, "after": email }),
        )
        .await;
        if self.inner.settings.accounts.mail {
            if let Some(old) = &user.email {
                let link = format!("{}/forgotPassword", self.inner.settings.issuer);
                self.queue(
                    "email_changed",
                    old,
                    json!({ "username": user.username, "email": email, "link": link }),
                )
                .await?;
            }
            self.mail_code(&updated, email, CodePurpose::Verify, None)
                .await?;
        }
        Ok(updated)
    }

    // ---- verification -------------------------------------------------------------------------

    /// Mails a verification link for the user's current address (throttled). Returns whether
    /// one was sent.
    pub async fn send_verification(
        &self,
        user: &User,
        request: Option<&str>,
    ) -> Result<bool, AccountError> {
        if !self.inner.settings.accounts.mail {
            return Ok(false);
        }
        match &user.email {
            Some(email) if !user.email_verified => {
                self.mail_code(user, email, CodePurpose::Verify, request)
                    .await
            }
            _ => Ok(false),
        }
    }

    /// Uses a verification code: the address it was mailed to is verified, if it is still the
    /// user's. Returns the user.
    pub async fn verify_email(&self, code: &str) -> Result<User, AccountError> {
        let store = self.inner.pool.store();
        let now = self.now();
        let used = store
            .use_account_code(&sha256_hex(code), CodePurpose::Verify, now)
            .await?
            .ok_or(AccountError::BadCode)?;
        if !store.verify_email(&used.user_id, &used.email, now).await? {
            return Err(AccountError::BadCode);
        }
        let user = store
            .user_by_id(&used.user_id)
            .await?
            .ok_or(AccountError::BadCode)?;
        tracing::info!(user_id = %user.id, "e-mail address verified");
        crate::audit::record(
            self.inner.pool.store(),
            self.now(),
            "account.email_verify",
            &crate::audit::Actor::user(&user.id, "server"),
            &user.username,
            json!({ "email": used.email }),
        )
        .await;
        Ok(user)
    }

    // ---- reset and invitations ---------------------------------------------------------------

    /// "Forgot password": mails a reset link to every account the identifier names (a username,
    /// or an address on file), if it has an address. Run after the visitor has had their
    /// answer, which is the same whatever happens here.
    pub async fn forgot_password(
        &self,
        identifier: &str,
        request: Option<&str>,
    ) -> Result<(), AccountError> {
        if !self.inner.settings.accounts.mail {
            return Ok(());
        }
        let identifier = identifier.trim();
        if identifier.is_empty() || identifier.len() > 254 {
            return Ok(());
        }
        let store = self.inner.pool.store();
        let mut users = Vec::new();
        if let Some(u) = store.user(identifier).await? {
            users.push(u);
        } else {
            for name in store.usernames_by_email(identifier).await?.iter().take(5) {
                users.extend(store.user(name).await?);
            }
        }
        for user in users {
            match (&user.email, user.status) {
                (Some(email), UserStatus::Enabled) => {
                    let email = email.clone();
                    self.mail_code(&user, &email, CodePurpose::Reset, request)
                        .await?;
                }
                _ => tracing::info!(user_id = %user.id, "no reset mailed: no address or disabled"),
            }
        }
        Ok(())
    }

    /// The user a live reset or invitation code belongs to, without using it (to show the form).
    pub async fn code_user(&self, code: &str, purpose: CodePurpose) -> Result<User, AccountError> {
        let store = self.inner.pool.store();
        let found = store
            .peek_account_code(&sha256_hex(code), purpose, self.now())
            .await?
            .ok_or(AccountError::BadCode)?;
        store
            .user_by_id(&found.user_id)
            .await?
            .filter(|u| u.status == UserStatus::Enabled)
            .ok_or(AccountError::BadCode)
    }

    /// Sets a new password with a reset or invitation code. The policy is checked before the
    /// code is used (a refused password leaves the link working); every session and refresh
    /// token of the user is revoked; the address the code was mailed to counts as verified.
    pub async fn set_password_with_code(
        &self,
        code: &str,
        purpose: CodePurpose,
        password: Secret<String>,
    ) -> Result<User, AccountError> {
        let user = self.code_user(code, purpose).await?;
        self.check_password(&user, &password)?;
        let store = self.inner.pool.store();
        let now = self.now();
        let used = store
            .use_account_code(&sha256_hex(code), purpose, now)
            .await?
            .ok_or(AccountError::BadCode)?;
        if used.user_id != user.id {
            return Err(AccountError::BadCode);
        }
        self.inner
            .pool
            .set_password(&user.username, Some(password), false)
            .await?;
        store.verify_email(&user.id, &used.email, now).await?;
        store
            .clear_login_failures(&user.username.to_ascii_lowercase())
            .await?;
        tracing::info!(user_id = %user.id, purpose = purpose.as_str(), "password set with a mailed code");
        let kind = if purpose == CodePurpose::Invite {
            "account.invitation_accept"
        } else {
            "account.password_reset"
        };
        crate::audit::record(
            store,
            now,
            kind,
            &crate::audit::Actor::user(&user.id, "server"),
            &user.username,
            json!({ "sessions": "all revoked" }),
        )
        .await;
        if purpose == CodePurpose::Reset {
            // Tell the address on file, so a reset the owner did not make does not go unseen.
            let link = format!("{}/forgotPassword", self.inner.settings.issuer);
            if let Err(e) = self
                .queue(
                    "password_changed",
                    &used.email,
                    json!({ "username": user.username, "link": link }),
                )
                .await
            {
                tracing::error!(error = %e, "password-changed notice not queued");
            }
        }
        Ok(store.user_by_id(&user.id).await?.unwrap_or(user))
    }

    /// Checks a new password against the policy, in words for the form.
    pub fn check_password(
        &self,
        user: &User,
        password: &Secret<String>,
    ) -> Result<(), AccountError> {
        let mut context = vec![user.username.as_str()];
        if let Some(e) = &user.email {
            context.push(e.as_str());
            context.extend(e.split('@').next());
        }
        self.inner
            .pool
            .policy()
            .check(password.expose(), &context)
            .map_err(|e| AccountError::Invalid(capitalise(&e.to_string())))
    }

    /// Mails an invitation: a link to choose the first password. The user must have an address.
    /// `by`: who sends it (for the audit log).
    pub async fn invite(
        &self,
        username: &str,
        by: &crate::audit::Actor,
    ) -> Result<(), AccountError> {
        if !self.inner.settings.accounts.mail {
            return Err(AccountError::Invalid(
                "invitations need mail: set mail.transport (docs/accounts.md)".into(),
            ));
        }
        let user = self.inner.pool.user(username).await?;
        let Some(email) = user.email.clone() else {
            return Err(AccountError::Invalid(format!(
                "{username} has no e-mail address to send the invitation to; set one with --email"
            )));
        };
        let sent = self
            .mail_code(&user, &email, CodePurpose::Invite, None)
            .await?;
        if sent {
            crate::audit::record(
                self.inner.pool.store(),
                self.now(),
                "account.invite",
                by,
                &user.username,
                json!({ "email": email }),
            )
            .await;
        }
        if !sent {
            return Err(AccountError::Invalid(format!(
                "{username} was sent {CODES_PER_HOUR} invitations in the last hour; wait before sending another"
            )));
        }
        Ok(())
    }
}

/// "1 hour", "24 hours", "7 days", "30 minutes".
fn human_duration(secs: i64) -> String {
    let (n, unit) = if secs % 86_400 == 0 && secs >= 2 * 86_400 {
        (secs / 86_400, "day")
    } else if secs % 3600 == 0 {
        (secs / 3600, "hour")
    } else {
        ((secs + 59) / 60, "minute")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    let mut out: String = c
        .next()
        .map(|f| f.to_uppercase().collect())
        .unwrap_or_default();
    out.push_str(c.as_str());
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(3600), "1 hour");
        assert_eq!(human_duration(86_400), "24 hours");
        assert_eq!(human_duration(7 * 86_400), "7 days");
        assert_eq!(human_duration(1800), "30 minutes");
        assert_eq!(human_duration(90), "2 minutes");
    }
}
