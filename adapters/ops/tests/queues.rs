//! Admission queues as a registry kind: read from real files, refused
//! with file:line, reconfigured live keeping their waiters, listed by the
//! admin plane.
#![cfg(all(feature = "toml", feature = "yaml"))]

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tenlives_engine::queue::Overload;
use tenlives_engine::time::{ManualClock, Timestamp};
use tenlives_ops::{ConfigSet, Registry};

const YAML: &str = "\
admission_queue:
  configs:
    default: { limit: 1, capacity: 8, max_wait: 250ms }
  instances:
    checkout:
      limit: 1
      capacity: 4
      weights: [1, 3]
      overload: shed_lowest_priority
    search:
      classes: 4
      max_wait: 1s
";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    // Beside the file, then renamed over it, as deployment tools do.
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn refused(dir: &Path, name: &str, text: &str) -> String {
    match ConfigSet::from_path(write(dir, name, text)) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let shown = e.to_string();
            let file = dir.join(name).display().to_string();
            assert!(shown.starts_with(&file), "{shown}");
            shown[file.len()..].to_owned()
        }
    }
}

#[test]
fn a_yaml_file_gives_queues_with_inheritance() {
    let dir = tempfile::tempdir().unwrap();
    let set = ConfigSet::from_path(write(dir.path(), "q.yaml", YAML)).unwrap();
    let (_, checkout) = set.admission_queue.for_instance("checkout").unwrap();
    assert_eq!(checkout.limit, 1);
    assert_eq!(checkout.queue.capacity(), 4);
    assert_eq!(checkout.queue.weights(), &[1, 3]);
    assert_eq!(
        checkout.queue.overload_policy(),
        Overload::ShedLowestPriority
    );
    assert_eq!(checkout.max_wait, Duration::from_millis(250), "inherited");
    let (_, search) = set.admission_queue.for_instance("search").unwrap();
    assert_eq!(search.queue.weights(), &[1; 4]);
    assert_eq!(search.queue.capacity(), 8, "inherited");
    assert_eq!(search.queue.overload_policy(), Overload::ShedNewest);
    assert_eq!(search.max_wait, Duration::from_secs(1));
    // An instance the file does not name gets the default.
    let (_, other) = set.admission_queue.for_instance("other").unwrap();
    assert_eq!(other.queue.weights(), &[1]);
}

#[test]
fn a_toml_file_gives_the_same_queue() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
[admission_queue.instances.checkout]
limit = 2
capacity = 16
weights = [2, 1]
overload = \"shed_oldest\"
max_wait = \"100ms\"
";
    let set = ConfigSet::from_path(write(dir.path(), "q.toml", text)).unwrap();
    let (_, q) = set.admission_queue.for_instance("checkout").unwrap();
    assert_eq!((q.limit, q.queue.capacity()), (2, 16));
    assert_eq!(q.queue.weights(), &[2, 1]);
    assert_eq!(q.queue.overload_policy(), Overload::ShedOldest);
    assert_eq!(q.max_wait, Duration::from_millis(100));
    assert!(set.admission_queue.default.is_none(), "no engine default");
}

