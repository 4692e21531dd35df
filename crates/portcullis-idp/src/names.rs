//! What a username, a group name and an email address may be.
//!
//! Usernames and group names are restricted to printable ASCII letters, digits and `. _ - @ +`
//! so that no two distinct names can look alike across scripts (no Cyrillic `а` posing as Latin
//! `a`, no zero-width or bidi characters), and they are unique without regard to letter case.

/// Longest username or group name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest email address accepted, in bytes (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// Why a name or address was refused. The message says what is allowed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is too long: {len} bytes, at most {max} allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{what} contains {found:?}, which is not allowed: use ASCII letters, digits and {allowed}"
    )]
    BadCharacter {
        what: &'static str,
        found: char,
        allowed: &'static str,
    },
    #[error("{what} must start and end with a letter or digit")]
    BadEdge { what: &'static str },
    #[error("{0:?} is not a valid email address (expected something like name@example.com)")]
    BadEmail(String),
}

fn validate_name(
    value: &str,
    what: &'static str,
    extra: &'static [char],
    allowed: &'static str,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            len: value.len(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some(found) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        return Err(NameError::BadCharacter {
            what,
            found,
            allowed,
        });
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Err(NameError::BadEdge { what });
    }
    Ok(())
}

/// A username: 1–128 bytes of ASCII letters, digits and `. _ - @ +`, starting and ending with a
/// letter or digit (so an email address works as a username).
pub fn validate_username(username: &str) -> Result<(), NameError> {
    validate_name(
        username,
        "the username",
        &['.', '_', '-', '@', '+'],
        "`. _ - @ +`",
    )
}

/// A group name: 1–128 bytes of ASCII letters, digits and `. _ -`, starting and ending with a
/// letter or digit. (No `:` — policies address groups as `group:NAME`.)
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    validate_name(name, "the group name", &['.', '_', '-'], "`. _ -`")
}

/// An email address per RFC 5322's addr-spec, at most 254 bytes, with a dotted domain.
pub fn validate_email(email: &str) -> Result<(), NameError> {
    if email.len() > MAX_EMAIL_LEN {
        return Err(NameError::TooLong {
            what: "the email address",
            len: email.len(),
            max: MAX_EMAIL_LEN,
        });
    }
    let parsed: email_address::EmailAddress = email
        .parse()
        .map_err(|_| NameError::BadEmail(email.to_owned()))?;
    let domain = parsed.domain();
    // Reject display-name forms ("Bob <bob@x.org>") and dotless or IP-literal domains, which
    // the parser accepts but no mail system the pool will talk to uses.
    if parsed.as_str() != email
        || !domain.contains('.')
        || domain.starts_with('[')
        || email.chars().any(char::is_whitespace)
    {
        return Err(NameError::BadEmail(email.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in [
            "alice",
            "Bob",
            "a",
            "alice.smith",
            "a_b-c",
            "bob@example.com",
            "x+tag@y.io",
            "007",
        ] {
            assert_eq!(validate_username(ok), Ok(()), "{ok}");
        }
        assert!(matches!(
            validate_username(""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            validate_username(&"a".repeat(129)),
            Err(NameError::TooLong { .. })
        ));
        assert_eq!(validate_username(&"a".repeat(128)), Ok(()));
        // Confusables and invisible characters: Cyrillic а, zero-width space, RTL override, NUL.
        for bad in [
            "аdmin",
            "ad\u{200b}min",
            "ad\u{202e}nim",
            "ad\0min",
            "admin ",
            "ad min",
            "ad/min",
            "ad:min",
            "é",
        ] {
            assert!(validate_username(bad).is_err(), "{bad:?} must be refused");
        }
        for bad in [".admin", "admin.", "-x", "x@", "_"] {
            assert!(
                matches!(validate_username(bad), Err(NameError::BadEdge { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn group_names() {
        assert_eq!(validate_group_name("admin"), Ok(()));
        assert_eq!(validate_group_name("team-7.ops"), Ok(()));
        for bad in ["", "group:admin", "a b", "x@y", "admin*"] {
            assert!(validate_group_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails() {
        for ok in ["a@example.com", "first.last+tag@sub.example.org"] {
            assert_eq!(validate_email(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a@@b.com",
            "Bob <bob@x.org>",
            "a b@x.org",
            "a@[127.0.0.1]",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?} must be refused");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(matches!(
            validate_email(&long),
            Err(NameError::TooLong { .. })
        ));
    }
}
