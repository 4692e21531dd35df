//! Cookies, where browsers carry tokens: one parser of the `Cookie` header for every reader (the
//! hosted pages, the gateway, the browser-session endpoints), and one [`CookiePolicy`] that names
//! and writes every cookie portcullis sets.

/// The `name=value` pairs of `Cookie` header values, in order (RFC 6265 §5.4: pairs separated by
/// `;`, surrounding spaces ignored). A piece without `=` is skipped.
pub fn pairs<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    header_values
        .into_iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
}

/// A cookie sent more than once: which one is meant is ambiguous, so neither is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cookie is sent more than once")]
pub struct Repeated;

/// The value of cookie `name` when it is sent exactly once; `Ok(None)` when it is absent.
pub fn single<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Result<Option<&'a str>, Repeated> {
    let mut found = None;
    for (k, v) in pairs(header_values) {
        if k == name {
            if found.is_some() {
                return Err(Repeated);
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// The `SameSite` attribute of a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites (sign-in redirects), not on their
    /// subrequests or form posts.
    Lax,
    /// Never sent with a request another site starts.
    Strict,
    /// Sent with every request, cross-site form posts included (needs `Secure`): only for a
    /// value that is useless without what the request itself must bring (a sealed state).
    None,
}

/// Every cookie portcullis sets — its name, its attributes, whether it is ours — decided once
/// and shared by the gateway, the hosted pages and the browser-session endpoints. All are
/// `HttpOnly`, `Path=/`, and `Secure` with the `__Host-` prefix, except in plain-http
/// development mode, where browsers accept neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookiePolicy {
    secure: bool,
    access: String,
    refresh: String,
}

impl CookiePolicy {
    /// `access_cookie` is the configured name of the access-token cookie
    /// (`gateway.access_cookie`); without `secure` it loses a `__Host-` prefix.
    pub fn new(secure: bool, access_cookie: &str) -> CookiePolicy {
        let name = |n: &str| {
            if secure {
                n.to_owned()
            } else {
                n.trim_start_matches("__Host-").to_owned()
            }
        };
        CookiePolicy {
            secure,
            access: name(access_cookie),
            refresh: name("__Host-portcullis-refresh"),
        }
    }

    /// Whether cookies carry `Secure` (false only in plain-http development mode).
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The access-token cookie, which the gateway reads as a credential.
    pub fn access(&self) -> &str {
        &self.access
    }

    /// The sealed refresh-token cookie.
    pub fn refresh(&self) -> &str {
        &self.refresh
    }

    /// The identity provider's sign-in session (single sign-on across applications).
    pub fn idp_session(&self) -> &'static str {
        if self.secure {
            "__Host-portcullis-idp"
        } else {
            "portcullis-idp"
        }
    }

    /// The hosted pages' CSRF double-submit cookie.
    pub fn csrf(&self) -> &'static str {
        if self.secure {
            "__Host-portcullis-csrf"
        } else {
            "portcullis-csrf"
        }
    }

    /// The prefix of a browser sign-in flow's state cookie (one per flow, so tabs can sign in in
    /// parallel).
    pub fn flow_prefix(&self) -> &'static str {
        if self.secure {
            "__Host-portcullis-flow-"
        } else {
            "portcullis-flow-"
        }
    }

    /// A federated sign-in attempt's sealed state (one at a time).
    pub fn federation(&self) -> &'static str {
        if self.secure {
            "__Host-portcullis-federation"
        } else {
            "portcullis-federation"
        }
    }

    /// The upstream provider's session after a federated sign-in (sealed: its ID token, for
    /// signing out there too).
    pub fn upstream_session(&self) -> &'static str {
        if self.secure {
            "__Host-portcullis-upstream"
        } else {
            "portcullis-upstream"
        }
    }

    /// A `Set-Cookie` value: `name=value; Path=/; HttpOnly; SameSite=…[; Secure][; Max-Age=…]`.
    pub fn set(
        &self,
        name: &str,
        value: &str,
        max_age: Option<i64>,
        same_site: SameSite,
    ) -> String {
        let same_site = match same_site {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            // Browsers refuse `SameSite=None` without `Secure`: plain-http development gets Lax.
            SameSite::None if self.secure => "None",
            SameSite::None => "Lax",
        };
        let secure = if self.secure { "; Secure" } else { "" };
        let age = max_age
            .map(|a| format!("; Max-Age={a}"))
            .unwrap_or_default();
        format!("{name}={value}; Path=/; HttpOnly; SameSite={same_site}{secure}{age}")
    }

    /// A `Set-Cookie` value that deletes cookie `name`.
    pub fn clear(&self, name: &str) -> String {
        self.set(name, "", Some(0), SameSite::Lax)
    }

    /// Whether a cookie a browser sends is one of ours, which never travel to an upstream: the
    /// configured names, whatever they are, and every name of the `portcullis` families.
    pub fn is_ours(&self, name: &str) -> bool {
        name == self.access
            || name == self.refresh
            || name.starts_with("__Host-portcullis")
            || name.starts_with("portcullis-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_across_header_lines_in_order() {
        let got: Vec<_> = pairs(["a=1; b=2", " c=3 ;junk; d="]).collect();
        assert_eq!(got, [("a", "1"), ("b", "2"), ("c", "3"), ("d", "")]);
    }

    #[test]
    fn single_refuses_a_repeated_cookie_even_across_lines() {
        assert_eq!(single(["a=1; t=x"], "t"), Ok(Some("x")));
        assert_eq!(single(["a=1"], "t"), Ok(None));
        assert_eq!(single(["t=x", "t=y"], "t"), Err(Repeated));
        assert_eq!(single(["t=x; t=x"], "t"), Err(Repeated));
    }

    #[test]
    fn one_policy_names_and_writes_every_cookie() {
        let p = CookiePolicy::new(true, "session");
        assert_eq!(
            (p.access(), p.refresh()),
            ("session", "__Host-portcullis-refresh")
        );
        assert_eq!(
            p.set("session", "tok", Some(60), SameSite::Lax),
            "session=tok; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
        );
        assert_eq!(
            p.clear(p.csrf()),
            "__Host-portcullis-csrf=; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=0"
        );
        for ours in [
            "session",
            "__Host-portcullis-refresh",
            "__Host-portcullis-flow-x",
            "portcullis-idp",
        ] {
            assert!(p.is_ours(ours), "{ours}");
        }
        assert!(!p.is_ours("theme"));
        let dev = CookiePolicy::new(false, "__Host-portcullis-access");
        assert_eq!(
            (dev.access(), dev.refresh()),
            ("portcullis-access", "portcullis-refresh")
        );
        assert_eq!(dev.flow_prefix(), "portcullis-flow-");
        assert_eq!(
            dev.set("a", "b", None, SameSite::Strict),
            "a=b; Path=/; HttpOnly; SameSite=Strict"
        );
    }
}
