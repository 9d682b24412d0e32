//! One Kafka message value into a usage event, or the reason it is refused.
//!
//! The rules are the contract's (README, "Hostile input"): the reasons, in
//! the order they are checked, are `empty`, `oversized`, `not_json` /
//! `too_deep`, `not_an_object`, `invalid_field` for a NUL anywhere, then the
//! fields `id`, `eventType`, `customerId`, `timestamp` (each by its name or
//! its Sequence alias; both given must be equal), the time window, and
//! `properties` (or `eventProperties`): an object, whose values may nest.
//!
//! Only the properties live metrics read are kept (`Reads`): top-level names,
//! and paths into nested values, each resolved here to the scalar it finds
//! and kept as a property of its own id. A value that is an object or an
//! array is kept as `Prop::Nested`, which every reader treats as missing.
//!
//! A decoded event is copied into the batch's arena (`EventStore`), so it
//! outlives the message and costs no allocation of its own.

use rustc_hash::FxHashMap;

use crate::intern::Interner;
use crate::json::{Error as JsonError, Filter, Parser, Value};
use crate::timestamp;

pub const MAX_TEXT_LENGTH: usize = 256;
pub const MAX_DEPTH: usize = 32;
/// Event times outside [1900-01-01, 9998-01-01) UTC are refused.
pub const EARLIEST_EVENT_MICROS: i64 = -2_208_988_800 * timestamp::MICROS;
pub const LATEST_EVENT_MICROS: i64 = 253_339_228_800 * timestamp::MICROS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Empty,
    Oversized,
    NotJson,
    NotAnObject,
    MissingField,
    InvalidField,
    BadTimestamp,
    TooLate,
    TooFarInFuture,
    TooDeep,
    InternalError,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::Oversized => "oversized",
            Reason::NotJson => "not_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::TooLate => "too_late",
            Reason::TooFarInFuture => "too_far_in_future",
            Reason::TooDeep => "too_deep",
            Reason::InternalError => "internal_error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// The acceptance window and size limit. The two window texts are given
/// (the Python side formats its seconds as the contract's messages say).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_lateness_micros: i64,
    pub max_future_micros: i64,
    pub late_detail: String,
    pub future_detail: String,
}

/// A span of the arena: text the event owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prop {
    Null,
    Bool(bool),
    /// A number's literal text.
    Number(Span),
    String(Span),
    /// An object or an array: missing for metrics. Its compact JSON text
    /// when every property is kept (tools), else empty.
    Nested(Span),
}

/// One step of a property path: an object's key, or an array's index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path of more than one step from `properties` (one key is a plain name).
#[derive(Debug, Clone)]
pub struct Path {
    pub root: String,
    pub rest: Vec<Segment>,
    pub id: u32,
}

/// Ids of paths start here, above any name's.
pub const FIRST_PATH_ID: u32 = 1 << 31;

/// Whether a property's id is a path's (not a name's, nor UNREAD).
pub fn is_path(id: u32) -> bool {
    (FIRST_PATH_ID..UNREAD).contains(&id)
}

/// What the live metrics read from properties: top-level names (interned,
/// their ids stable for the process) and deeper paths (ids from
/// FIRST_PATH_ID, stable too). `live` is rebuilt by each compile.
#[derive(Default)]
pub struct Reads {
    pub names: Interner,
    paths: FxHashMap<Vec<Segment>, u32>,
    pub live: Vec<Path>,
}

impl Reads {
    /// Start a compile: no path is live until `id` names it again.
    pub fn begin(&mut self) {
        self.live.clear();
    }

    /// The id of the property at `segments` (a one-key path is that name).
    pub fn id(&mut self, segments: &[Segment]) -> u32 {
        if let [Segment::Key(name)] = segments {
            return self.names.id(name);
        }
        let next = FIRST_PATH_ID + self.paths.len() as u32;
        let id = *self.paths.entry(segments.to_vec()).or_insert(next);
        if let Some(Segment::Key(root)) = segments.first() {
            // A path that starts with an index finds nothing in an object.
            self.names.id(root);
            if !self.live.iter().any(|p| p.id == id) {
                self.live.push(Path {
                    root: root.clone(),
                    rest: segments[1..].to_vec(),
                    id,
                });
            }
        }
        id
    }
}

