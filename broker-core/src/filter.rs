//! Filters: which messages a subscriber, a consumer group or a live
//! subscription wants, by event type and by a CEL expression over the
//! message.
//!
//! A filter is checked where messages are read (the delivery worker, the
//! group's pull, the live connection), never in the publish path. A
//! message a filter skips is done with for that reader: its cursor moves
//! on, and it is counted `filtered`.

use std::sync::{Arc, LazyLock};

use crate::{Error, EventType, Message};

/// The longest CEL expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// The most event types one filter lists.
pub const MAX_FILTER_TYPES: usize = 64;

/// Which messages a reader wants. Both parts are optional; a filter with
/// both wants a message only when both match.
///
/// - **Event types**: exact names, or a prefix ending in `*`
///   (`invoice.*`, `*` for any type). A message without an event type
///   matches only a filter that lists none.
/// - **Expression**: a [CEL](https://cel.dev) expression that sees
///   `event_type` (a string, or null), `content_type` (likewise) and
///   `payload`: the parsed JSON when the content type is JSON
///   (`application/json` or `+json`), else null. It must evaluate to
///   `true` to match; an error while evaluating it (a missing field, a
///   wrong type) is no match, never a failed delivery.
///
/// # Examples
///
/// ```
/// use broker_core::Filter;
///
/// let filter = Filter::new(
///     Some(vec!["invoice.*".into()]),
///     Some("payload.amount > 100".into()),
/// )
/// .unwrap();
/// assert_eq!(filter.event_types().unwrap(), ["invoice.*"]);
/// assert!(Filter::new(None, Some("payload.amount >".into())).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Filter {
    event_types: Option<Vec<String>>,
    patterns: Vec<Pattern>,
    expression: Option<Expression>,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

#[derive(Clone)]
struct Expression {
    source: String,
    program: Arc<cel::Program>,
    /// Which variables it reads: only those are bound (parsing the
    /// payload is most of an evaluation's cost).
    uses: Uses,
}

#[derive(Clone, Copy)]
struct Uses {
    event_type: bool,
    content_type: bool,
    payload: bool,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

/// CEL's standard functions, built once.
static STDLIB: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// Two filters are equal when they were written the same.
impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.event_types == other.event_types && self.expression() == other.expression()
    }
}

impl Eq for Filter {}

impl Filter {
    /// Checks and compiles a filter.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidFilter`]: an event type that is neither a valid one
    /// nor a prefix of one followed by `*`, more than [`MAX_FILTER_TYPES`]
    /// of them, an expression longer than [`MAX_EXPRESSION_LEN`] or one
    /// CEL cannot parse (the parser's message says where).
    pub fn new(
        event_types: Option<Vec<String>>,
        expression: Option<String>,
    ) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidFilter { reason };
        let mut patterns = Vec::new();
        if let Some(types) = &event_types {
            if types.is_empty() {
                return Err(invalid(
                    "event_types must list at least one type (leave it out to take every type)"
                        .into(),
                ));
            }
            if types.len() > MAX_FILTER_TYPES {
                return Err(invalid(format!(
                    "event_types lists at most {MAX_FILTER_TYPES} types"
                )));
            }
            for t in types {
                patterns.push(match t.strip_suffix('*') {
                    Some(prefix)
                        if prefix.bytes().all(crate::event_type::allowed)
                            && prefix.len() < crate::MAX_EVENT_TYPE_LEN =>
                    {
                        Pattern::Prefix(prefix.to_owned())
                    }
                    Some(_) => {
                        return Err(invalid(format!(
                            "event type pattern {t:?}: a prefix before `*` may only hold \
                             A-Z, a-z, 0-9, '.', '_', ':' and '-'"
                        )))
                    }
                    None => {
                        EventType::new(t).map_err(|e| invalid(format!("event type {t:?}: {e}")))?;
                        Pattern::Exact(t.clone())
                    }
                });
            }
        }
        let expression = match expression {
            None => None,
            Some(source) if source.len() > MAX_EXPRESSION_LEN => {
                return Err(invalid(format!(
                    "the expression is at most {MAX_EXPRESSION_LEN} bytes"
                )))
            }
            Some(source) => {
                let program = cel::Program::compile(&source)
                    .map_err(|e| invalid(format!("the expression does not parse: {e}")))?;
                let references = program.references();
                let uses = Uses {
                    event_type: references.has_variable("event_type"),
                    content_type: references.has_variable("content_type"),
                    payload: references.has_variable("payload"),
                };
                Some(Expression {
                    source,
                    program: Arc::new(program),
                    uses,
                })
            }
        };
        Ok(Filter {
            event_types,
            patterns,
            expression,
        })
    }

    /// The event types it lists, as given.
    pub fn event_types(&self) -> Option<&[String]> {
        self.event_types.as_deref()
    }

    /// Its expression, as given.
    pub fn expression(&self) -> Option<&str> {
        self.expression.as_ref().map(|e| e.source.as_str())
    }

    /// Whether `message` matches.
    pub fn matches(&self, message: &Message) -> bool {
        if self.event_types.is_some() {
            let Some(t) = message.event_type() else {
                return false;
            };
            let t = t.as_str();
            let listed = self.patterns.iter().any(|p| match p {
                Pattern::Exact(e) => e == t,
                Pattern::Prefix(prefix) => t.starts_with(prefix.as_str()),
            });
            if !listed {
                return false;
            }
        }
        match &self.expression {
            None => true,
            Some(e) => evaluate(e, message),
        }
    }
}

