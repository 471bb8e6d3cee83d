//! The manifest's TOML as a small tree that keeps the span of every key and value.
//!
//! Why: `toml`'s serde path with `Spanned` loses the span of implicit tables such as `models` in
//! `[models."org/m"]`, and its messages cannot name the table a bad key is in; so the text is
//! parsed with `toml_edit` and copied into [`Located`] nodes, which `checker` walks by hand.
//!
//! Edges: pure; built from a parsed `toml_edit` document, read only by `checker`.

use std::ops::Range;

/// A TOML value with the span it came from, if the parser knows one (implicit tables such as
/// `models` in `[models."org/m"]` have none).
#[derive(Debug)]
pub(super) struct Located {
    pub(super) node: Node,
    pub(super) span: Option<Range<usize>>,
}

#[derive(Debug)]
pub(super) enum Node {
    Table(Vec<Entry>),
    Array(Vec<Located>),
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) key_span: Option<Range<usize>>,
    pub(super) value: Located,
}

impl Entry {
    /// Where to point at for problems with the key itself.
    pub(super) fn key_location(&self) -> Option<Range<usize>> {
        self.key_span.clone().or_else(|| self.value.span.clone())
    }
    /// Where to point at for problems with the value.
    pub(super) fn value_location(&self) -> Option<Range<usize>> {
        self.value.span.clone().or_else(|| self.key_span.clone())
    }
}

impl Node {
    /// "a string", "an integer", ... for "found ..." in messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Table(_) => "a table",
            Node::Array(_) => "an array",
            Node::String(_) => "a string",
            Node::Integer(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Boolean(_) => "a boolean",
            Node::Datetime => "a date-time",
        }
    }
}

impl Located {
    pub(super) fn from_table(table: &toml_edit::Table, span: Option<Range<usize>>) -> Located {
        let entries = table
            .iter()
            .map(|(key, item)| Entry {
                key: key.to_string(),
                key_span: table.key(key).and_then(toml_edit::Key::span),
                value: Located::from_item(item),
            })
            .collect();
        Located {
            node: Node::Table(entries),
            span: table.span().or(span),
        }
    }

    fn from_item(item: &toml_edit::Item) -> Located {
        match item {
            toml_edit::Item::Value(value) => Located::from_value(value),
            toml_edit::Item::Table(table) => Located::from_table(table, None),
            toml_edit::Item::ArrayOfTables(array) => Located {
                node: Node::Array(
                    array
                        .iter()
                        .map(|table| Located::from_table(table, None))
                        .collect(),
                ),
                span: array.span(),
            },
            // `Table::iter` skips empty items; keep the match total anyway.
            toml_edit::Item::None => Located {
                node: Node::Table(Vec::new()),
                span: None,
            },
        }
    }

    fn from_value(value: &toml_edit::Value) -> Located {
        use toml_edit::Value;
        let node = match value {
            Value::String(text) => Node::String(text.value().clone()),
            Value::Integer(number) => Node::Integer(*number.value()),
            Value::Float(number) => Node::Float(*number.value()),
            Value::Boolean(flag) => Node::Boolean(*flag.value()),
            Value::Datetime(_) => Node::Datetime,
            Value::Array(array) => Node::Array(array.iter().map(Located::from_value).collect()),
            Value::InlineTable(table) => Node::Table(
                table
                    .iter()
                    .map(|(key, value)| Entry {
                        key: key.to_string(),
                        key_span: table.key(key).and_then(toml_edit::Key::span),
                        value: Located::from_value(value),
                    })
                    .collect(),
            ),
        };
        Located {
            node,
            span: value.span(),
        }
    }
}
