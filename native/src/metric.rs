//! Compiled usage metrics: typed filters, grouping, the value read, periods.
//!
//! The definitions are validated in Python (pydantic, tally.contracts.metric)
//! and handed over as plain specs; here they become what the per-event path
//! needs: filter sets split by JSON type and case-folded once, the property
//! names, and one period cache per (unit, zone), shared by every metric.

use std::collections::HashSet;

use crate::casefold::casefold;
use crate::event::{Event, EventStore, Prop};
use crate::number::{Decimal, MAX_KEY_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Count,
    Sum,
    Unique,
    Max,
    Min,
    Avg,
    Latest,
    /// LATEST of a STRING metric (valueType STRING).
    LatestText,
}

impl Kind {
    /// The aggregationType and valueType of a definition.
    pub fn parse(name: &str, value_type: &str) -> Option<Kind> {
        let kind = match name {
            "COUNT" => Kind::Count,
            "SUM" => Kind::Sum,
            "UNIQUE" => Kind::Unique,
            "MAX" => Kind::Max,
            "MIN" => Kind::Min,
            "AVG" => Kind::Avg,
            "LATEST" if value_type == "STRING" => return Some(Kind::LatestText),
            "LATEST" => Kind::Latest,
            _ => return None,
        };
        (value_type == "NUMBER").then_some(kind)
    }

    /// How the flush merges a delta into the stored row: "add" (COUNT, SUM,
    /// UNIQUE), or the kind's own.
    pub fn merge_label(self) -> &'static str {
        match self {
            Kind::Count | Kind::Sum | Kind::Unique => "add",
            Kind::Max => "max",
            Kind::Min => "min",
            Kind::Avg => "avg",
            Kind::Latest | Kind::LatestText => "latest",
        }
    }

    /// Whether the operand is a number (SUM's rules).
    pub fn numeric(self) -> bool {
        matches!(
            self,
            Kind::Sum | Kind::Max | Kind::Min | Kind::Avg | Kind::Latest
        )
    }
}

pub const UNITS: [&str; 6] = ["hour", "day", "week", "month", "quarter", "year"];

/// A filter value as the definition gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Text(String),
    /// A number's literal text (Python's str() of an int, repr() of a float).
    Number(String),
    Bool(bool),
}

/// One property's IN (or NOT IN) list, split by JSON type: `"1"` is not `1`,
/// `true` is not `1`, and numbers meet by canonical text (`1` is `1.0`).
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    pub name_id: u32,
    pub negate: bool,
    fold: bool,
    texts: HashSet<String>,
    numbers: HashSet<String>,
    booleans: [bool; 2],
}

impl Filter {
    pub fn new(
        name: String,
        name_id: u32,
        values: &[FilterValue],
        negate: bool,
        fold: bool,
    ) -> Filter {
        let mut filter = Filter {
            name,
            name_id,
            negate,
            fold,
            texts: HashSet::new(),
            numbers: HashSet::new(),
            booleans: [false; 2],
        };
        for value in values {
            match value {
                FilterValue::Text(t) => {
                    filter.texts.insert(if fold {
                        casefold(t).into_owned()
                    } else {
                        t.clone()
                    });
                }
                FilterValue::Number(n) => {
                    // A number over MAX_KEY_BYTES of text matches nothing, either side.
                    if let Some(text) = Decimal::parse(n).canonical(MAX_KEY_BYTES) {
                        filter.numbers.insert(text);
                    }
                }
                FilterValue::Bool(b) => filter.booleans[usize::from(*b)] = true,
            }
        }
        filter
    }

    /// Whether the event's value equals one of the listed values.
    pub fn listed(&self, store: &EventStore, event: &Event) -> bool {
        match store.prop(event, self.name_id) {
            Some(Prop::String(s)) => {
                let text = store.text(s);
                if self.fold {
                    self.texts.contains(casefold(text).as_ref())
                } else {
                    self.texts.contains(text)
                }
            }
            Some(Prop::Bool(b)) => self.booleans[usize::from(b)],
            Some(Prop::Number(n)) => {
                let text = store.text(n);
                if crate::number::plain_integer(text) {
                    return self.numbers.contains(text);
                }
                Decimal::parse(text)
                    .canonical(MAX_KEY_BYTES)
                    .is_some_and(|t| self.numbers.contains(&t))
            }
            Some(Prop::Null) | Some(Prop::Nested(_)) | None => false,
        }
    }
}

