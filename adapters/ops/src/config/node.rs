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
    //! YAML through `saphyr-parser`'s events, built into a [`Node`] tree
    //! here so that a key written twice in a mapping is refused (a loaded
    //! map would keep the later one silently), with scalars resolved by
    //! `saphyr`'s core schema.
    use std::borrow::Cow;

    use saphyr::Scalar;
    use saphyr_parser::{Event, Parser, ScalarStyle, Span, SpannedEventReceiver, Tag};

    use super::{Kind, Node};

    /// Parses `text`; an empty document is an empty map. On failure: the
    /// line and the parser's message.
    pub(crate) fn parse(text: &str) -> Result<Node, (usize, String)> {
        let mut builder = Builder::default();
        Parser::new_from_str(text)
            .load(&mut builder, true)
            .map_err(|e| (e.marker().line(), e.info().to_owned()))?;
        if let Some(e) = builder.error {
            return Err(e);
        }
        match builder.docs.len() {
            0 => Ok(Node {
                line: 1,
                kind: Kind::Map(Vec::new()),
            }),
            1 => Ok(builder.docs.remove(0)),
            _ => Err((1, "a configuration file holds one YAML document".into())),
        }
    }

    /// A mapping or sequence being built; a mapping remembers the key
    /// waiting for its value.
    enum Open {
        Map(Node, Option<(String, usize)>),
        Seq(Node),
    }

    #[derive(Default)]
    struct Builder {
        stack: Vec<Open>,
        docs: Vec<Node>,
        /// The first problem met (the parser cannot be stopped from here).
        error: Option<(usize, String)>,
    }

    impl Builder {
        fn fail(&mut self, line: usize, message: String) {
            self.error.get_or_insert((line, message));
        }

        fn push(&mut self, node: Node) {
            if let Err((line, message)) = self.attach(node) {
                self.fail(line, message);
            }
        }

        /// Puts `node` in the open collection (as a key or a value in a
        /// mapping), or makes it a document.
        fn attach(&mut self, node: Node) -> Result<(), (usize, String)> {
            let Some(open) = self.stack.last_mut() else {
                self.docs.push(node);
                return Ok(());
            };
            match open {
                Open::Seq(seq) => {
                    if let Kind::Seq(items) = &mut seq.kind {
                        items.push(node);
                    }
                }
                Open::Map(map, pending) => match pending.take() {
                    Some((key, key_line)) => {
                        if let Kind::Map(entries) = &mut map.kind {
                            entries.push((key, key_line, node));
                        }
                    }
                    None => {
                        let key = match node.kind {
                            Kind::Str(s) => s,
                            Kind::Int(i) => i.to_string(),
                            Kind::Bool(b) => b.to_string(),
                            _ => return Err((node.line, "a key must be a string".into())),
                        };
                        let taken = matches!(&map.kind, Kind::Map(entries) if entries.iter().any(|(k, _, _)| *k == key));
                        let line = node.line;
                        *pending = Some((key.clone(), line));
                        if taken {
                            return Err((line, format!("duplicate key `{key}`")));
                        }
                    }
                },
            }
            Ok(())
        }
    }

    fn scalar(v: Cow<'_, str>, style: ScalarStyle, tag: Option<&Cow<'_, Tag>>) -> Option<Kind> {
        Some(match Scalar::parse_from_cow_and_metadata(v, style, tag)? {
            Scalar::Null => Kind::Null,
            Scalar::Boolean(b) => Kind::Bool(b),
            Scalar::Integer(i) => Kind::Int(i),
            Scalar::FloatingPoint(f) => Kind::Float(f.into_inner()),
            Scalar::String(s) => Kind::Str(s.into_owned()),
        })
    }

    impl<'input> SpannedEventReceiver<'input> for Builder {
        fn on_event(&mut self, ev: Event<'input>, span: Span) {
            let line = span.start.line();
            match ev {
                Event::MappingStart(..) => self.stack.push(Open::Map(
                    Node {
                        line,
                        kind: Kind::Map(Vec::new()),
                    },
                    None,
                )),
                Event::SequenceStart(..) => self.stack.push(Open::Seq(Node {
                    line,
                    kind: Kind::Seq(Vec::new()),
                })),
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some(Open::Map(node, _) | Open::Seq(node)) = self.stack.pop() {
                        self.push(node);
                    }
                }
                Event::Scalar(v, style, _, tag) => match scalar(v, style, tag.as_ref()) {
                    Some(kind) => self.push(Node { line, kind }),
                    None => self.fail(line, "a scalar that does not match its tag".into()),
                },
                Event::Alias(_) => self.fail(line, "YAML aliases are not supported here".into()),
                Event::Nothing
                | Event::StreamStart
                | Event::StreamEnd
                | Event::DocumentStart(_)
                | Event::DocumentEnd => {}
            }
        }
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
