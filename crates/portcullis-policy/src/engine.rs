//! Compiled policies and decisions.

use std::collections::HashMap;
use std::fmt;

use crate::document::{AuthContext, Condition, Effect, PolicyDocument, Principal};
use crate::pattern::path_segments;

/// Why a request was allowed or denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Statement `statement` (1-based) of `principal`'s document denied it.
    Denied {
        principal: Principal,
        statement: usize,
    },
    /// Statement `statement` of `principal`'s document allowed it, and nothing denied it.
    Allowed {
        principal: Principal,
        statement: usize,
    },
    /// No statement of any of the caller's principals covers the request: default deny.
    NoMatch,
    /// Only allow statements with a condition cover the request, and the caller's sign-in
    /// does not meet it (the first such statement is named): signing in again can help.
    ConditionFailed {
        principal: Principal,
        statement: usize,
        condition: Condition,
    },
}

/// A decision with its reason and the policy version it was made under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    pub version: i64,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::Denied {
                principal,
                statement,
            } => write!(
                f,
                "denied by statement {statement} of {principal}, version {}",
                self.version
            ),
            Reason::Allowed {
                principal,
                statement,
            } => write!(
                f,
                "allowed by statement {statement} of {principal}, version {}",
                self.version
            ),
            Reason::NoMatch => write!(
                f,
                "denied: no statement matches (default deny), version {}",
                self.version
            ),
            Reason::ConditionFailed {
                principal,
                statement,
                condition,
            } => write!(
                f,
                "denied: statement {statement} of {principal} allows it only with {condition}, which this sign-in does not meet, version {}",
                self.version
            ),
        }
    }
}

/// A set of documents ready to evaluate.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    version: i64,
    documents: Vec<PolicyDocument>,
    /// Keyed by [`Principal::folded`].
    by_principal: HashMap<Principal, usize>,
    /// `group:` documents by the name exactly as written, for [`Principal::ExactGroup`].
    exact_groups: HashMap<String, usize>,
}

impl PolicySet {
    pub fn new(documents: Vec<PolicyDocument>, version: i64) -> PolicySet {
        let by_principal = documents
            .iter()
            .enumerate()
            .map(|(i, d)| (d.principal.folded(), i))
            .collect();
        let exact_groups = documents
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match &d.principal {
                Principal::Group(g) => Some((g.clone(), i)),
                _ => None,
            })
            .collect();
        PolicySet {
            version,
            documents,
            by_principal,
            exact_groups,
        }
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    pub fn documents(&self) -> &[PolicyDocument] {
        &self.documents
    }

    /// Decides `method` on the canonical `path` for a caller holding `principals`. Explicit deny
    /// wins over allow; no match is a deny.
    pub fn decide(&self, principals: &[Principal], method: &str, path: &str) -> Decision {
        self.decide_as(principals, method, path, &AuthContext::default(), 0)
    }

    /// [`decide`](Self::decide) for a caller who signed in as `auth` (conditions of allow
    /// statements are checked against it at `now`).
    pub fn decide_as(
        &self,
        principals: &[Principal],
        method: &str,
        path: &str,
        auth: &AuthContext,
        now: i64,
    ) -> Decision {
        let principals: Vec<Principal> = principals
            .iter()
            .map(|p| match p {
                Principal::Group(g) => Principal::Group(g.to_ascii_lowercase()),
                other => other.clone(),
            })
            .collect();
        self.decide_segments(
            &principals,
            &method.to_ascii_uppercase(),
            &path_segments(path),
            auth,
            now,
        )
    }

