//! `pingora-floor LISTEN UPSTREAM [THREADS]`: proxies every request to UPSTREAM (host:port, plain
//! HTTP/1.1, pooled keep-alive connections) with no logic of its own — pingora's floor, to set
//! beside hyper's (`examples/minproxy`) and nginx's in `bench/gateway.sh`.

use async_trait::async_trait;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

/// The allocator portcullis uses: the floor is measured at its best.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora-floor LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads = args
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let conf = ServerConf {
        threads,
        // pingora's default, and the faster of the two here (37.5k against 34.4k req/s).
        // PINGORA_WORK_STEALING=0: one runtime per thread.
        work_stealing: std::env::var("PINGORA_WORK_STEALING").map_or(true, |v| v != "0"),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Floor { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
