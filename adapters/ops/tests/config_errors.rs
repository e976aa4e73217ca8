//! Every way a configuration file can be refused, with the file, line and
//! key path each error must name; and the shape of a good file.
#![cfg(all(feature = "toml", feature = "yaml"))]

use std::time::Duration;

use tenlives_ops::config::{ConfigSet, Format, LoadError, OrOff};

fn yaml(text: &str) -> Result<ConfigSet, LoadError> {
    ConfigSet::from_str("config.yaml", text, Format::Yaml)
}

fn toml(text: &str) -> Result<ConfigSet, LoadError> {
    ConfigSet::from_str("config.toml", text, Format::Toml)
}

fn err(r: Result<ConfigSet, LoadError>) -> LoadError {
    match r {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e,
    }
}

const GOOD: &str = "\
circuit_breaker:
  configs:
    default:
      failure_rate: 50
      window_calls: 100
      minimum_calls: 10
      open_duration: 5s
    strict:
      failure_rate: 20
      open_duration: 30s
  instances:
    payments:
      base_config: strict
      minimum_calls: 20
    search:
      consecutive_failures: 5
      failure_rate: off
rate_limiter:
  configs:
    default: { rate: 100, period: 1s, burst: 20 }
  instances:
    partner_api: { rate: 10, period: 1m }
bulkhead:
  instances:
    db: { limit: 32 }
retry_budget:
  configs:
    default: { ratio: 0.1, min_per_second: 5 }
throttle:
  instances:
    upstream: { k: 1.5 }
";

#[test]
fn a_good_yaml_file_resolves_inheritance_into_engine_configs() {
    let set = yaml(GOOD).unwrap();
    let (spec, cfg) = set.circuit_breaker.for_instance("payments").unwrap();
    // strict's rate and open duration, default's window, its own minimum.
    assert_eq!(spec.failure_rate, Some(OrOff::On(20.0)));
    assert_eq!(cfg.failure_rate(), Some(20.0));
    assert_eq!(cfg.minimum_calls(), 20);
    assert_eq!(cfg.open_duration(0), Duration::from_secs(30));
    assert!(matches!(
        cfg.window(),
        tenlives_engine::breaker::WindowSpec::Count { calls: 100, .. }
    ));
    let (_, search) = set.circuit_breaker.for_instance("search").unwrap();
    assert_eq!(search.failure_rate(), None);
    assert_eq!(search.consecutive_failures(), Some(5));
    // An instance the file does not name gets configs.default.
    let (_, other) = set.circuit_breaker.for_instance("unnamed").unwrap();
    assert_eq!(other.failure_rate(), Some(50.0));
    assert_eq!(other.minimum_calls(), 10);
    let (_, q) = set.rate_limiter.for_instance("partner_api").unwrap();
    // partner_api inherits the default's burst of 20.
    assert_eq!(
        (q.rate(), q.period(), q.burst()),
        (10, Duration::from_secs(60), 20)
    );
    assert_eq!(set.bulkhead.for_instance("db").unwrap().1.limit, 32);
    assert!(
        set.bulkhead.for_instance("unnamed").is_none(),
        "no default limit"
    );
    assert_eq!(
        set.retry_budget
            .for_instance("x")
            .unwrap()
            .1
            .min_per_second(),
        5
    );
    assert_eq!(set.throttle.for_instance("upstream").unwrap().1.k(), 1.5);
}

#[test]
fn the_same_file_in_toml_resolves_the_same() {
    let set = toml(
        r#"
[circuit_breaker.configs.default]
failure_rate = 50
window_calls = 100
minimum_calls = 10

[circuit_breaker.configs.strict]
failure_rate = 20
open_duration = "30s"

[circuit_breaker.instances.payments]
base_config = "strict"
minimum_calls = 20

[rate_limiter.instances.partner_api]
rate = 10
period = "1m"
burst = 1_000
"#,
    )
    .unwrap();
    let (_, cfg) = set.circuit_breaker.for_instance("payments").unwrap();
    assert_eq!(cfg.failure_rate(), Some(20.0));
    assert_eq!(cfg.minimum_calls(), 20);
    assert_eq!(cfg.open_duration(0), Duration::from_secs(30));
    let (_, q) = set.rate_limiter.for_instance("partner_api").unwrap();
    assert_eq!(q.burst(), 1000);
}

