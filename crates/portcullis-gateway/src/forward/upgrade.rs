//! Protocol upgrades: only a well-formed WebSocket handshake on a route that allows it becomes a
//! tunnel; any other `Upgrade` (h2c above all) is forwarded as an ordinary request.

use axum::http::{Request, Response, header};

/// What a request's `Upgrade` header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeAsk {
    /// None: an ordinary request.
    None,
    /// A WebSocket handshake (RFC 6455 §4.1): `GET`, `Connection: upgrade`, `Upgrade: websocket`
    /// alone, a `Sec-WebSocket-Key` and version 13.
    WebSocket,
    /// A malformed WebSocket handshake.
    BadWebSocket,
    /// Any other protocol (`h2c`, say): never tunnelled; its headers are removed and the request
    /// is forwarded as an ordinary one.
    Other,
}

/// Classifies a request's upgrade.
pub fn upgrade_ask<B>(req: &Request<B>) -> UpgradeAsk {
    let headers = req.headers();
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let Some(first) = upgrades.next() else {
        return UpgradeAsk::None;
    };
    let websocket = first
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"websocket");
    if !websocket || upgrades.next().is_some() {
        return if first
            .as_bytes()
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"websocket"))
        {
            UpgradeAsk::BadWebSocket
        } else {
            UpgradeAsk::Other
        };
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let one = |name: header::HeaderName| {
        let mut v = headers.get_all(name).iter();
        match (v.next(), v.next()) {
            (Some(x), None) => Some(x.as_bytes()),
            _ => None,
        }
    };
    let key_ok = one(header::SEC_WEBSOCKET_KEY).is_some_and(|k| k.len() == 24);
    let version_ok = one(header::SEC_WEBSOCKET_VERSION) == Some(b"13".as_slice());
    if req.method() == axum::http::Method::GET
        && req.version() == axum::http::Version::HTTP_11
        && connection_upgrade
        && key_ok
        && version_ok
    {
        UpgradeAsk::WebSocket
    } else {
        UpgradeAsk::BadWebSocket
    }
}

/// Whether an upstream's `101` accepts a WebSocket upgrade (and nothing else).
pub fn accepts_websocket<B>(resp: &Response<B>) -> bool {
    let mut upgrades = resp.headers().get_all(header::UPGRADE).iter();
    matches!((upgrades.next(), upgrades.next()), (Some(u), None)
        if u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// Joins the client's and the upstream's upgraded connections byte for byte, in the background.
pub(crate) fn join(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match (client.await, upstream.await) {
            (Ok(client), Ok(server)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut server = hyper_util::rt::TokioIo::new(server);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
            (c, u) => tracing::warn!(client = c.is_ok(), upstream = u.is_ok(), "upgrade failed"),
        }
    });
}
