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

/// One rule: an effect for some methods on some paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub effect: Effect,
    /// Upper-case method names; empty means every method (`*`).
    pub methods: Vec<String>,
    pub paths: Vec<PathPattern>,
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
            statements.push(Statement {
                effect: st.effect,
                methods,
                paths,
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
}
