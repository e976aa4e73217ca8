//! Stacks as a registry kind: a named shape whose stages are the
//! registry's own policies, read from real files, refused with file:line,
//! reloaded (members live, shape for new layers), listed by the admin plane.
#![cfg(all(feature = "toml", feature = "yaml"))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tenlives_ops::{ConfigSet, Registry, RegistryError};
use tower::{Layer, Service, ServiceExt};

const YAML: &str = "\
circuit_breaker:
  instances:
    payments: { consecutive_failures: 2, failure_rate: off, open_duration: 1h }
rate_limiter:
  instances:
    api: { rate: 1000, period: 1s }
bulkhead:
  instances:
    db: { limit: 1 }
    other_db: { limit: 5 }
stack:
  configs:
    default: { timeout: 2s, rate_limiter: api }
  instances:
    checkout:
      circuit_breaker: payments
      bulkhead: db
    search:
      rate_limiter: off
      bulkhead: other_db
";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

#[test]
fn a_file_gives_stack_shapes_with_inheritance() {
    let dir = tempfile::tempdir().unwrap();
    let set = ConfigSet::from_path(write(dir.path(), "s.yaml", YAML)).unwrap();
    let (_, checkout) = set.stack.for_instance("checkout").unwrap();
    assert_eq!(checkout.timeout, Some(Duration::from_secs(2)));
    assert_eq!(checkout.circuit_breaker.as_deref(), Some("payments"));
    assert_eq!(checkout.rate_limiter.as_deref(), Some("api"), "inherited");
    assert_eq!(checkout.bulkhead.as_deref(), Some("db"));
    let (_, search) = set.stack.for_instance("search").unwrap();
    assert_eq!(search.rate_limiter, None, "switched off");
    assert_eq!(search.circuit_breaker, None);

    let toml = "\
[stack.instances.checkout]
timeout = \"500ms\"
bulkhead = \"db\"
";
    let set = ConfigSet::from_path(write(dir.path(), "s.toml", toml)).unwrap();
    let (_, checkout) = set.stack.for_instance("checkout").unwrap();
    assert_eq!(checkout.timeout, Some(Duration::from_millis(500)));
    assert!(
        set.stack.for_instance("other").is_none(),
        "no default stack"
    );
}

#[test]
fn invalid_stacks_are_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str, want: &str| {
        let path = write(dir.path(), name, text);
        let e = ConfigSet::from_path(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("{}{want}", path.display()));
    };
    check(
        "a.yaml",
        "stack:\n  instances:\n    checkout:\n      bulkhead: db\n      timeout: 0s\n",
        ":5: stack.instances.checkout.timeout: `timeout` must be longer than zero",
    );
    check(
        "b.yaml",
        "stack:\n  instances:\n    checkout:\n      timeout: off\n",
        ":3: stack.instances.checkout: a stack needs at least one stage: `timeout`, `circuit_breaker`, `rate_limiter`, `bulkhead` or `retry_budget`",
    );
    let path = write(
        dir.path(),
        "c.yaml",
        "stack:\n  instances:\n    checkout:\n      bulkhead: db\n      retry: fast\n",
    );
    let e = ConfigSet::from_path(&path).unwrap_err();
    assert_eq!(
        (e.line, e.path.as_str()),
        (5, "stack.instances.checkout.retry")
    );
    check(
        "d.toml",
        "[stack.instances.checkout]\nbulkhead = \"db\"\ntimeout = \"0s\"\n",
        ":3: stack.instances.checkout.timeout: `timeout` must be longer than zero",
    );
}

async fn ok(svc: &mut impl Service<u32, Response = u32, Error = impl std::fmt::Debug>) -> bool {
    svc.ready().await.unwrap().call(1).await.is_ok()
}