/// Runs `expression` over `message`: true only for a result of `true`.
fn evaluate(expression: &Expression, message: &Message) -> bool {
    let mut context = cel::Context::with_env(STDLIB.clone());
    let text = |v: Option<&str>| v.map_or(cel::Value::Null, |s| cel::Value::from(s.to_owned()));
    let uses = expression.uses;
    if uses.event_type {
        context
            .add_variable_from_value("event_type", text(message.event_type().map(|t| t.as_str())));
    }
    if uses.content_type {
        context.add_variable_from_value(
            "content_type",
            text(message.content_type().and_then(|c| c.to_str().ok())),
        );
    }
    if uses.payload {
        // Parsed per evaluation, not kept with the message: a parsed
        // payload is several times its bytes, and the log holds messages
        // long.
        context.add_variable_from_value("payload", cel_payload(message));
    }
    matches!(
        expression.program.execute(&context),
        Ok(cel::Value::Bool(true))
    )
}

/// The payload as CEL sees it: the JSON value when the content type says
/// JSON and it parses, else null.
fn cel_payload(message: &Message) -> cel::Value {
    let json = message
        .content_type()
        .and_then(|c| c.to_str().ok())
        .is_some_and(crate::is_json_type);
    if !json {
        return cel::Value::Null;
    }
    serde_json::from_slice::<serde_json::Value>(message.payload()).map_or(cel::Value::Null, cel_of)
}