#[test]
fn an_out_of_range_value_names_file_line_and_key_path() {
    let e = err(yaml(
        "circuit_breaker:\n  instances:\n    payments:\n      minimum_calls: 5\n      failure_rate: 150\n",
    ));
    assert_eq!(e.file, "config.yaml");
    assert_eq!(e.line, 5);
    assert_eq!(e.path, "circuit_breaker.instances.payments.failure_rate");
    assert_eq!(
        e.to_string(),
        "config.yaml:5: circuit_breaker.instances.payments.failure_rate: \
         `failure_rate` is 150%, outside the accepted range (0, 100]"
    );
}

#[test]
fn a_bad_inherited_value_blames_the_entry_that_wrote_it() {
    // `payments` inherits a zero bulkhead limit from `small`: the error
    // points at small's line.
    let e = err(yaml(
        "bulkhead:\n  configs:\n    small:\n      limit: 0\n  instances:\n    payments:\n      base_config: small\n",
    ));
    assert_eq!(e.path, "bulkhead.configs.small.limit");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("`limit` must be at least 1"), "{e}");
}

#[test]
fn an_unknown_key_is_refused_at_its_line() {
    let e = err(yaml(
        "circuit_breaker:\n  instances:\n    payments:\n      failure_rate: 50\n      failure_rat: 40\n",
    ));
    assert!(e.message.contains("unknown field `failure_rat`"), "{e}");
    assert!(
        e.path.starts_with("circuit_breaker.instances.payments"),
        "{e}"
    );
    assert_eq!(e.line, 5, "{e}");
    let e = err(yaml("circuit_breakers:\n  instances: {}\n"));
    assert!(
        e.message.contains("unknown field `circuit_breakers`"),
        "{e}"
    );
    assert_eq!(e.line, 1, "{e}");
}

#[test]
fn a_value_of_the_wrong_type_is_refused_at_its_line() {
    let e = err(yaml(
        "rate_limiter:\n  instances:\n    api:\n      rate: lots\n",
    ));
    assert_eq!(e.path, "rate_limiter.instances.api.rate");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("invalid type: string \"lots\""), "{e}");
    let e = err(toml("[circuit_breaker.instances.api]\nopen_duration = 5\n"));
    assert_eq!(e.path, "circuit_breaker.instances.api.open_duration");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("a duration such as"), "{e}");
    let e = err(yaml(
        "throttle:\n  instances:\n    t:\n      window: soon\n",
    ));
    assert_eq!(e.line, 4);
    assert!(e.message.contains("`soon` is not a duration"), "{e}");
    let e = err(yaml(
        "circuit_breaker:\n  instances:\n    a:\n      consecutive_failures: never\n",
    ));
    assert!(e.message.contains("or `off`"), "{e}");
}

#[test]
fn a_missing_base_config_is_refused_at_the_base_config_key() {
    let e = err(yaml(
        "circuit_breaker:\n  configs:\n    default: {}\n  instances:\n    payments:\n      minimum_calls: 5\n      base_config: strikt\n",
    ));
    assert_eq!(e.path, "circuit_breaker.instances.payments.base_config");
    assert_eq!(e.line, 7);
    assert_eq!(
        e.message,
        "no configuration `strikt` in `circuit_breaker.configs`"
    );
}

#[test]
fn a_cycle_of_base_configs_is_refused() {
    let e = err(yaml(
        "throttle:\n  configs:\n    a: { base_config: b }\n    b: { base_config: c }\n    c: { base_config: a }\n",
    ));
    assert_eq!(e.path, "throttle.configs.c.base_config");
    assert_eq!(e.line, 5);
    assert_eq!(e.message, "`base_config` makes a cycle: a -> b -> c -> a");
    // A config naming itself.
    let e = err(toml(
        "[throttle.configs.default]\nbase_config = \"default\"\n",
    ));
    assert!(e.message.contains("cycle: default -> default"), "{e}");
    assert_eq!(e.line, 2);
}

#[test]
fn a_missing_required_key_names_the_entry() {
    let e = err(yaml(
        "rate_limiter:\n  instances:\n    api:\n      burst: 5\n",
    ));
    assert_eq!(e.path, "rate_limiter.instances.api");
    assert_eq!(e.line, 3);
    assert_eq!(e.message, "missing required key `rate`");
}

