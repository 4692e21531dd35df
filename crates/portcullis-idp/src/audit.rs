//! Recording audit events: each is appended to the store's hash-chained log and written as one
//! JSON log line (target `portcullis::audit`) carrying its sequence number and hash — a copy
//! outside the database that a log pipeline keeps.
//!
//! Recording never fails the operation it describes: the change has happened; a store that
//! cannot take the event is reported as an error in the log (with the event).

use portcullis_store::{AuditEvent, Store};
use serde_json::Value;

/// Who did something, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `cli:<os user>`, `user:<id>`, `client:<id>`, `anonymous`, `system`.
    pub who: String,
    /// An IP address, `cli` or `server`.
    pub source: String,
}

impl Actor {
    /// An operator at the command line.
    pub fn cli() -> Actor {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            who: format!("cli:{user}"),
            source: "cli".into(),
        }
    }

    /// The server itself (background work, or a step without a client address).
    pub fn system() -> Actor {
        Actor {
            who: "system".into(),
            source: "server".into(),
        }
    }

    /// A visitor not (yet) known, from `ip`.
    pub fn anonymous(ip: std::net::IpAddr) -> Actor {
        Actor {
            who: "anonymous".into(),
            source: ip.to_string(),
        }
    }

    /// A user, from `source`.
    pub fn user(id: &str, source: &str) -> Actor {
        Actor {
            who: format!("user:{id}"),
            source: source.to_owned(),
        }
    }

    /// An OAuth client (client credentials, revocation).
    pub fn client(id: &str) -> Actor {
        Actor {
            who: format!("client:{id}"),
            source: "server".into(),
        }
    }
}

/// Records an event (see the module documentation).
pub async fn record(
    store: &Store,
    now: i64,
    kind: &str,
    actor: &Actor,
    subject: &str,
    detail: Value,
) {
    let event = AuditEvent {
        kind: kind.to_owned(),
        actor: actor.who.clone(),
        source: actor.source.clone(),
        subject: subject.to_owned(),
        detail: if detail.is_object() {
            detail
        } else {
            serde_json::json!({})
        },
        at: now,
    };
    match store.append_audit(&event).await {
        Ok(r) => tracing::info!(
            target: "portcullis::audit",
            seq = r.seq,
            hash = %r.hash,
            kind,
            actor = %r.actor,
            source = %r.source,
            subject,
            detail = %r.detail,
            "audit event"
        ),
        Err(e) => tracing::error!(
            target: "portcullis::audit",
            error = %e,
            kind,
            actor = %event.actor,
            source = %event.source,
            subject,
            detail = %event.detail,
            "audit event not stored"
        ),
    }
}