/// A JSON value as CEL sees it: whole numbers as `int` (so that
/// `payload.n + 1` is `int + int`), or `uint` past `int`'s range; other
/// numbers as `double`.
fn cel_of(json: serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match json {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(Arc::new(s)),
        J::Array(items) => cel::Value::List(Arc::new(items.into_iter().map(cel_of).collect())),
        J::Object(fields) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = fields
                .into_iter()
                .map(|(k, v)| (cel::objects::Key::String(Arc::new(k)), cel_of(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use http::HeaderValue;

    use super::*;
    use crate::TopicName;

    fn message(event_type: Option<&str>, content_type: Option<&str>, payload: &str) -> Message {
        Message::new(
            "msg_1".into(),
            0,
            TopicName::new("t").unwrap(),
            content_type.map(|c| HeaderValue::from_str(c).unwrap()),
            payload.to_owned().into(),
            SystemTime::now(),
        )
        .with_event_type(event_type.map(|t| EventType::new(t).unwrap()))
    }

    fn filter(types: Option<&[&str]>, expression: Option<&str>) -> Filter {
        Filter::new(
            types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            expression.map(str::to_owned),
        )
        .unwrap()
    }

    #[test]
    fn event_types_match_exactly_or_by_prefix() {
        let f = filter(Some(&["invoice.*", "customer.created"]), None);
        let json = Some("application/json");
        for (t, want) in [
            (Some("invoice.paid"), true),
            (Some("invoice."), true),
            (Some("invoice"), false),
            (Some("customer.created"), true),
            (Some("customer.created.v2"), false),
            (None, false),
        ] {
            assert_eq!(f.matches(&message(t, json, "{}")), want, "{t:?}");
        }
        let any = filter(Some(&["*"]), None);
        assert!(any.matches(&message(Some("x"), None, "")));
        assert!(!any.matches(&message(None, None, "")));
        let none = filter(None, None);
        assert!(none.matches(&message(None, None, "")));
    }

    #[test]
    fn expressions_see_the_message_and_errors_are_no_match() {
        let json = Some("application/json");
        let f = filter(None, Some("payload.amount > 100"));
        assert!(f.matches(&message(None, json, r#"{"amount": 150}"#)));
        assert!(!f.matches(&message(None, json, r#"{"amount": 50}"#)));
        // A missing field, a string where a number was expected, not JSON.
        assert!(!f.matches(&message(None, json, r#"{"other": 1}"#)));
        assert!(!f.matches(&message(None, json, r#"{"amount": "150"}"#)));
        assert!(!f.matches(&message(None, json, "not json")));
        assert!(!f.matches(&message(None, Some("text/plain"), r#"{"amount": 150}"#)));
        let f = filter(
            None,
            Some("payload == null && content_type == 'text/plain'"),
        );
        assert!(f.matches(&message(None, Some("text/plain"), "hi")));
        // Whole numbers are ints, others doubles; lists and maps nest.
        let f = filter(
            None,
            Some("payload.n + 1 == 2 && payload.x > 1.5 && payload.tags.exists(t, t == 'a') && payload.o.k == true"),
        );
        assert!(f.matches(&message(
            None,
            json,
            r#"{"n":1,"x":2.5,"tags":["b","a"],"o":{"k":true}}"#
        )));
        let f = filter(None, Some("event_type.startsWith('order.')"));
        assert!(f.matches(&message(Some("order.created"), None, "")));
        assert!(!f.matches(&message(None, None, "")));
        // Not a boolean: no match.
        let f = filter(None, Some("1 + 1"));
        assert!(!f.matches(&message(None, None, "")));
        // Both parts must match.
        let f = filter(Some(&["invoice.*"]), Some("payload.amount > 100"));
        assert!(f.matches(&message(
            Some("invoice.paid"),
            Some("application/vnd.x+json"),
            r#"{"amount": 101}"#
        )));
        assert!(!f.matches(&message(Some("order.paid"), json, r#"{"amount": 101}"#)));
    }

    #[test]
    fn bad_filters_are_refused_saying_why() {
        let refused = |types: Option<Vec<String>>, e: Option<&str>| match Filter::new(
            types,
            e.map(str::to_owned),
        ) {
            Err(Error::InvalidFilter { reason }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(refused(Some(vec![]), None).contains("at least one"));
        assert!(refused(Some(vec!["a b".into()]), None).contains("\"a b\""));
        assert!(refused(Some(vec!["a/*".into()]), None).contains("prefix"));
        assert!(refused(Some(vec!["x".into(); 65]), None).contains("64"));
        assert!(refused(None, Some("payload.amount >")).contains("does not parse"));
        assert!(refused(None, Some(&"a".repeat(4097))).contains("4096"));
        assert!(Filter::new(None, Some("a".repeat(4096))).is_ok());
    }
}