#[test]
fn rules_that_need_each_other_are_checked() {
    let e = err(yaml(
        "circuit_breaker:\n  instances:\n    a:\n      slow_call_rate: 50\n",
    ));
    assert_eq!(e.path, "circuit_breaker.instances.a.slow_call_rate");
    assert!(e.message.contains("needs `slow_call_duration`"), "{e}");
    let e = err(yaml(
        "circuit_breaker:\n  instances:\n    a:\n      failure_rate: off\n",
    ));
    assert!(e.message.contains("no trip rule"), "{e}");
    assert_eq!(e.path, "circuit_breaker.instances.a");
    let e = err(yaml(
        "circuit_breaker:\n  instances:\n    a:\n      window_calls: 10\n      window_duration: 10s\n",
    ));
    assert!(e.message.contains("exclude each other"), "{e}");
    let e = err(yaml(
        "circuit_breaker:\n  instances:\n    a:\n      window_calls: 10\n      window_buckets: 3\n",
    ));
    assert_eq!(e.path, "circuit_breaker.instances.a.window_buckets", "{e}");
    assert_eq!(e.line, 5);
    assert!(e.message.contains("applies to a time window only"), "{e}");
}

#[test]
fn adaptive_limits_are_checked_by_the_engine() {
    let set = yaml("adaptive_limit:\n  configs:\n    default: { max_limit: 64, window: 250ms }\n  instances:\n    a: { initial_limit: 8 }\n").unwrap();
    let (spec, _) = set.adaptive_limit.for_instance("a").unwrap();
    assert_eq!((spec.initial_limit, spec.max_limit), (Some(8), Some(64)));
    for (entry, key, reason) in [
        ("{ min_limit: 0 }", "min_limit", "must be at least 1"),
        ("{ initial_limit: 5000 }", "initial_limit", "5000"),
        ("{ backoff: 1.5 }", "backoff", "1.5"),
        ("{ min_samples: 0 }", "min_samples", "must be at least 1"),
        ("{ window: 0s }", "window", "longer than zero"),
    ] {
        let e = err(yaml(&format!(
            "adaptive_limit:\n  instances:\n    a: {entry}\n"
        )));
        assert_eq!(e.path, format!("adaptive_limit.instances.a.{key}"), "{e}");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains(reason), "{e}");
    }
}

#[test]
fn syntax_errors_name_their_line() {
    let e = err(yaml("circuit_breaker:\n  instances:\n    a: [1, 2\n"));
    assert!(e.line >= 3, "{e}");
    assert!(e.path.is_empty());
    let e = err(toml("[circuit_breaker]\n\nconfigs = {\n"));
    assert_eq!(e.line, 3, "{e}");
    // A key written twice is refused, not silently overridden.
    let e = err(yaml(
        "bulkhead:\n  instances:\n    db: { limit: 4 }\n    api: { limit: 2 }\n    db: { limit: 40 }\n",
    ));
    assert_eq!((e.line, e.message.as_str()), (5, "duplicate key `db`"));
    let e = err(toml("[bulkhead.instances.db]\nlimit = 4\nlimit = 40\n"));
    assert_eq!(e.line, 3, "{e}");
    // Aliases are refused; tags of the core schema are honoured.
    let e = err(yaml(
        "bulkhead:\n  configs:\n    a: &x { limit: 4 }\n    b: *x\n",
    ));
    assert_eq!(
        (e.line, e.message.as_str()),
        (4, "YAML aliases are not supported here")
    );
    let e = err(yaml(
        "bulkhead:\n  instances:\n    db: { limit: !!str 4 }\n",
    ));
    assert!(e.message.contains("invalid type: string \"4\""), "{e}");
}

#[test]
fn files_are_read_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yml");
    std::fs::write(&path, GOOD).unwrap();
    assert!(ConfigSet::from_path(&path).is_ok());
    let e = err(ConfigSet::from_path(dir.path().join("policies.ini")));
    assert!(e.message.contains("extension"), "{e}");
    let e = err(ConfigSet::from_path(dir.path().join("missing.yaml")));
    assert!(e.message.contains("cannot read"), "{e}");
}