#[tokio::test]
async fn a_stack_shares_the_registrys_policies_and_follows_their_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.yaml", YAML);
    let registry = Registry::builder()
        .config(ConfigSet::from_path(&path).unwrap())
        .build();
    let layer = registry.stack("checkout").unwrap();
    let (breaker, limiter, bulkhead) = layer.policies().admission();
    assert!(Arc::ptr_eq(
        breaker.as_ref().unwrap(),
        &registry.breaker("payments").unwrap()
    ));
    assert!(Arc::ptr_eq(
        limiter.as_ref().unwrap(),
        &registry.rate_limiter("api").unwrap()
    ));
    let db = registry.bulkhead("db").unwrap();
    assert!(Arc::ptr_eq(bulkhead.as_ref().unwrap(), &db));
    assert_eq!(layer.policies().timeout(), Some(Duration::from_secs(2)));

    let mut svc = layer.layer(tower::service_fn(|x: u32| async move {
        Ok::<_, std::convert::Infallible>(x)
    }));
    assert!(ok(&mut svc).await);
    // The bulkhead (limit 1) is full: the stack refuses.
    let held = db.try_acquire().unwrap();
    assert!(!ok(&mut svc).await, "admitted past a full bulkhead");
    // A reload raises the member's limit: the same layer admits.
    let raised = YAML.replace("db: { limit: 1 }", "db: { limit: 2 }");
    let report =
        registry.apply(ConfigSet::from_path(write(dir.path(), "s.yaml", &raised)).unwrap());
    assert_eq!(report.changed, ["bulkhead.db"]);
    assert!(report.restart.is_empty());
    assert!(
        ok(&mut svc).await,
        "the member's reload did not reach the stack"
    );
    assert_eq!(db.in_flight(), 1, "the held permit is kept");
    drop(held);
    // An admin action on a member reaches the stack as well.
    registry
        .breaker("payments")
        .unwrap()
        .force_open(registry.now());
    assert!(
        !ok(&mut svc).await,
        "admitted through a forced-open breaker"
    );
}

