//! The pending deltas as the flush's rows, in one shape for every writer.
//!
//! `Deltas.value_columns`/`kind_columns` (Python lists, for the unnest
//! statements) and `value_copy`/`kind_copy` (binary COPY payloads, for the
//! staged statements) all walk the tables through these two functions, so
//! both forms hold the same rows by construction.

use crate::copy::CopyWriter;
use crate::deltas::Deltas;
use crate::metric::UNITS;

/// A COUNT, SUM or UNIQUE rollup delta: a row of `tally_flush_values`.
pub struct ValueRow<'a> {
    pub uid: &'a str,
    pub customer: &'a str,
    pub group: &'a str,
    pub unit: &'static str,
    pub start: i64,
    pub end: i64,
    /// The delta; for UNIQUE, the number of its members new to the table.
    pub value: String,
    pub events: u64,
}

/// A MAX, MIN, AVG or LATEST rollup delta: a row of `tally_flush_kinds`.
pub struct KindRow<'a> {
    pub merge: &'static str,
    pub uid: &'a str,
    pub customer: &'a str,
    pub group: &'a str,
    pub unit: &'static str,
    pub start: i64,
    pub end: i64,
    pub value: Option<String>,
    pub value_text: Option<&'a str>,
    pub value_sum: Option<String>,
    pub events: u64,
    pub latest_at: Option<i64>,
    pub latest_id: Option<&'a str>,
}

/// Each COUNT, SUM and UNIQUE row. `uid` names a metric id; `added` gives a
/// UNIQUE rollup's new-member count from (uid, customer, unit, start, group).
pub fn value_rows<E>(
    deltas: &Deltas,
    uid: impl Fn(u32) -> String,
    mut added: impl FnMut(&str, &str, &'static str, i64, &str) -> Result<i64, E>,
    mut each: impl FnMut(ValueRow<'_>) -> Result<(), E>,
) -> Result<(), E> {
    for table in deltas.tables.iter().flatten() {
        if table.kind.merge_label() != "add" {
            continue; // kind_rows
        }
        let uid = uid(table.uid);
        let unit = UNITS[table.unit as usize];
        for ((customer, group, start), acc) in table.rows.iter() {
            let customer = deltas.strings.text(customer);
            let group = deltas.strings.text(group);
            let value = match acc.value_text() {
                Some(text) => text,
                None => added(&uid, customer, unit, start, group)?.to_string(),
            };
            each(ValueRow {
                uid: &uid,
                customer,
                group,
                unit,
                start,
                end: table.ends[&start],
                value,
                events: acc.events(),
            })?;
        }
    }
    Ok(())
}

/// Each MAX, MIN, AVG and LATEST row.
pub fn kind_rows<E>(
    deltas: &Deltas,
    uid: impl Fn(u32) -> String,
    mut each: impl FnMut(KindRow<'_>) -> Result<(), E>,
) -> Result<(), E> {
    for table in deltas.tables.iter().flatten() {
        let merge = table.kind.merge_label();
        if merge == "add" {
            continue; // value_rows
        }
        let uid = uid(table.uid);
        let unit = UNITS[table.unit as usize];
        for ((customer, group, start), acc) in table.rows.iter() {
            let latest = acc.latest();
            each(KindRow {
                merge,
                uid: &uid,
                customer: deltas.strings.text(customer),
                group: deltas.strings.text(group),
                unit,
                start,
                end: table.ends[&start],
                value: acc.value_text(),
                value_text: latest
                    .and_then(|(_, _, text)| text)
                    .map(|t| deltas.strings.text(t)),
                value_sum: acc.sum_text(),
                events: acc.events(),
                latest_at: latest.map(|(micros, _, _)| micros),
                latest_id: latest.map(|(_, id, _)| id),
            })?;
        }
    }
    Ok(())
}

fn count(events: u64) -> i64 {
    // An event count is bounded by the events one process can hold.
    i64::try_from(events).expect("an event count below 2^63")
}

/// A value row in `tally_flush_values`'s column order.
pub fn copy_value(w: &mut CopyWriter, r: &ValueRow<'_>) {
    w.row();
    w.text(r.uid);
    w.text(r.customer);
    w.text(r.group);
    w.text(r.unit);
    w.int8(r.start);
    w.int8(r.end);
    w.text(&r.value);
    w.int8(count(r.events));
}

/// A kind row in `tally_flush_kinds`'s column order.
pub fn copy_kind(w: &mut CopyWriter, r: &KindRow<'_>) {
    w.row();
    w.text(r.merge);
    w.text(r.uid);
    w.text(r.customer);
    w.text(r.group);
    w.text(r.unit);
    w.int8(r.start);
    w.int8(r.end);
    w.opt_text(r.value.as_deref());
    w.opt_text(r.value_text);
    w.opt_text(r.value_sum.as_deref());
    w.int8(count(r.events));
    w.opt_int8(r.latest_at);
    w.opt_text(r.latest_id);
}

/// A member row in `tally_flush_members`'s column order.
pub fn copy_member(w: &mut CopyWriter, key: (&str, &str, &str, i64, &str), member: &str) {
    let (uid, customer, unit, start, group) = key;
    w.row();
    w.text(uid);
    w.text(customer);
    w.text(unit);
    w.int8(start);
    w.text(group);
    w.text(member);
}
