//! Pending rollup deltas: one table per (metric, time unit), one small
//! accumulator per (customer, group, period start).
//!
//! Each aggregation kind lives in its own unit (`accum`): initialise from an
//! operand, add one, merge another, encode the flush value. Applying an event
//! is all or nothing: every operand of every metric it matches (amount,
//! member, group, periods) is computed first, and only then is anything
//! changed, so an error leaves the deltas exactly as they were.

use rustc_hash::FxHashMap;

use crate::accum::{Arrival, Operand, Rows};
use crate::event::{Event, EventStore};
use crate::index::Index;
use crate::intern::Interner;
use crate::json::write_string;
use crate::metric::{Kind, Member, Metric};
use crate::number::{bounded, bounded_big, parse_decimal_string, Decimal, Skip, MAX_KEY_BYTES};
use crate::periods::{PeriodCaches, Source};

pub use crate::accum::RowKey;

pub struct Table {
    pub uid: u32, // the metric's id in the Index registry
    pub unit: u8,
    pub kind: Kind,
    pub rows: Rows,
    pub ends: FxHashMap<i64, i64>, // period start -> end, for the rows' periods
}

impl Table {
    fn new(uid: u32, unit: u8, kind: Kind) -> Table {
        Table {
            uid,
            unit,
            kind,
            rows: Rows::new(kind),
            ends: FxHashMap::default(),
        }
    }
}

#[derive(Default)]
pub struct Deltas {
    /// Indexed by uid * UNITS + unit: a table is found without hashing.
    pub tables: Vec<Option<Table>>,
    pub strings: Interner,
    pub events: u64,
    pub unmatched: u64,
    pub size: u64,    // rollups over all tables
    pub members: u64, // UNIQUE members held
    pub skipped: FxHashMap<(u32, Skip), u64>,
    pub applied: FxHashMap<u32, u64>,
    empty: Option<u32>,
    /// Buffers reused by every event (no allocation per event).
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    steps: Vec<Step>,
    skips: Vec<(u32, Skip)>,
    memo: Memo,
    group: String,
}

/// One metric's share of an event, computed before anything changes.
struct Step {
    metric: usize,
    operand: Operand,
    member: Option<u32>,
    group: u32,
    bounds: [(i64, i64); 6],
}

/// What one event has already worked out, for the metrics after the first:
/// a property's key text as an interned id (per name and folding), and a
/// period cache's bounds. Metrics share both often.
#[derive(Default)]
struct Memo {
    keys: Vec<(u32, bool, Result<Option<u32>, Skip>)>,
    bounds: Vec<(usize, (i64, i64))>,
}

fn amount(store: &EventStore, event: &Event, name: u32) -> Result<Operand, Skip> {
    use crate::event::Prop;
    let decimal = match store.prop(event, name) {
        Some(Prop::Number(n)) => {
            let text = store.text(n);
            if let Some(amount) = crate::number::short_amount(text) {
                return Ok(Operand::Amount(amount));
            }
            Decimal::parse(text)
        }
        Some(Prop::String(s)) => parse_decimal_string(store.text(s))?,
        Some(Prop::Bool(_)) => return Err(Skip::NotANumber),
        Some(Prop::Null) | Some(Prop::Nested(_)) | None => return Err(Skip::MissingValue),
    };
    match bounded(&decimal) {
        Ok(small) => Ok(Operand::Amount(small)),
        Err(_) => {
            let (big, scale) = bounded_big(&decimal)?;
            Ok(Operand::Big(big, scale))
        }
    }
}

impl Deltas {
    pub fn len(&self) -> u64 {
        self.size
    }

