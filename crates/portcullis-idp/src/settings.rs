//! The identity provider's settings, validated by the binary from configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use portcullis_token::Algorithm;

/// Look and feel of the hosted pages.
#[derive(Clone, Debug)]
pub struct Branding {
    pub app_name: String,
    pub logo_url: Option<String>,
    /// A CSS colour for buttons and links.
    pub primary_colour: String,
}

impl Default for Branding {
    fn default() -> Self {
        Branding {
            app_name: "portcullis".into(),
            logo_url: None,
            primary_colour: "#1d4ed8".into(),
        }
    }
}

/// Who may create an account on the hosted sign-up page (`idp.signup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignupMode {
    /// Nobody: accounts come from operators (the default).
    Closed,
    /// Anyone with an e-mail address.
    Open,
    /// Anyone with an address in `idp.signup_domains`.
    Domains,
    /// Only people an operator invited (`user add --invite`): the page stays closed.
    Invite,
}

/// What a custom attribute holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributeKind {
    #[default]
    String,
    /// A whole number, stored as its decimal digits.
    Number,
}

/// An operator-declared attribute asked for on the sign-up page (`[[idp.signup_attributes]]`),
/// stored as `custom:<name>` like Cognito's custom attributes and given to applications in ID
/// tokens and userinfo with the `profile` scope.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomAttribute {
    /// 1–20 ASCII letters, digits or `_`; stored as `custom:<name>`.
    pub name: String,
    /// What the form calls it (default: the name).
    #[serde(default)]
    pub label: String,
    #[serde(default, rename = "type")]
    pub kind: AttributeKind,
    #[serde(default)]
    pub required: bool,
    /// Strings: the longest value in characters (default 256, at most 2048).
    pub max_length: Option<usize>,
    /// Numbers: the smallest and largest value allowed.
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl CustomAttribute {
    /// Checks the declaration; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 20
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(format!(
                "{:?}: a name is 1–20 ASCII letters, digits or `_`",
                self.name
            ));
        }
        match self.kind {
            AttributeKind::String => {
                if self.min.is_some() || self.max.is_some() {
                    return Err(format!(
                        "{}: min and max are for type = \"number\"; strings have max_length",
                        self.name
                    ));
                }
                if self.max_length.is_some_and(|n| n == 0 || n > 2048) {
                    return Err(format!("{}: max_length must be 1–2048", self.name));
                }
            }
            AttributeKind::Number => {
                if self.max_length.is_some() {
                    return Err(format!(
                        "{}: max_length is for strings; numbers have min and max",
                        self.name
                    ));
                }
                if let (Some(min), Some(max)) = (self.min, self.max)
                    && min > max
                {
                    return Err(format!("{}: min is larger than max", self.name));
                }
            }
        }
        Ok(())
    }

    /// The stored key.
    pub fn key(&self) -> String {
        format!("custom:{}", self.name)
    }

    pub fn label(&self) -> &str {
        if self.label.is_empty() {
            &self.name
        } else {
            &self.label
        }
    }

    /// Checks a submitted value (trimmed; empty means not given). `Ok(None)`: leave it unset.
    pub fn check(&self, value: &str) -> Result<Option<String>, String> {
        let value = value.trim();
        if value.is_empty() {
            return if self.required {
                Err(format!("{} is required.", self.label()))
            } else {
                Ok(None)
            };
        }
        match self.kind {
            AttributeKind::String => {
                let max = self.max_length.unwrap_or(256);
                if value.chars().count() > max || value.chars().any(char::is_control) {
                    return Err(format!(
                        "{} must be at most {max} characters of printable text.",
                        self.label()
                    ));
                }
                Ok(Some(value.to_owned()))
            }
            AttributeKind::Number => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("{} must be a whole number.", self.label()))?;
                if self.min.is_some_and(|min| n < min) || self.max.is_some_and(|max| n > max) {
                    let range = match (self.min, self.max) {
                        (Some(a), Some(b)) => format!("between {a} and {b}"),
                        (Some(a), None) => format!("at least {a}"),
                        (None, Some(b)) => format!("at most {b}"),
                        (None, None) => String::new(),
                    };
                    return Err(format!("{} must be {range}.", self.label()));
                }
                Ok(Some(n.to_string()))
            }
        }
    }
}

