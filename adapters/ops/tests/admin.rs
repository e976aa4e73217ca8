//! The admin plane over real HTTP on loopback: authorization, validation,
//! changes and their audit, the rate limit.
#![cfg(all(feature = "admin", feature = "yaml"))]

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tenlives_engine::breaker::BreakerState;
use tenlives_engine::events::{EventRing, Received};
use tenlives_engine::rate::Quota;
use tenlives_ops::admin::{self, AdminConfig, Role};
use tenlives_ops::config::Format;
use tenlives_ops::{ConfigSet, REGISTRY_SOURCE, Registry, events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

const ADMIN: &str = "admin-secret-0123456789abcdef0123456789";
const VIEWER: &str = "viewer-secret-0123456789abcdef012345678";

const CONFIG: &str = "\
circuit_breaker:
  configs:
    default: { consecutive_failures: 2, failure_rate: off }
  instances:
    payments: { open_duration: 1h }
bulkhead:
  instances:
    db: { limit: 4 }
";

/// Every `tracing` record's fields, as text.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Records {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        let mut line = format!(
            "{} {} ",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Fields(&mut line));
        self.0.lock().unwrap().push(line);
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: Value,
}

/// A GET with the `Authorization` header given whole.
async fn request_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: &str,
) -> Reply {
    raw_request(
        addr,
        method,
        path,
        &format!("Authorization: {authorization}\r\n"),
        "",
    )
    .await
}

/// One HTTP/1.1 request on a fresh connection.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw_request(addr, method, path, &auth, body).await
}

async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

