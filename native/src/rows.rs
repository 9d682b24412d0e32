//! The pending deltas as the flush's rows, in one shape for every writer.
//!
//! `Deltas.value_columns`/`kind_columns` (Python lists, for the unnest
//! statements) and `value_copy`/`kind_copy` (binary COPY payloads, for the
//! staged statements) all walk the tables through these two functions, so
//! both forms hold the same rows by construction.
//!
//! Rows come out in the order of the rollup key, (uid, customer, unit,
//! period start, group), strings by their bytes: the staged statements then
//! insert them as they are, with no sort in PostgreSQL (its multi-column
//! sort cost about a third of each insert), and every worker takes the
//! rows' locks in one order (docs/decisions.md, "Flush rows sorted by the
//! worker").

use crate::accum::AccRef;
use crate::copy::CopyWriter;
use crate::deltas::{Deltas, Table};
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

/// One pending rollup, located: its table and its key's texts.
struct Slot<'a> {
    table: usize, // index into the walk's `uids` and `tables`
    customer: &'a str,
    group: &'a str,
    start: i64,
    acc: AccRef<'a>,
}

/// The rollups of the tables `take` selects, sorted by (uid, customer,
/// unit, start, group), with each table's uid text.
fn sorted_slots<'a>(
    deltas: &'a Deltas,
    uid: impl Fn(u32) -> String,
    take: impl Fn(&Table) -> bool,
) -> (Vec<&'a Table>, Vec<String>, Vec<Slot<'a>>) {
    let tables: Vec<&Table> = deltas.tables.iter().flatten().filter(|t| take(t)).collect();
    let uids: Vec<String> = tables.iter().map(|t| uid(t.uid)).collect();
    let mut slots = Vec::with_capacity(tables.iter().map(|t| t.rows.len()).sum());
    for (index, table) in tables.iter().enumerate() {
        for ((customer, group, start), acc) in table.rows.iter() {
            slots.push(Slot {
                table: index,
                customer: deltas.strings.text(customer),
                group: deltas.strings.text(group),
                start,
                acc,
            });
        }
    }
    // Each table's uid and unit ranked once, so most comparisons are of integers.
    let rank = |texts: Vec<&str>| -> Vec<usize> {
        let mut sorted = texts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        texts
            .iter()
            .map(|t| sorted.partition_point(|s| s < t))
            .collect()
    };
    let uid_rank = rank(uids.iter().map(String::as_str).collect());
    let unit_rank = rank(tables.iter().map(|t| UNITS[t.unit as usize]).collect());
    slots.sort_unstable_by(|a, b| {
        uid_rank[a.table]
            .cmp(&uid_rank[b.table])
            .then_with(|| a.customer.cmp(b.customer))
            .then_with(|| unit_rank[a.table].cmp(&unit_rank[b.table]))
            .then_with(|| a.start.cmp(&b.start))
            .then_with(|| a.group.cmp(b.group))
    });
    (tables, uids, slots)
}

/// Each COUNT, SUM and UNIQUE row, in key order. `uid` names a metric id;
/// `added` gives a UNIQUE rollup's new-member count from (uid, customer,
/// unit, start, group).
pub fn value_rows<E>(
    deltas: &Deltas,
    uid: impl Fn(u32) -> String,
    mut added: impl FnMut(&str, &str, &'static str, i64, &str) -> Result<i64, E>,
    mut each: impl FnMut(ValueRow<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let (tables, uids, slots) = sorted_slots(deltas, uid, |t| t.kind.merge_label() == "add");
    for slot in &slots {
        let table = tables[slot.table];
        let uid = &uids[slot.table];
        let unit = UNITS[table.unit as usize];
        let value = match slot.acc.value_text() {
            Some(text) => text,
            None => added(uid, slot.customer, unit, slot.start, slot.group)?.to_string(),
        };
        each(ValueRow {
            uid,
            customer: slot.customer,
            group: slot.group,
            unit,
            start: slot.start,
            end: table.ends[&slot.start],
            value,
            events: slot.acc.events(),
        })?;
    }
    Ok(())
}

/// Each MAX, MIN, AVG and LATEST row, in key order.
pub fn kind_rows<E>(
    deltas: &Deltas,
    uid: impl Fn(u32) -> String,
    mut each: impl FnMut(KindRow<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let (tables, uids, slots) = sorted_slots(deltas, uid, |t| t.kind.merge_label() != "add");
    for slot in &slots {
        let table = tables[slot.table];
        let latest = slot.acc.latest();
        each(KindRow {
            merge: table.kind.merge_label(),
            uid: &uids[slot.table],
            customer: slot.customer,
            group: slot.group,
            unit: UNITS[table.unit as usize],
            start: slot.start,
            end: table.ends[&slot.start],
            value: slot.acc.value_text(),
            value_text: latest
                .and_then(|(_, _, text)| text)
                .map(|t| deltas.strings.text(t)),
            value_sum: slot.acc.sum_text(),
            events: slot.acc.events(),
            latest_at: latest.map(|(micros, _, _)| micros),
            latest_id: latest.map(|(_, id, _)| id),
        })?;
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
