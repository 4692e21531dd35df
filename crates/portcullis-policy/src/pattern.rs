//! Path patterns.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**` (last only): zero or more segments.
    Rest,
}

/// A compiled path pattern such as `/api/*/orders/**`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
}

/// The segments of a canonical path for matching: lower-cased, without the leading slash and
/// without a trailing empty segment (`/admin/` matches as `/admin`).
pub fn path_segments(path: &str) -> Vec<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.split('/').map(str::to_ascii_lowercase).collect()
}

/// Why a path pattern was refused (the pattern as written, and what is wrong with it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("path pattern {0:?} must start with /")]
    NotAbsolute(String),
    #[error("{0:?}: `**` may only be the last segment")]
    RestNotLast(String),
    #[error("{0:?}: empty segment (`//`)")]
    EmptySegment(String),
    #[error("{0:?}: `.` and `..` segments never match a canonical path")]
    DotSegment(String),
    #[error("{0:?}: `*` must be a whole segment")]
    PartialWildcard(String),
    #[error(
        "{pattern:?}: segment {segment:?} has a character that never appears in a canonical path"
    )]
    Character { pattern: String, segment: String },
}

impl PathPattern {
    /// Parses a pattern. It must start with `/`; `**` may only be the last segment; `*` and `**`
    /// must stand alone in their segment; segments are ASCII without `%`, `\`, `;`, `?`, `#`,
    /// and are never `.` or `..`.
    pub fn parse(raw: &str) -> Result<PathPattern, PatternError> {
        if !raw.starts_with('/') {
            return Err(PatternError::NotAbsolute(raw.to_owned()));
        }
        let body = raw.trim_start_matches('/').trim_end_matches('/');
        let mut segments = Vec::new();
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let seg = match *part {
                    "**" if i + 1 == parts.len() => Segment::Rest,
                    "**" => return Err(PatternError::RestNotLast(raw.to_owned())),
                    "*" => Segment::One,
                    "" => return Err(PatternError::EmptySegment(raw.to_owned())),
                    "." | ".." => return Err(PatternError::DotSegment(raw.to_owned())),
                    lit if lit.contains('*') => {
                        return Err(PatternError::PartialWildcard(raw.to_owned()));
                    }
                    lit if !lit
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"%\\;?#".contains(&b)) =>
                    {
                        return Err(PatternError::Character {
                            pattern: raw.to_owned(),
                            segment: lit.to_owned(),
                        });
                    }
                    lit => Segment::Literal(lit.to_ascii_lowercase()),
                };
                segments.push(seg);
            }
        }
        Ok(PathPattern {
            raw: raw.to_owned(),
            segments,
        })
    }

    /// Whether the pattern matches a path given as [`path_segments`].
    pub fn matches(&self, path: &[String]) -> bool {
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if i >= path.len() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if path.get(i) != Some(l) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == path.len()
    }

    /// How specific the pattern is, for ordering routes: more literal segments first, then more
    /// segments, then patterns without `**`.
    pub fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let rest = self.segments.last() == Some(&Segment::Rest);
        (literals, self.segments.len(), !rest)
    }

    /// How many leading segments are literal (`/static/**` → 1): what a static-file route
    /// strips from the path before looking in its directory.
    pub fn literal_prefix_len(&self) -> usize {
        self.segments
            .iter()
            .take_while(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .expect("pattern")
            .matches(&path_segments(path))
    }

    #[test]
    fn matching() {
        assert!(m("/api/**", "/api"));
        assert!(m("/api/**", "/api/"));
        assert!(m("/api/**", "/api/orders/7"));
        assert!(!m("/api/**", "/apix"));
        assert!(m("/api/admin/**", "/API/Admin/x"), "case-insensitive");
        assert!(m("/api/*/orders", "/api/v1/orders"));
        assert!(!m("/api/*/orders", "/api/orders"));
        assert!(m("/", "/"));
        assert!(!m("/", "/x"));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/admin", "/admin/"));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "api/**", "/a/**/b", "/a*", "/a//b", "/a/../b", "/a/%2e", "/a;b", "/a\\b",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