/// A group value or UNIQUE member: its text, absent (missing or null), or too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Member<'s> {
    Text(std::borrow::Cow<'s, str>),
    Absent,
    TooLong,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub uid: String,
    pub kind: Kind,
    /// Ids of the properties read (names and paths, `event::Reads`).
    pub value_property: Option<u32>,
    /// One id: the group is the member text as it is; several: a canonical
    /// JSON array of them (`json_string`).
    pub group_properties: Vec<u32>,
    pub fold: bool,
    pub filters: Vec<Filter>,
    /// (property, must be present): present is found and not null.
    pub presence: Vec<(u32, bool)>,
    /// (unit index into UNITS, period cache index) per time unit, in UNITS order.
    pub periods: Vec<(u8, usize)>,
}

impl Metric {
    pub fn matches(&self, store: &EventStore, event: &Event) -> bool {
        self.filters
            .iter()
            .all(|f| f.listed(store, event) != f.negate)
            && self.presence.iter().all(|&(name, present)| {
                let found = !matches!(
                    store.prop(event, name),
                    None | Some(Prop::Null) | Some(Prop::Nested(_))
                );
                found == present
            })
    }

    /// Text form of a property for grouping and UNIQUE (strings case-folded
    /// when not case-sensitive, numbers canonical, booleans true/false).
    pub fn member<'s>(&self, store: &'s EventStore, event: &Event, name: u32) -> Member<'s> {
        match store.prop(event, name) {
            Some(Prop::String(s)) => {
                let text = store.text(s);
                let text = if self.fold {
                    casefold(text)
                } else {
                    std::borrow::Cow::Borrowed(text)
                };
                if text.len() > MAX_KEY_BYTES {
                    Member::TooLong
                } else {
                    Member::Text(text)
                }
            }
            Some(Prop::Bool(b)) => Member::Text((if b { "true" } else { "false" }).into()),
            Some(Prop::Number(n)) => {
                let text = store.text(n);
                if crate::number::plain_integer(text) {
                    return Member::Text(text.into());
                }
                match Decimal::parse(text).canonical(MAX_KEY_BYTES) {
                    Some(text) => Member::Text(text.into()),
                    None => Member::TooLong,
                }
            }
            Some(Prop::Null) | Some(Prop::Nested(_)) | None => Member::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, Limits};

    fn names() -> crate::event::Reads {
        let mut reads = crate::event::Reads::default();
        reads.names.id("p");
        reads
    }

    fn store_with(props: &str) -> (EventStore, Event) {
        let text = format!(
            r#"{{"id":"e","eventType":"a","customerId":"c","timestamp":"2026-11-18T08:00:00Z","properties":{props}}}"#
        );
        let limits = Limits {
            max_bytes: 1 << 20,
            max_lateness_micros: i64::MAX / 4,
            max_future_micros: i64::MAX / 4,
            late_detail: String::new(),
            future_detail: String::new(),
        };
        let mut store = EventStore::default();
        let i = decode(
            Some(text.as_bytes()),
            1_795_000_000_000_000,
            &limits,
            &names(),
            true,
            &mut store,
        )
        .unwrap();
        let event = store.events[i];
        (store, event)
    }

    #[test]
    fn filters_compare_typed_values() {
        let f = Filter::new(
            "p".into(),
            0,
            &[
                FilterValue::Number("1".into()),
                FilterValue::Text("ß".into()),
                FilterValue::Bool(true),
            ],
            false,
            true,
        );
        for (props, listed) in [
            (r#"{"p":1.0}"#, true),
            (r#"{"p":"1"}"#, false),
            (r#"{"p":"SS"}"#, true),
            (r#"{"p":true}"#, true),
            (r#"{"p":false}"#, false),
            (r#"{"p":null}"#, false),
            (r#"{}"#, false),
            (r#"{"p":1e-600}"#, false),
        ] {
            let (store, event) = store_with(props);
            assert_eq!(f.listed(&store, &event), listed, "{props}");
        }
    }

    #[test]
    fn members_are_canonical_text() {
        let metric = Metric {
            uid: "m".into(),
            kind: Kind::Unique,
            value_property: Some(0),
            group_properties: vec![],
            fold: false,
            filters: vec![],
            presence: vec![],
            periods: vec![],
        };
        for (props, member) in [
            (r#"{"p":2.50}"#, Member::Text("2.5".into())),
            (r#"{"p":false}"#, Member::Text("false".into())),
            (r#"{"p":null}"#, Member::Absent),
            (r#"{"p":1e600}"#, Member::TooLong),
        ] {
            let (store, event) = store_with(props);
            assert_eq!(metric.member(&store, &event, 0), member, "{props}");
        }
        let long = format!(r#"{{"p":"{}"}}"#, "é".repeat(257));
        let (store, event) = store_with(&long);
        assert_eq!(metric.member(&store, &event, 0), Member::TooLong);
    }
}
