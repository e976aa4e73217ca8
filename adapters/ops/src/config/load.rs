//! Reading a configuration file: parse, check its shape with serde,
//! resolve `base_config` chains, and build every entry with the engine's
//! builders. Any error names the file, the line and the key path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::node::Node;
use super::spec::{
    AdaptiveLimitSpec, AdmissionQueueSpec, BreakerSpec, BulkheadSpec, FileSpec, RateLimiterSpec,
    RetryBudgetSpec, Section, Spec, StackSpec, ThrottleSpec,
};

/// Why a configuration was refused: where, and what is wrong.
///
/// Its `Display` reads `config.yaml:14: circuit_breaker.instances.payments.failure_rate:
/// `failure_rate` is 150%, outside the accepted range (0, 100]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadError {
    /// The file (or the name given for a string).
    pub file: String,
    /// The 1-based line; the nearest enclosing entry's when the problem is a
    /// missing key.
    pub line: usize,
    /// The key path, keys joined by `.` (empty for a syntax error).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.path, self.message
            )
        }
    }
}

impl std::error::Error for LoadError {}

/// The file formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// TOML (feature `toml`).
    Toml,
    /// YAML (feature `yaml`).
    Yaml,
}

impl Format {
    /// The format a file name's extension says: `.toml`, or `.yaml`/`.yml`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// The resolved, validated configurations of one policy kind: each
/// configuration and instance of the file with its inheritance applied,
/// and the engine configuration built from it.
#[derive(Clone, Debug)]
pub struct Resolved<S: Spec> {
    /// What an instance the file does not name gets: `configs.default`,
    /// else the engine's defaults; `None` for a kind without engine
    /// defaults (rate limiters, bulkheads) when the file has no default.
    pub default: Option<(S, S::Built)>,
    /// Every `instances.<name>`, resolved.
    pub instances: BTreeMap<String, (S, S::Built)>,
}

impl<S: Spec> Resolved<S> {
    /// The resolved entry an instance `name` gets: its own, else the default.
    pub fn for_instance(&self, name: &str) -> Option<&(S, S::Built)> {
        self.instances.get(name).or(self.default.as_ref())
    }
}

/// A whole configuration, validated: what a [`Registry`](crate::Registry)
/// creates its policies from and what a reload swaps in.
#[derive(Clone, Debug)]
pub struct ConfigSet {
    /// The file as written (before inheritance), for display.
    pub spec: FileSpec,
    /// Circuit breakers.
    pub circuit_breaker: Resolved<BreakerSpec>,
    /// Rate limiters.
    pub rate_limiter: Resolved<RateLimiterSpec>,
    /// Concurrency limits.
    pub bulkhead: Resolved<BulkheadSpec>,
    /// Retry budgets.
    pub retry_budget: Resolved<RetryBudgetSpec>,
    /// Throttles.
    pub throttle: Resolved<ThrottleSpec>,
    /// Adaptive limits.
    pub adaptive_limit: Resolved<AdaptiveLimitSpec>,
    /// Admission queues.
    pub admission_queue: Resolved<AdmissionQueueSpec>,
    /// Stacks.
    pub stack: Resolved<StackSpec>,
}

impl Default for ConfigSet {
    /// The engine's defaults for every kind that has them; rate limiters
    /// and bulkheads need a configuration (`rate`, `limit`).
    fn default() -> Self {
        ConfigSet::from_spec("<defaults>", &FileSpec::default(), None)
            .expect("an empty file is valid")
    }
}

impl ConfigSet {
    /// Reads, checks and resolves a configuration file; the format comes
    /// from its extension.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] for an unreadable file, an unknown extension, a
    /// syntax error, an unknown key, a value of the wrong type, a value the
    /// engine refuses, a missing or cyclic `base_config`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<ConfigSet, LoadError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let fail = |message: String| LoadError {
            file: file.clone(),
            line: 1,
            path: String::new(),
            message,
        };
        let format = Format::from_path(path)
            .ok_or_else(|| fail("the extension must be .toml, .yaml or .yml".into()))?;
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        ConfigSet::from_str(&file, &text, format)
    }

    /// Checks and resolves configuration text; `file` names it in errors.
    ///
    /// # Errors
    ///
    /// As [`ConfigSet::from_path`].
    pub fn from_str(file: &str, text: &str, format: Format) -> Result<ConfigSet, LoadError> {
        let parsed: Result<Node, (usize, String)> = match format {
            #[cfg(feature = "toml")]
            Format::Toml => super::node::toml::parse(text),
            #[cfg(feature = "yaml")]
            Format::Yaml => super::node::yaml::parse(text),
            #[allow(unreachable_patterns)]
            other => {
                let _unread = text;
                Err((
                    1,
                    format!("{other:?} support is off: enable the tenlives-ops feature for it"),
                ))
            }
        };
        let node = parsed.map_err(|(line, message)| LoadError {
            file: file.to_owned(),
            line,
            path: String::new(),
            message,
        })?;
        let json = node.to_json();
        let spec: FileSpec = serde_path_to_error::deserialize(&json).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let keys: Vec<&str> = path.split('.').filter(|k| !k.is_empty()).collect();
            LoadError {
                file: file.to_owned(),
                line: node.line_of(&keys),
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        ConfigSet::from_spec(file, &spec, Some(&node))
    }

    /// Resolves and validates a [`FileSpec`] built in code.
    ///
    /// # Errors
    ///
    /// As [`ConfigSet::from_path`] (lines are 0: there is no file).
    pub fn from_file_spec(spec: &FileSpec) -> Result<ConfigSet, LoadError> {
        ConfigSet::from_spec("<code>", spec, None)
    }

    fn from_spec(file: &str, spec: &FileSpec, node: Option<&Node>) -> Result<ConfigSet, LoadError> {
        let cx = Cx { file, node };
        Ok(ConfigSet {
            circuit_breaker: cx.resolve(&spec.circuit_breaker)?,
            rate_limiter: cx.resolve(&spec.rate_limiter)?,
            bulkhead: cx.resolve(&spec.bulkhead)?,
            retry_budget: cx.resolve(&spec.retry_budget)?,
            throttle: cx.resolve(&spec.throttle)?,
            adaptive_limit: cx.resolve(&spec.adaptive_limit)?,
            admission_queue: cx.resolve(&spec.admission_queue)?,
            stack: cx.resolve(&spec.stack)?,
            spec: spec.clone(),
        })
    }
}

