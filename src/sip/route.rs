//! Routing of initial requests: the Request-URI user part is matched against `[[sip.routes]]`
//! in order; the first match gives an ordered list of upstreams to try (failover).
//!
//! In-dialog requests are not routed here: they follow Route headers and the Request-URI (loose
//! routing, done by the proxy core). The user part is personal data, so it is only ever passed
//! in as `Pii` and never logged.

use crate::config::{Endpoint, Route};
use crate::pii::Pii;

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        Router { routes }
    }

    /// Upstreams for a Request-URI user part (empty string when the URI has no user part),
    /// or `None` when no rule matches.
    pub fn upstreams(&self, user: &Pii<&str>) -> Option<&[Endpoint]> {
        self.route(user).map(|r| r.upstreams.as_slice())
    }

    /// The first route matching a Request-URI user part, with its consent settings.
    pub fn route(&self, user: &Pii<&str>) -> Option<&Route> {
        self.routes.iter().find(|r| r.match_user.is_match(user.expose()))
    }

    /// Whether `ip` is an upstream of any route: messages from there (on the callee leg) are
    /// trusted to carry consent and retention signals.
    pub fn is_upstream(&self, ip: std::net::IpAddr) -> bool {
        self.routes.iter().flat_map(|r| r.upstreams.iter()).any(|e| e.addr.ip() == ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn first_match_wins() {
        let s = Settings::from_toml(
            r#"
            [[sip.routes]]
            match_user = "\\+?34.*"
            upstream = ["udp:127.0.0.1:5071", "tcp:127.0.0.1:5072"]
            [[sip.routes]]
            match_user = ".*"
            upstream = ["udp:127.0.0.1:5070"]
            "#,
        )
        .unwrap();
        let r = Router::new(s.routes);
        assert_eq!(r.upstreams(&Pii::new("34911")).unwrap().len(), 2);
        assert_eq!(r.upstreams(&Pii::new("44911")).unwrap()[0].addr.port(), 5070);
        // whole-match: "x34" does not match the first rule
        assert_eq!(r.upstreams(&Pii::new("x34")).unwrap()[0].addr.port(), 5070);
        assert_eq!(r.route(&Pii::new("34911")).unwrap().name, "routes[0]");
        assert!(r.is_upstream("127.0.0.1".parse().unwrap()));
        assert!(!r.is_upstream("127.0.0.2".parse().unwrap()));
    }
}
