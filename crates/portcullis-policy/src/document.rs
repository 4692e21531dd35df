//! Policy documents and their TOML file format.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pattern::PathPattern;

/// Who a document applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// Members of a group, as written in the document. Against our own user pool's groups (unique
    /// case-insensitively) and issuers that opt into folding, names compare case-insensitively.
    Group(String),
    /// A group of an external issuer that treats group names as case-sensitive (Cognito does):
    /// it matches only a `group:` document whose name is written exactly so. Never parsed from a
    /// document; the gateway gives it to such issuers' tokens.
    ExactGroup(String),
    /// Tokens carrying a scope.
    Scope(String),
    /// Tokens issued to a client id.
    Client(String),
    /// Any valid token.
    Authenticated,
}

impl Principal {
    /// Parses `group:NAME`, `scope:NAME`, `client:ID` or `authenticated`.
    pub fn parse(s: &str) -> Result<Principal, PrincipalError> {
        let bad = || PrincipalError(s.to_owned());
        if s == "authenticated" {
            return Ok(Principal::Authenticated);
        }
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        match kind {
            "group" => Ok(Principal::Group(name.to_owned())),
            "scope" => Ok(Principal::Scope(name.to_owned())),
            "client" => Ok(Principal::Client(name.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// A principal that is none of `group:NAME`, `scope:NAME`, `client:ID` or `authenticated`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("principal {0:?}: use group:NAME, scope:NAME, client:ID or authenticated")]
pub struct PrincipalError(pub String);

impl Principal {
    /// The principal as the policy index keys it: group names lower-cased.
    pub fn folded(&self) -> Principal {
        match self {
            Principal::Group(g) | Principal::ExactGroup(g) => {
                Principal::Group(g.to_ascii_lowercase())
            }
            other => other.clone(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Group(g) | Principal::ExactGroup(g) => write!(f, "group:{g}"),
            Principal::Scope(s) => write!(f, "scope:{s}"),
            Principal::Client(c) => write!(f, "client:{c}"),
            Principal::Authenticated => f.write_str("authenticated"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// What an `allow` statement may additionally require of how the caller signed in, read from
/// the token's `amr` and `auth_time` (AWS IAM's `aws:MultiFactorAuthPresent` and
/// `aws:MultiFactorAuthAge`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// A second factor was used (`amr` holds `mfa`).
    pub mfa: bool,
    /// Signed in at most this many seconds ago (`auth_time`).
    pub max_auth_age: Option<i64>,
}

impl Condition {
    pub fn is_empty(&self) -> bool {
        !self.mfa && self.max_auth_age.is_none()
    }

    /// Whether a caller who signed in as `auth` meets it at `now`.
    pub fn met_by(&self, auth: &AuthContext, now: i64) -> bool {
        (!self.mfa || auth.mfa)
            && self
                .max_auth_age
                .is_none_or(|max| auth.auth_time.is_some_and(|t| now - t <= max))
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.mfa {
            parts.push("mfa = true".to_owned());
        }
        if let Some(age) = self.max_auth_age {
            parts.push(format!("auth_age = \"{}\"", format_age(age)));
        }
        f.write_str(&parts.join(", "))
    }
}

fn format_age(secs: i64) -> String {
    if secs % 3600 == 0 && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 && secs > 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// How the caller signed in, as the token says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthContext {
    /// `amr` holds `mfa`.
    pub mfa: bool,
    /// `auth_time`, if the token has one (client-credentials tokens do not).
    pub auth_time: Option<i64>,
}

/// One rule: an effect for some methods on some paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub effect: Effect,
    /// Upper-case method names; empty means every method (`*`).
    pub methods: Vec<String>,
    pub paths: Vec<PathPattern>,
    /// For `allow`: what the caller's sign-in must also satisfy.
    pub condition: Condition,
}

impl Statement {
    /// Whether the statement covers `method` (HEAD is covered wherever GET is).
    pub fn covers_method(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m == method || (method == "HEAD" && m == "GET"))
    }
}

/// A principal's statements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDocument {
    pub principal: Principal,
    pub statements: Vec<Statement>,
}

/// A policy file or document is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policy: Vec<RawDocument>,
}

/// A policy document as written (a `[[policy]]` table), before [`build_documents`] checks it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocument {
    principal: String,
    statements: Vec<RawStatement>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStatement {
    effect: Effect,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    methods: Vec<String>,
    paths: Vec<String>,
    /// Require a second factor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    mfa: bool,
    /// Require a sign-in at most this long ago ("15m", "1h", "90s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_age: Option<String>,
}

/// "15m" → 900. Seconds, minutes or hours; 1 s to 30 days.
fn parse_age(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (1..=30 * 86_400).contains(&secs).then_some(secs)
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Parses a policy file (`[[policy]]` tables) and checks it as [`build_documents`] does.
pub fn parse_file(text: &str) -> Result<Vec<PolicyDocument>, PolicyError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let location = e.span().map_or_else(
            || "policy file".to_owned(),
            |s| {
                format!(
                    "line {}",
                    text[..s.start.min(text.len())].matches('\n').count() + 1
                )
            },
        );
        PolicyError::Invalid {
            location,
            message: e.message().lines().next().unwrap_or_default().to_owned(),
        }
    })?;
    build_documents(raw.policy)
}

/// Checks documents as written. Every document must be valid; two documents for one principal
/// are refused (merge them) so that a review sees one place per principal.
pub fn build_documents(
    raw: impl IntoIterator<Item = RawDocument>,
) -> Result<Vec<PolicyDocument>, PolicyError> {
    let mut docs: Vec<PolicyDocument> = Vec::new();
    for (d, doc) in raw.into_iter().enumerate() {
        let at = |s: Option<usize>| match s {
            Some(s) => format!("policy {} ({}), statement {}", d + 1, doc.principal, s + 1),
            None => format!("policy {} ({})", d + 1, doc.principal),
        };
        let principal = Principal::parse(&doc.principal).map_err(|m| PolicyError::Invalid {
            location: at(None),
            message: m.to_string(),
        })?;
        if docs
            .iter()
            .any(|x: &PolicyDocument| x.principal.folded() == principal.folded())
        {
            return Err(PolicyError::Invalid {
                location: at(None),
                message: format!("a second document for {principal}; merge them into one"),
            });
        }
        if doc.statements.is_empty() {
            return Err(PolicyError::Invalid {
                location: at(None),
                message: "has no statements".into(),
            });
        }
        let mut statements = Vec::new();
        for (s, st) in doc.statements.iter().enumerate() {
            let invalid = |message: String| PolicyError::Invalid {
                location: at(Some(s)),
                message,
            };
            if st.paths.is_empty() {
                return Err(invalid("needs at least one path".into()));
            }
            let mut methods = Vec::new();
            for m in &st.methods {
                let up = m.to_ascii_uppercase();
                if up == "*" {
                    methods.clear();
                    break;
                }
                if !METHODS.contains(&up.as_str()) {
                    return Err(invalid(format!(
                        "unknown method {m:?}; use {} or *",
                        METHODS.join(", ")
                    )));
                }
                methods.push(up);
            }
            let paths = st
                .paths
                .iter()
                .map(|p| PathPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(e.to_string()))?;
            let max_auth_age = match &st.auth_age {
                Some(a) => Some(parse_age(a).ok_or_else(|| {
                    invalid(format!(
                        "auth_age {a:?}: write a duration such as \"15m\", \"1h\" or \"90s\" (1 s to 30 days)"
                    ))
                })?),
                None => None,
            };
            let condition = Condition {
                mfa: st.mfa,
                max_auth_age,
            };
            if st.effect == Effect::Deny && !condition.is_empty() {
                return Err(invalid(
                    "mfa and auth_age are conditions of an allow: a deny always applies".into(),
                ));
            }
            statements.push(Statement {
                effect: st.effect,
                methods,
                paths,
                condition,
            });
        }
        docs.push(PolicyDocument {
            principal,
            statements,
        });
    }
    Ok(docs)
}

/// Writes documents in the file format (`parse_file(export(d)) == d`).
pub fn export(docs: &[PolicyDocument]) -> String {
    let raw = RawFile {
        policy: docs
            .iter()
            .map(|d| RawDocument {
                principal: d.principal.to_string(),
                statements: d
                    .statements
                    .iter()
                    .map(|s| RawStatement {
                        effect: s.effect,
                        methods: if s.methods.is_empty() {
                            vec!["*".into()]
                        } else {
                            s.methods.clone()
                        },
                        paths: s.paths.iter().map(|p| p.as_str().to_owned()).collect(),
                        mfa: s.condition.mfa,
                        auth_age: s.condition.max_auth_age.map(format_age),
                    })
                    .collect(),
            })
            .collect(),
    };
    toml::to_string_pretty(&raw).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Users may use the API but not its admin part; admins may do anything.
    pub(crate) const SEED: &str = r#"
[[policy]]
principal = "group:user"
statements = [
  { effect = "allow", methods = ["GET", "POST"], paths = ["/api/**"] },
  { effect = "deny",  paths = ["/api/admin/**", "/admin/**"] },
]
[[policy]]
principal = "group:admin"
statements = [{ effect = "allow", methods = ["*"], paths = ["/**"] }]
"#;

    #[test]
    fn parses_the_design_example_and_round_trips() {
        let docs = parse_file(SEED).expect("valid");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].principal, Principal::Group("user".into()));
        assert_eq!(docs[0].statements[1].effect, Effect::Deny);
        assert!(
            docs[1].statements[0].methods.is_empty(),
            "* means every method"
        );
        assert_eq!(parse_file(&export(&docs)).expect("round trip"), docs);
    }

    #[test]
    fn errors_say_where() {
        let e = parse_file("[[policy]]\nprincipal = \"role:x\"\nstatements = [{ effect = \"allow\", paths = [\"/\"] }]").expect_err("bad");
        assert!(e.to_string().contains("policy 1 (role:x)"), "{e}");
        let e = parse_file("[[policy]]\nprincipal = \"group:a\"\nstatements = [{ effect = \"allow\", methods = [\"BREW\"], paths = [\"/\"] }]").expect_err("bad");
        assert!(
            e.to_string().contains("statement 1") && e.to_string().contains("BREW"),
            "{e}"
        );
        let e = parse_file("[[policy]]\nprincipal = \"group:a\"\nstatements = [{ effect = \"permit\", paths = [\"/\"] }]").expect_err("bad");
        assert!(e.to_string().starts_with("line 3"), "{e}");
        let dup = "[[policy]]\nprincipal = \"group:A\"\nstatements = [{ effect = \"allow\", paths = [\"/\"] }]\n[[policy]]\nprincipal = \"group:a\"\nstatements = [{ effect = \"allow\", paths = [\"/x\"] }]";
        assert!(
            parse_file(dup)
                .expect_err("dup")
                .to_string()
                .contains("merge")
        );
        assert!(parse_file("[[policy]]\nprincipal = \"group:a\"\nstatements = []").is_err());
    }

    #[test]
    fn conditions_parse_round_trip_and_belong_to_allows() {
        let text = r#"
[[policy]]
principal = "group:admin"
statements = [{ effect = "allow", paths = ["/admin/**"], mfa = true, auth_age = "15m" }]
"#;
        let docs = parse_file(text).expect("valid");
        let c = docs[0].statements[0].condition;
        assert_eq!(
            c,
            Condition {
                mfa: true,
                max_auth_age: Some(900)
            }
        );
        assert_eq!(c.to_string(), "mfa = true, auth_age = \"15m\"");
        assert_eq!(parse_file(&export(&docs)).expect("round trip"), docs);
        let deny = "[[policy]]\nprincipal = \"group:a\"\nstatements = [{ effect = \"deny\", paths = [\"/\"], mfa = true }]";
        assert!(
            parse_file(deny)
                .expect_err("deny")
                .to_string()
                .contains("condition")
        );
        for bad in ["15", "15d", "0s", "m", "-5m"] {
            let t = format!(
                "[[policy]]\nprincipal = \"group:a\"\nstatements = [{{ effect = \"allow\", paths = [\"/\"], auth_age = \"{bad}\" }}]"
            );
            assert!(parse_file(&t).is_err(), "{bad}");
        }
        let auth = AuthContext {
            mfa: true,
            auth_time: Some(1000),
        };
        assert!(c.met_by(&auth, 1900));
        assert!(!c.met_by(&auth, 1901), "too old");
        assert!(!c.met_by(
            &AuthContext {
                mfa: false,
                auth_time: Some(1000)
            },
            1000
        ));
        assert!(!c.met_by(
            &AuthContext {
                mfa: true,
                auth_time: None
            },
            1000
        ));
    }
}