/// Where `rest` leads from `value`: a key of an object (the last copy of
/// a repeated key, as a dict has it) or an index of an array.
fn walk<'v, 'a>(value: &'v Value<'a>, rest: &[Segment]) -> Option<&'v Value<'a>> {
    let mut at = value;
    for segment in rest {
        at = match (segment, at) {
            (Segment::Key(key), Value::Object(_)) => at.get(key)?,
            (Segment::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(at)
}

#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub id: Span,
    pub event_type: Span,
    pub customer: Span,
    pub micros: i64,
    /// `EventStore::props[first .. first + count]`, in dict order, last value of a repeated key.
    pub first_prop: u32,
    pub prop_count: u32,
}

/// A property name no live metric reads.
pub const UNREAD: u32 = u32::MAX;

/// Decoded events of one batch, their text in one arena. Each property has
/// its name's id among the names metrics read (`UNREAD` for the others), so
/// the per-metric lookups compare integers, not strings.
#[derive(Default)]
pub struct EventStore {
    pub arena: String,
    pub props: Vec<(Span, u32, Prop)>,
    pub events: Vec<Event>,
}

impl EventStore {
    pub fn text(&self, span: Span) -> &str {
        &self.arena[span.start as usize..(span.start + span.len) as usize]
    }

    fn put(&mut self, text: &str) -> Span {
        let start = self.arena.len() as u32;
        self.arena.push_str(text);
        Span {
            start,
            len: text.len() as u32,
        }
    }

    pub fn props_of(&self, event: &Event) -> &[(Span, u32, Prop)] {
        &self.props[event.first_prop as usize..(event.first_prop + event.prop_count) as usize]
    }

    /// The value of the property whose name has id `name`, if the event has it.
    pub fn prop(&self, event: &Event, name: u32) -> Option<Prop> {
        self.props_of(event)
            .iter()
            .find(|(_, id, _)| *id == name)
            .map(|(_, _, v)| *v)
    }

    pub fn clear(&mut self) {
        self.arena.clear();
        self.props.clear();
        self.events.clear();
    }
}

/// The top-level fields read, each a slot of `Fields`; the rest are skipped.
const ID: usize = 0;
const ID_ALIAS: usize = 1;
const EVENT_TYPE: usize = 2;
const CUSTOMER: usize = 3;
const CUSTOMER_ALIAS: usize = 4;
const TIMESTAMP: usize = 5;
const TIMESTAMP_ALIAS: usize = 6;
const PROPERTIES: usize = 7;
const PROPERTIES_ALIAS: usize = 8;

fn slot_of(key: &str) -> Option<usize> {
    Some(match key {
        "id" => ID,
        "customerEventId" => ID_ALIAS,
        "eventType" => EVENT_TYPE,
        "customerId" => CUSTOMER,
        "customerAlias" => CUSTOMER_ALIAS,
        "timestamp" => TIMESTAMP,
        "eventTimestamp" => TIMESTAMP_ALIAS,
        "properties" => PROPERTIES,
        "eventProperties" => PROPERTIES_ALIAS,
        _ => return None,
    })
}

type Fields<'a> = [Option<Value<'a>>; 9];

fn given<'v>(fields: &'v Fields<'v>, n: usize) -> Option<&'v Value<'v>> {
    fields[n].as_ref().filter(|v| **v != Value::Null)
}

/// Equality of JSON values as the contract means it for aliases: strings by
/// text, numbers by exact value (`1` equals `1.0`), true is not 1.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    use crate::number::Decimal;
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x == y || Decimal::parse(x) == Decimal::parse(y),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(_), Value::Object(_)) => {
            let (x, y) = (a.members(), b.members());
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.iter().any(|(k2, v2)| k == k2 && json_eq(v, v2)))
        }
        _ => false,
    }
}

/// A text field's value, taking its alias into account (`_text_field`).
fn text_field<'v>(
    fields: &'v Fields<'v>,
    (name, n): (&'static str, usize),
    alias: Option<(&'static str, usize)>,
) -> Result<&'v str, Rejection> {
    let mut shown = name;
    let mut value = given(fields, n);
    if let Some((alias, a)) = alias {
        let aliased = given(fields, a);
        match (value, aliased) {
            (None, Some(_)) => {
                value = aliased;
                shown = alias;
            }
            (Some(v), Some(a)) if !json_eq(v, a) => {
                return Err(reject(
                    Reason::InvalidField,
                    format!("{name} and its alias {alias} differ"),
                ));
            }
            _ => {}
        }
    }
    let Some(value) = value else {
        return Err(reject(Reason::MissingField, format!("{shown} is missing")));
    };
    let Some(text) = value.as_str() else {
        return Err(reject(
            Reason::InvalidField,
            format!("{shown} must be a string"),
        ));
    };
    // Bytes first: a text of at most 256 bytes has at most 256 characters.
    let chars = if text.len() <= MAX_TEXT_LENGTH {
        text.len()
    } else {
        text.chars().count()
    };
    if chars == 0 || chars > MAX_TEXT_LENGTH {
        return Err(reject(
            Reason::InvalidField,
            format!("{shown} must be 1 to {MAX_TEXT_LENGTH} characters"),
        ));
    }
    Ok(text)
}

