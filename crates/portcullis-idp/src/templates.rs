//! Hosted-page templates: embedded defaults, each replaceable by a file of the same name in a
//! directory (`branding.templates_dir`), so a team can brand the pages without a rebuild.

use std::path::Path;

use minijinja::Environment;
use serde_json::Value;

use crate::settings::Branding;

const EMBEDDED: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("error.html", include_str!("../templates/error.html")),
    (
        "signed_out.html",
        include_str!("../templates/signed_out.html"),
    ),
    ("signup.html", include_str!("../templates/signup.html")),
    ("strength.html", include_str!("../templates/strength.html")),
    ("notice.html", include_str!("../templates/notice.html")),
    (
        "forgot_password.html",
        include_str!("../templates/forgot_password.html"),
    ),
    (
        "new_password.html",
        include_str!("../templates/new_password.html"),
    ),
    (
        "verify_email.html",
        include_str!("../templates/verify_email.html"),
    ),
    ("account.html", include_str!("../templates/account.html")),
    ("mfa.html", include_str!("../templates/mfa.html")),
    (
        "mfa_enrol.html",
        include_str!("../templates/mfa_enrol.html"),
    ),
    (
        "mfa_recovery.html",
        include_str!("../templates/mfa_recovery.html"),
    ),
    (
        "mail_email_changed.txt",
        include_str!("../templates/mail_email_changed.txt"),
    ),
    (
        "mail_email_changed.html",
        include_str!("../templates/mail_email_changed.html"),
    ),
    (
        "mail_base.html",
        include_str!("../templates/mail_base.html"),
    ),
    (
        "mail_verify.txt",
        include_str!("../templates/mail_verify.txt"),
    ),
    (
        "mail_verify.html",
        include_str!("../templates/mail_verify.html"),
    ),
    (
        "mail_reset.txt",
        include_str!("../templates/mail_reset.txt"),
    ),
    (
        "mail_reset.html",
        include_str!("../templates/mail_reset.html"),
    ),
    (
        "mail_invite.txt",
        include_str!("../templates/mail_invite.txt"),
    ),
    (
        "mail_invite.html",
        include_str!("../templates/mail_invite.html"),
    ),
    (
        "mail_signup_exists.txt",
        include_str!("../templates/mail_signup_exists.txt"),
    ),
    (
        "mail_signup_exists.html",
        include_str!("../templates/mail_signup_exists.html"),
    ),
    (
        "mail_password_changed.txt",
        include_str!("../templates/mail_password_changed.txt"),
    ),
    (
        "mail_password_changed.html",
        include_str!("../templates/mail_password_changed.html"),
    ),
];

/// A rendered message: the subject is the text template's first line, `Subject: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why the templates (with an override directory) cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("template {name}: {reason}")]
    Syntax { name: &'static str, reason: String },
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Embedded templates, overridden by same-named files in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.add_filter("urlencode", |value: String| -> String {
            url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
        });
        for (name, source) in EMBEDDED {
            let source = match dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(path) => std::fs::read_to_string(&path).map_err(|e| TemplateError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?,
                None => (*source).to_owned(),
            };
            env.add_template_owned((*name).to_owned(), source)
                .map_err(|e| TemplateError::Syntax {
                    name,
                    reason: e.to_string(),
                })?;
        }
        Ok(Templates { env })
    }

    /// Renders a page with the branding and `ctx` (a JSON object).
    pub fn render(
        &self,
        name: &str,
        branding: &Branding,
        ctx: Value,
    ) -> Result<String, minijinja::Error> {
        let mut ctx = match ctx {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        ctx.insert("app_name".into(), Value::from(branding.app_name.clone()));
        ctx.insert(
            "logo_url".into(),
            branding
                .logo_url
                .clone()
                .map(Value::from)
                .unwrap_or(Value::Null),
        );
        ctx.insert(
            "primary_colour".into(),
            Value::from(branding.primary_colour.clone()),
        );
        self.env
            .get_template(name)?
            .render(minijinja::value::Serde(Value::Object(ctx)))
    }

    /// Renders the message `mail_<kind>.txt` and `mail_<kind>.html`. The text template starts with
    /// `Subject: ...` and a blank line; a subject is one line of at most 200 characters.
    pub fn render_mail(
        &self,
        kind: &str,
        branding: &Branding,
        ctx: Value,
    ) -> Result<RenderedMail, minijinja::Error> {
        let bad = |why: &str| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("mail_{kind}.txt: {why}"),
            )
        };
        let text = self.render(&format!("mail_{kind}.txt"), branding, ctx.clone())?;
        let (first, body) = text.split_once('\n').unwrap_or((&text, ""));
        let subject = first
            .strip_prefix("Subject:")
            .map(str::trim)
            .filter(|s| {
                !s.is_empty() && s.chars().count() <= 200 && !s.chars().any(char::is_control)
            })
            .ok_or_else(|| {
                bad("must start with a line `Subject: ...` (one line, at most 200 characters)")
            })?
            .to_owned();
        let mut ctx = ctx;
        if let Value::Object(m) = &mut ctx {
            m.insert("subject".into(), Value::from(subject.clone()));
        }
        let html = self.render(&format!("mail_{kind}.html"), branding, ctx)?;
        Ok(RenderedMail {
            subject,
            text: body.trim_start_matches(['\r', '\n']).to_owned(),
            html,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every embedded page and message renders with the context its handler gives it.
    #[test]
    fn embedded_templates_render() {
        let t = Templates::load(None).expect("templates");
        let b = Branding::default();
        let account = serde_json::json!({
            "username": "ada", "email": "ada@example.com", "email_verified": false, "mail": true,
            "deletion": true, "csrf": "c", "error": null, "message": "done", "strength": 1,
            "min_length": 12,
            "sessions": [{ "created": "2026-12-06 10:00 UTC", "current": true, "clients": ["web"] },
                         { "created": "2026-12-05 10:00 UTC", "current": false, "clients": [] }],
        });
        let mut with_password = account.clone();
        with_password["has_password"] = serde_json::json!(true);
        let html = t
            .render("account.html", &b, with_password)
            .expect("account.html");
        assert!(html.contains("this browser") && html.contains("Delete my account"));
        // Signed in through a provider only: no forms that ask for a password.
        let mut federated = account.clone();
        federated["identities"] = serde_json::json!([{ "provider": "google", "name": "Google",
            "subject": "1", "email": "ada@example.com", "linked": "-", "last_used": "-" }]);
        let html = t
            .render("account.html", &b, federated)
            .expect("account.html");
        assert!(html.contains("You sign in through Google; there is no password here."));
        assert!(!html.contains("Delete my account") && !html.contains("id=\"change-password\""));
        for kind in [
            "verify",
            "reset",
            "invite",
            "signup_exists",
            "password_changed",
            "email_changed",
        ] {
            let mail = t
                .render_mail(kind, &b, serde_json::json!({
                    "username": "ada", "email": "a@example.com", "link": "https://id.example.com/x?code=1&r=2",
                    "expires_in": "1 hour",
                }))
                .unwrap_or_else(|e| panic!("mail {kind}: {e}"));
            assert!(
                !mail.subject.is_empty() && !mail.text.starts_with("Subject"),
                "{kind}"
            );
            assert!(
                mail.text.contains("https://id.example.com/x?code=1&r=2"),
                "{kind}: links are not escaped in text"
            );
            assert!(
                mail.html.contains("code=1&amp;r=2") && !mail.html.contains("code=1&r"),
                "{kind}: and are in HTML"
            );
        }
    }
}