#[test]
fn invalid_queues_are_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let head = "admission_queue:\n  instances:\n    checkout:\n";
    let entry = |body: &str| format!("{head}{body}");
    let base = "      limit: 2\n      max_wait: 1s\n";

    let e = refused(d, "a.yaml", &entry(&format!("{base}      capacity: 0\n")));
    assert_eq!(
        e,
        ":6: admission_queue.instances.checkout.capacity: `capacity` must be at least 1"
    );
    let e = refused(
        d,
        "b.yaml",
        &entry(&format!("{base}      capacity: 2000000\n")),
    );
    assert!(
        e.starts_with(":6: admission_queue.instances.checkout.capacity: "),
        "{e}"
    );
    let e = refused(
        d,
        "c.yaml",
        &entry(&format!(
            "{base}      capacity: 4\n      classes: 2\n      weights: [1, 2]\n"
        )),
    );
    assert_eq!(
        e,
        ":8: admission_queue.instances.checkout.weights: `classes` and `weights` exclude each other"
    );
    let e = refused(
        d,
        "d.yaml",
        &entry(&format!("{base}      capacity: 4\n      weights: [1, 0]\n")),
    );
    assert!(
        e.starts_with(":7: admission_queue.instances.checkout.weights: "),
        "{e}"
    );
    let e = refused(
        d,
        "e.yaml",
        &entry(&format!("{base}      capacity: 4\n      classes: 65\n")),
    );
    assert!(
        e.starts_with(":7: admission_queue.instances.checkout.classes: "),
        "{e}"
    );
    let e = refused(
        d,
        "f.yaml",
        &entry(&format!(
            "{base}      capacity: 4\n      overload: drop_all\n"
        )),
    );
    assert!(
        e.starts_with(
            ":7: admission_queue.instances.checkout.overload: unknown variant `drop_all`"
        ),
        "{e}"
    );
    let e = refused(d, "g.yaml", &entry("      limit: 2\n      capacity: 4\n"));
    assert_eq!(
        e,
        ":3: admission_queue.instances.checkout: missing required key `max_wait`"
    );
    let e = refused(
        d,
        "h.yaml",
        &entry("      limit: 0\n      capacity: 4\n      max_wait: 1s\n"),
    );
    assert!(
        e.starts_with(":4: admission_queue.instances.checkout.limit: "),
        "{e}"
    );
    let e = refused(
        d,
        "i.yaml",
        &entry(&format!("{base}      capacity: 4\n      max_wait: soon\n")),
    );
    assert!(e.contains("max_wait"), "{e}");
    // TOML: the same rules, the line of the key.
    let e = refused(
        d,
        "j.toml",
        "[admission_queue.instances.checkout]\nlimit = 1\nmax_wait = \"1s\"\ncapacity = 0\n",
    );
    assert_eq!(
        e,
        ":4: admission_queue.instances.checkout.capacity: `capacity` must be at least 1"
    );
}

fn poll<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn reload_keeps_the_queue_its_waiters_and_permits() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "q.yaml", YAML);
    let registry = Registry::builder()
        .config(ConfigSet::from_path(&path).unwrap())
        .build();
    let checkout = registry.admission_queue("checkout").unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &checkout,
        &registry.admission_queue("checkout").unwrap()
    ));
    let queue = checkout.queue().clone();
    let held = queue.try_acquire_owned().expect("the one permit is free");
    let clock = ManualClock::new();
    let mut waiter = pin!(queue.acquire(1, Timestamp::MAX, &clock));
    assert!(poll(waiter.as_mut()).is_pending());
    assert_eq!(queue.waiting(), 1);

    // The limit rises to 2: the waiter gets the freed permit at once.
    let raised = YAML.replace(
        "      limit: 1\n      capacity: 4",
        "      limit: 2\n      capacity: 4",
    );
    let report =
        registry.apply(ConfigSet::from_path(write(dir.path(), "q.yaml", &raised)).unwrap());
    assert_eq!(report.changed, ["admission_queue.checkout"]);
    assert!(report.restart.is_empty());
    let Poll::Ready(Ok(granted)) = poll(waiter.as_mut()) else {
        panic!("the raised limit was not handed to the waiter")
    };
    assert_eq!(queue.source().in_flight(), 2, "the held permit is kept");
    assert_eq!(queue.source().limit(), 2);

    // A third caller waits; then the shape changes (capacity, overload)
    // and `max_wait`: the queue and its waiter stay, `max_wait` applies to
    // new layers, the shape waits for a restart.
    let mut third = pin!(queue.acquire(0, Timestamp::MAX, &clock));
    assert!(poll(third.as_mut()).is_pending());
    let reshaped = raised
        .replace("capacity: 4", "capacity: 32")
        .replace("shed_lowest_priority", "shed_oldest")
        .replace("max_wait: 250ms", "max_wait: 2s");
    let report =
        registry.apply(ConfigSet::from_path(write(dir.path(), "q.yaml", &reshaped)).unwrap());
    assert_eq!(report.changed, ["admission_queue.checkout"]);
    assert_eq!(report.restart, ["admission_queue.checkout"]);
    assert!(std::sync::Arc::ptr_eq(
        &checkout,
        &registry.admission_queue("checkout").unwrap()
    ));
    assert_eq!(
        queue.config().capacity(),
        4,
        "the engine's queue keeps its shape"
    );
    assert_eq!(queue.waiting(), 1, "the waiter keeps its place");
    assert_eq!(checkout.max_wait(), Duration::from_secs(2));
    assert_eq!(checkout.layer().max_wait(), Duration::from_secs(2));
    assert_eq!(queue.source().in_flight(), 2);
    drop(held);
    let Poll::Ready(Ok(_third)) = poll(third.as_mut()) else {
        panic!("the released permit was not handed to the waiter")
    };
    drop(granted);
    // A restart (a fresh registry from the same file) gets the new shape.
    let fresh = Registry::builder()
        .config(ConfigSet::from_path(&path).unwrap())
        .build();
    let q = fresh.admission_queue("checkout").unwrap();
    assert_eq!(q.queue().config().capacity(), 32);
    assert_eq!(q.queue().config().overload_policy(), Overload::ShedOldest);
}

