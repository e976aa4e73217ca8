//! A parsed configuration document that remembers where each value was
//! written: the common shape the TOML and YAML readers produce, so that
//! every later error can name its line.

use serde_json::{Map, Number, Value};

/// One value of a document and the line (1-based) it starts on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) kind: Kind,
}

/// What a [`Node`] holds.
// Without a file format (features `toml`, `yaml`) nothing builds a node.
#[cfg_attr(not(any(feature = "toml", feature = "yaml")), allow(dead_code))]
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    // TOML has no null; YAML's `~` and empty values are.
    #[cfg_attr(not(feature = "yaml"), allow(dead_code))]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order: key, the line of the key, value.
    Map(Vec<(String, usize, Node)>),
}

impl Node {
    /// The value as JSON, for serde to read (lines are kept here, in the
    /// tree, and looked up again by key path when something is refused).
    pub(crate) fn to_json(&self) -> Value {
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(i) => Value::Number(Number::from(*i)),
            Kind::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => {
                let mut map = Map::new();
                for (k, _, v) in entries {
                    map.insert(k.clone(), v.to_json());
                }
                Value::Object(map)
            }
        }
    }

    /// The entry `key` of a map node: its key's line and its value.
    pub(crate) fn entry(&self, key: &str) -> Option<(usize, &Node)> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, line, v)| (*line, v)),
            _ => None,
        }
    }

    /// The line of the deepest node on `path` (keys joined by `.`): the
    /// key's own line when the whole path exists, else the line of the
    /// last map reached (where a missing key belongs).
    pub(crate) fn line_of(&self, path: &[&str]) -> usize {
        let mut node = self;
        let mut line = self.line;
        for key in path {
            match node.entry(key) {
                Some((key_line, child)) => {
                    line = key_line;
                    node = child;
                }
                None => match (&node.kind, key.parse::<usize>()) {
                    (Kind::Seq(items), Ok(i)) if i < items.len() => {
                        node = &items[i];
                        line = node.line;
                    }
                    _ => break,
                },
            }
        }
        line
    }
}

/// The 1-based line of byte `offset` in `text`.
#[cfg_attr(not(feature = "toml"), allow(dead_code))]
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(feature = "yaml")]
pub(crate) mod yaml {
    //! YAML through `saphyr`'s marked tree.
    use super::{Kind, Node};
    use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};

    /// Parses `text`; an empty document is an empty map. On failure: the
    /// line and the parser's message.
    pub(crate) fn parse(text: &str) -> Result<Node, (usize, String)> {
        let docs = MarkedYamlOwned::load_from_str(text)
            .map_err(|e| (e.marker().line(), e.info().to_owned()))?;
        match docs.len() {
            0 => Ok(Node {
                line: 1,
                kind: Kind::Map(Vec::new()),
            }),
            1 => convert(&docs[0]),
            _ => Err((1, "a configuration file holds one YAML document".into())),
        }
    }

    fn convert(node: &MarkedYamlOwned) -> Result<Node, (usize, String)> {
        let line = node.span.start.line();
        let kind = match &node.data {
            YamlDataOwned::Value(s) => match s {
                ScalarOwned::Null => Kind::Null,
                ScalarOwned::Boolean(b) => Kind::Bool(*b),
                ScalarOwned::Integer(i) => Kind::Int(*i),
                ScalarOwned::FloatingPoint(f) => Kind::Float(f.into_inner()),
                ScalarOwned::String(s) => Kind::Str(s.clone()),
            },
            YamlDataOwned::Representation(s, _, _) => Kind::Str(s.clone()),
            YamlDataOwned::Sequence(items) => {
                Kind::Seq(items.iter().map(convert).collect::<Result<_, _>>()?)
            }
            YamlDataOwned::Mapping(map) => {
                let mut entries = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let key = match &k.data {
                        YamlDataOwned::Value(ScalarOwned::String(s)) => s.clone(),
                        YamlDataOwned::Value(ScalarOwned::Integer(i)) => i.to_string(),
                        YamlDataOwned::Value(ScalarOwned::Boolean(b)) => b.to_string(),
                        _ => return Err((k.span.start.line(), "a key must be a string".into())),
                    };
                    entries.push((key, k.span.start.line(), convert(v)?));
                }
                Kind::Map(entries)
            }
            YamlDataOwned::Tagged(_, inner) => return convert(inner),
            YamlDataOwned::Alias(_) => {
                return Err((line, "YAML aliases are not supported here".into()));
            }
            YamlDataOwned::BadValue => return Err((line, "a value that is not valid YAML".into())),
        };
        Ok(Node { line, kind })
    }
}

#[cfg(feature = "toml")]
pub(crate) mod toml {
    //! TOML through the `toml` crate's spanned document.
    use super::{Kind, Node, line_at};
    use toml::de::{DeTable, DeValue};

    /// Parses `text`. On failure: the line and the parser's message.
    pub(crate) fn parse(text: &str) -> Result<Node, (usize, String)> {
        let table = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_at(text, s.start));
            (line, e.message().trim().to_owned())
        })?;
        Ok(Node {
            line: 1,
            kind: table_kind(text, table.get_ref())?,
        })
    }

    fn table_kind(text: &str, table: &DeTable<'_>) -> Result<Kind, (usize, String)> {
        let mut entries = Vec::with_capacity(table.len());
        for (k, v) in table {
            let key_line = line_at(text, k.span().start);
            let line = line_at(text, v.span().start);
            entries.push((
                k.get_ref().to_string(),
                key_line,
                value(text, line, v.get_ref())?,
            ));
        }
        Ok(Kind::Map(entries))
    }

    fn value(text: &str, line: usize, v: &DeValue<'_>) -> Result<Node, (usize, String)> {
        let kind = match v {
            DeValue::String(s) => Kind::Str(s.to_string()),
            DeValue::Integer(i) => {
                let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
                let digits = digits
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b");
                let parsed = i64::from_str_radix(digits, i.radix())
                    .map_err(|e| (line, format!("integer `{}`: {e}", i.as_str())))?;
                Kind::Int(parsed)
            }
            DeValue::Float(f) => {
                let digits: String = f.as_str().chars().filter(|c| *c != '_').collect();
                let parsed = match digits.trim_start_matches('+') {
                    "inf" => f64::INFINITY,
                    "-inf" => f64::NEG_INFINITY,
                    "nan" | "-nan" => f64::NAN,
                    d => d
                        .parse::<f64>()
                        .map_err(|e| (line, format!("float `{}`: {e}", f.as_str())))?,
                };
                Kind::Float(parsed)
            }
            DeValue::Boolean(b) => Kind::Bool(*b),
            DeValue::Datetime(d) => Kind::Str(d.to_string()),
            DeValue::Array(items) => Kind::Seq(
                items
                    .iter()
                    .map(|item| value(text, line_at(text, item.span().start), item.get_ref()))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(t) => table_kind(text, t)?,
        };
        Ok(Node { line, kind })
    }
}