    /// The id of "" (the group of ungrouped metrics), interned once.
    fn empty(&mut self) -> u32 {
        match self.empty {
            Some(id) => id,
            None => {
                let id = self.strings.id("");
                self.empty = Some(id);
                id
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn table(&mut self, uid: u32, unit: u8, kind: Kind) -> &mut Table {
        let slot = uid as usize * 6 + unit as usize;
        if self.tables.len() <= slot {
            self.tables.resize_with(slot + 1, || None);
        }
        self.tables[slot].get_or_insert_with(|| Table::new(uid, unit, kind))
    }

    /// The interned text of property `name` as a key (None: absent), once per event.
    fn key(
        &mut self,
        memo: &mut Memo,
        metric: &crate::metric::Metric,
        store: &EventStore,
        event: &Event,
        name: u32,
    ) -> Result<Option<u32>, Skip> {
        if let Some((_, _, found)) = memo
            .keys
            .iter()
            .find(|(n, f, _)| *n == name && *f == metric.fold)
        {
            return *found;
        }
        // Interning before the event is known to apply is harmless: an unused
        // string changes no rollup.
        let found = match metric.member(store, event, name) {
            Member::Text(text) => Ok(Some(self.strings.id(&text))),
            Member::Absent => Ok(None),
            Member::TooLong => Err(Skip::ValueTooLong),
        };
        memo.keys.push((name, metric.fold, found));
        found
    }

    /// The group of several keys: a canonical JSON array of their texts,
    /// `null` where one is absent (README, "Grouping").
    fn group_json(
        &mut self,
        buffer: &mut String,
        metric: &Metric,
        store: &EventStore,
        event: &Event,
    ) -> Result<u32, Skip> {
        buffer.clear();
        buffer.push('[');
        for (n, &name) in metric.group_properties.iter().enumerate() {
            if n > 0 {
                buffer.push(',');
            }
            match metric.member(store, event, name) {
                Member::Text(text) => write_string(&text, buffer),
                Member::Absent => buffer.push_str("null"),
                Member::TooLong => return Err(Skip::ValueTooLong),
            }
        }
        buffer.push(']');
        if buffer.len() > MAX_KEY_BYTES {
            return Err(Skip::ValueTooLong);
        }
        Ok(self.strings.id(buffer))
    }

    /// Apply one (already deduplicated) event to every metric it matches.
    pub fn add(
        &mut self,
        store: &EventStore,
        event: &Event,
        index: &Index,
        caches: &mut PeriodCaches,
        source: &mut dyn Source,
    ) -> Result<(), String> {
        let Some(metrics) = index.by_event_type.get(store.text(event.event_type)) else {
            self.events += 1;
            self.unmatched += 1;
            return Ok(());
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.add_with(store, event, index, metrics, caches, source, &mut scratch);
        scratch.steps.clear();
        scratch.skips.clear();
        scratch.memo.keys.clear();
        scratch.memo.bounds.clear();
        self.scratch = scratch;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn add_with(
        &mut self,
        store: &EventStore,
        event: &Event,
        index: &Index,
        metrics: &[usize],
        caches: &mut PeriodCaches,
        source: &mut dyn Source,
        scratch: &mut Scratch,
    ) -> Result<(), String> {
        let Scratch {
            steps,
            skips,
            memo,
            group,
        } = scratch;
        for &m in metrics {
            let metric = &index.metrics[m];
            if !metric.matches(store, event) {
                continue;
            }
            let uid = index.uid_ids[m];
            let mut operand = Operand::One;
            let mut member = None;
            let value = metric.value_property.unwrap_or(crate::event::UNREAD);
            match metric.kind {
                Kind::Count => {}
                Kind::Sum | Kind::Max | Kind::Min | Kind::Avg | Kind::Latest => {
                    match amount(store, event, value) {
                        Ok(found) => operand = found,
                        Err(skip) => {
                            skips.push((uid, skip));
                            continue;
                        }
                    }
                }
                Kind::Unique | Kind::LatestText => {
                    match self.key(memo, metric, store, event, value) {
                        Ok(Some(id)) => member = Some(id),
                        Ok(None) => {
                            skips.push((uid, Skip::MissingValue));
                            continue;
                        }
                        Err(skip) => {
                            skips.push((uid, skip));
                            continue;
                        }
                    }
                }
            }
            let group = match metric.group_properties[..] {
                [] => self.empty(),
                [name] => match self.key(memo, metric, store, event, name) {
                    Ok(Some(id)) => id,
                    Ok(None) => self.empty(),
                    Err(skip) => {
                        skips.push((uid, skip));
                        continue;
                    }
                },
                _ => match self.group_json(group, metric, store, event) {
                    Ok(id) => id,
                    Err(skip) => {
                        skips.push((uid, skip));
                        continue;
                    }
                },
            };
            let mut bounds = [(0i64, 0i64); 6];
            for (n, &(_, cache)) in metric.periods.iter().enumerate() {
                bounds[n] = match memo.bounds.iter().find(|(c, _)| *c == cache) {
                    Some(&(_, found)) => found,
                    None => {
                        let found = caches.caches[cache].bounds(event.micros, source)?;
                        memo.bounds.push((cache, found));
                        found
                    }
                };
            }
            steps.push(Step {
                metric: m,
                operand,
                member,
                group,
                bounds,
            });
        }

        // Nothing below can fail: every operand is bounded and in hand.
        self.events += 1;
        for &skip in skips.iter() {
            *self.skipped.entry(skip).or_insert(0) += 1;
        }
        if steps.is_empty() {
            self.unmatched += 1;
            return Ok(());
        }
        let customer = self.strings.id(store.text(event.customer));
        let arrival = Arrival {
            micros: event.micros,
            id: store.text(event.id),
        };
        for step in steps.iter() {
            let metric = &index.metrics[step.metric];
            let uid = index.uid_ids[step.metric];
            *self.applied.entry(uid).or_insert(0) += 1;
            for (n, &(unit, _)) in metric.periods.iter().enumerate() {
                let (start, end) = step.bounds[n];
                let table = self.table(uid, unit, metric.kind);
                let key = (customer, step.group, start);
                let (acc, new_row) = table.rows.entry(key);
                let new_member = acc.add(&step.operand, step.member, arrival);
                if new_row {
                    table.ends.entry(start).or_insert(end);
                }
                self.size += u64::from(new_row);
                self.members += u64::from(new_member);
            }
        }
        Ok(())
    }

    /// Fold `other` in (other is left as it was); its strings are re-interned.
    pub fn merge(&mut self, other: &Deltas) {
        for table in other.tables.iter().flatten() {
            let mut remap: FxHashMap<u32, u32> = FxHashMap::default();
            let mut rows: Vec<(RowKey, crate::accum::AccRef<'_>)> =
                Vec::with_capacity(table.rows.len());
            for ((customer, group, start), acc) in table.rows.iter() {
                let mut id = |theirs: u32| -> u32 {
                    *remap
                        .entry(theirs)
                        .or_insert_with(|| self.strings.id(other.strings.text(theirs)))
                };
                let key = (id(customer), id(group), start);
                rows.push((key, acc));
                for m in acc.texts() {
                    id(m);
                }
            }
            let mine = self.table(table.uid, table.unit, table.kind);
            for (&start, &end) in &table.ends {
                mine.ends.entry(start).or_insert(end);
            }
            let mut new_rows = 0;
            let mut new_members = 0;
            for (key, acc) in rows {
                let (target, new) = mine.rows.entry(key);
                new_rows += u64::from(new);
                new_members += target.merge(acc, |m| remap[&m]);
            }
            self.size += new_rows;
            self.members += new_members;
        }
        for (&k, &v) in &other.skipped {
            *self.skipped.entry(k).or_insert(0) += v;
        }
        for (&k, &v) in &other.applied {
            *self.applied.entry(k).or_insert(0) += v;
        }
        self.unmatched += other.unmatched;
        self.events += other.events;
    }

    /// Heap bytes held by the rollups, members and strings (for the memory bench).
    pub fn allocated(&self) -> usize {
        let mut bytes = self.strings.allocated() + self.tables.capacity() * 8;
        for table in self.tables.iter().flatten() {
            bytes += table.rows.allocated() + table.ends.capacity() * 17;
            bytes += table
                .rows
                .iter()
                .map(|(_, acc)| acc.allocated())
                .sum::<usize>();
        }
        bytes
    }
}