#[test]
fn a_refused_file_leaves_the_queue_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "q.yaml", YAML);
    let registry = Registry::builder()
        .config(ConfigSet::from_path(&path).unwrap())
        .build();
    let checkout = registry.admission_queue("checkout").unwrap();
    let bad = YAML.replace("weights: [1, 3]", "weights: [1, 0]");
    let e = ConfigSet::from_path(write(dir.path(), "q.yaml", &bad)).unwrap_err();
    assert_eq!(e.line, 8);
    assert_eq!(e.path, "admission_queue.instances.checkout.weights");
    registry.reject(&e);
    assert_eq!(checkout.queue().config().weights(), &[1, 3]);
    assert_eq!(checkout.queue().source().limit(), 1);
}

#[test]
fn the_admin_listing_shows_queues_with_state_and_configuration() {
    let registry = Registry::builder()
        .config(ConfigSet::from_str("q.yaml", YAML, tenlives_ops::Format::Yaml).unwrap())
        .build();
    let created = registry.create_configured().unwrap();
    assert_eq!(
        created,
        ["admission_queue.checkout", "admission_queue.search"]
    );
    let checkout = registry.admission_queue("checkout").unwrap();
    let _held = checkout.queue().try_acquire_owned().unwrap();
    let clock = ManualClock::new();
    let mut waiter = pin!(checkout.queue().acquire(0, Timestamp::MAX, &clock));
    assert!(poll(waiter.as_mut()).is_pending());

    let all = registry.policies();
    let view = all
        .iter()
        .find(|v| v["section"] == "admission_queue" && v["name"] == "checkout")
        .expect("listed");
    assert_eq!(view["state"]["waiting"], 1);
    assert_eq!(view["state"]["in_flight"], 1);
    assert_eq!(view["state"]["limit"], 1);
    assert_eq!(view["state"]["capacity"], 4);
    assert_eq!(view["state"]["weights"], serde_json::json!([1, 3]));
    assert_eq!(view["state"]["max_wait_ms"], 250);
    assert_eq!(view["config"]["overload"], "shed_lowest_priority");
    assert_eq!(
        registry.policy("admission_queue", "checkout").as_ref(),
        Some(view)
    );

    // Set through the admin plane's path: the limit changes live.
    let (_, _, report) = registry
        .set_instance(
            "admission_queue",
            "checkout",
            serde_json::json!({ "limit": 3 }),
            true,
        )
        .unwrap();
    assert_eq!(report.changed, ["admission_queue.checkout"]);
    assert!(matches!(poll(waiter.as_mut()), Poll::Ready(Ok(_))));
    let bad = registry
        .set_instance(
            "admission_queue",
            "checkout",
            serde_json::json!({ "capacity": 0 }),
            true,
        )
        .unwrap_err();
    assert_eq!(bad.path, "admission_queue.instances.checkout.capacity");
    assert_eq!(checkout.queue().source().limit(), 3, "unchanged");
}

