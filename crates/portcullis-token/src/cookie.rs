//! Reading the `Cookie` header, where browsers carry tokens: one parser for every reader (the
//! hosted pages, the gateway, the browser-session endpoints).

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
}