async fn serve(registry: Registry, config: AdminConfig) -> std::net::SocketAddr {
    let app = axum::Router::new().nest("/admin", admin::router(registry, config).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn tokens() -> AdminConfig {
    AdminConfig::default()
        .token("alice", ADMIN, Role::Admin)
        .token("bob", VIEWER, Role::ReadOnly)
        .rate_limit(Quota::per_minute(1000).unwrap())
}

// One thread: the server's tasks run on the test's thread, the only one
// the capture records (the test binary's one global subscriber,
// `tenlives_test_support::tracing_capture`, rather than a scoped one, which
// can lose events whose callsite another thread hit first).
#[tokio::test(flavor = "current_thread")]
async fn tokens_roles_validation_changes_and_audit() {
    let records = Records::default();
    let _capture = tenlives_test_support::tracing_capture::capture(records.clone());
    let ring = Arc::new(EventRing::with_capacity(1024).unwrap());
    let mut consumer = ring.consumer();
    let registry = Registry::builder()
        .config(ConfigSet::from_str("test.yaml", CONFIG, Format::Yaml).unwrap())
        .events(ring.clone())
        .build();
    let payments = registry.breaker("payments").unwrap();
    let db = registry.bulkhead("db").unwrap();
    let addr = serve(registry.clone(), tokens()).await;

    // 401 without a token or with a wrong one; 403 for read-only changes.
    let r = request(addr, "GET", "/admin/policies", None, "").await;
    assert_eq!(r.status, 401);
    assert!(
        r.headers.contains("www-authenticate: bearer"),
        "{}",
        r.headers
    );
    let r = request(
        addr,
        "GET",
        "/admin/policies",
        Some("admin-secret-0123456789abcdef012345678X"),
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(addr, "GET", "/admin/policies", Some(&ADMIN[..10]), "").await;
    assert_eq!(r.status, 401, "a prefix of a token is not the token");
    let r = request(
        addr,
        "POST",
        "/admin/breakers/payments/force_open",
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(payments.state(), BreakerState::Closed);
    let r = request(
        addr,
        "PATCH",
        "/admin/config/circuit_breaker/payments",
        Some(VIEWER),
        "{}",
    )
    .await;
    assert_eq!(r.status, 403);

    // Read-only reads (the scheme's case does not matter).
    let r = request_with(addr, "GET", "/admin/policies", &format!("bEARER {VIEWER}")).await;
    assert_eq!(r.status, 200);
    let r = request_with(addr, "GET", "/admin/policies", &format!("Basic {VIEWER}")).await;
    assert_eq!(r.status, 401);
    let r = request(addr, "GET", "/admin/policies", Some(VIEWER), "").await;
    assert_eq!(r.status, 200);
    let policies = r.body["policies"].as_array().unwrap();
    let p = policies.iter().find(|p| p["name"] == "payments").unwrap();
    assert_eq!(p["section"], "circuit_breaker");
    assert_eq!(p["state"]["state"], "closed");
    assert_eq!(p["config"]["open_duration"], "1h");
    assert_eq!(p["config"]["consecutive_failures"], 2);
    let r = request(addr, "GET", "/admin/policies/bulkhead/db", Some(VIEWER), "").await;
    assert_eq!(
        (r.status, r.body["state"]["limit"].as_u64()),
        (200, Some(4))
    );
    let r = request(
        addr,
        "GET",
        "/admin/policies/bulkhead/nope",
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    let r = request(addr, "GET", "/admin/config", Some(VIEWER), "").await;
    assert_eq!(
        r.body["circuit_breaker"]["instances"]["payments"]["open_duration"],
        "1h"
    );

    // Bad input: 400 with the reason, nothing changed.
    let before = payments.config();
    for (body, reason) in [
        ("{\"failure_rate\": 40", "invalid JSON"),
        (
            "{\"failure_rate\": 150}",
            "circuit_breaker.instances.payments.failure_rate",
        ),
        (
            "{\"failure_rate\": 150}",
            "outside the accepted range (0, 100]",
        ),
        ("{\"failure_rat\": 40}", "unknown field `failure_rat`"),
        ("{\"open_duration\": 5}", "a duration such as"),
        ("[1, 2]", "expected a JSON object"),
    ] {
        let r = request(
            addr,
            "PATCH",
            "/admin/config/circuit_breaker/payments",
            Some(ADMIN),
            body,
        )
        .await;
        assert_eq!(r.status, 400, "{body}");
        let message = r.body["error"].as_str().unwrap();
        assert!(message.contains(reason), "{body}: {message}");
    }
    let r = request(
        addr,
        "PATCH",
        "/admin/config/breakers/payments",
        Some(ADMIN),
        "{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(payments.config().failure_rate(), before.failure_rate());
    assert_eq!(payments.config().open_duration(0), before.open_duration(0));
    let r = request(
        addr,
        "PUT",
        "/admin/bulkheads/db/limit",
        Some(ADMIN),
        "{\"limit\": 0}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("`limit` must be at least 1")
    );
    assert_eq!(db.limit(), 4);

    // Changes: state kept, old and new returned, audited.
    let now = registry.now();
    for _ in 0..2 {
        payments.try_acquire(now).unwrap().failure(now);
    }
    assert_eq!(payments.state(), BreakerState::Open);
    let r = request(
        addr,
        "PATCH",
        "/admin/config/circuit_breaker/payments",
        Some(ADMIN),
        "{\"consecutive_failures\": 9}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["old"]["consecutive_failures"], Value::Null); // inherited before
    assert_eq!(r.body["new"]["consecutive_failures"], 9);
    assert_eq!(
        r.body["new"]["open_duration"], "1h",
        "PATCH keeps the other keys"
    );
    assert_eq!(payments.config().consecutive_failures(), Some(9));
    assert_eq!(
        payments.state(),
        BreakerState::Open,
        "the change kept the state"
    );
    let r = request(
        addr,
        "POST",
        "/admin/breakers/payments/close",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(
        (r.status, r.body["old"].as_str(), r.body["new"].as_str()),
        (200, Some("open"), Some("closed"))
    );
    assert_eq!(payments.state(), BreakerState::Closed);
    let r = request(
        addr,
        "POST",
        "/admin/breakers/payments/force_open",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(payments.state(), BreakerState::ForcedOpen);
    let r = request(
        addr,
        "POST",
        "/admin/breakers/payments/explode",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = request(
        addr,
        "PUT",
        "/admin/bulkheads/db/limit",
        Some(ADMIN),
        "{\"limit\": 12}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(db.limit(), 12);

    // Audit: one record and one event per change, naming the holder.
    let audit: Vec<String> = records
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("tenlives::audit"))
        .cloned()
        .collect();
    assert_eq!(audit.len(), 4, "{audit:#?}");
    assert!(
        audit.iter().all(|l| l.contains("who=\"alice\"")),
        "{audit:#?}"
    );
    assert!(
        audit[0].contains("target=\"circuit_breaker.instances.payments\""),
        "{}",
        audit[0]
    );
    assert!(
        audit[0].contains("\"consecutive_failures\":9"),
        "{}",
        audit[0]
    );
    assert!(
        audit[1].contains("old=\"open\"") && audit[1].contains("new=\"closed\""),
        "{}",
        audit[1]
    );
    assert!(
        audit[3].contains("\"limit\":4") && audit[3].contains("\"limit\":12"),
        "{}",
        audit[3]
    );
    // No token in any record, ever.
    for line in records.0.lock().unwrap().iter() {
        assert!(
            !line.contains(ADMIN) && !line.contains(VIEWER) && !line.contains("secret"),
            "{line}"
        );
    }
    let mut codes = Vec::new();
    while let Some(r) = consumer.try_recv() {
        if let Received::Event(ev) = r
            && ev.source == REGISTRY_SOURCE
            && ev.kind == events::AUDIT
        {
            codes.push(ev.payload[0]);
        }
    }
    assert_eq!(codes, [1, 3, 2, 1]);
}

#[tokio::test]
async fn the_admin_routes_are_rate_limited_by_tenlives() {
    let registry = Registry::builder().build();
    let config = AdminConfig::default()
        .token("alice", ADMIN, Role::Admin)
        .rate_limit(Quota::per_minute(3).unwrap());
    let addr = serve(registry.clone(), config).await;
    for _ in 0..3 {
        assert_eq!(
            request(addr, "GET", "/admin/policies", Some(ADMIN), "")
                .await
                .status,
            200
        );
    }
    // Limited before authorization: unauthenticated floods are shed too.
    for token in [Some(ADMIN), None] {
        let r = request(addr, "GET", "/admin/policies", token, "").await;
        assert_eq!(r.status, 429);
        assert!(r.headers.contains("retry-after: "), "{}", r.headers);
    }
    // The limiter is a registry instance, listed like any other.
    let listed = registry.policies();
    assert!(
        listed
            .iter()
            .any(|p| p["section"] == "rate_limiter" && p["name"] == "admin")
    );
}