    /// [`decide`](Self::decide) on the hot path: the path already split by [`path_segments`]
    /// (the gateway splits once for routing and authorization), `method` upper case, group
    /// principals lower case. Allocates nothing unless it denies with a reason.
    pub fn decide_segments(
        &self,
        principals: &[Principal],
        method: &str,
        segments: &[String],
        auth: &AuthContext,
        now: i64,
    ) -> Decision {
        let mut allowed_by: Option<(&Principal, usize)> = None;
        let mut unmet: Option<(&Principal, usize, Condition)> = None;
        for principal in principals {
            let index = match principal {
                Principal::ExactGroup(g) => self.exact_groups.get(g),
                other => self.by_principal.get(other),
            };
            let Some(&i) = index else {
                continue;
            };
            for (n, st) in self.documents[i].statements.iter().enumerate() {
                if !st.covers_method(method) || !st.paths.iter().any(|p| p.matches(segments)) {
                    continue;
                }
                match st.effect {
                    Effect::Deny => {
                        return Decision {
                            allowed: false,
                            reason: Reason::Denied {
                                principal: principal.clone(),
                                statement: n + 1,
                            },
                            version: self.version,
                        };
                    }
                    Effect::Allow if st.condition.met_by(auth, now) => {
                        allowed_by.get_or_insert((principal, n + 1));
                    }
                    Effect::Allow => {
                        unmet.get_or_insert((principal, n + 1, st.condition));
                    }
                }
            }
        }
        match allowed_by {
            Some((principal, statement)) => Decision {
                allowed: true,
                reason: Reason::Allowed {
                    principal: principal.clone(),
                    statement,
                },
                version: self.version,
            },
            None => Decision {
                allowed: false,
                reason: match unmet {
                    Some((principal, statement, condition)) => Reason::ConditionFailed {
                        principal: principal.clone(),
                        statement,
                        condition,
                    },
                    None => Reason::NoMatch,
                },
                version: self.version,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::document::parse_file;

    fn seed() -> PolicySet {
        let docs = parse_file(crate::document::tests::SEED).expect("valid");
        PolicySet::new(docs, 7)
    }

    fn user() -> Vec<Principal> {
        vec![Principal::Group("user".into()), Principal::Authenticated]
    }

    #[test]
    fn the_seed_architecture() {
        let p = seed();
        assert!(p.decide(&user(), "GET", "/api/orders").allowed);
        assert!(
            p.decide(&user(), "HEAD", "/api/orders").allowed,
            "HEAD follows GET"
        );
        assert!(!p.decide(&user(), "DELETE", "/api/orders").allowed);
        let d = p.decide(&user(), "GET", "/api/admin/orders");
        assert!(!d.allowed);
        assert_eq!(
            d.to_string(),
            "denied by statement 2 of group:user, version 7"
        );
        assert!(
            !p.decide(&user(), "GET", "/API/Admin").allowed,
            "case and the bare prefix are covered"
        );
        let admin = vec![
            Principal::Group("Admin".into()),
            Principal::Group("user".into()),
        ];
        // An admin is also a user, and user's explicit deny wins: the documents must say so.
        assert!(!p.decide(&admin, "GET", "/api/admin/x").allowed);
        assert!(
            p.decide(&[Principal::Group("admin".into())], "GET", "/api/admin/x")
                .allowed
        );
        assert_eq!(p.decide(&[], "GET", "/api/orders").reason, Reason::NoMatch);
        // A case-sensitive issuer's groups match only the name as written.
        let exact = |g: &str| [Principal::ExactGroup(g.into())];
        assert!(p.decide(&exact("admin"), "GET", "/api/admin/x").allowed);
        assert!(!p.decide(&exact("Admin"), "GET", "/api/admin/x").allowed);
        assert!(!p.decide(&exact("ADMIN"), "GET", "/api/orders").allowed);
    }

    #[test]
    fn conditions_allow_only_sign_ins_that_meet_them() {
        let docs = parse_file(
            r#"
[[policy]]
principal = "group:admin"
statements = [
  { effect = "allow", paths = ["/admin/**"], mfa = true, auth_age = "15m" },
  { effect = "allow", methods = ["GET"], paths = ["/admin/status"] },
]
"#,
        )
        .expect("valid");
        let p = PolicySet::new(docs, 3);
        let admin = [Principal::Group("admin".into())];
        let strong = AuthContext {
            mfa: true,
            auth_time: Some(1000),
        };
        let weak = AuthContext {
            mfa: false,
            auth_time: Some(1000),
        };
        assert!(
            p.decide_as(&admin, "POST", "/admin/users", &strong, 1500)
                .allowed
        );
        let d = p.decide_as(&admin, "POST", "/admin/users", &weak, 1500);
        assert!(!d.allowed);
        assert!(matches!(
            d.reason,
            Reason::ConditionFailed { statement: 1, .. }
        ));
        assert!(d.to_string().contains("only with mfa = true"), "{d}");
        assert!(
            !p.decide_as(&admin, "POST", "/admin/users", &strong, 1901)
                .allowed,
            "too old"
        );
        // An unconditional allow for the same request wins over an unmet condition.
        assert!(
            p.decide_as(&admin, "GET", "/admin/status", &weak, 1500)
                .allowed
        );
        // Without a sign-in context (the CLI's matrix), conditions are not met.
        assert!(!p.decide(&admin, "POST", "/admin/users").allowed);
    }

    proptest! {
        /// Adding a deny for a path can only turn allows into denies, never the reverse.
        #[test]
        fn deny_always_wins(seg in "[a-z]{1,6}", method in prop::sample::select(vec!["GET", "POST", "DELETE"])) {
            let path = format!("/api/{seg}");
            let base = seed();
            let mut docs = base.documents().to_vec();
            docs[0].statements.push(crate::Statement {
                effect: Effect::Deny,
                methods: vec![],
                paths: vec![crate::PathPattern::parse(&path).expect("pattern")],
                condition: Default::default(),
            });
            let with_deny = PolicySet::new(docs, 8);
            prop_assert!(!with_deny.decide(&user(), method, &path).allowed);
            let strong = AuthContext { mfa: true, auth_time: Some(0) };
            prop_assert!(!with_deny.decide_as(&user(), method, &path, &strong, 0).allowed);
            prop_assert!(!with_deny.decide(&user(), method, &path.to_uppercase()).allowed);
        }
    }
}
