//! Stage 5, authorization: the policy documents in force decide for the caller's principals, the
//! method and the canonical path (already split into segments by the route stage), and for how
//! the caller signed in (conditions such as `mfa = true`).

use axum::http::Uri;
use portcullis_policy::{PolicySet, Reason};

use crate::authn::Identity;
use crate::reject::Reject;

/// Allowed; or the refusal naming the statement (or the default) that denied it; or, when only a
/// condition on the sign-in was not met, the step-up that can meet it.
pub(crate) fn authorize(
    policies: &PolicySet,
    id: &Identity,
    method: &str,
    segments: &[String],
    uri: &Uri,
    now: i64,
) -> Result<(), Reject> {
    let decision = policies.decide_segments(&id.principals, method, segments, &id.auth, now);
    if decision.allowed {
        return Ok(());
    }
    if let Reason::ConditionFailed { condition, .. } = decision.reason {
        return Err(Reject::StepUp {
            sub: id.sub.clone(),
            decision: decision.to_string(),
            mfa: condition.mfa,
            max_age: condition.max_auth_age,
            return_to: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        });
    }
    Err(Reject::Denied {
        sub: id.sub.clone(),
        decision: decision.to_string(),
    })
}