#[tokio::test]
async fn a_shape_change_applies_to_layers_built_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::builder()
        .config(ConfigSet::from_path(write(dir.path(), "s.yaml", YAML)).unwrap())
        .build();
    let before = registry.stack("checkout").unwrap();
    let reshaped = YAML.replace(
        "      bulkhead: db\n",
        "      bulkhead: other_db\n      timeout: 300ms\n",
    );
    let report =
        registry.apply(ConfigSet::from_path(write(dir.path(), "s.yaml", &reshaped)).unwrap());
    assert_eq!(report.restart, ["stack.checkout"]);
    let after = registry.stack("checkout").unwrap();
    let db = registry.bulkhead("db").unwrap();
    let other = registry.bulkhead("other_db").unwrap();
    assert!(Arc::ptr_eq(
        before.policies().admission().2.as_ref().unwrap(),
        &db
    ));
    assert_eq!(before.policies().timeout(), Some(Duration::from_secs(2)));
    assert!(Arc::ptr_eq(
        after.policies().admission().2.as_ref().unwrap(),
        &other
    ));
    assert_eq!(after.policies().timeout(), Some(Duration::from_millis(300)));
    // The default's timeout changes both stacks' shapes; `search` was
    // never built, so only `checkout` is reported.
    let text = YAML.replace("timeout: 2s", "timeout: 3s");
    let again = registry.apply(ConfigSet::from_path(write(dir.path(), "s.yaml", &text)).unwrap());
    assert_eq!(again.restart, ["stack.checkout"]);
    let search = registry.stack("search").unwrap();
    assert_eq!(search.policies().timeout(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn the_admin_listing_shows_built_stacks_and_errors_name_the_member() {
    let registry = Registry::builder()
        .config(ConfigSet::from_str("s.yaml", YAML, tenlives_ops::Format::Yaml).unwrap())
        .build();
    assert!(
        registry.policy("stack", "checkout").is_none(),
        "not built yet"
    );
    registry.stack("checkout").unwrap();
    registry.stack("checkout").unwrap();
    let all = registry.policies();
    let view = all
        .iter()
        .find(|v| v["section"] == "stack" && v["name"] == "checkout")
        .expect("listed");
    assert_eq!(view["state"]["layers_built"], 2);
    assert_eq!(view["state"]["bulkhead"], "db");
    assert_eq!(view["state"]["circuit_breaker"], "payments");
    assert_eq!(view["state"]["rate_limiter"], "api");
    assert_eq!(view["state"]["timeout_ms"], 2000);
    assert_eq!(view["config"]["bulkhead"], "db");
    assert_eq!(registry.policy("stack", "checkout").as_ref(), Some(view));
    // Its members are listed as the instances they are.
    assert!(
        all.iter()
            .any(|v| v["section"] == "bulkhead" && v["name"] == "db")
    );

    // A name the file does not list gets `configs.default`'s shape.
    let other = registry.stack("other").unwrap();
    assert_eq!(other.policies().timeout(), Some(Duration::from_secs(2)));
    let text = "stack:\n  instances:\n    s: { rate_limiter: missing }\n";
    let bare = Registry::builder()
        .config(ConfigSet::from_str("s.yaml", text, tenlives_ops::Format::Yaml).unwrap())
        .build();
    assert!(matches!(
        bare.stack("nothing"),
        Err(RegistryError::NotConfigured {
            section: "stack",
            ..
        })
    ));
    assert_eq!(
        bare.stack("s").unwrap_err(),
        RegistryError::NotConfigured {
            section: "rate_limiter",
            name: "missing".into()
        }
    );
    // The admin plane's set: a stack's entry is checked like any other.
    let e = registry
        .set_instance(
            "stack",
            "checkout",
            serde_json::json!({ "timeout": "0s" }),
            true,
        )
        .unwrap_err();
    assert_eq!(e.path, "stack.instances.checkout.timeout");
}

const RETRYING: &str = "\
retry_budget:
  instances:
    shared: { ratio: 0.2, min_per_second: 0 }
stack:
  instances:
    users: { timeout: 10s, retry_budget: shared }
    orders: { timeout: 10s, retry_budget: shared, max_retries: 1, retry_backoff: 10ms, retry_backoff_cap: 20ms }
    plain: { timeout: 1s }
";

/// A service that always fails, counting its calls.
fn failing(
    calls: &Arc<std::sync::atomic::AtomicUsize>,
) -> impl Service<
    u32,
    Response = u32,
    Error = &'static str,
    Future = std::future::Ready<Result<u32, &'static str>>,
> + Clone {
    let calls = Arc::clone(calls);
    tower::service_fn(move |_: u32| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::future::ready(Err::<u32, _>("down"))
    })
}

#[tokio::test(start_paused = true)]
async fn stacks_naming_one_retry_budget_retry_within_it_together() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let registry = Registry::builder()
        .config(ConfigSet::from_str("r.yaml", RETRYING, tenlives_ops::Format::Yaml).unwrap())
        .build();
    let users = registry.retrying_stack("users").unwrap();
    let orders = registry.retrying_stack("orders").unwrap();
    let budget = registry.retry_budget("shared").unwrap();
    assert!(std::ptr::eq(users.policies().retry().budget(), &*budget));
    assert!(std::ptr::eq(orders.policies().retry().budget(), &*budget));
    assert_eq!(orders.policies().retry().backoff().max_retries(), Some(1));
    assert_eq!(users.policies().retry().backoff().max_retries(), Some(2));

    // 100 requests that succeed through `users` fill the shared budget...
    let mut fine = users.layer(tower::service_fn(|x: u32| async move {
        Ok::<_, &'static str>(x)
    }));
    for i in 0..100 {
        assert!(fine.ready().await.unwrap().call(i).await.is_ok());
    }
    // ...so 20 failing requests through `orders` may all retry once: on a
    // budget of their own, 20 % of 20 requests, 4 could.
    let calls = Arc::new(AtomicUsize::new(0));
    let mut b = orders.layer(failing(&calls));
    for i in 0..20 {
        assert!(b.ready().await.unwrap().call(i).await.is_err());
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        40,
        "orders did not spend what users deposited"
    );
    // Both stacks together stay within 20 % of all 220 requests.
    let mut a = users.layer(failing(&calls));
    for i in 0..100 {
        assert!(a.ready().await.unwrap().call(i).await.is_err());
    }
    let retries = calls.load(Ordering::Relaxed) - 120;
    assert!(retries > 20, "users never retried");
    assert!(
        retries <= 44,
        "{retries} retries through a 20 % shared budget of 220 requests"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_of_the_named_budget_reaches_built_stacks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let closed = RETRYING.replace("ratio: 0.2", "ratio: 0.0");
    let registry = Registry::builder()
        .config(ConfigSet::from_path(write(dir.path(), "r.yaml", &closed)).unwrap())
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = registry
        .retrying_stack("users")
        .unwrap()
        .layer(failing(&calls));
    for i in 0..10 {
        assert!(svc.ready().await.unwrap().call(i).await.is_err());
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        10,
        "retried through a zero budget"
    );
    let opened = RETRYING.replace("ratio: 0.2", "ratio: 1.0");
    let report =
        registry.apply(ConfigSet::from_path(write(dir.path(), "r.yaml", &opened)).unwrap());
    assert_eq!(report.changed, ["retry_budget.shared"]);
    for i in 0..10 {
        assert!(svc.ready().await.unwrap().call(i).await.is_err());
    }
    assert!(
        calls.load(Ordering::Relaxed) > 20,
        "the raised ratio did not reach the built stack: {} calls",
        calls.load(Ordering::Relaxed)
    );
}

#[test]
fn retrying_and_plain_stacks_are_asked_for_by_their_own_names() {
    let registry = Registry::builder()
        .config(ConfigSet::from_str("r.yaml", RETRYING, tenlives_ops::Format::Yaml).unwrap())
        .build();
    let e = registry.stack("users").unwrap_err();
    assert_eq!(
        e,
        RegistryError::Retries {
            name: "users".into(),
            configured: true
        }
    );
    assert!(e.to_string().contains("Registry::retrying_stack"), "{e}");
    let e = registry.retrying_stack("plain").unwrap_err();
    assert_eq!(
        e,
        RegistryError::Retries {
            name: "plain".into(),
            configured: false
        }
    );
    assert!(registry.stack("plain").is_ok());
    // A stack naming a budget the file does not have.
    let text = "stack:\n  instances:\n    s: { retry_budget: missing }\n";
    let bare = Registry::builder()
        .config(ConfigSet::from_str("s.yaml", text, tenlives_ops::Format::Yaml).unwrap())
        .build();
    assert!(
        bare.retrying_stack("s").is_ok(),
        "retry budgets have engine defaults"
    );
}

#[test]
fn a_stack_backoff_is_validated_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "r.yaml",
        "stack:\n  instances:\n    s:\n      retry_budget: b\n      retry_backoff: 2s\n      retry_backoff_cap: 1s\n",
    );
    let e = ConfigSet::from_path(&path).unwrap_err();
    assert_eq!(
        e.path.as_str(),
        "stack.instances.s.retry_backoff_cap",
        "{e}"
    );
    let path = write(
        dir.path(),
        "z.yaml",
        "stack:\n  instances:\n    s:\n      retry_budget: b\n      retry_backoff: 0s\n",
    );
    let e = ConfigSet::from_path(&path).unwrap_err();
    assert_eq!(e.path.as_str(), "stack.instances.s.retry_backoff", "{e}");
}

#[test]
fn a_backoff_built_in_code_that_does_not_validate_is_a_typed_error() {
    let mut set = ConfigSet::from_str("r.yaml", RETRYING, tenlives_ops::Format::Yaml).unwrap();
    // Files are checked when they load; fields set in code are not.
    let (_, users) = set.stack.instances.get_mut("users").unwrap();
    let retry = users.retry.as_mut().unwrap();
    retry.backoff = Duration::from_secs(2);
    retry.backoff_cap = Duration::from_secs(1);
    let registry = Registry::builder().config(set).build();
    let e = registry.retrying_stack("users").unwrap_err();
    assert!(
        matches!(&e, RegistryError::InvalidStack { name, .. } if name == "users"),
        "{e:?}"
    );
    assert!(e.to_string().contains("invalid retry backoff"), "{e}");
}
