//! Stage 5, authorization: the policy documents in force decide for the caller's principals, the
//! method and the canonical path (already split into segments by the route stage).

use portcullis_policy::PolicySet;

use crate::authn::Identity;
use crate::reject::Reject;

/// Allowed, or the refusal naming the statement (or the default) that denied it.
pub(crate) fn authorize(
    policies: &PolicySet,
    id: &Identity,
    method: &str,
    segments: &[String],
) -> Result<(), Reject> {
    let decision = policies.decide_segments(&id.principals, method, segments);
    if decision.allowed {
        Ok(())
    } else {
        Err(Reject::Denied {
            sub: id.sub.clone(),
            decision: decision.to_string(),
        })
    }
}