/// Self-service accounts: sign-up, verification, reset and invitations.
#[derive(Clone, Debug)]
pub struct AccountSettings {
    pub signup: SignupMode,
    /// Lower-case domains whose addresses may sign up (`SignupMode::Domains`).
    pub signup_domains: Vec<String>,
    /// Groups new accounts from the sign-up page join.
    pub signup_groups: Vec<String>,
    /// Custom attributes the sign-up page asks for.
    pub signup_attributes: Vec<CustomAttribute>,
    /// Users whose address is not verified may not sign in.
    pub require_verified_email: bool,
    /// Seconds a verification, reset or invitation link works.
    pub verify_ttl: i64,
    pub reset_ttl: i64,
    pub invite_ttl: i64,
    /// A mail transport is configured: without one, nothing that needs mail is offered.
    pub mail: bool,
    /// Sign-ups, resets and resends accepted per client network per hour (per node).
    pub rate_per_address: u32,
    /// Users may delete their own account on the account page.
    pub self_deletion: bool,
}

impl Default for AccountSettings {
    fn default() -> Self {
        AccountSettings {
            signup: SignupMode::Closed,
            signup_domains: Vec::new(),
            signup_groups: Vec::new(),
            signup_attributes: Vec::new(),
            require_verified_email: false,
            verify_ttl: 24 * 3600,
            reset_ttl: 3600,
            invite_ttl: 7 * 24 * 3600,
            mail: false,
            rate_per_address: 20,
            self_deletion: false,
        }
    }
}

impl AccountSettings {
    /// Whether the sign-up page is open.
    pub fn signup_open(&self) -> bool {
        self.mail && matches!(self.signup, SignupMode::Open | SignupMode::Domains)
    }
}

/// Everything the provider needs to know that is not in the store.
#[derive(Clone, Debug)]
pub struct IdpSettings {
    /// The exact issuer URL, without a trailing slash: `https://id.example.com`.
    pub issuer: String,
    /// Name of the groups claim (`groups`, or `cognito:groups` for compatibility).
    pub groups_claim: String,
    /// Also emit Cognito's claim names (`cognito:groups`, `cognito:username`).
    pub cognito_compat: bool,
    /// Scopes a group grants to its members' tokens.
    pub group_scopes: BTreeMap<String, Vec<String>>,
    pub access_alg: Algorithm,
    pub id_alg: Algorithm,
    /// Seconds a new signing key is published before it signs.
    pub key_rotation_delay: i64,
    /// Seconds a sign-in session at the provider lasts.
    pub session_ttl: i64,
    /// Milliseconds after a refresh token's rotation during which it still works (parallel
    /// requests).
    pub refresh_grace_ms: i64,
    /// Seconds an authorization code lives.
    pub code_ttl: i64,
    /// Cookies with `Secure` and the `__Host-` prefix (false only for plain-http development).
    pub secure_cookies: bool,
    pub branding: Branding,
    /// Directory whose `*.html` files replace the embedded templates.
    pub templates_dir: Option<PathBuf>,
    /// Failed sign-ins before an account is slowed down, the first delay, the longest delay.
    pub lockout_threshold: i64,
    pub lockout_base_delay: i64,
    pub lockout_max_delay: i64,
    /// Sign-in attempts accepted per client address per minute (per node).
    pub signin_rate_per_address: u32,
    pub accounts: AccountSettings,
    /// Members of these groups must sign in with a second factor (and enrol one if they have
    /// none).
    pub mfa_required_groups: Vec<String>,
    /// Sign-ins for these clients must use a second factor.
    pub mfa_required_clients: Vec<String>,
}

impl IdpSettings {
    /// Defaults for an issuer URL.
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer: String = issuer.into();
        let secure_cookies = issuer.starts_with("https://") || is_localhost(&issuer);
        IdpSettings {
            issuer: issuer.trim_end_matches('/').to_owned(),
            groups_claim: "groups".into(),
            cognito_compat: false,
            group_scopes: BTreeMap::new(),
            access_alg: Algorithm::ES256,
            id_alg: Algorithm::RS256,
            key_rotation_delay: 3600,
            session_ttl: 12 * 3600,
            refresh_grace_ms: 30_000,
            code_ttl: 60,
            secure_cookies,
            branding: Branding::default(),
            templates_dir: None,
            lockout_threshold: 5,
            lockout_base_delay: 1,
            lockout_max_delay: 15 * 60,
            signin_rate_per_address: 60,
            accounts: AccountSettings::default(),
            mfa_required_groups: Vec::new(),
            mfa_required_clients: Vec::new(),
        }
    }

    /// The longest lifetime any token may have (keys stay published this long after rotation).
    pub fn max_token_lifetime(&self) -> i64 {
        24 * 3600
    }
}

/// Whether a URL's host is `localhost` or a loopback address (browsers treat these as secure
/// contexts even over plain http, so `Secure` cookies work there).
pub fn is_localhost(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| {
            h == "localhost" || h == "127.0.0.1" || h == "[::1]" || h.ends_with(".localhost")
        })
}