struct Cx<'a> {
    file: &'a str,
    node: Option<&'a Node>,
}

/// Where an entry lives: `configs` or `instances`, and its name.
#[derive(Clone, Copy)]
struct Entry<'a> {
    group: &'static str,
    name: &'a str,
}

impl Cx<'_> {
    fn error(&self, section: &str, keys: &[&str], message: String) -> LoadError {
        let mut path = vec![section];
        path.extend_from_slice(keys);
        LoadError {
            file: self.file.to_owned(),
            line: self.node.map_or(0, |n| n.line_of(&path)),
            path: path.join("."),
            message,
        }
    }

    /// Whether the file writes `key` in `entry` (for blaming the right
    /// entry of an inheritance chain).
    fn writes(&self, section: &str, entry: Entry<'_>, key: &str) -> bool {
        self.node.is_some_and(|n| {
            n.entry(section)
                .and_then(|(_, s)| s.entry(entry.group))
                .and_then(|(_, g)| g.entry(entry.name))
                .and_then(|(_, e)| e.entry(key))
                .is_some()
        })
    }

    fn resolve<S: Spec>(&self, section: &Section<S>) -> Result<Resolved<S>, LoadError> {
        let mut configs = BTreeMap::new();
        for name in section.configs.keys() {
            let entry = Entry {
                group: "configs",
                name,
            };
            configs.insert(name.clone(), self.build(section, entry)?);
        }
        // Without `configs.default`: the engine's defaults, where the kind
        // has them (rate limiters and bulkheads do not).
        let default = configs.get("default").cloned().or_else(|| {
            let spec = S::default();
            spec.build().ok().map(|cfg| (spec, cfg))
        });
        let mut instances = BTreeMap::new();
        for name in section.instances.keys() {
            let entry = Entry {
                group: "instances",
                name,
            };
            instances.insert(name.clone(), self.build(section, entry)?);
        }
        Ok(Resolved { default, instances })
    }

    /// The entry resolved along its `base_config` chain, and built.
    fn build<S: Spec>(
        &self,
        section: &Section<S>,
        entry: Entry<'_>,
    ) -> Result<(S, S::Built), LoadError> {
        // The chain from the entry up to its root.
        let mut chain: Vec<(Entry<'_>, &S)> = Vec::new();
        let mut current = entry;
        loop {
            let map = if current.group == "configs" {
                &section.configs
            } else {
                &section.instances
            };
            let spec = &map[current.name];
            chain.push((current, spec));
            let parent = match spec.base_config() {
                Some(base) => {
                    if !section.configs.contains_key(base) {
                        return Err(self.error(
                            S::SECTION,
                            &[current.group, current.name, "base_config"],
                            format!("no configuration `{base}` in `{}.configs`", S::SECTION),
                        ));
                    }
                    base
                }
                None if current.group == "configs" && current.name == "default" => break,
                None if section.configs.contains_key("default") => "default",
                None => break,
            };
            if chain
                .iter()
                .any(|(e, _)| e.group == "configs" && e.name == parent)
            {
                let mut names: Vec<&str> = chain.iter().map(|(e, _)| e.name).collect();
                names.push(parent);
                return Err(self.error(
                    S::SECTION,
                    &[current.group, current.name, "base_config"],
                    format!("`base_config` makes a cycle: {}", names.join(" -> ")),
                ));
            }
            current = Entry {
                group: "configs",
                name: parent,
            };
        }
        let mut resolved = S::default();
        for (_, spec) in chain.iter().rev() {
            resolved = spec.inherit(&resolved);
        }
        match resolved.build() {
            Ok(cfg) => Ok((resolved, cfg)),
            Err(e) => {
                // Blame the first entry of the chain that writes the key.
                let blamed = e.key.and_then(|key| {
                    chain
                        .iter()
                        .find(|(en, _)| self.writes(S::SECTION, *en, key))
                        .map(|(en, _)| (*en, key))
                });
                Err(match blamed {
                    Some((en, key)) => {
                        self.error(S::SECTION, &[en.group, en.name, key], e.kind.to_string())
                    }
                    None => {
                        let mut keys = vec![entry.group, entry.name];
                        if let Some(key) = e.key {
                            keys.push(key);
                        }
                        self.error(S::SECTION, &keys, e.kind.to_string())
                    }
                })
            }
        }
    }
}