#[test]
fn the_name_of_a_bulkhead_is_taken() {
    let text = "bulkhead:\n  instances:\n    checkout: { limit: 2 }\nadmission_queue:\n  instances:\n    checkout: { limit: 1, capacity: 4, max_wait: 1s }\n";
    let registry = Registry::builder()
        .config(ConfigSet::from_str("q.yaml", text, tenlives_ops::Format::Yaml).unwrap())
        .build();
    registry.bulkhead("checkout").unwrap();
    assert!(matches!(
        registry.admission_queue("checkout"),
        Err(tenlives_ops::RegistryError::NameTaken { .. })
    ));
    assert!(matches!(
        registry.admission_queue("nothing"),
        Err(tenlives_ops::RegistryError::NotConfigured { .. })
    ));
}

#[tokio::test]
async fn the_layer_queues_requests_behind_the_limit() {
    use tower::{Layer, Service, ServiceExt};
    let registry = Registry::builder()
        .config(ConfigSet::from_str("q.yaml", YAML, tenlives_ops::Format::Yaml).unwrap())
        .build();
    let checkout = registry.admission_queue("checkout").unwrap();
    let mut svc = checkout
        .layer()
        .layer(tower::service_fn(|x: u32| async move {
            Ok::<_, std::convert::Infallible>(x + 1)
        }));
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 2);
    // With the one permit held, a request waits its `max_wait` and is
    // refused.
    let _held = checkout.queue().try_acquire_owned().unwrap();
    let started = tokio::time::Instant::now();
    let refused = svc.ready().await.unwrap().call(2).await;
    assert!(refused.is_err());
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[cfg(feature = "reload")]
#[test]
fn a_watched_file_reloads_the_queue_live_and_refuses_a_bad_one() {
    use tenlives_ops::reload::Reloader;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "q.yaml", YAML);
    let registry = Registry::builder().build();
    let reloader = Reloader::start(registry.clone(), &path, Duration::from_millis(30)).unwrap();
    let checkout = registry.admission_queue("checkout").unwrap();
    let queue = checkout.queue().clone();
    let _held = queue.try_acquire_owned().unwrap();
    let clock = ManualClock::new();
    let mut waiter = pin!(queue.acquire(1, Timestamp::MAX, &clock));
    assert!(poll(waiter.as_mut()).is_pending());

    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    write(
        dir.path(),
        "q.yaml",
        &YAML.replace("overload: shed_lowest_priority", "overload: sometimes"),
    );
    wait("the refusal", &|| reloader.rejected() == 1);
    let e = reloader.last_error().unwrap();
    assert_eq!(
        (e.line, e.path.as_str()),
        (9, "admission_queue.instances.checkout.overload")
    );
    assert_eq!(queue.waiting(), 1);

    let raised = YAML.replace(
        "      limit: 1\n      capacity: 4",
        "      limit: 2\n      capacity: 4",
    );
    write(dir.path(), "q.yaml", &raised);
    wait("the reload", &|| reloader.applied() == 2);
    assert!(std::sync::Arc::ptr_eq(
        &checkout,
        &registry.admission_queue("checkout").unwrap()
    ));
    let Poll::Ready(Ok(_granted)) = poll(waiter.as_mut()) else {
        panic!("the waiter lost its place or did not get the raised limit's permit")
    };
    assert_eq!(queue.source().in_flight(), 2);
}