/// `reads`: the properties metrics read. With `keep_unread` false, the
/// event keeps only those (a batch for the core); true keeps all (tools).
pub fn decode(
    raw: Option<&[u8]>,
    now_micros: i64,
    limits: &Limits,
    reads: &Reads,
    keep_unread: bool,
    store: &mut EventStore,
) -> Result<usize, Rejection> {
    if keep_unread {
        return decode_with(raw, now_micros, limits, reads, true, store)
            .map_err(Outcome::into_rejection);
    }
    // Properties no metric reads are skipped by the parser. Where that could
    // change the answer (properties and its alias both given, which must be
    // equal whole), the value is decoded again, whole.
    match decode_with(raw, now_micros, limits, reads, false, store) {
        Err(Outcome::Whole) => decode_with(raw, now_micros, limits, reads, true, store)
            .map_err(Outcome::into_rejection),
        other => other.map_err(Outcome::into_rejection),
    }
}

enum Outcome {
    Refused(Rejection),
    /// Decode again with every property built.
    Whole,
}

impl Outcome {
    fn into_rejection(self) -> Rejection {
        match self {
            Outcome::Refused(r) => r,
            Outcome::Whole => unreachable!("a whole decode never asks for another"),
        }
    }
}

impl From<Rejection> for Outcome {
    fn from(r: Rejection) -> Outcome {
        Outcome::Refused(r)
    }
}

fn decode_with(
    raw: Option<&[u8]>,
    now_micros: i64,
    limits: &Limits,
    reads: &Reads,
    whole: bool,
    store: &mut EventStore,
) -> Result<usize, Outcome> {
    let keep_unread = whole;
    let names = &reads.names;
    let raw = match raw {
        Some(raw) if !raw.is_empty() => raw,
        _ => return Err(reject(Reason::Empty, "the message has no value").into()),
    };
    if raw.len() > limits.max_bytes {
        return Err(reject(
            Reason::Oversized,
            format!("{} bytes, the limit is {}", raw.len(), limits.max_bytes),
        )
        .into());
    }
    let not_json = || reject(Reason::NotJson, "the value is not UTF-8 JSON");
    let too_deep = || {
        reject(
            Reason::TooDeep,
            format!("nested more than {MAX_DEPTH} levels deep"),
        )
    };
    let mut parser = Parser::new(raw, MAX_DEPTH).map_err(|_| not_json())?;
    let mut fields: Fields = Default::default();
    let read = |key: &str| names.find(key).is_some();
    let slot = |key: &str| {
        slot_of(key).map(|n| {
            if !whole && (n == PROPERTIES || n == PROPERTIES_ALIAS) {
                (n, Filter::Members(&read))
            } else {
                (n, Filter::Whole)
            }
        })
    };
    let parsed = parser.fields(slot, &mut fields).and_then(|object| {
        parser.finish()?;
        Ok(object)
    });
    match parsed {
        Ok(true) => {}
        Ok(false) => {
            return Err(reject(Reason::NotAnObject, "the value is not a JSON object").into())
        }
        Err(JsonError::TooDeep) => return Err(too_deep().into()),
        Err(JsonError::NotJson) => return Err(not_json().into()),
    }
    if parser.has_nul {
        // PostgreSQL text cannot hold NUL: better refused here than a flush that never succeeds.
        return Err(reject(Reason::InvalidField, "contains a NUL character (\\u0000)").into());
    }
    if !whole && fields[PROPERTIES].is_some() && fields[PROPERTIES_ALIAS].is_some() {
        return Err(Outcome::Whole);
    }
    let id = text_field(&fields, ("id", ID), Some(("customerEventId", ID_ALIAS)))?;
    let event_type = text_field(&fields, ("eventType", EVENT_TYPE), None)?;
    let customer = text_field(
        &fields,
        ("customerId", CUSTOMER),
        Some(("customerAlias", CUSTOMER_ALIAS)),
    )?;
    let stamp = text_field(
        &fields,
        ("timestamp", TIMESTAMP),
        Some(("eventTimestamp", TIMESTAMP_ALIAS)),
    )
    .map_err(|r| {
        if r.reason == Reason::InvalidField {
            Rejection {
                reason: Reason::BadTimestamp,
                detail: r.detail,
            }
        } else {
            r
        }
    })?;
    let Some(micros) = timestamp::parse(stamp) else {
        return Err(reject(
            Reason::BadTimestamp,
            "timestamp must be an RFC 3339 date-time with an offset",
        )
        .into());
    };
    if !(EARLIEST_EVENT_MICROS..LATEST_EVENT_MICROS).contains(&micros) {
        return Err(reject(
            Reason::BadTimestamp,
            "timestamp must fall between the years 1900 and 9997 (UTC)",
        )
        .into());
    }
    if micros < now_micros - limits.max_lateness_micros {
        return Err(reject(Reason::TooLate, limits.late_detail.clone()).into());
    }
    if micros > now_micros + limits.max_future_micros {
        return Err(reject(Reason::TooFarInFuture, limits.future_detail.clone()).into());
    }
    let named = given(&fields, PROPERTIES);
    let aliased = given(&fields, PROPERTIES_ALIAS);
    let properties = match (named, aliased) {
        (Some(p), Some(a)) if !json_eq(p, a) => {
            return Err(reject(
                Reason::InvalidField,
                "properties and its alias eventProperties differ",
            )
            .into());
        }
        (Some(p), _) => Some(p),
        (None, a) => a,
    };
    let list: &[(std::borrow::Cow<str>, Value)] = match properties {
        None => &[],
        Some(Value::Object(list)) => list,
        Some(_) => return Err(reject(Reason::InvalidField, "properties must be an object").into()),
    };
    let first_prop = store.props.len() as u32;
    for (key, value) in list {
        let name = names.find(key).unwrap_or(UNREAD);
        if name == UNREAD && !keep_unread {
            continue;
        }
        let prop = match value {
            Value::Null => Prop::Null,
            Value::Bool(b) => Prop::Bool(*b),
            Value::Number(text) => Prop::Number(store.put(text)),
            Value::String(text) => Prop::String(store.put(text)),
            nested @ (Value::Array(_) | Value::Object(_)) => {
                if keep_unread {
                    let start = store.arena.len();
                    nested.write(&mut store.arena);
                    Prop::Nested(Span {
                        start: start as u32,
                        len: (store.arena.len() - start) as u32,
                    })
                } else {
                    Prop::Nested(Span::default())
                }
            }
        };
        // A repeated key: the last value wins, in the first one's place.
        let kept = &mut store.props[first_prop as usize..];
        let earlier = if name != UNREAD {
            kept.iter().position(|(_, id, _)| *id == name)
        } else {
            let text = key.as_ref();
            (0..kept.len()).find(|&i| {
                let span = kept[i].0;
                &store.arena[span.start as usize..(span.start + span.len) as usize] == text
            })
        };
        match earlier {
            Some(i) => store.props[first_prop as usize + i].2 = prop,
            None => {
                let key = store.put(key);
                store.props.push((key, name, prop));
            }
        }
    }
    for path in &reads.live {
        // The root's last copy, as a dict keeps it; then the path's scalar.
        let Some((_, root)) = list.iter().rev().find(|(k, _)| k.as_ref() == path.root) else {
            continue;
        };
        let prop = match walk(root, &path.rest) {
            Some(Value::Null) => Prop::Null,
            Some(Value::Bool(b)) => Prop::Bool(*b),
            Some(Value::Number(text)) => Prop::Number(store.put(text)),
            Some(Value::String(text)) => Prop::String(store.put(text)),
            _ => continue, // nothing there, or a container: missing
        };
        store.props.push((Span::default(), path.id, prop));
    }
    let event = Event {
        id: store.put(id),
        event_type: store.put(event_type),
        customer: store.put(customer),
        micros,
        first_prop,
        prop_count: store.props.len() as u32 - first_prop,
    };
    store.events.push(event);
    Ok(store.events.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000 * timestamp::MICROS;

    fn limits() -> Limits {
        Limits {
            max_bytes: 64 * 1024,
            max_lateness_micros: 35 * 86_400 * timestamp::MICROS,
            max_future_micros: 300 * timestamp::MICROS,
            late_detail: "late".into(),
            future_detail: "future".into(),
        }
    }

    type Decoded = (String, String, String, i64, Vec<(String, Prop)>);

    fn run(text: &str) -> Result<Decoded, Rejection> {
        let mut store = EventStore::default();
        let i = decode(
            Some(text.as_bytes()),
            NOW,
            &limits(),
            &Reads::default(),
            true,
            &mut store,
        )?;
        let e = store.events[i];
        let props = store
            .props_of(&e)
            .iter()
            .map(|(k, _, v)| (store.text(*k).to_string(), *v))
            .collect();
        Ok((
            store.text(e.id).into(),
            store.text(e.event_type).into(),
            store.text(e.customer).into(),
            e.micros,
            props,
        ))
    }

    fn reason(text: &str) -> Reason {
        run(text)
            .err()
            .map(|r| r.reason)
            .unwrap_or(Reason::InternalError)
    }

    const GOOD: &str = r#"{"id":"e1","eventType":"a","customerId":"c","timestamp":"2026-11-18T08:00:00Z","properties":{"n":1.5,"s":"x","b":true,"z":null}}"#;

    #[test]
    fn a_good_event_and_its_properties() {
        let (id, ty, customer, micros, props) = run(GOOD).unwrap();
        assert_eq!(
            (id.as_str(), ty.as_str(), customer.as_str()),
            ("e1", "a", "c")
        );
        assert_eq!(micros, 1_794_988_800 * timestamp::MICROS);
        assert_eq!(props.len(), 4);
        assert_eq!(props[2], ("b".to_string(), Prop::Bool(true)));
        assert_eq!(props[3], ("z".to_string(), Prop::Null));
    }

    #[test]
    fn every_reason_in_its_order() {
        let mut store = EventStore::default();
        assert_eq!(
            decode(None, NOW, &limits(), &Reads::default(), true, &mut store)
                .unwrap_err()
                .reason,
            Reason::Empty
        );
        assert_eq!(
            decode(
                Some(b""),
                NOW,
                &limits(),
                &Reads::default(),
                true,
                &mut store
            )
            .unwrap_err()
            .reason,
            Reason::Empty
        );
        let huge = vec![b'x'; 64 * 1024 + 1];
        let r = decode(
            Some(&huge),
            NOW,
            &limits(),
            &Reads::default(),
            true,
            &mut store,
        )
        .unwrap_err();
        assert_eq!(
            (r.reason, r.detail.as_str()),
            (Reason::Oversized, "65537 bytes, the limit is 65536")
        );
        assert_eq!(reason("{not json"), Reason::NotJson);
        assert_eq!(reason("[1]"), Reason::NotAnObject);
        assert_eq!(reason(r#"{"id":"a\u0000"}"#), Reason::InvalidField);
        assert_eq!(reason(r#"{"eventType":"a"}"#), Reason::MissingField);
        assert_eq!(
            reason(&GOOD.replace(r#""id":"e1""#, r#""id":null"#)),
            Reason::MissingField
        );
        assert_eq!(
            reason(&GOOD.replace(r#""id":"e1""#, r#""id":12"#)),
            Reason::InvalidField
        );
        assert_eq!(
            reason(&GOOD.replace(r#""id":"e1""#, r#""id":"""#)),
            Reason::InvalidField
        );
        assert_eq!(
            reason(&GOOD.replace("2026-11-18T08:00:00Z", "2026-11-18T08:00:00")),
            Reason::BadTimestamp
        );
        assert_eq!(
            reason(&GOOD.replace(r#""2026-11-18T08:00:00Z""#, "17")),
            Reason::BadTimestamp
        );
        assert_eq!(
            reason(&GOOD.replace("2026-11-18", "2020-01-01")),
            Reason::TooLate
        );
        assert_eq!(
            reason(&GOOD.replace("2026-11-18", "2026-12-18")),
            Reason::TooFarInFuture
        );
        assert_eq!(
            reason(&GOOD.replace(
                r#""properties":{"n":1.5,"s":"x","b":true,"z":null}"#,
                "\"properties\":[1]"
            )),
            Reason::InvalidField
        );
        let deep = format!(r#"{{"x":{}{},"id":"e1"}}"#, "[".repeat(40), "]".repeat(40));
        assert_eq!(reason(&deep), Reason::TooDeep);
    }

    #[test]
    fn aliases_must_agree() {
        let aliased = r#"{"customerEventId":"e1","eventType":"a","customerAlias":"c","eventTimestamp":"2026-11-18T08:00:00Z","eventProperties":{"n":1}}"#;
        let (id, _, customer, _, props) = run(aliased).unwrap();
        assert_eq!(
            (id.as_str(), customer.as_str(), props.len()),
            ("e1", "c", 1)
        );
        let differ = GOOD.replace(r#""id":"e1""#, r#""id":"e1","customerEventId":"e2""#);
        let r = run(&differ).unwrap_err();
        assert_eq!(r.detail, "id and its alias customerEventId differ");
        let same = GOOD.replace(
            r#""properties":"#,
            r#""eventProperties":{"n":1.50,"s":"x","b":true,"z":null},"properties":"#,
        );
        assert!(run(&same).is_ok());
        let stamp = GOOD.replace(
            r#""timestamp":"#,
            r#""eventTimestamp":"2026-11-18T09:00:00Z","timestamp":"#,
        );
        assert_eq!(reason(&stamp), Reason::BadTimestamp);
    }

    #[test]
    fn a_repeated_key_takes_its_last_value() {
        let text = GOOD.replace(r#""id":"e1""#, r#""id":"first","id":"e9""#);
        assert_eq!(run(&text).unwrap().0, "e9");
    }

    fn decode_with_paths(text: &str, paths: &[&[Segment]]) -> (EventStore, Event, Vec<u32>) {
        let mut reads = Reads::default();
        reads.begin();
        let ids = paths.iter().map(|p| reads.id(p)).collect();
        let mut store = EventStore::default();
        let i = decode(
            Some(text.as_bytes()),
            NOW,
            &limits(),
            &reads,
            false,
            &mut store,
        )
        .unwrap();
        let e = store.events[i];
        (store, e, ids)
    }

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_string())
    }

    #[test]
    fn paths_find_scalars_in_nested_values() {
        let text = GOOD.replace(
            r#""properties":{"n":1.5,"s":"x","b":true,"z":null}"#,
            r#""properties":{"usage":{"input_tokens":12,"o":{"k":1}},"items":[{"sku":"a"},{"sku":"b"}],"a.b":"dots","usage":{"input_tokens":13},"top":{"x":1}}"#,
        );
        let paths: [&[Segment]; 8] = [
            &[key("usage"), key("input_tokens")],
            &[key("items"), Segment::Index(1), key("sku")],
            &[key("a.b")],
            &[key("items"), Segment::Index(2), key("sku")],
            &[key("usage"), key("o")],
            &[key("top")],
            &[Segment::Index(0)],
            &[key("items"), key("sku")],
        ];
        let (store, e, ids) = decode_with_paths(&text, &paths);
        let text_of = |id: u32| match store.prop(&e, id) {
            Some(Prop::Number(s)) | Some(Prop::String(s)) => Some(store.text(s).to_string()),
            Some(Prop::Nested(_)) => Some("nested".to_string()),
            _ => None,
        };
        // The last copy of a repeated key wins: usage.input_tokens is 13.
        assert_eq!(text_of(ids[0]).as_deref(), Some("13"));
        assert_eq!(text_of(ids[1]).as_deref(), Some("b"));
        assert_eq!(text_of(ids[2]).as_deref(), Some("dots"));
        assert_eq!(text_of(ids[3]), None); // out of range
        assert_eq!(text_of(ids[4]), None); // the last usage has no "o"
        assert_eq!(text_of(ids[5]).as_deref(), Some("nested"));
        assert_eq!(text_of(ids[6]), None);
        assert_eq!(text_of(ids[7]), None); // a key into an array
        assert!(ids[0] >= FIRST_PATH_ID && ids[2] < FIRST_PATH_ID);
    }

    #[test]
    fn a_nested_value_overrides_an_earlier_scalar() {
        let text = GOOD.replace(r#""n":1.5"#, r#""n":1.5,"n":[1]"#);
        let (store, e, ids) = decode_with_paths(&text, &[&[key("n")]]);
        assert!(matches!(store.prop(&e, ids[0]), Some(Prop::Nested(_))));
        let (_, _, _, _, props) = run(&text).unwrap();
        let mut shown = String::new();
        if let Prop::Nested(span) = props[0].1 {
            let mut store = EventStore::default();
            let i = decode(
                Some(text.as_bytes()),
                NOW,
                &limits(),
                &Reads::default(),
                true,
                &mut store,
            )
            .unwrap();
            let e = store.events[i];
            if let Prop::Nested(span2) = store.props_of(&e)[0].2 {
                shown = store.text(span2).to_string();
            }
            let _ = span;
        }
        assert_eq!(shown, "[1]");
    }
}
